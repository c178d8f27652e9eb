"""Exact null tails in log space (float64)."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp
from scipy.stats import binom

__all__ = ["binomial_log_sf", "LN10", "p_value_from_log"]

LN10 = math.log(10.0)


def binomial_log_sf(successes: int, trials: int, p: float) -> float:
    """Natural log of P(X >= successes) for X ~ Binomial(trials, p), exact.

    Sums the log pmf over [successes, trials] with log-sum-exp, so tails far below the smallest
    float64 (1e-308) keep their value: a p-value of 1e-400 comes back as about -921.
    """
    if trials < 0 or not 0 <= successes:
        raise ValueError(f"need 0 <= successes and 0 <= trials, got {successes}, {trials}")
    if not 0 < p < 1:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if successes <= 0:
        return 0.0
    if successes > trials:
        return -math.inf
    terms = binom.logpmf(np.arange(successes, trials + 1), trials, p)
    return min(0.0, float(logsumexp(terms)))


def p_value_from_log(log_p: float) -> float:
    """``exp(log_p)`` floored at the smallest positive float, so a p-value never prints as 0."""
    return max(math.exp(log_p), math.ulp(0.0))
