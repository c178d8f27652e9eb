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

from provmark.detector.base import Evidence, PairDetector
from provmark.detector.records import binomial_tails, digit_sums, poisson_binomial_tails
from provmark.detector.stats import binomial_log_sf_array, binomial_pmf, sum_log_sf_rows
from provmark.kernels.prf import split_key
from provmark.watermark.base import positions
from provmark.watermark.majormark import MajorMarkConfig, MajorMarkPlusConfig, block_candidates, block_salt, majority
from provmark.watermark.payload import to_bits

__all__ = ["MajorMarkDetector", "MajorMarkPlusDetector", "MajorMarkRecordTable", "MajorMarkPlusRecordTable", "two_means_split"]


class MajorMarkRecordTable:
    """One text's shard counts under both majority-bit salts, for scoring candidate payloads
    (``detector.records``). A payload's hits are the tokens, counted under its salt lambda, in its
    n_lambda majority-bit shards: ``Binomial(N, n_lambda/b)`` under the null."""

    def __init__(self, counts: np.ndarray, num_scored_tokens: int, bits: int):
        self.counts = counts  # int64 (2, b): tokens in shard i under salt lambda
        self.num_scored_tokens = num_scored_tokens
        self.bits = bits

    def score(self, payloads):
        b = self.bits
        codewords = payloads + np.uint64(1)  # MajorMarkConfig.codeword_bits
        zeros = np.zeros(b, dtype=np.int64)
        ones = digit_sums(codewords, np.stack([zeros, np.ones(b, dtype=np.int64)], axis=1), 1)
        hits_one = digit_sums(codewords, np.stack([zeros, self.counts[1]], axis=1), 1)
        hits_zero = digit_sums(codewords, np.stack([self.counts[0], zeros], axis=1), 1)
        lam_one = 2 * ones >= b  # ties go to 1
        hits = np.where(lam_one, hits_one, hits_zero)
        preferred = np.where(lam_one, ones, b - ones)
        return hits, binomial_tails(hits, self.num_scored_tokens, preferred, b)


class MajorMarkPlusRecordTable:
    """One text's per-block shard counts under every (lambda, n) candidate, for scoring candidate
    payloads (``detector.records``). A payload's hits are, summed over blocks j, the tokens of
    block j counted under its block's candidate in that block's n_j majority-bit shards; under
    the null a token of block j hits with probability n_j/s, so the law is the Poisson-binomial
    sum of ``Binomial(T_j, n_j/s)``."""

    def __init__(self, counts: np.ndarray, tokens_at: np.ndarray, config: MajorMarkPlusConfig):
        self.config = config
        self.tokens_at = tokens_at  # int64 (r,): tokens of each block
        self.num_scored_tokens = int(tokens_at.sum())
        s, candidates = config.block_size, block_candidates(config.block_size)
        values = [to_bits(value, s) for value in range(1, config.block_values + 1)]  # digit d holds value d + 1
        chosen = [candidates.index(majority(bits)) for bits in values]
        preferred = np.array([[bit == majority(bits)[0] for bit in bits] for bits in values], dtype=np.int64)
        self.block_hits = (counts[:, chosen, :] * preferred[None]).sum(axis=2)  # (r, 2**s - 2)
        self.shares = np.arange((s + 1) // 2, s) / s  # the preferred shares n/s a block can have
        self.share_of = np.array([majority(bits)[1] - (s + 1) // 2 for bits in values])  # index into shares

    def score(self, payloads):
        config = self.config
        r, base = config.num_blocks, np.uint64(config.block_values)
        hits = np.zeros(payloads.shape[0], dtype=np.int64)
        trials = np.zeros((payloads.shape[0], self.shares.size), dtype=np.int64)
        rest = payloads.copy()
        for j in reversed(range(r)):  # the last block holds the least significant digit
            digit = (rest % base).astype(np.int64)
            rest //= base
            hits += self.block_hits[j, digit]
            share = self.share_of[digit]
            for q in range(self.shares.size):
                trials[:, q] += self.tokens_at[j] * (share == q)
        return hits, poisson_binomial_tails(hits, trials, self.shares)


def two_means_splits(counts: np.ndarray, sizes: range) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares two-group split of every row of ``counts`` (M, b), high group sized in
    ``sizes``; exact, since every split point of the sorted counts is tried.

    Returns (order (M, b): shard indices by count, high first, ties in index order; size (M,):
    how many of them form the high group, ties in cost going to the smaller group).
    """
    counts = np.asarray(counts, dtype=np.int64)
    order = np.argsort(-counts, axis=1, kind="stable")
    values = np.take_along_axis(counts, order, axis=1).astype(np.float64)
    zeros = np.zeros((values.shape[0], 1))
    prefix = np.concatenate([zeros, np.cumsum(values, axis=1)], axis=1)
    prefix_sq = np.concatenate([zeros, np.cumsum(values**2, axis=1)], axis=1)
    n = values.shape[1]
    k = np.arange(sizes.start, sizes.stop)
    high = prefix_sq[:, k] - prefix[:, k] ** 2 / k
    low = (prefix_sq[:, -1:] - prefix_sq[:, k]) - (prefix[:, -1:] - prefix[:, k]) ** 2 / (n - k)
    cost = np.round(high + low, 9)  # integer data: ties are exact up to rounding noise
    return order, k[np.argmin(cost, axis=1)]


def two_means_split(counts: list[int], sizes: range) -> list[int]:
    """Indices of the high group of ``two_means_splits`` for one row of counts."""
    order, size = two_means_splits(np.array([counts]), sizes)
    return order[0, : size[0]].tolist()


class MajorMarkDetector(PairDetector):
    """Clustering decoder for MajorMark keys; needs only the key."""

    def _score_tokens(self, contexts, tokens):
        """int64 (N, 2): each token's shard under lambda = 0 and lambda = 1."""
        n, bits = tokens.shape[0], self.key.config.bits
        return torch.stack([self.shards(contexts, tokens, torch.full((n,), lam, dtype=torch.int64), bits) for lam in (0, 1)], 1)

    def _record_tables(self, token_scores, seq_index, num_sequences):
        b = self.key.config.bits
        index = (seq_index[:, None] * 2 + torch.tensor([0, 1])) * b + token_scores
        counts = torch.bincount(index.flatten(), minlength=num_sequences * 2 * b).view(num_sequences, 2, b).numpy()
        totals = torch.bincount(seq_index, minlength=num_sequences).tolist()
        return [MajorMarkRecordTable(counts[i], totals[i], b) for i in range(num_sequences)]

    def _aggregate_scores(self, token_scores, seq_index, num_sequences):
        config: MajorMarkConfig = self.key.config
        b = config.bits
        index = (seq_index[:, None] * 2 + torch.tensor([0, 1])) * b + token_scores
        counts = torch.bincount(index.flatten(), minlength=num_sequences * 2 * b).view(num_sequences, 2, b)
        log_messages = math.log(config.capacity)
        counts = counts.numpy()
        totals = torch.bincount(seq_index, minlength=num_sequences).numpy()
        # Each majority-bit hypothesis: its split, green count and binomial p-value, all rows at once.
        hypotheses = []
        for lam in (0, 1):
            sizes = range(b // 2 + 1 if lam == 0 else (b + 1) // 2, b)
            if not sizes:
                continue
            order, size = two_means_splits(counts[:, lam], sizes)
            high = np.zeros((num_sequences, b), dtype=bool)
            np.put_along_axis(high, order, np.arange(b)[None, :] < size[:, None], axis=1)
            green = (counts[:, lam] * high).sum(axis=1)
            log_p = binomial_log_sf_array(green, totals, size / b)
            hypotheses.append((lam, high, green, log_p))
        # The hypothesis with the smaller p-value wins (the first listed, lambda 0, on ties).
        pick = np.argmin(np.stack([h[3] for h in hypotheses]), axis=0)
        rows = np.arange(num_sequences)
        lam = np.array([h[0] for h in hypotheses])[pick]
        high = np.stack([h[1] for h in hypotheses])[pick, rows]
        green = np.stack([h[2] for h in hypotheses])[pick, rows]
        log_p = np.stack([h[3] for h in hypotheses])[pick, rows]
        observed = counts[rows, lam]
        trials = np.broadcast_to(totals[:, None], high.shape)
        confidence = np.empty(high.shape)
        confidence[high] = binom.cdf(observed[high] - 1, trials[high], 1 / b)
        confidence[~high] = binom.sf(observed[~high], trials[~high], 1 / b)
        scored = np.flatnonzero(totals)
        gamma = high[scored].sum(axis=1) / b
        z = (green[scored] - gamma * totals[scored]) / np.sqrt(totals[scored] * gamma * (1 - gamma))
        bits = np.where(high[scored], lam[scored, None], 1 - lam[scored, None])
        payloads = config.payloads_of(bits)
        confidence = confidence.tolist()
        out = [Evidence(0.0, 0.0)] * num_sequences
        for i, row in enumerate(scored.tolist()):
            log_p_row = min(0.0, float(log_p[row]) + log_messages)
            out[row] = Evidence(float(z[i]), log_p_row, payloads[i], tuple(confidence[row]))
        return out


class MajorMarkPlusDetector(PairDetector):
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

    def _block_counts(self, token_scores, seq_index, num_sequences) -> tuple[torch.Tensor, torch.Tensor]:
        """(counts int64 (n, r, C, s): tokens of each block in each shard under each candidate,
        tokens_at int64 (n, r): tokens of each block) of every sequence."""
        config: MajorMarkPlusConfig = self.key.config
        r, s, c = config.num_blocks, config.block_size, len(self._candidates)
        cell = seq_index * r + token_scores[:, 0]  # (sequence, block)
        index = ((cell[:, None] * c + torch.arange(c)) * s + token_scores[:, 1:]).flatten()
        counts = torch.bincount(index, minlength=num_sequences * r * c * s).view(num_sequences, r, c, s)
        return counts, torch.bincount(cell, minlength=num_sequences * r).view(num_sequences, r)

    def _record_tables(self, token_scores, seq_index, num_sequences):
        counts, tokens_at = (t.numpy() for t in self._block_counts(token_scores, seq_index, num_sequences))
        return [MajorMarkPlusRecordTable(counts[i], tokens_at[i], self.key.config) for i in range(num_sequences)]

    def _aggregate_scores(self, token_scores, seq_index, num_sequences):
        config: MajorMarkPlusConfig = self.key.config
        r, s, candidates = config.num_blocks, config.block_size, self._candidates
        c = len(candidates)
        counts, tokens_at = self._block_counts(token_scores, seq_index, num_sequences)
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
        # The chosen candidate of every block: its majority bit, how many shards it prefers, and which.
        lam = np.array([lam for lam, _ in candidates])[choice]
        count = sizes.numpy()[choice]
        chosen_order = np.take_along_axis(order, choice[:, :, None, None], axis=2)[:, :, 0]
        rank = np.empty_like(chosen_order)
        np.put_along_axis(rank, chosen_order, np.arange(s), axis=2)  # each shard's place in the order
        bits = np.where(rank < count[:, :, None], lam[:, :, None], 1 - lam[:, :, None])
        # A block's null law depends on its token count t and its candidate k alone: pmf number t * c + k.
        pmfs = [binomial_pmf(t, size / s) for t in range(int(tokens_at.max(initial=0)) + 1) for _, size in candidates]
        observed = np.take_along_axis(green, choice[:, :, None], axis=2)[:, :, 0].sum(axis=1)
        scored = np.flatnonzero(tokens_at.sum(axis=1))
        log_tail, mean, sd = (
            values.tolist() for values in sum_log_sf_rows(pmfs, (tokens_at * c + choice)[scored], observed[scored])
        )
        payloads = config.payloads_of(bits[scored])
        confidences = np.repeat(1.0 - block_p, s, axis=1).tolist()
        out = [Evidence(0.0, 0.0)] * num_sequences
        for i, row in enumerate(scored.tolist()):
            score = (int(observed[row]) - mean[i]) / sd[i] if sd[i] > 0 else 0.0
            log_p = min(0.0, log_tail[i] + r * log_messages_block)
            out[row] = Evidence(score, log_p, payloads[i], tuple(confidences[row]))
        return out
