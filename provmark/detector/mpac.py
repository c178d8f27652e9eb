"""MPAC decoding: per-position colour counts, argmax digits, and an exact presence test.

Each scored token (first occurrence of its context) lands at a position p chosen by the
position PRF and in a shard chosen by the colouring PRF. Per position the decoder counts tokens
in each of the r colour lists and takes the most frequent colour as the digit (ties go to the
lower colour), as in the paper (§2.4 of research/majormark.md).

With check bits (``watermark.check``) the decoded codeword goes through ``detector.check``: the
payload is the first codeword near it whose checksum matches, or None.

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

import numpy as np
import torch

from provmark.detector.base import Evidence, PairDetector
from provmark.detector.check import checked_payloads
from provmark.detector.records import (
    binomial_tails,
    digit_levels_from,
    digit_sums,
    hypergeometric_low_bound,
    hypergeometric_low_tails,
    product_log_sf,
    refined,
    split_bounds,
    split_tails,
)
from provmark.detector.stats import max_count_pmf, max_count_tail, sum_log_sf_rows
from provmark.kernels.prf import split_key
from provmark.watermark import subkeys
from provmark.watermark.base import positions
from provmark.watermark.mpac import MPACConfig
from provmark.watermark.payload import from_digit_rows

__all__ = ["MPACDetector", "MPACRecordTable"]


class MPACRecordTable:
    """One text's colour counts per position, for scoring candidate payloads (``detector.records``).

    A payload's hits are the tokens at each position p in the colour list of its digit m[p]. Under
    the null every scored token's shard is uniform over the S shards whatever its position, so
    for every payload the hits are ``Binomial(N, 1/S)`` (N scored tokens, all positions)."""

    def __init__(self, counts: np.ndarray, position_totals: np.ndarray, config: MPACConfig):
        self.counts = counts  # int64 (L, r): tokens at position p in colour list c
        self.position_totals = position_totals  # int64 (L,): tokens at position p, every shard
        self.num_scored_tokens = int(position_totals.sum())
        self.config = config
        self.num_levels = config.num_positions

    def score(self, payloads):
        hits = digit_sums(payloads, self.counts, self.config.bits_per_digit)
        return hits, binomial_tails(hits, self.num_scored_tokens, np.ones_like(hits), self.config.shard_count)

    def exclusion(self, winner, values):
        """Under "C is the record", a token at a position p where C's digit differs from the
        winner's and not in C's colour list is uniform over the other S - 1 shards, so the
        winner's hits at those positions are ``Binomial(U, 1/(S-1))`` (U such tokens)."""
        config = self.config
        width, length = config.bits_per_digit, config.num_positions
        own = [(int(winner) >> (width * (length - 1 - p))) & ((1 << width) - 1) for p in range(length)]
        differ = np.ones_like(self.counts)
        differ[np.arange(length), own] = 0
        hits, others, level, held, held_there, there = digit_sums(values, np.stack([
            differ * self.counts[np.arange(length), own][:, None],  # the winner's hits where the digits differ
            differ * (self.position_totals[:, None] - self.counts),  # tokens outside C's colour there
            differ,
            self.counts,  # C's hits, all positions
            differ * self.counts,  # C's hits where the digits differ
            differ * self.position_totals[:, None],  # tokens where the digits differ
        ]), width)
        total, others_share = self.num_scored_tokens, config.shard_count - 1

        def tails(at, exact):
            excess = (split_tails if exact else split_bounds)(hits[at], others[at], 1, others_share)
            low = hypergeometric_low_tails if exact else hypergeometric_low_bound
            return product_log_sf(excess + low(held_there[at], total, held[at], there[at]), 1 + (there[at] > 0))

        return refined(tails, values.shape[0]), level

    def levels_from(self, values):
        return digit_levels_from(values, self.config.bits_per_digit, self.config.num_positions)


class MPACDetector(PairDetector):
    """Decodes an MPAC payload and tests its presence; needs only the key."""

    def __init__(self, key, **kwargs):
        super().__init__(key, **kwargs)
        self.config: MPACConfig = key.config
        self._position_key = split_key(key.subkey(subkeys.POSITION))

    def _score_tokens(self, contexts, tokens):
        """int64 (N,): position * S + shard of each token."""
        count = self.config.shard_count
        shard = self.shards(contexts, tokens, torch.zeros(tokens.shape[0], dtype=torch.int64), count)
        return positions(self._position_key, contexts, self.config.num_positions) * count + shard

    def _record_tables(self, token_scores, seq_index, num_sequences):
        config = self.config
        length, radix, shards = config.num_positions, config.radix, config.shard_count
        cell = (seq_index * length + token_scores // shards) * shards + token_scores % shards
        counts = torch.bincount(cell, minlength=num_sequences * length * shards).view(num_sequences, length, shards)
        return [MPACRecordTable(counts[i, :, :radix].numpy(), counts[i].sum(dim=1).numpy(), config)
                for i in range(num_sequences)]

    def _aggregate_scores(self, token_scores, seq_index, num_sequences):
        config = self.config
        length, radix, shards = config.num_positions, config.radix, config.shard_count
        position, shard = token_scores // shards, token_scores % shards
        cell = seq_index * length + position
        tokens_at = torch.bincount(cell, minlength=num_sequences * length).view(num_sequences, length).numpy()
        coloured = shard < radix
        counts = torch.bincount(cell[coloured] * radix + shard[coloured], minlength=num_sequences * length * radix)
        largest, digits = counts.view(num_sequences, length, radix).max(dim=2)  # ties go to the lower colour
        largest, digits = largest.numpy(), digits.numpy()
        # A position's null law depends on its token count n alone: one pmf and one tail per n.
        pmfs = [max_count_pmf(n, radix, 1 / shards) for n in range(int(tokens_at.max(initial=0)) + 1)]
        tails = np.zeros((len(pmfs), len(pmfs) + 1))
        for n in range(len(pmfs)):
            tails[n, : n + 2] = max_count_tail(n, radix, 1 / shards)
        confidence = np.where(tokens_at > 0, 1.0 - tails[tokens_at, largest], 0.0)
        bit_confidences = np.repeat(confidence, config.bits_per_digit, axis=1).tolist()
        observed = largest.sum(axis=1)
        scored = np.flatnonzero(tokens_at.sum(axis=1))
        log_p, mean, sd = (values.tolist() for values in sum_log_sf_rows(pmfs, tokens_at[scored], observed[scored]))
        payloads = from_digit_rows(digits[scored], radix)
        if config.check_bits:
            per_digit = config.bits_per_digit
            bits = (digits[scored][:, :, None] >> np.arange(per_digit - 1, -1, -1)) & 1  # each digit most significant first
            payloads = checked_payloads(self.key, bits.reshape(scored.size, -1), np.array(bit_confidences)[scored],
                                        lambda rows: (np.array(from_digit_rows(rows, 2), dtype=np.uint64),
                                                      np.ones(rows.shape[0], dtype=bool)))
        out = [Evidence(0.0, 0.0)] * num_sequences
        for i, row in enumerate(scored.tolist()):
            score = (int(observed[row]) - mean[i]) / sd[i] if sd[i] > 0 else 0.0
            out[row] = Evidence(score, log_p[i], payloads[i], tuple(bit_confidences[row]))
        return out
