"""MajorMark and MajorMark+ decoding, with presence p-values corrected for the decoder's search.

**MajorMark** (clustering decoding). The b shard counts are taken under both majority-bit
hypotheses lambda (the salt of the seed): under the right one the majority shards are
over-represented. The counts are split into a high and a low group by exact 1-D two-means (sort
them, try every split point, keep the least within-group sum of squares), with the guard that
the high group, which stands for the majority bits, holds at least half the shards (more than
half when lambda = 0, since a tie means lambda = 1) and not all of them. Of the two hypotheses
the decoder keeps the one whose split has the smaller binomial p-value.

**MajorMark+** (block decoding). The tokens of each block j (chosen by the position PRF) are
recoloured under each of the s - 1 candidates (lambda, n) of ``block_candidates``; a candidate's
preferred shards are its n most frequent ones, and the candidate with the smallest binomial
p-value (n/s preferred share) wins, deterministically (ties go to the first candidate).

**Presence p-value.** For a fixed codeword the number of tokens in its preferred shards is, under
the null, Binomial(N, n_lambda/b) for MajorMark and a sum of independent Binomial(T_j, n_j/s)
over blocks for MajorMark+ (exact convolution). The decoder searched every valid codeword, so the
reported p-value is that tail times the number of codewords (2**b - 2, or (2**s - 2)**r): a union
bound, conservative but honest whatever the decoder picks. The paper's own presence test (a
threshold of 2 on a difference of count standard deviations) has no stated false-positive rate.

**Per-bit confidence.** MajorMark: for a shard put in the high group, P(a Binomial(N, 1/b) count
< its count); in the low group, P(count > its count). MajorMark+: one minus the block's
search-corrected p-value, for each bit of the block.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy.stats import binom

from provmark.detector.base import Detector, Evidence
from provmark.detector.stats import binomial_log_sf, sum_log_sf
from provmark.kernels.prf import split_key
from provmark.watermark.majormark import MajorMarkConfig, MajorMarkPlusConfig, block_candidates, block_salt
from provmark.watermark.mpac import positions

__all__ = ["MajorMarkDetector", "MajorMarkPlusDetector", "two_means_split"]


@functools.lru_cache(maxsize=4096)
def _binomial_pmf(trials: int, p: float) -> np.ndarray:
    return binom.pmf(np.arange(trials + 1), trials, p)


def two_means_split(counts: list[int], sizes: range) -> list[int]:
    """Indices of the high group of the least-squares two-group split of ``counts`` whose high
    group size lies in ``sizes`` (exact: every split point of the sorted counts is tried).
    Ties in counts keep index order; ties in cost keep the smaller high group."""
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    values = np.array([counts[i] for i in order], dtype=np.float64)
    prefix, prefix_sq = np.concatenate([[0], np.cumsum(values)]), np.concatenate([[0], np.cumsum(values**2)])
    total, total_sq, n = prefix[-1], prefix_sq[-1], len(values)
    best, best_cost = None, math.inf
    for k in sizes:
        high = prefix_sq[k] - prefix[k] ** 2 / k
        low = (total_sq - prefix_sq[k]) - (total - prefix[k]) ** 2 / (n - k)
        if high + low < best_cost - 1e-9:
            best, best_cost = k, high + low
    return order[:best]


class MajorMarkDetector(Detector):
    """Clustering decoder for MajorMark keys; needs only the key."""

    def _score_tokens(self, contexts, tokens):
        """int64 (N, 2): each token's shard under lambda = 0 and lambda = 1."""
        n, bits = tokens.shape[0], self.key.config.bits
        return torch.stack([self.shards(contexts, tokens, torch.full((n,), lam, dtype=torch.int64), bits) for lam in (0, 1)], 1)

    def _aggregate_scores(self, token_scores, seq_index, num_sequences):
        config: MajorMarkConfig = self.key.config
        b = config.bits
        index = (seq_index[:, None] * 2 + torch.tensor([0, 1])) * b + token_scores
        counts = torch.bincount(index.flatten(), minlength=num_sequences * 2 * b).view(num_sequences, 2, b).tolist()
        tokens = torch.bincount(seq_index, minlength=num_sequences).tolist()
        log_messages = math.log(config.capacity)
        decoded = []  # (log p, lambda, high-group mask, green) per sequence with tokens
        for row in range(num_sequences):
            total = tokens[row]
            if total == 0:
                decoded.append(None)
                continue
            best = None
            for lam in (0, 1):
                sizes = range(b // 2 + 1 if lam == 0 else (b + 1) // 2, b)
                if not sizes:
                    continue
                high = two_means_split(counts[row][lam], sizes)
                green = sum(counts[row][lam][i] for i in high)
                log_p = binomial_log_sf(green, total, len(high) / b)
                if best is None or log_p < best[0]:
                    best = (log_p, lam, np.isin(np.arange(b), high), green)
            decoded.append(best)
        # Per-bit confidences for every sequence at once (one scipy call each way).
        lams = np.array([d[1] if d else 0 for d in decoded])
        observed = np.array(counts)[np.arange(num_sequences), lams]
        totals = np.array(tokens)[:, None]
        highs = np.array([d[2] if d else np.zeros(b, dtype=bool) for d in decoded])
        confidence = np.where(highs, binom.cdf(observed - 1, totals, 1 / b), binom.sf(observed, totals, 1 / b))
        out = []
        for row, found in enumerate(decoded):
            if found is None:
                out.append(Evidence(0.0, 0.0))
                continue
            log_p, lam, high, green = found
            total, gamma = tokens[row], high.sum() / b
            bits = [lam if h else 1 - lam for h in high]
            z = (green - gamma * total) / math.sqrt(total * gamma * (1 - gamma))
            out.append(Evidence(z, min(0.0, log_p + log_messages), config.payload_of(bits), tuple(confidence[row].tolist())))
        return out


class MajorMarkPlusDetector(Detector):
    """Block decoder for MajorMark+ keys; needs only the key."""

    def __init__(self, key, **kwargs):
        super().__init__(key, **kwargs)
        self._position_key = split_key(key.subkey("position"))
        self._candidates = block_candidates(key.config.block_size)

    def _score_tokens(self, contexts, tokens):
        """int64 (N, 1 + C): each token's block, then its shard under each of the C candidates."""
        config: MajorMarkPlusConfig = self.key.config
        block = positions(self._position_key, contexts, config.num_blocks)
        columns = [block]
        for lam, count in self._candidates:
            salts = block_salt(block, lam, count)  # the encoder's salt, on a tensor of blocks
            columns.append(self.shards(contexts, tokens, salts, config.block_size))
        return torch.stack(columns, dim=1)

    def _aggregate_scores(self, token_scores, seq_index, num_sequences):
        config: MajorMarkPlusConfig = self.key.config
        r, s, candidates = config.num_blocks, config.block_size, self._candidates
        c = len(candidates)
        cell = seq_index * r + token_scores[:, 0]  # (sequence, block)
        index = ((cell[:, None] * c + torch.arange(c)) * s + token_scores[:, 1:]).flatten()
        counts = torch.bincount(index, minlength=num_sequences * r * c * s).view(num_sequences, r, c, s)
        tokens_at = torch.bincount(cell, minlength=num_sequences * r).view(num_sequences, r)
        ranked, order = torch.sort(counts, dim=3, descending=True, stable=True)
        cumulative = ranked.cumsum(dim=3)
        sizes = torch.tensor([count for _, count in candidates])
        green = cumulative.gather(3, (sizes - 1).view(1, 1, c, 1).expand(num_sequences, r, c, 1)).squeeze(3)
        share = (sizes / s).numpy()
        log_sf = binom.logsf(green.numpy() - 1, tokens_at.numpy()[:, :, None], share[None, None, :])
        choice = np.argmin(log_sf, axis=2)  # first minimum: ties go to the first candidate
        log_messages_block = math.log(config.block_values)
        order, green, tokens_at = order.numpy(), green.numpy(), tokens_at.numpy()
        chosen_log_sf = np.take_along_axis(log_sf, choice[:, :, None], axis=2)[:, :, 0]
        block_p = np.where(tokens_at > 0, np.exp(np.minimum(0.0, chosen_log_sf + log_messages_block)), 1.0)
        out = []
        for row in range(num_sequences):
            if int(tokens_at[row].sum()) == 0:
                out.append(Evidence(0.0, 0.0))
                continue
            blocks, pmfs, observed, confidences = [], [], 0, []
            for j in range(r):
                k = int(choice[row, j])
                lam, count = candidates[k]
                high = set(order[row, j, k, :count].tolist())
                blocks.append([lam if i in high else 1 - lam for i in range(s)])
                pmfs.append(_binomial_pmf(int(tokens_at[row, j]), count / s))
                observed += int(green[row, j, k])
                confidences += [1.0 - float(block_p[row, j])] * s
            log_tail, mean, sd = sum_log_sf(pmfs, observed)
            score = (observed - mean) / sd if sd > 0 else 0.0
            log_p = min(0.0, log_tail + r * log_messages_block)
            out.append(Evidence(score, log_p, config.payload_of(blocks), tuple(confidences)))
        return out
