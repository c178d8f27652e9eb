"""Exact binomial tails in log space."""

import math

import pytest
from scipy.stats import binom

from provmark.detector.stats import binomial_log_sf, p_value_from_log


@pytest.mark.parametrize("k,n,p", [(0, 10, 0.25), (3, 10, 0.25), (60, 200, 0.25), (90, 200, 0.5), (200, 200, 0.1)])
def test_log_sf_matches_scipy_where_scipy_is_in_range(k, n, p):
    assert binomial_log_sf(k, n, p) == pytest.approx(math.log(binom.sf(k - 1, n, p)), rel=1e-9, abs=1e-12)


def test_tails_far_below_float_range_keep_their_value():
    # P(X >= 1000) for Binomial(1000, 0.25) = 0.25**1000, about 10**-602.
    assert binomial_log_sf(1000, 1000, 0.25) == pytest.approx(1000 * math.log(0.25), rel=1e-12)
    assert p_value_from_log(1000 * math.log(0.25)) > 0


def test_log_sf_is_zero_at_zero_successes_and_minus_inf_beyond_trials():
    assert binomial_log_sf(0, 50, 0.3) == 0.0
    assert binomial_log_sf(51, 50, 0.3) == -math.inf


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        binomial_log_sf(1, 10, 1.0)
    with pytest.raises(ValueError):
        binomial_log_sf(-1, 10, 0.5)


def test_array_form_matches_the_scalar_form_including_far_tails():
    from provmark.detector.stats import binomial_log_sf_array

    cases = [(0, 10, 0.25), (3, 10, 0.25), (60, 200, 0.25), (1000, 1000, 0.25), (11, 10, 0.5), (0, 0, 0.5)]
    got = binomial_log_sf_array([c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases])
    for value, (k, n, p) in zip(got, cases):
        assert value == pytest.approx(binomial_log_sf(k, n, p), rel=1e-12)
