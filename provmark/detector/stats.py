"""Exact null tails in log space (float64)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy.special import betainc, logsumexp
from scipy.stats import binom

__all__ = [
    "LN10",
    "binomial_log_sf",
    "binomial_log_sf_array",
    "binomial_pmf",
    "max_count_pmf",
    "max_count_tail",
    "sum_log_sf",
    "sum_log_sf_rows",
    "p_value_from_log",
    "log_pmf_of_sum",
    "log_upper_tail",
]

LN10 = math.log(10.0)


def binomial_log_sf(successes: int, trials: int, p: float) -> float:
    """Natural log of P(X >= successes) for X ~ Binomial(trials, p), exact.

    The regularised incomplete beta I_p(k, n - k + 1) gives the tail to double precision while
    it is above 1e-290; below that the log pmf is summed over [successes, trials] with
    log-sum-exp, so tails far below the smallest float64 keep their value (1e-400 comes back as
    about -921).
    """
    if trials < 0 or not 0 <= successes:
        raise ValueError(f"need 0 <= successes and 0 <= trials, got {successes}, {trials}")
    if not 0 < p < 1:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if successes <= 0:
        return 0.0
    if successes > trials:
        return -math.inf
    tail = float(betainc(successes, trials - successes + 1, p))
    if tail > 1e-290:
        return min(0.0, math.log(tail))
    terms = binom.logpmf(np.arange(successes, trials + 1), trials, p)
    return min(0.0, float(logsumexp(terms)))


def binomial_log_sf_array(successes, trials, p) -> np.ndarray:
    """``binomial_log_sf`` elementwise over broadcast arrays (0 where there are no trials):
    one vectorised incomplete-beta call, the exact log-sum-exp only where that underflows."""
    successes, trials, p = np.broadcast_arrays(np.asarray(successes), np.asarray(trials), np.asarray(p, dtype=np.float64))
    out = np.zeros(successes.shape)
    inside = (successes > 0) & (successes <= trials)
    with np.errstate(divide="ignore"):
        tail = betainc(np.where(inside, successes, 1), np.where(inside, trials - successes + 1, 1), p)
        out = np.where(inside, np.minimum(0.0, np.log(tail)), out)
    out = np.where(successes > trials, -math.inf, out)
    for index in zip(*np.nonzero(inside & (tail <= 1e-290))):
        out[index] = binomial_log_sf(int(successes[index]), int(trials[index]), float(p[index]))
    return out


@functools.lru_cache(maxsize=4096)
def binomial_pmf(trials: int, p: float) -> np.ndarray:
    """float64 (trials + 1,): the Binomial(trials, p) pmf (cached: detectors reuse a few laws)."""
    return binom.pmf(np.arange(trials + 1), trials, p)


def p_value_from_log(log_p: float) -> float:
    """``exp(log_p)`` floored at the smallest positive float, so a p-value never prints as 0."""
    return max(math.exp(log_p), math.ulp(0.0))


@functools.lru_cache(maxsize=4096)
def max_count_pmf(trials: int, colours: int, p: float) -> np.ndarray:
    """Exact pmf (length trials + 1) of the largest of the first ``colours`` counts of
    Multinomial(trials; p, ..., p, 1 - colours * p).

    A dynamic programme over the colours, one at a time, on the state (tokens used so far,
    largest count so far): colour i takes k of the n - j unused tokens with the conditional
    probability Binomial(k; n - j, p / (1 - i p)). Everything is a sum of non-negative terms,
    so upper tails stay accurate down to float64's smallest numbers (no 1 - cdf cancellation).
    """
    if trials < 0 or colours < 1 or not 0 < p or colours * p > 1 + 1e-12:
        raise ValueError(f"invalid max-count parameters: trials={trials}, colours={colours}, p={p}")
    n = trials
    state = np.zeros((n + 1, n + 1))  # [tokens used, largest count]
    state[0, 0] = 1.0
    used = np.arange(n + 1)
    for i in range(colours):
        q = min(p / (1 - i * p), 1.0) if 1 - i * p > 0 else 1.0
        new = np.zeros_like(state)
        for k in range(n + 1):
            rows = used[: n + 1 - k]
            weight = binom.pmf(k, n - rows, q)[:, None] * state[rows]
            new[k:, k] += weight[:, : k + 1].sum(axis=1)  # largest so far < k, now k
            new[k:, k + 1 :] += weight[:, k + 1 :]
        state = new
    return state.sum(axis=0)


@functools.lru_cache(maxsize=4096)
def max_count_tail(trials: int, colours: int, p: float) -> np.ndarray:
    """P(largest count >= m) for m = 0..trials + 1 under the law of ``max_count_pmf`` (each entry
    summed from the top of the pmf, so small tails stay accurate; the last entry is 0)."""
    return np.append(np.cumsum(max_count_pmf(trials, colours, p)[::-1])[::-1], 0.0)


def sum_log_sf(pmfs: list[np.ndarray], observed: int) -> tuple[float, float, float]:
    """For a sum of independent counts with the given pmfs: (natural-log P(sum >= observed),
    mean, standard deviation). The tail is summed from the exact convolution."""
    log_tail, mean, sd = sum_log_sf_rows(pmfs, np.arange(len(pmfs))[None, :], np.array([observed]))
    return float(log_tail[0]), float(mean[0]), float(sd[0])


def sum_log_sf_rows(
    pmfs: Sequence[np.ndarray], index: np.ndarray, observed: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sum_log_sf`` of many sums at once: row r sums independent counts with pmfs ``pmfs[i]``
    for i in ``index[r]`` (int (R, L)), convolved in that order, and ``observed[r]`` (int (R,)) is
    its observed value. Returns float64 (R,) arrays (log tail, mean, sd), each to the bit what
    convolving the row's pmfs with ``np.convolve`` and summing alone gives.

    The convolutions stay one row at a time, as ``np.convolve`` computes them (its dot products
    are BLAS's, whose summation order a batched version would not keep), minus its per-call
    checks; the moments are summed over all rows of one length at once, a row of a 2-D reduction
    being the same pairwise sum as a 1-D one."""
    pmfs = [np.asarray(pmf, dtype=np.float64) for pmf in pmfs]  # np.convolve casts to the float64 total
    reversed_pmfs = [np.ascontiguousarray(pmf[::-1]) for pmf in pmfs]
    sizes, correlate = [pmf.size for pmf in pmfs], np.correlate
    totals = []
    for row in np.asarray(index).tolist():
        # np.convolve([1.0], pmf) sums 0.0 + pmf[j] * 1.0 for every j, which is pmf + 0.0
        total = pmfs[row[0]] + 0.0 if row else np.ones(1)
        for i in row[1:]:
            # np.convolve(total, pmfs[i]): the longer operand correlated with the shorter one reversed
            if sizes[i] > total.size:
                total = correlate(pmfs[i], total[::-1], "full")
            else:
                total = correlate(total, reversed_pmfs[i], "full")
        totals.append(total)
    lengths = np.array([total.size for total in totals], dtype=np.int64)
    mean, variance = np.empty(lengths.size), np.empty(lengths.size)
    for length in np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == length)
        stacked, support = np.stack([totals[row] for row in rows]), np.arange(length)
        mean[rows] = (support * stacked).sum(axis=1)
        variance[rows] = ((support - mean[rows, None]) ** 2 * stacked).sum(axis=1)
    log_tail = np.empty(lengths.size)
    for row, (total, at) in enumerate(zip(totals, np.asarray(observed).tolist())):
        tail = float(total[at:].sum()) if at < total.size else 0.0
        log_tail[row] = min(0.0, math.log(tail) if tail > 0 else math.log(math.ulp(0.0)))
    return log_tail, mean, np.sqrt(np.maximum(variance, 0.0))


def log_pmf_of_sum(pmfs: list[np.ndarray]) -> np.ndarray:
    """Natural-log pmf of a sum of independent non-negative integer counts with the given pmfs,
    convolved in log space so that upper tails far below float64's range keep their value."""
    total = np.zeros(1)
    for pmf in pmfs:
        support = np.nonzero(pmf)[0]
        new = np.full(total.size + pmf.size - 1, -np.inf)
        for x in support:
            window = new[x : x + total.size]
            np.logaddexp(window, total + math.log(pmf[x]), out=window)
        total = new
    return total


def log_upper_tail(log_pmf: np.ndarray, observed: int) -> float:
    """Natural log of P(X >= observed) from a log pmf (0 at or below the support's start)."""
    if observed <= 0:
        return 0.0
    if observed >= log_pmf.size:
        return -math.inf
    return min(0.0, float(logsumexp(log_pmf[observed:])))
