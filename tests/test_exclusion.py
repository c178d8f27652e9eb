"""The exclusion test (``detector.records``, "Exclusion"): its conditional laws are valid under
"C is the record" (simulated texts watermarked with C, any strength), its bounds never fall below
the exact tails, and it separates a strongly watermarked text's record from every other one."""

import math

import numpy as np
import pytest
from scipy.stats import binom, hypergeom

from provmark.detector.majormark import MajorMarkPlusRecordTable, MajorMarkRecordTable
from provmark.detector.mpac import MPACRecordTable
from provmark.detector.synonym import SynonymRecordTable
from provmark.detector.records import (binomial_log_sf_bound, hypergeometric_low_bound, hypergeometric_low_tails,
                                       match_tables, poisson_binomial_bound, poisson_binomial_tails, product_log_sf,
                                       split_bounds, split_tails)
from provmark.detector import create_detector
from provmark.detector.stats import binomial_log_sf_array
from provmark.watermark.keys import create_key
from provmark.watermark.majormark import block_candidates, majority
from provmark.watermark.check import codeword_values
from provmark.watermark.payload import to_digits

SECRET = bytes(range(32))


def _boosted(rng, tokens: int, preferred: np.ndarray, shards: int, rate: float) -> np.ndarray:
    """int64 (shards,): counts of ``tokens`` that fall, with probability ``rate``, uniformly in the
    ``preferred`` shards, else uniformly in the others: a text watermarked with that set."""
    inside = rng.binomial(tokens, rate)
    counts = np.zeros(shards, dtype=np.int64)
    np.add.at(counts, rng.choice(preferred, inside), 1)
    np.add.at(counts, rng.choice(np.setdiff1d(np.arange(shards), preferred), tokens - inside), 1)
    return counts


def _mpac_table(rng, config, payload: int, tokens: int, rate: float) -> MPACRecordTable:
    digits = to_digits(payload, config.radix, config.num_positions)
    at = np.bincount(rng.integers(0, config.num_positions, tokens), minlength=config.num_positions)
    counts = np.stack([_boosted(rng, int(t), np.array([d]), config.shard_count, rate) for t, d in zip(at, digits)])
    return MPACRecordTable(counts[:, : config.radix], counts.sum(axis=1), config)


def _majormark_table(rng, config, payload: int, tokens: int, rate: float) -> MajorMarkRecordTable:
    bits = config.codeword_bits(payload)
    lam, _ = majority(bits)
    counts = np.zeros((2, config.bits), dtype=np.int64)
    counts[lam] = _boosted(rng, tokens, np.flatnonzero(np.array(bits) == lam), config.bits, rate)
    counts[1 - lam] = np.bincount(rng.integers(0, config.bits, tokens), minlength=config.bits)  # an unused salt: null
    return MajorMarkRecordTable(counts, tokens, config.bits)


def _majormark_plus_table(rng, config, payload: int, tokens: int, rate: float) -> MajorMarkPlusRecordTable:
    s, candidates = config.block_size, block_candidates(config.block_size)
    at = np.bincount(rng.integers(0, config.num_blocks, tokens), minlength=config.num_blocks)
    counts = np.zeros((config.num_blocks, len(candidates), s), dtype=np.int64)
    for j, block in enumerate(config.blocks(payload)):
        lam, n = majority(block)
        for c, candidate in enumerate(candidates):
            if candidate == (lam, n):
                counts[j, c] = _boosted(rng, int(at[j]), np.flatnonzero(np.array(block) == lam), s, rate)
            else:
                counts[j, c] = np.bincount(rng.integers(0, s, at[j]), minlength=s)
    return MajorMarkPlusRecordTable(counts, at, config)


def _synonym_table(rng, config, payload: int, words: int, rate: float) -> SynonymRecordTable:
    bits = [(payload >> (config.payload_bits - 1 - p)) & 1 for p in range(config.payload_bits)]
    at = np.bincount(rng.integers(0, config.payload_bits, words), minlength=config.payload_bits)
    counts = np.zeros((config.payload_bits, 2), dtype=np.int64)
    for p, (t, bit) in enumerate(zip(at.tolist(), bits)):
        counts[p, bit] = rng.binomial(t, rate)
        counts[p, 1 - bit] = t - counts[p, bit]
    return SynonymRecordTable(counts, words)


TABLES = {"mpac": _mpac_table, "majormark": _majormark_table, "majormark+": _majormark_plus_table,
          "synonym": _synonym_table}
SCHEMES = [("mpac", {"radix": 4, "bits": 32}), ("majormark", {"bits": 32}), ("majormark+", {"bits": 32}),
           ("synonym", {"payload_bits": 16})]


def _neighbour(capacity: int, bits: int, payload: int, rng, flips: int) -> int:
    """A payload that differs from ``payload`` in a few bits (any payload in range is a valid codeword)."""
    while True:
        other = payload
        for bit in rng.choice(bits, flips, replace=False).tolist():
            other ^= 1 << int(bit)
        if 0 <= other < capacity:
            return other


@pytest.mark.parametrize("scheme,params", SCHEMES)
@pytest.mark.parametrize("rate", [0.5, 0.9])
def test_the_exclusion_of_the_true_record_is_valid_whatever_the_strength(scheme, params, rate):
    # Texts watermarked with C (simulated counts, 150 tokens, a share `rate` of the boosted tokens);
    # C's exclusion p-value against a fixed near competitor W and a fixed far one must be at most
    # a at rate at most a (three binomial standard errors allowed), whatever the strength.
    key = create_key(scheme, params, secret=SECRET)
    rng = np.random.default_rng(3)
    truth = int(rng.integers(0, key.config.capacity))
    if scheme == "majormark+":
        truth = key.config.capacity // 3
    config = key.config
    others = np.array([_neighbour(config.capacity, config.bits, truth, rng, 3),
                       _neighbour(config.capacity, config.bits, truth, rng, 12), truth], dtype=np.uint64)
    values = codeword_values(key, others)
    draws = 500
    p_values = np.zeros((2, draws))
    for i in range(draws):
        table = TABLES[scheme](rng, key.config, truth, 150, rate)
        for w in range(2):
            log_p, level = table.exclusion(values[w], values)
            assert level[w] == 0 and level[2] > 0
            p_values[w, i] = math.exp(log_p[2])
    for a in (0.05, 0.01):
        slack = 3 * math.sqrt(a * (1 - a) / draws)
        assert (p_values <= a).mean(axis=1).max() <= a + slack, (a, (p_values <= a).mean(axis=1))


@pytest.mark.parametrize("scheme,params", SCHEMES)
def test_a_strong_text_is_exclusive_among_random_candidates_and_a_weak_one_is_not(scheme, params):
    key = create_key(scheme, params, secret=SECRET)
    detector = create_detector(key)
    rng = np.random.default_rng(5)
    truth = key.config.capacity // 3
    candidates = np.concatenate([rng.integers(0, key.config.capacity, 20_000, dtype=np.uint64),
                                 np.array([truth], dtype=np.uint64)])
    strong = TABLES[scheme](rng, key.config, truth, 1500, 0.95)
    weak = TABLES[scheme](rng, key.config, truth, 150, {"mpac": 0.55, "majormark": 0.75, "majormark+": 0.85, "synonym": 0.75}[scheme])
    (first,), (second,) = match_tables(detector, [strong], candidates), match_tables(detector, [weak], candidates)
    assert first.payload == truth and first.is_match and first.is_exclusive, first
    assert first.exclusion_log10_p_value <= math.log10(detector.alpha)
    assert second.is_match and not second.is_exclusive and second.exclusion_log10_p_value > -3, second
    assert second.competitor is not None and second.competitor != second.payload


def test_product_of_uniforms_tail_is_fishers():
    t = np.array([0.5, 1e-3, 1e-12])
    assert np.allclose(product_log_sf(np.log(t), np.ones(3, dtype=int)), np.log(t))
    assert np.allclose(product_log_sf(np.log(t), np.full(3, 2)), np.log(t * (1 - np.log(t))))
    assert np.allclose(product_log_sf(np.log(t), np.full(3, 3)), np.log(t * (1 - np.log(t) + np.log(t) ** 2 / 2)))
    assert product_log_sf(np.array([-5.0]), np.array([0]))[0] == 0.0
    rng = np.random.default_rng(0)  # the law itself: P(U1 U2 U3 <= t) by simulation
    product = rng.random((200_000, 3)).prod(axis=1)
    for x in (1e-2, 1e-3):
        assert (product <= x).mean() == pytest.approx(math.exp(product_log_sf(np.log([x]), np.array([3]))[0]), rel=0.1)


def test_bounds_never_fall_below_the_exact_tails():
    trials = np.repeat(np.arange(0, 60, 7), 12)
    hits = (np.arange(trials.size) * 5) % 61
    preferred, size = (np.arange(trials.size) % 4), np.full(trials.size, 4)
    hits = np.minimum(hits, trials)
    assert np.all(split_bounds(hits, trials, preferred, size) >= split_tails(hits, trials, preferred, size) - 1e-9)
    assert np.all(binomial_log_sf_bound(hits, trials, 0.3) >= binomial_log_sf_array(hits, trials, 0.3) - 1e-9)
    population, marked = 80, 30
    drawn = np.arange(0, 80, 3)
    low = np.minimum(drawn, np.arange(drawn.size) % 9)
    exact = hypergeometric_low_tails(low, population, marked, drawn)
    assert np.allclose(exact, np.where(drawn > 0, np.minimum(0, hypergeom.logcdf(low, population, marked, drawn)), 0))
    assert np.all(hypergeometric_low_bound(low, population, marked, drawn) >= exact - 1e-9)
    counts = np.array([[10, 4, 0], [3, 3, 3], [0, 20, 5]])
    shares = np.array([0.5, 0.75, 2 / 3])
    hits3 = np.array([12, 8, 24])
    exact3 = poisson_binomial_tails(hits3, counts, shares)
    assert np.all(poisson_binomial_bound(hits3, counts, shares) >= exact3 - 1e-9)
    assert exact3[0] == pytest.approx(math.log(sum(binom.pmf(a, 10, 0.5) * binom.pmf(b, 4, 0.75)
                                                    for a in range(11) for b in range(5) if a + b >= 12)))


def test_a_lone_candidate_is_exclusive_and_an_impossible_count_stays_impossible():
    key = create_key("mpac", {"radix": 4, "bits": 32}, secret=SECRET)
    detector = create_detector(key)
    truth = key.config.capacity // 3
    table = _mpac_table(np.random.default_rng(9), key.config, truth, 400, 0.9)
    (match,) = match_tables(detector, [table], [truth])
    assert match.is_match and match.is_exclusive and match.competitor is None and match.exclusion_log10_p_value is None
    assert product_log_sf(np.array([-np.inf, -np.inf]), np.array([1, 3])).tolist() == [-np.inf, -np.inf]
