"""MPAC decoding: per-position colour counts, argmax digits, and an exact presence test.

Each scored token (first occurrence of its context) lands at a position p chosen by the
position PRF and in a shard chosen by the colouring PRF. Per position the decoder counts tokens
in each of the r colour lists and takes the most frequent colour as the digit (ties go to the
lower colour), as in the paper (§2.4 of research/majormark.md).

The presence p-value accounts for that search: the statistic is G = sum over positions of the
largest colour count M_p. Under the null (text written without the key) each token's colour is
an independent uniform draw over S shards, independent of its position, so given the number of
tokens n_p at each position M_p follows the max-of-multinomial law of ``stats.max_count_pmf``
and G the convolution of those laws; the p-value is G's exact upper tail. The paper's z-test on
the decoded colour list ignores the argmax and is anti-conservative. The per-bit confidence of a
digit's bits is 1 - P(M_p >= observed | n_p): how surely that position's agreement is not chance
(0 for a position no token reached).
"""

from __future__ import annotations

import torch

from provmark.detector.base import Evidence, PairDetector
from provmark.detector.stats import max_count_pmf, max_count_tail, sum_log_sf
from provmark.kernels.prf import split_key
from provmark.watermark.base import positions
from provmark.watermark.mpac import MPACConfig
from provmark.watermark.payload import from_digits

__all__ = ["MPACDetector"]


class MPACDetector(PairDetector):
    """Decodes an MPAC payload and tests its presence; needs only the key."""

    def __init__(self, key, **kwargs):
        super().__init__(key, **kwargs)
        self.config: MPACConfig = key.config
        self._position_key = split_key(key.subkey("position"))

    def _score_tokens(self, contexts, tokens):
        """int64 (N,): position * S + shard of each token."""
        count = self.config.shard_count
        shard = self.shards(contexts, tokens, torch.zeros(tokens.shape[0], dtype=torch.int64), count)
        return positions(self._position_key, contexts, self.config.num_positions) * count + shard

    def _aggregate_scores(self, token_scores, seq_index, num_sequences):
        config = self.config
        length, radix, shards = config.num_positions, config.radix, config.shard_count
        position, shard = token_scores // shards, token_scores % shards
        cell = seq_index * length + position
        tokens_at = torch.bincount(cell, minlength=num_sequences * length).view(num_sequences, length)
        coloured = shard < radix
        counts = torch.bincount(cell[coloured] * radix + shard[coloured], minlength=num_sequences * length * radix)
        counts = counts.view(num_sequences, length, radix)
        largest, digits = counts.max(dim=2)  # first maximum: ties go to the lower colour
        per_digit = config.bits_per_digit
        out = []
        for row in range(num_sequences):
            n_p, m_p = tokens_at[row].tolist(), largest[row].tolist()
            if sum(n_p) == 0:
                out.append(Evidence(0.0, 0.0))
                continue
            pmfs = [max_count_pmf(n, radix, 1 / shards) for n in n_p]
            log_p, mean, sd = sum_log_sf(pmfs, sum(m_p))
            confidence = [1.0 - float(max_count_tail(n, radix, 1 / shards)[m]) if n else 0.0 for n, m in zip(n_p, m_p)]
            bit_confidences = tuple(c for c in confidence for _ in range(per_digit))
            payload = from_digits(digits[row].tolist(), radix)
            score = (sum(m_p) - mean) / sd if sd > 0 else 0.0
            out.append(Evidence(score, log_p, payload, bit_confidences))
        return out
