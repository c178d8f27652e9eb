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
over blocks for MajorMark+ (exact convolution). The decoder searched every valid codeword, so its
p-value is that tail times the number of codewords (2**b - 2, or (2**s - 2)**r): a union bound,
conservative but honest whatever the decoder picks, and about log10(2**b) decades weaker than
the evidence. Version 2 keys (the default for new keys; key files without ``version`` are 1)
report a payload-free test that prices the search by its actual null law instead (MajorMark: the
decoder's split statistic against a simulated null, ``split_null``; MajorMark+: the exact law of
the blocks' best-candidate excess, ``block_excess_pmf``), handing over to the union bound below
p = 1e-4 (``_combine``: valid with no correction; the union bound keeps reporting how strong a
very strong text is, beyond the simulated null's resolution). Both are calibrated on unwatermarked text
(tests/test_majormark_presence.py). The paper's own presence test (a threshold of 2 on a
difference of count standard deviations) has no stated false-positive rate.

**Per-bit confidence.** MajorMark: for a shard put in the high group, P(a Binomial(N, 1/b) count
< its count); in the low group, P(count > its count). MajorMark+: one minus the block's
search-corrected p-value, for each bit of the block.
"""

from __future__ import annotations

import functools
import itertools
import math
from fractions import Fraction
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.special import gammaln
from scipy.stats import binom

from provmark.detector.base import Evidence, PairDetector
from provmark.detector.check import checked_payloads
from provmark.detector.records import (
    binomial_tails,
    digit_sums,
    hypergeometric_low_bound,
    hypergeometric_low_tails,
    mixed_digit_sums,
    poisson_binomial_bound,
    poisson_binomial_tails,
    product_log_sf,
    refined,
    split_bounds,
    split_tails,
)
from provmark.detector.split_null_table import stored_cells
from provmark.detector.stats import LN10, binomial_log_sf_array, binomial_pmf, p_value_from_log, sum_log_sf_rows
from provmark.errors import ParameterError
from provmark.kernels.prf import split_key
from provmark.watermark import subkeys
from provmark.watermark.base import positions
from provmark.watermark.majormark import MajorMarkConfig, MajorMarkPlusConfig, block_candidates, block_salt, majority
from provmark.watermark.payload import from_digit_rows, to_bits, to_digit_rows

__all__ = [
    "MajorMarkDetector",
    "MajorMarkPlusDetector",
    "MajorMarkRecordTable",
    "MajorMarkPlusRecordTable",
    "Presence",
    "NULL_DRAWS",
    "salt_sizes",
    "simulate_split_cells",
    "split_null",
    "split_null_log_p",
    "block_excess_pmf",
    "two_means_split",
]

NULL_DRAWS = 100_000
"""Simulated null draws of MajorMark's split statistic per (token count, shards): a p-value's
resolution is 1 / (NULL_DRAWS + 1)."""
_NULL_SEED = 0x4D616A6F  # the simulated null is a fixed function of (tokens, shards)


@dataclass(frozen=True, kw_only=True)
class Presence:
    """A payload-free presence test on one text. ``p_value`` is the test's own p-value where it
    exceeds ``HANDOVER`` (1e-4), else the smaller of 1e-4 and the decoder's union bound
    (``_combine``): valid with no correction, the test deciding at usual alphas and the union bound
    out in the tail, beyond the simulated null's resolution. Version 2 keys report this p-value
    from ``detect`` too."""

    scheme: str
    statistic: float
    """The test's statistic (MajorMark: the smaller natural-log binomial tail of the decoder's
    split under the two majority-bit salts; MajorMark+: the sum over blocks of each block's best
    candidate excess)."""
    p_value: float
    log10_p_value: float
    test_log10_p_value: float
    """The test's own log10 p-value, before the combination."""
    union_log10_p_value: float
    """The decoder's union-bound log10 p-value (what version 1 keys report)."""
    num_scored_tokens: int
    alpha: float
    is_watermarked: bool

    def to_dict(self) -> dict:
        """JSON-ready dict of every field."""
        return asdict(self)


def _split_sizes(values: np.ndarray, sizes: range) -> tuple[np.ndarray, np.ndarray]:
    """(size (M,), prefix float64 (M, b + 1)) of the least-squares two-group split of every row of
    ``values`` (M, b), each row sorted descending: the high group's size within ``sizes`` (ties in
    cost going to the smaller group) and the row's prefix sums (``prefix[size]`` is the high
    group's total)."""
    zeros = np.zeros((values.shape[0], 1))
    prefix = np.concatenate([zeros, np.cumsum(values, axis=1)], axis=1)
    prefix_sq = np.concatenate([zeros, np.cumsum(values**2, axis=1)], axis=1)
    n = values.shape[1]
    k = np.arange(sizes.start, sizes.stop)
    high = prefix_sq[:, k] - prefix[:, k] ** 2 / k
    low = (prefix_sq[:, -1:] - prefix_sq[:, k]) - (prefix[:, -1:] - prefix[:, k]) ** 2 / (n - k)
    cost = np.round(high + low, 9)  # integer data: ties are exact up to rounding noise
    return k[np.argmin(cost, axis=1)], prefix


def salt_sizes(bits: int) -> dict[int, range]:
    """The sizes the decoder allows the high (majority-bit) group under each majority-bit salt
    lambda: at least half the b shards (more than half for lambda 0, since a tie means lambda 1)
    and not all of them; a salt with no allowed size (b = 2, lambda 0) is left out."""
    out = {lam: range(bits // 2 + 1 if lam == 0 else (bits + 1) // 2, bits) for lam in (0, 1)}
    return {lam: sizes for lam, sizes in out.items() if sizes}


@functools.lru_cache(maxsize=64)
def _split_tails(trials: int, bits: int) -> np.ndarray:
    """float64 (b + 1, trials + 2): natural-log P(Binomial(trials, k/b) >= g) at [k, g]
    (``stats.binomial_log_sf_array``, the decoder's own tail)."""
    g = np.arange(trials + 2)[None, :]
    k = np.arange(1, bits)[:, None]
    table = np.zeros((bits + 1, trials + 2))
    table[1:bits] = binomial_log_sf_array(np.broadcast_to(g, (bits - 1, trials + 2)), trials, k / bits)
    return table


def simulate_split_cells(trials: int, bits: int) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The simulation behind ``split_null``: NULL_DRAWS count vectors of ``trials`` tokens in
    ``bits`` equally likely shards (fixed seed), split by the decoder's rule under each salt lambda
    (``salt_sizes``). Returns per salt (size, total, draws) int64 (C,): the distinct (high-group size,
    high-group total) cells, ascending, and how many draws fell in each."""
    rng = np.random.default_rng([_NULL_SEED, bits, trials])
    counts = rng.multinomial(trials, np.full(bits, 1.0 / bits), size=NULL_DRAWS)
    values = -np.sort(-counts, axis=1).astype(np.float64)
    out = {}
    for lam, sizes in salt_sizes(bits).items():
        size, prefix = _split_sizes(values, sizes)
        green = prefix[np.arange(NULL_DRAWS), size].astype(np.int64)
        cell, how_many = np.unique(size * (trials + 1) + green, return_counts=True)
        out[lam] = (cell // (trials + 1), cell % (trials + 1), how_many.astype(np.int64))
    return out


@functools.lru_cache(maxsize=1024)
def split_null(trials: int, bits: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The simulated null of MajorMark's split statistic with ``trials`` tokens in ``bits``
    equally likely shards, per majority-bit salt lambda: (values ascending, at_most int64) where
    at_most[i] of the NULL_DRAWS draws have a statistic <= values[i]. The statistic under one
    salt is the natural-log binomial tail of the decoder's split (``two_means_splits`` within
    ``salt_sizes``): the tail of the high group's total at its preferred share k/b. Both salts'
    laws come from the same draws (only each one's marginal law is used). Deterministic (fixed
    seed) and cached; the distinct values are few (one per (k, total)), so an entry is small.

    The draws' cells come from ``split_null_table`` where shipped (the default 32 shards, up to
    ``STORED_TRIALS`` tokens: no cold start), else from ``simulate_split_cells`` (0.5 to 1 s of CPU
    on first use); both give the same cells, so the same p-values."""
    cells = stored_cells(trials, bits, NULL_DRAWS, _NULL_SEED) or simulate_split_cells(trials, bits)
    tails = _split_tails(trials, bits)
    out = {}
    for lam, (size, green, how_many) in cells.items():
        distinct, inverse = np.unique(tails[size, green], return_inverse=True)
        out[lam] = (distinct, np.cumsum(np.bincount(inverse.ravel(), weights=how_many).astype(np.int64)))
    return out


def split_null_log_p(log_tails: dict[int, float], trials: int, bits: int) -> float:
    """Natural-log p-value of the split statistic: the smaller of the per-salt tails
    ``log_tails`` (lambda -> natural-log tail of the decoder's split) against ``split_null``.
    Under the null the two salts' counts are independent, so P(min <= x) = 1 - prod over salts
    of (1 - F_lambda(x)), each F estimated as (1 + draws <= x) / (1 + NULL_DRAWS)."""
    null = split_null(trials, bits)
    x = min(log_tails.values())
    survive = 1.0
    for lam, (values, at_most) in null.items():
        where = np.searchsorted(values, x, side="right")
        survive *= 1.0 - (1 + (int(at_most[where - 1]) if where else 0)) / (1 + NULL_DRAWS)
    return math.log1p(-survive) if survive > 0 else 0.0


@functools.lru_cache(maxsize=1024)
def _compositions(trials: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts int64 (K, parts) sorted descending within each row, probabilities float64 (K,)):
    every way to put ``trials`` tokens in ``parts`` equally likely shards, as multisets of
    counts with their multinomial probability (stars and bars, exact)."""
    bars = np.array(list(itertools.combinations(range(trials + parts - 1), parts - 1)), dtype=np.int64).reshape(-1, parts - 1)
    edges = np.concatenate([np.full((bars.shape[0], 1), -1), bars, np.full((bars.shape[0], 1), trials + parts - 1)], axis=1)
    counts = np.diff(edges, axis=1) - 1
    log_p = gammaln(trials + 1) - gammaln(counts + 1).sum(axis=1) - trials * math.log(parts)
    return -np.sort(-counts, axis=1), np.exp(log_p)


@functools.lru_cache(maxsize=1024)
def block_excess_pmf(trials: int, size: int) -> tuple[int, np.ndarray]:
    """Exact null law of one MajorMark+ block's statistic: the largest, over the block's s - 1
    candidates (lambda, n), of the excess ``s * (top-n sum of its counts) - n * T`` (integer;
    T = ``trials`` tokens, s = ``size`` shards). Under the null the candidates' counts are
    independent uniform multinomials (each candidate salts its own seed), so the CDF of the
    largest is the product of the candidates' CDFs. Returns (lowest value, pmf from there)."""
    counts, probs = _compositions(trials, size)
    top = np.cumsum(counts, axis=1)
    low, high = -size * trials, size * trials
    cdf = np.ones(high - low + 1)
    for _, n in block_candidates(size):
        excess = size * top[:, n - 1] - n * trials
        cdf *= np.cumsum(np.bincount(excess - low, weights=probs, minlength=high - low + 1))
    pmf = np.diff(np.concatenate([[0.0], np.minimum(cdf, 1.0)]))
    nonzero = np.flatnonzero(pmf > 0)
    return low + int(nonzero[0]), np.maximum(pmf[nonzero[0] : nonzero[-1] + 1], 0.0)


def _presence_results(detector, sequences: Sequence, prompt_ids: Sequence | None) -> list[Presence]:
    """``Presence`` of every sequence from the detector's ``_presence_test`` and its decoder's own
    union-bound p-values (``_decode``), on the same pairs."""
    if prompt_ids is not None and len(prompt_ids) != len(sequences):
        raise ParameterError(f"got {len(prompt_ids)} prompts for {len(sequences)} sequences")
    count = len(sequences)
    pairs, seq_index = detector.scored_pairs(sequences, prompt_ids)
    token_scores = detector._score_tokens(pairs[:, :-1], pairs[:, -1])
    union = np.array([e.log_p for e in detector._decode(token_scores, seq_index, count)])
    statistic, test_log_p = detector._presence_test(token_scores, seq_index, count)
    log_p = _combine(test_log_p, union)
    scored = torch.bincount(seq_index, minlength=count).tolist()
    return [
        Presence(scheme=detector.key.scheme, statistic=float(statistic[i]), p_value=p_value_from_log(float(log_p[i])),
                 log10_p_value=float(log_p[i]) / LN10, test_log10_p_value=float(test_log_p[i]) / LN10,
                 union_log10_p_value=float(union[i]) / LN10, num_scored_tokens=scored[i], alpha=detector.alpha,
                 is_watermarked=scored[i] > 0 and math.exp(float(log_p[i])) <= detector.alpha)
        for i in range(count)
    ]


def _with_presence(detector, token_scores, seq_index, num_sequences) -> list[Evidence]:
    """The decoder's evidence (``_decode``); for a version 2 key its p-value is ``_combine`` of
    the payload-free test (``_presence_test``) and the union bound, the rest unchanged."""
    evidence = detector._decode(token_scores, seq_index, num_sequences)
    if detector.key.config.version < 2:
        return evidence
    _, test_log_p = detector._presence_test(token_scores, seq_index, num_sequences)
    log_p = _combine(test_log_p, np.array([e.log_p for e in evidence]))
    return [e._replace(log_p=float(value)) for e, value in zip(evidence, log_p.tolist())]


HANDOVER = 1e-4
"""Below this p-value the payload-free test hands over to the union bound (``_combine``)."""


def _combine(test_log_p: np.ndarray, union_log_p: np.ndarray) -> np.ndarray:
    """Natural log of the version 2 p-value: the test's p where it exceeds HANDOVER t, else
    min(t, union bound). Valid with no correction for any fixed t: at alpha >= t it rejects exactly
    when the test does, at alpha < t only where the union bound does. The test decides at usual
    alphas (it prices the decoder's search by its actual null law, without the 2**b correction);
    far out in the tail, beyond what a simulated null resolves, the union bound (exact down to
    float64's limits) says how strong the text is."""
    handover = math.log(HANDOVER)
    return np.where(test_log_p > handover, test_log_p, np.minimum(handover, union_log_p))


class MajorMarkRecordTable:
    """One text's shard counts under both majority-bit salts, for scoring candidate payloads
    (``detector.records``). A payload's hits are the tokens, counted under its salt lambda, in its
    n_lambda majority-bit shards: ``Binomial(N, n_lambda/b)`` under the null."""

    def __init__(self, counts: np.ndarray, num_scored_tokens: int, bits: int):
        self.counts = counts  # int64 (2, b): tokens in shard i under salt lambda
        self.num_scored_tokens = num_scored_tokens
        self.bits = bits
        self.num_levels = bits + 1  # Hamming distance 1..b with the same majority bit, b + 1 across

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

    def exclusion(self, winner, values):
        """Under "C is the record" with the winner's majority bit lambda, C's preferred shards
        share its boosted tokens uniformly and its other shards its unboosted ones: the winner's
        hits among C's preferred tokens and among C's other tokens are two independent binomial
        tails given C's counts, combined by ``product_log_sf``. With the other majority bit the
        winner's salt is unused by C, so its hits are null: its own exact tail."""
        b, total = self.bits, self.num_scored_tokens
        own = [((int(winner) + 1) >> (b - 1 - i)) & 1 for i in range(b)]
        lam = int(2 * sum(own) >= b)
        mine = np.array([bit == lam for bit in own], dtype=np.int64)  # the winner's preferred shards
        counts = self.counts[lam]
        theirs = np.zeros((b, 2), dtype=np.int64)  # shard i preferred by C, by C's bit i
        theirs[:, lam] = 1
        rest = 1 - theirs
        tables = [theirs, theirs * counts[:, None], theirs * mine[:, None], theirs * (mine * counts)[:, None],
                  rest * mine[:, None], rest * (mine * counts)[:, None],
                  (np.arange(2)[None, :] != np.array(own)[:, None]).astype(np.int64),
                  np.stack([np.zeros(b, dtype=np.int64), np.ones(b, dtype=np.int64)], axis=1)]
        size, held, shared, shared_hits, outside, outside_hits, level, ones = digit_sums(
            values + np.uint64(1), np.stack(tables), 1)
        same = (2 * ones >= b) == bool(lam)
        factors = ((shared > 0) & (shared < size)).astype(np.int64) + ((outside > 0) & (outside < b - size))

        def tails(at, exact):
            split = split_tails if exact else split_bounds
            inside = split(shared_hits[at], held[at], shared[at], size[at])
            beyond = split(outside_hits[at], total - held[at], outside[at], b - size[at])
            return product_log_sf(inside + beyond, factors[at])

        log_p = np.full(values.shape[0], float(self.score(np.array([winner], dtype=np.uint64))[1][0]))
        alike = np.flatnonzero(same)  # only these take the within-salt tests (and their exact tails)
        log_p[alike] = refined(lambda at, exact: tails(alike[at], exact), alike.size)
        return log_p, np.where(same, level, b + 1)

    def levels_from(self, values):
        b = self.bits
        codewords = values + np.uint64(1)
        lam = 2 * np.bitwise_count(codewords).astype(np.int64) >= b

        def levels(i: int) -> np.ndarray:
            return np.where(lam == lam[i], np.bitwise_count(codewords ^ codewords[i]).astype(np.int64), b + 1)

        return levels


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
        self.counts, self.chosen, self.preferred = counts, chosen, preferred
        self.sizes = preferred.sum(axis=1)  # n of each digit
        self.num_levels = config.num_blocks
        self.block_hits = (counts[:, chosen, :] * preferred[None]).sum(axis=2)  # (r, 2**s - 2)
        self.shares = np.arange((s + 1) // 2, s) / s  # the preferred shares n/s a block can have
        self.share_of = np.array([majority(bits)[1] - (s + 1) // 2 for bits in values])  # index into shares

    def score(self, payloads):
        # Per block j and digit d: the hits, and the tokens at each preferred share q; summed over
        # the blocks by chunked look-ups (``mixed_digit_sums``), the payload's digits in base 2**s - 2.
        at_share = (self.share_of[None, None, :] == np.arange(self.shares.size)[:, None, None]) * self.tokens_at[None, :, None]
        sums = mixed_digit_sums(payloads, np.concatenate([self.block_hits[None], at_share]), self.config.block_values)
        return sums[0], poisson_binomial_tails(sums[0], sums[1:].T, self.shares)

    def exclusion(self, winner, values):
        """Under "C is the record", in each block j where C's digit differs from the winner's, the
        winner's hits have a known law given C's counts: under another salt (lambda, n) than C's
        they are null, ``Binomial(T_j, n_w/s)``; under the same salt C's boosted tokens fall
        uniformly in its n preferred shards and its other tokens in the rest, so they are
        ``Binomial(H_j, a/n) + Binomial(T_j - H_j, c/(s - n))`` (H_j C's hits, a and c the winner's
        shards among C's preferred and other ones). The winner's hits over those blocks are the
        sum, an exact Poisson-binomial tail (one test; agreeing blocks carry nothing).

        Homogeneity: blocks where C prefers the same share n/s are exchangeable under C (the block
        PRF), so C's hits in the blocks where it differs are a hypergeometric draw of its hits
        over all its blocks of that share; too few of them is evidence against C. The tests are
        independent given C's counts and combine by ``product_log_sf``."""
        config = self.config
        r, s, base = config.num_blocks, config.block_size, config.block_values
        own = to_digit_rows(np.array([winner], dtype=np.uint64), base, r)[0].tolist()
        pieces = []  # (block, digit, trials, share) of every binomial in the winner's hits' law
        for j, w in enumerate(own):
            mine, trials = self.preferred[w], int(self.tokens_at[j])
            for v in range(base):
                if v == w:
                    continue
                if self.chosen[v] != self.chosen[w]:
                    pieces.append((j, v, trials, Fraction(int(mine.sum()), s)))
                    continue
                theirs, counts = self.preferred[v], self.counts[j, self.chosen[w]]
                held = int(counts @ theirs)
                pieces.append((j, v, held, Fraction(int(theirs @ mine), int(theirs.sum()))))
                pieces.append((j, v, trials - held, Fraction(int((1 - theirs) @ mine), s - int(theirs.sum()))))
        shares = sorted({share for *_, share in pieces if share > 0})
        differs = np.ones((r, base), dtype=np.int64)
        differs[np.arange(r), own] = 0
        tables = [differs * self.block_hits[np.arange(r), own][:, None], differs]
        at_share = np.zeros((len(shares), r, base), dtype=np.int64)
        for j, v, trials, share in pieces:
            if share > 0:
                at_share[shares.index(share), j, v] += trials
        for n in np.unique(self.sizes).tolist():
            alike = (self.sizes == n)[None, :]
            tokens = alike * self.tokens_at[:, None]
            tables += [tokens, alike * self.block_hits, differs * tokens, differs * alike * self.block_hits]
        sums = mixed_digit_sums(values, np.concatenate([np.stack(tables), at_share]), base)
        hits, level, homogeneity = sums[0], sums[1], sums[2 : len(tables)].reshape(-1, 4, values.shape[0])
        trials, share_values = sums[len(tables) :].T, np.array([float(q) for q in shares])
        factors = 1 + (homogeneity[:, 2] > 0).sum(axis=0)

        def tails(at, exact):
            excess = (poisson_binomial_tails if exact else poisson_binomial_bound)(hits[at], trials[at], share_values)
            low = hypergeometric_low_tails if exact else hypergeometric_low_bound
            deficit = sum(low(held_there[at], population[at], held[at], there[at])
                          for population, held, there, held_there in homogeneity)
            return product_log_sf(excess + deficit, factors[at])

        return refined(tails, values.shape[0]), level

    def levels_from(self, values):
        digits = to_digit_rows(values, self.config.block_values, self.config.num_blocks)

        def levels(i: int) -> np.ndarray:
            return np.count_nonzero(digits != digits[i], axis=1).astype(np.int64)

        return levels



def two_means_splits(counts: np.ndarray, sizes: range) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares two-group split of every row of ``counts`` (M, b), high group sized in
    ``sizes``; exact, since every split point of the sorted counts is tried.

    Returns (order (M, b): shard indices by count, high first, ties in index order; size (M,):
    how many of them form the high group, ties in cost going to the smaller group).
    """
    counts = np.asarray(counts, dtype=np.int64)
    order = np.argsort(-counts, axis=1, kind="stable")
    size, _ = _split_sizes(np.take_along_axis(counts, order, axis=1).astype(np.float64), sizes)
    return order, size


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
        counts = self._shard_counts(token_scores, seq_index, num_sequences).numpy()
        totals = torch.bincount(seq_index, minlength=num_sequences).tolist()
        return [MajorMarkRecordTable(counts[i], totals[i], self.key.config.bits) for i in range(num_sequences)]

    def presence_batch(self, sequences: Sequence, *, prompt_ids: Sequence | None = None) -> list[Presence]:
        """Payload-free presence test of every sequence: the decoder's split statistic against its
        own simulated null. Under each majority-bit salt the decoder splits the b shard counts
        (``two_means_splits``) and takes the binomial tail of the high group's total; the
        statistic is the smaller of the two tails, and its p-value is ``split_null_log_p`` (the
        law of that smallest tail when both count vectors are independent Multinomial(N; 1/b)),
        not the tail times the 2**b - 2 codewords. Combined with the union bound by
        ``Presence``'s rule (what ``detect`` reports for a version 2 key)."""
        return _presence_results(self, sequences, prompt_ids)

    def _presence_test(self, token_scores, seq_index, num_sequences) -> tuple[np.ndarray, np.ndarray]:
        """(statistic, natural-log p-value) of every sequence (0 and p = 1 with no tokens). The
        first sequence with a given number of scored tokens simulates its null (``split_null``,
        half a second to a second of CPU), cached for the next ones."""
        b = self.key.config.bits
        counts = self._shard_counts(token_scores, seq_index, num_sequences).numpy()
        totals = counts[:, 0].sum(axis=1)
        tails = {}
        for lam, sizes in salt_sizes(b).items():
            size, prefix = _split_sizes(-np.sort(-counts[:, lam], axis=1).astype(np.float64), sizes)
            green = prefix[np.arange(num_sequences), size].astype(np.int64)
            tails[lam] = binomial_log_sf_array(green, totals, size / b)
        statistic, log_p = np.zeros(num_sequences), np.zeros(num_sequences)
        for i in np.flatnonzero(totals).tolist():
            row = {lam: float(values[i]) for lam, values in tails.items()}
            statistic[i] = min(row.values())
            log_p[i] = split_null_log_p(row, int(totals[i]), b)
        return statistic, log_p

    def _shard_counts(self, token_scores, seq_index, num_sequences) -> torch.Tensor:
        """int64 (n, 2, b): tokens of each sequence in each shard under each majority-bit salt."""
        b = self.key.config.bits
        index = (seq_index[:, None] * 2 + torch.tensor([0, 1])) * b + token_scores
        return torch.bincount(index.flatten(), minlength=num_sequences * 2 * b).view(num_sequences, 2, b)

    def _aggregate_scores(self, token_scores, seq_index, num_sequences):
        return _with_presence(self, token_scores, seq_index, num_sequences)

    def _codeword_values(self, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codeword values uint64 (K,), valid bool (K,)) of codewords int (K, b): not all 0 or all 1."""
        ones = bits.sum(axis=1)
        valid = (ones > 0) & (ones < bits.shape[1])
        values = np.array(from_digit_rows(bits, 2), dtype=np.uint64)
        return np.where(valid, values - np.uint64(1), np.uint64(0)), valid

    def _decode(self, token_scores, seq_index, num_sequences) -> list[Evidence]:
        """The decoded payload, bit confidences and union-bound p-value of every sequence."""
        config: MajorMarkConfig = self.key.config
        b = config.bits
        log_messages = math.log(config.codeword_capacity)
        counts = self._shard_counts(token_scores, seq_index, num_sequences).numpy()
        totals = torch.bincount(seq_index, minlength=num_sequences).numpy()
        # Each majority-bit hypothesis: its split, green count and binomial p-value, all rows at once.
        hypotheses = []
        for lam, sizes in salt_sizes(b).items():
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
        if config.check_bits:
            payloads = checked_payloads(self.key, bits, confidence[scored], self._codeword_values)
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
        self._position_key = split_key(key.subkey(subkeys.POSITION))
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

    def presence_batch(self, sequences: Sequence, *, prompt_ids: Sequence | None = None) -> list[Presence]:
        """Payload-free presence test of every sequence. Each block's statistic is the largest,
        over its s - 1 candidates (lambda, n), of the excess ``s * (top-n count) - n * T_j`` of its
        tokens under that candidate's salt; the text's statistic is their sum over blocks. Given
        the blocks' token counts the blocks are independent under the null, each with the exact
        law of ``block_excess_pmf``, so the p-value is the exact upper tail of their convolution
        (the decoder's best codeword, found block by block, without the union bound's
        (2**s - 2)**r correction). Combined with the union bound by ``Presence``'s rule (what
        ``detect`` reports for a version 2 key)."""
        return _presence_results(self, sequences, prompt_ids)

    def _presence_test(self, token_scores, seq_index, num_sequences) -> tuple[np.ndarray, np.ndarray]:
        """(statistic, natural-log p-value) of every sequence (0 and p = 1 with no tokens)."""
        s = self.key.config.block_size
        counts, tokens_at = (t.numpy() for t in self._block_counts(token_scores, seq_index, num_sequences))
        top = np.cumsum(-np.sort(-counts, axis=3), axis=3)  # (n, r, C, s): top-m sums
        sizes = np.array([n for _, n in self._candidates])
        excess = s * np.take_along_axis(top, (sizes - 1)[None, None, :, None], axis=3)[..., 0] - sizes * tokens_at[:, :, None]
        statistic = excess.max(axis=2).sum(axis=1)
        log_p = np.zeros(num_sequences)
        for i in np.flatnonzero(tokens_at.sum(axis=1)).tolist():
            low, pmf = 0, np.ones(1)
            for trials in tokens_at[i].tolist():
                block_low, block_pmf = block_excess_pmf(trials, s)
                low, pmf = low + block_low, np.convolve(pmf, block_pmf)
            tail = float(pmf[max(int(statistic[i]) - low, 0) :].sum())
            log_p[i] = min(0.0, math.log(max(tail, math.ulp(0.0))))
        return statistic.astype(np.float64), log_p

    def _record_tables(self, token_scores, seq_index, num_sequences):
        counts, tokens_at = (t.numpy() for t in self._block_counts(token_scores, seq_index, num_sequences))
        return [MajorMarkPlusRecordTable(counts[i], tokens_at[i], self.key.config) for i in range(num_sequences)]

    def _aggregate_scores(self, token_scores, seq_index, num_sequences):
        return _with_presence(self, token_scores, seq_index, num_sequences)

    def _codeword_values(self, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codeword values uint64 (K,), valid bool (K,)) of codewords int (K, b): no block all 0 or all 1."""
        config: MajorMarkPlusConfig = self.key.config
        blocks = bits.reshape(bits.shape[0], config.num_blocks, config.block_size)
        ones = blocks.sum(axis=2)
        valid = np.all((ones > 0) & (ones < config.block_size), axis=1)
        safe = np.where(valid[:, None, None], blocks, np.arange(config.block_size) % 2)  # any valid block stands in
        return np.array(config.payloads_of(safe), dtype=np.uint64), valid

    def _decode(self, token_scores, seq_index, num_sequences) -> list[Evidence]:
        """The decoded payload, bit confidences and union-bound p-value of every sequence."""
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
        confidences = np.repeat(1.0 - block_p, s, axis=1)
        if config.check_bits:
            payloads = checked_payloads(self.key, bits[scored].reshape(scored.size, -1), confidences[scored],
                                        self._codeword_values)
        confidences = confidences.tolist()
        out = [Evidence(0.0, 0.0)] * num_sequences
        for i, row in enumerate(scored.tolist()):
            score = (int(observed[row]) - mean[i]) / sd[i] if sd[i] > 0 else 0.0
            log_p = min(0.0, log_tail[i] + r * log_messages_block)
            out[row] = Evidence(score, log_p, payloads[i], tuple(confidences[row]))
        return out
