"""Record scoring: each candidate's hits and exact tail against token-by-token counting, the true
payload winning among 100,000 candidates after generation, and calibration of the winner's
corrected p-value on unwatermarked text."""

import math

import numpy as np
import pytest

from benchmarks.calibration import SyntheticProxy
from provmark.detector import create_detector
from provmark.detector.records import (candidate_payloads, digit_sums, match_records, match_records_batch, mixed_digit_sums,
                                       score_records)
from provmark.detector.stats import binomial_log_sf, log_pmf_of_sum, log_upper_tail
from provmark.errors import ParameterError
from provmark.watermark.balance import segments_of
from provmark.watermark.hook import generate
from provmark.watermark.keys import create_key
from provmark.watermark.majormark import block_candidates, majority
from provmark.watermark.payload import to_digits
from provmark.watermark.proxy import Proxy
from scipy.stats import binom
from tests.test_detector_kgw import _zipf_sequences

SECRET = bytes(range(32))
SCHEMES = [
    ("mpac", {"radix": 4}),
    ("mpac", {"radix": 2, "bits": 24}),
    ("majormark", {}),
    ("majormark", {"bits": 64}),
    ("majormark+", {}),
    ("majormark+", {"bits": 24, "block_size": 6}),
    ("vanilla", {"bits": 16, "segment_bits": 8}),
]


def _random_payloads(capacity: int, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if capacity <= 1 << 63:
        return rng.integers(0, capacity, count, dtype=np.uint64)
    return rng.integers(0, 1 << 63, count, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, count, dtype=np.uint64)


def _brute_force(detector, ids, payload: int) -> tuple[int, float]:
    """(hits, natural-log tail) of one payload, counted token by token from the scored pairs."""
    config, scheme = detector.key.config, detector.key.scheme
    if scheme == "vanilla":
        (pairs,) = detector.pairs([ids])
        hits = int(detector.token_hits(pairs, payload)[0].sum())
        segment = segments_of(detector._position_key, pairs.contexts, config)
        pmfs = []
        for s in range(config.num_segments):  # each (segment, context) group: uniform over its K counts
            members = (segment == s).nonzero().squeeze(1)
            groups = {}
            for i in members.tolist():
                groups.setdefault(tuple(pairs.contexts[i].tolist()), []).append(i)
            for rows in groups.values():
                per_partition = pairs.available[rows].sum(dim=0).numpy()
                pmfs.append(np.bincount(per_partition, minlength=len(rows) + 1) / config.pool_size)
        return hits, log_upper_tail(log_pmf_of_sum(pmfs), hits)
    pairs, _ = detector.scored_pairs([ids])
    scores = detector._score_tokens(pairs[:, :-1], pairs[:, -1])
    n = pairs.shape[0]
    if scheme == "mpac":
        digits = to_digits(payload, config.radix, config.num_positions)
        position, shard = scores // config.shard_count, scores % config.shard_count
        hits = sum(int(shard[i]) == digits[int(position[i])] for i in range(n))
        return hits, binomial_log_sf(hits, n, 1 / config.shard_count)
    if scheme == "majormark":
        bits = config.codeword_bits(payload)
        lam, count = majority(bits)
        hits = sum(bits[int(scores[i, lam])] == lam for i in range(n))
        return hits, binomial_log_sf(hits, n, count / config.bits)
    candidates, hits, pmfs = block_candidates(config.block_size), 0, []
    for j, block in enumerate(config.blocks(payload)):
        lam, count = majority(block)
        column = 1 + candidates.index((lam, count))
        rows = (scores[:, 0] == j).nonzero().squeeze(1).tolist()
        hits += sum(block[int(scores[i, column])] == lam for i in rows)
        pmfs.append(binom.pmf(np.arange(len(rows) + 1), len(rows), count / config.block_size))
    return hits, log_upper_tail(log_pmf_of_sum(pmfs), hits)


@pytest.mark.parametrize("scheme,params", SCHEMES)
def test_each_candidates_hits_and_tail_are_those_counted_token_by_token(scheme, params):
    key = create_key(scheme, params, secret=SECRET)
    detector = create_detector(key)
    ids = _zipf_sequences(1, 300, seed=5)[0]
    ids = ids[:150] + ids[:40] + ids[150:]  # repeated contexts count once
    payloads = _random_payloads(key.config.capacity, 12, seed=1).tolist()
    scores = score_records(detector, ids, payloads)
    for payload, hits, log_p in zip(payloads, scores.hits.tolist(), scores.log_p.tolist()):
        want_hits, want_log_p = _brute_force(detector, ids, payload)
        assert hits == want_hits
        assert log_p == pytest.approx(want_log_p, rel=1e-9, abs=1e-12)
    if params.get("block_size", 4) <= 4:  # a 6-bit block's presence null costs minutes on first use (block_excess_pmf)
        assert scores.num_scored_tokens == detector.detect(ids).num_scored_tokens


def test_vanilla_record_tail_of_the_decoded_payload_is_the_presence_tail_before_the_union_bound():
    key = create_key("vanilla", {"bits": 12, "segment_bits": 12}, secret=SECRET)
    detector = create_detector(key)
    seen = 0
    for ids in _zipf_sequences(40, 200, seed=3):
        result = detector.detect(ids)
        record = score_records(detector, ids, [result.payload])
        assert min(0.0, record.log_p[0] + 12 * math.log(2)) == pytest.approx(math.log(result.p_value), rel=1e-12, abs=1e-15)
        seen += result.p_value < 1
    assert seen  # not only p-values clamped at 1


def test_digit_sums_read_digits_most_significant_first():
    rng = np.random.default_rng(0)
    for width, length in [(1, 64), (2, 16), (3, 7), (5, 4), (6, 10)]:
        table = rng.integers(0, 1000, (length, 1 << width))
        words = _random_payloads(1 << (width * length), 300, seed=width)
        want = [sum(int(table[p, d]) for p, d in enumerate(to_digits(int(w), 1 << width, length))) for w in words.tolist()]
        assert digit_sums(words, table, width).tolist() == want


def test_candidates_are_checked_and_duplicates_count_once():
    key = create_key("majormark", {"bits": 8}, secret=SECRET)
    assert candidate_payloads([5, 3, 5, 7, 3], key.config.capacity).tolist() == [5, 3, 7]
    assert candidate_payloads(np.array([2, 2, 1]), 10).tolist() == [2, 1]
    for bad, message in [([], "no candidate payloads"), ([254], "does not fit the key's capacity"), ([-1], "must lie in"),
                         ([True], "must be integers"), (["0x1"], "must be integers"), (np.array([1.5]), "must be integers")]:
        with pytest.raises(ParameterError, match=message):
            candidate_payloads(bad, key.config.capacity)
    detector = create_detector(key)
    match = match_records(detector, _zipf_sequences(1, 100, seed=1)[0], [5, 5, 5])
    assert (match.num_candidates, match.runner_up, match.runner_up_log10_p_value) == (1, None, None)
    assert match.corrected_log10_p_value == match.log10_p_value  # one candidate: nothing to correct
    with pytest.raises(ParameterError, match="kgw keys carry no payload"):
        match_records(create_detector(create_key("kgw", secret=SECRET)), [1, 2, 3, 4], [0])


def test_a_text_without_scored_tokens_names_no_record():
    detector = create_detector(create_key("mpac", secret=SECRET))
    match = match_records(detector, [7], [1, 2])
    assert (match.payload, match.p_value, match.corrected_p_value, match.is_match) == (None, 1.0, 1.0, False)


def test_the_winner_has_the_smallest_tail_not_the_most_hits():
    # MajorMark candidates prefer between b/2 and b - 1 shards: hits alone favour the large sets.
    key = create_key("majormark", {"bits": 16}, secret=SECRET)
    detector = create_detector(key)
    payloads = _random_payloads(key.config.capacity, 2000, seed=2)
    differs = 0
    for ids in _zipf_sequences(10, 200, seed=4):
        scores = score_records(detector, ids, payloads)
        match = match_records(detector, ids, payloads)
        assert match.payload == int(scores.payloads[np.argmin(scores.log_p)])
        assert match.corrected_log10_p_value == pytest.approx(min(0.0, match.log10_p_value + math.log10(match.num_candidates)))
        assert match.num_candidates == np.unique(payloads).size < 2000  # duplicates counted once
        assert match.runner_up_log10_p_value >= match.log10_p_value
        differs += match.payload != int(scores.payloads[np.argmax(scores.hits)])
    assert differs >= 5


@pytest.mark.parametrize("scheme,params", [
    ("mpac", {"radix": 4, "bits": 32}),
    ("majormark", {"bits": 32}),
    ("majormark+", {"bits": 32}),
    ("vanilla", {"bits": 16, "segment_bits": 8}),
    ("balance", {"bits": 16, "segment_bits": 8, "head": 64}),
])
def test_the_true_payload_wins_among_100000_candidates_after_generation(tiny_model, tokenizer, scheme, params):
    key = create_key(scheme, {**params, "delta": 3.0}, secret=SECRET)
    rng = np.random.default_rng(7)
    payloads = [int(p) for p in _random_payloads(key.config.capacity, 3, seed=11)]
    proxy = Proxy(tiny_model, tokenizer) if scheme == "balance" else None
    marked = generate(tiny_model, tokenizer, ["one", "two two", "three three three"], key, payloads, chat=False, seed=0,
                      max_new_tokens=200, min_new_tokens=200, proxy=proxy)
    others = _random_payloads(key.config.capacity, 100_000, seed=int(rng.integers(1000)))
    candidates = np.concatenate([others[:50_000], np.array(payloads, dtype=np.uint64), others[50_000:]])
    matches = match_records_batch(create_detector(key, proxy=proxy), [g.token_ids for g in marked], candidates)
    for match, payload in zip(matches, payloads):
        assert match.payload == payload and match.is_match, match
        assert match.num_candidates == np.unique(candidates).size
        assert match.corrected_log10_p_value < -6 and match.runner_up_log10_p_value > match.log10_p_value + 3


@pytest.mark.parametrize("scheme,params,count", [
    ("mpac", {"radix": 4}, 3000),
    ("majormark", {}, 3000),
    ("majormark+", {}, 3000),
    ("vanilla", {"bits": 10, "segment_bits": 10}, 600),
    ("balance", {"bits": 10, "segment_bits": 10, "head": 64}, 600),
])
def test_the_winners_corrected_p_value_is_calibrated_on_unwatermarked_text(scheme, params, count):
    # Zipf text (natural-text repetition) under 3 keys, 1,000 random candidates per key. The
    # winner's corrected p-value must be at most alpha at rate alpha (three binomial standard
    # errors allowed); one fixed candidate's raw tail is checked as well, from both sides, so a
    # tail that is too large (a test that cannot fire) fails too.
    vocab = 2048 if scheme in ("vanilla", "balance") else 49152
    sequences = [[t % vocab for t in s] for s in _zipf_sequences(count, 200, seed=30 + len(scheme))]
    corrected, raw = [], []
    for k in range(3):
        key = create_key(scheme, params, secret=bytes([k + 7]) * 32)
        detector = create_detector(key, proxy=SyntheticProxy(seed=k) if scheme == "balance" else None)
        candidates = _random_payloads(key.config.capacity, 1000, seed=k)
        part = sequences[k * count // 3 : (k + 1) * count // 3]
        for table in detector.record_tables(part):
            hits, log_p = table.score(candidates)
            corrected.append(min(0.0, float(log_p.min()) + math.log(1000)))
            raw.append(float(log_p[0]))
    n = len(corrected)
    for alpha in (0.05, 0.01):
        slack = 3 * math.sqrt(alpha * (1 - alpha) / n)
        assert sum(p <= math.log(alpha) for p in corrected) / n <= alpha + slack
        rate = sum(p <= math.log(alpha) for p in raw) / n
        assert alpha / 3 <= rate <= alpha + slack, (alpha, rate)


def test_tails_keep_their_value_below_float_range():
    from provmark.detector.records import binomial_tails, poisson_binomial_tails

    # every token a hit: the tail is the product of the shares, far below float64's smallest number
    trials = np.array([[800, 900], [800, 900], [3, 0]])
    got = poisson_binomial_tails(np.array([1700, 1650, 2]), trials, np.array([0.5, 0.75]))
    assert got[0] == pytest.approx(800 * math.log(0.5) + 900 * math.log(0.75), rel=1e-9)
    pmfs = [binom.pmf(np.arange(801), 800, 0.5), binom.pmf(np.arange(901), 900, 0.75)]
    assert got[1] == pytest.approx(log_upper_tail(log_pmf_of_sum(pmfs), 1650), rel=1e-9)
    assert got[2] == pytest.approx(math.log(0.5), rel=1e-12)  # P(Binomial(3, 1/2) >= 2)
    assert binomial_tails(np.array([1200]), 1200, np.array([1]), 4)[0] == pytest.approx(1200 * math.log(0.25), rel=1e-9)


def test_a_candidates_file_is_read_line_by_line_with_the_bad_line_named():
    from provmark.detector.records import parse_candidates

    lines = ["# issued payloads", "0x0000000a", "", "  17 ", "0xa"]
    assert parse_candidates(lines, 1 << 32).tolist() == [10, 17]
    with pytest.raises(ParameterError, match="line 2: payload 'zz' is neither decimal nor 0x-prefixed hex"):
        parse_candidates(["1", "zz"], 1 << 32)
    with pytest.raises(ParameterError, match="line 1: payload '0x100' does not fit"):
        parse_candidates(["0x100"], 256)
    with pytest.raises(ParameterError, match="no candidate payloads"):
        parse_candidates(["# nothing"], 256)


@pytest.mark.parametrize("scheme,params", [s for s in SCHEMES if s[0] != "vanilla"] + [("kgw", {})])
def test_detect_and_attribute_in_one_pass_answers_as_detect_and_attribute_apart(scheme, params):
    from provmark.front import Watermark

    key = create_key(scheme, params, secret=SECRET)
    watermark = Watermark(key)
    sequences = _zipf_sequences(6, 120, seed=5)
    if not key.config.supports_payload:
        results, tests = watermark.detect_and_attribute([""] * 6, None, token_ids=sequences)
        assert results == watermark.detect([""] * 6, token_ids=sequences) and tests == [None] * 6
        return
    candidates = np.sort(_random_payloads(key.config.capacity, 5000, seed=1))
    results, tests = watermark.detect_and_attribute([""] * 6, candidates, alpha=1e-2, token_ids=sequences)
    assert results == watermark.detect([""] * 6, alpha=1e-2, token_ids=sequences)
    assert tests == watermark.attribute([""] * 6, candidates.tolist(), alpha=1e-2, token_ids=sequences)
    assert watermark.detect_and_attribute([""] * 6, candidates[:0], token_ids=sequences)[1] == [None] * 6


def test_ascending_candidates_are_taken_as_they_are_and_others_still_lose_their_duplicates():
    ascending = np.array([1, 5, 9, 1 << 40], dtype=np.uint64)
    taken = candidate_payloads(ascending, 1 << 41)
    assert np.shares_memory(taken, ascending) and taken.tolist() == ascending.tolist()  # no copy, no sort
    assert candidate_payloads(np.array([9, 5, 9, 1], dtype=np.uint64), 16).tolist() == [9, 5, 1]


@pytest.mark.parametrize("base,length", [(14, 8), (6, 4), (14, 16), (3, 5), (30, 3)])
def test_mixed_digit_sums_read_digits_most_significant_first(base, length):
    rng = np.random.default_rng(base * length)
    tables = rng.integers(-50, 50, (3, length, base))
    digits = rng.integers(0, base, (2000, length))
    digits[0] = base - 1  # the largest value
    values = np.array([int("".join(np.base_repr(d, base) for d in row), base) for row in digits], dtype=np.uint64)
    expected = np.stack([tables[k, np.arange(length), digits].sum(axis=1) for k in range(3)])
    np.testing.assert_array_equal(mixed_digit_sums(values, tables, base), expected)
