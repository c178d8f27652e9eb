"""Payload-free presence tests of MajorMark and MajorMark+: exact and simulated null laws against
brute force, calibration on unwatermarked text and on counts drawn from the null, and power over
the union bound on counts drawn from a watermark."""

import itertools
import math

import numpy as np
import pytest
import torch

from provmark.detector import create_detector
from provmark.detector.majormark import NULL_DRAWS, block_excess_pmf, salt_sizes, split_null, split_null_log_p
from provmark.errors import ParameterError
from provmark.watermark.keys import create_key
from provmark.watermark.majormark import block_candidates
from tests.test_detector_kgw import _zipf_sequences

SECRET = bytes(range(32))


@pytest.mark.parametrize("trials,size", [(0, 4), (1, 4), (3, 4), (4, 3), (1, 6)])
def test_block_excess_law_is_the_largest_candidate_excess_over_every_placement(trials, size):
    # every placement of the block's tokens under each candidate salt, candidates independent
    candidates = block_candidates(size)
    per_candidate = []
    for _, n in candidates:
        values = []
        for placement in itertools.product(range(size), repeat=trials):
            counts = sorted(np.bincount(placement, minlength=size).tolist(), reverse=True)
            values.append(size * sum(counts[:n]) - n * trials)
        per_candidate.append(values)
    law = {}
    for combo in itertools.product(*per_candidate):
        law[max(combo)] = law.get(max(combo), 0) + 1
    total = sum(law.values())
    low, pmf = block_excess_pmf(trials, size)
    assert low == min(law) and pmf.size == max(law) - min(law) + 1
    for value in range(low, low + pmf.size):
        assert pmf[value - low] == pytest.approx(law.get(value, 0) / total, rel=1e-12, abs=1e-15)


def _split_statistic(counts, bits):
    """Per salt, the decoder's own split tail of fresh count vectors (M, b), through
    ``two_means_splits`` (the decoder's path, not the null's)."""
    from provmark.detector.majormark import salt_sizes, two_means_splits
    from provmark.detector.stats import binomial_log_sf_array

    trials = counts.sum(axis=1)
    out = {}
    for lam, sizes in salt_sizes(bits).items():
        order, size = two_means_splits(counts, sizes)
        green = np.take_along_axis(counts, order, axis=1).cumsum(axis=1)[np.arange(counts.shape[0]), size - 1]
        out[lam] = binomial_log_sf_array(green, trials, size / bits)
    return out


def test_split_null_follows_fresh_multinomial_draws_of_the_decoders_statistic():
    rng = np.random.default_rng(5)
    for trials, shards in [(40, 8), (190, 32), (600, 16)]:
        null = split_null(trials, shards)
        fresh = _split_statistic(rng.multinomial(trials, np.full(shards, 1 / shards), size=NULL_DRAWS), shards)
        assert set(null) == set(fresh) == set(salt_sizes(shards))
        for lam, (values, at_most) in null.items():
            assert at_most[-1] == NULL_DRAWS and np.all(np.diff(values) > 0)
            for q in (0.001, 0.01, 0.1):
                cut = np.quantile(fresh[lam], q)
                simulated = at_most[np.searchsorted(values, cut, side="right") - 1] / NULL_DRAWS
                expected = (fresh[lam] <= cut).mean()
                assert simulated == pytest.approx(expected, abs=5 * math.sqrt(expected / NULL_DRAWS))
    assert split_null(190, 32) is split_null(190, 32)  # cached, deterministic


def test_split_null_p_value_is_the_smaller_salt_tail_under_independent_salts():
    # P(min over the two salts <= x) with each salt's F from the same simulated draws
    null = split_null(100, 16)
    (v0, c0), (v1, c1) = null[0], null[1]
    x = float(v0[np.searchsorted(c0, NULL_DRAWS // 100)])  # about the 1% point of salt 0
    f0 = (1 + c0[np.searchsorted(v0, x, side="right") - 1]) / (NULL_DRAWS + 1)
    where = np.searchsorted(v1, x, side="right")
    f1 = (1 + (c1[where - 1] if where else 0)) / (NULL_DRAWS + 1)
    expected = 1 - (1 - f0) * (1 - f1)
    assert math.exp(split_null_log_p({0: x, 1: 0.0}, 100, 16)) == pytest.approx(expected, rel=1e-12)
    assert math.exp(split_null_log_p({0: 0.0, 1: x}, 100, 16)) == pytest.approx(expected, rel=1e-12)
    assert 0.005 < expected < 0.05


def _null_scores(scheme, config, lengths, rng):
    """token_scores and seq_index of sequences whose shards (and blocks) are uniform draws."""
    total = int(lengths.sum())
    seq_index = torch.from_numpy(np.repeat(np.arange(lengths.size), lengths))
    if scheme == "majormark":
        return torch.from_numpy(rng.integers(0, config.bits, (total, 2))), seq_index
    columns = 1 + len(block_candidates(config.block_size))
    scores = rng.integers(0, config.block_size, (total, columns))
    scores[:, 0] = rng.integers(0, config.num_blocks, total)
    return torch.from_numpy(scores), seq_index


@pytest.mark.parametrize("scheme", ["majormark", "majormark+"])
def test_presence_is_calibrated_on_30000_sequences_drawn_from_the_null(scheme):
    detector = create_detector(create_key(scheme, {"bits": 32}, secret=SECRET))
    test = detector._presence_test
    rng = np.random.default_rng(11)
    log_p = []
    for _ in range(6):
        lengths = rng.integers(150, 200, 5000)
        token_scores, seq_index = _null_scores(scheme, detector.key.config, lengths, rng)
        log_p.append(test(token_scores, seq_index, lengths.size)[1])
    log_p = np.concatenate(log_p)
    for alpha in (0.1, 0.01, 0.001):
        rate = float((log_p <= math.log(alpha)).mean())
        assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / log_p.size), (alpha, rate)
        assert rate >= alpha / 3, (alpha, rate)  # not vacuous: the test does reach its level


@pytest.mark.parametrize("scheme", ["majormark", "majormark+"])
def test_presence_false_positive_rate_on_10000_unwatermarked_texts_is_at_most_alpha(scheme):
    sequences = _zipf_sequences(10_000, 200, seed=40 + len(scheme))
    p_values = []
    for k in range(10):
        key = create_key(scheme, {"bits": 32}, secret=bytes([k + 1]) * 32)
        p_values += [r.p_value for r in create_detector(key).presence_batch(sequences[k * 1000 : (k + 1) * 1000])]
    for alpha in (0.01, 0.001):
        rate = sum(p <= alpha for p in p_values) / len(p_values)
        assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / len(p_values)), (alpha, rate)
    assert sum(p <= 0.1 for p in p_values) / len(p_values) >= 0.03  # small p-values do occur


def _marked_scores(scheme, config, lengths, rng, lift):
    """Counts of watermarked sequences: under the payload's salt, a token lands in the preferred
    shards with probability share + lift * (1 - share); the other salts stay uniform."""
    token_scores, seq_index = _null_scores(scheme, config, lengths, rng)
    scores = token_scores.numpy().copy()
    payloads = []
    start = 0
    for length in lengths.tolist():
        rows = slice(start, start + length)
        payload = int(rng.integers(0, config.capacity))
        payloads.append(payload)
        if scheme == "majormark":
            bits = config.codeword_bits(payload)
            lam = 1 if 2 * sum(bits) >= len(bits) else 0
            preferred = [i for i, bit in enumerate(bits) if bit == lam]
            others = [i for i, bit in enumerate(bits) if bit != lam]
            green = rng.random(length) < len(preferred) / len(bits) + lift * (1 - len(preferred) / len(bits))
            scores[rows, lam] = np.where(green, rng.choice(preferred, length), rng.choice(others, length))
        else:
            candidates = block_candidates(config.block_size)
            for j, block in enumerate(config.blocks(payload)):
                lam = 1 if 2 * sum(block) >= len(block) else 0
                count = sum(bit == lam for bit in block)
                column = 1 + candidates.index((lam, count))
                at = np.flatnonzero(scores[rows, 0] == j) + start
                preferred = [i for i, bit in enumerate(block) if bit == lam]
                others = [i for i, bit in enumerate(block) if bit != lam]
                share = count / len(block)
                green = rng.random(at.size) < share + lift * (1 - share)
                scores[at, column] = np.where(green, rng.choice(preferred, at.size), rng.choice(others, at.size))
        start += length
    return torch.from_numpy(scores), seq_index


@pytest.mark.parametrize("scheme,lift", [("majormark", 0.5), ("majormark+", 0.5)])
def test_presence_detects_more_watermarked_texts_than_the_union_bound(scheme, lift):
    detector = create_detector(create_key(scheme, {"bits": 32}, secret=SECRET))
    test = detector._presence_test
    rng = np.random.default_rng(3)
    lengths = np.full(200, 190)
    token_scores, seq_index = _marked_scores(scheme, detector.key.config, lengths, rng, lift)
    union = np.array([e.log_p for e in detector._decode(token_scores, seq_index, lengths.size)])
    test_log_p = test(token_scores, seq_index, lengths.size)[1]
    presence = np.where(test_log_p > math.log(1e-4), test_log_p, np.minimum(math.log(1e-4), union))
    combined = np.array([e.log_p for e in detector._aggregate_scores(token_scores, seq_index, lengths.size)])
    np.testing.assert_allclose(combined, presence, rtol=1e-12, atol=0)  # what detect reports for a version 2 key
    # 200 texts of 190 scored tokens; measured on this seed: majormark 0.34 -> 0.63, majormark+
    # 0.16 -> 0.39 at alpha 1e-3
    threshold = math.log(1e-3)
    assert (presence <= threshold).mean() >= (union <= threshold).mean() + 0.08
    assert np.all((presence <= union + 1e-12) | (presence > math.log(1e-4)))  # the union bound decides in the tail


@pytest.mark.parametrize("scheme", ["majormark", "majormark+"])
def test_presence_of_a_text_without_scored_tokens_is_p_one_and_prompts_must_match(scheme):
    detector = create_detector(create_key(scheme, secret=SECRET))
    (presence,) = detector.presence_batch([[5, 6]])
    assert (presence.p_value, presence.num_scored_tokens, presence.is_watermarked) == (1.0, 0, False)
    assert presence.to_dict()["scheme"] == scheme
    with pytest.raises(ParameterError, match="got 2 prompts for 1 sequences"):
        detector.presence_batch([[1, 2, 3]], prompt_ids=[[1], [2]])


@pytest.mark.parametrize("scheme", ["majormark", "majormark+"])
def test_version_2_detect_is_calibrated_on_10000_random_token_sequences(scheme):
    # The real code path: token ids through detect_batch (pairs, PRF, decoder, test, combination).
    rng = np.random.default_rng(2024 + len(scheme))
    sequences = rng.integers(0, 49152, (10_000, 200)).tolist()
    detector = create_detector(create_key(scheme, {"bits": 32}, secret=SECRET))
    assert detector.key.config.version == 2
    p_values = np.array([r.p_value for r in detector.detect_batch(sequences)])
    for alpha in (0.01, 0.001):
        rate = float((p_values <= alpha).mean())
        assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / p_values.size), (alpha, rate)
    assert (p_values <= 0.1).mean() >= 0.03  # small p-values do occur: the test is not vacuous


@pytest.mark.parametrize("scheme", ["majormark", "majormark+"])
def test_version_1_keeps_the_union_bound_and_version_2_reports_the_test_handing_over_to_it_below_1e_4(scheme):
    sequences = _zipf_sequences(40, 200, seed=9)
    old = create_detector(create_key(scheme, {"bits": 32, "version": 1}, secret=SECRET))
    new = create_detector(create_key(scheme, {"bits": 32}, secret=SECRET))
    before, after = old.detect_batch(sequences), new.detect_batch(sequences)
    presence = new.presence_batch(sequences)
    for a, b, p in zip(before, after, presence):
        assert a.log10_p_value == pytest.approx(p.union_log10_p_value, rel=1e-12, abs=1e-300)
        assert b.log10_p_value == pytest.approx(p.log10_p_value, rel=1e-12, abs=1e-300)
        t = p.test_log10_p_value
        expected = t if t > -4 else min(-4.0, p.union_log10_p_value)
        assert b.log10_p_value == pytest.approx(expected, rel=1e-12, abs=1e-300)
        assert (a.payload, a.bit_confidences, a.score) == (b.payload, b.bit_confidences, b.score)


@pytest.mark.parametrize("scheme", ["majormark", "majormark+"])
def test_key_files_without_a_version_keep_version_1_and_new_keys_get_version_2(scheme, tmp_path):
    from provmark.watermark.keys import key_from_dict, load_key, save_key

    key = create_key(scheme, secret=SECRET)
    assert key.config.version == 2 and key.config.to_params()["version"] == 2
    save_key(key, tmp_path / "k.json")
    assert load_key(tmp_path / "k.json").config.version == 2
    data = key.to_dict()
    del data["params"]["version"]  # a key file written before the field existed
    assert key_from_dict(data).config.version == 1
    assert key_from_dict(data).config == create_key(scheme, {"version": 1}, secret=SECRET).config


@pytest.mark.parametrize("scheme", ["majormark", "majormark+"])
@pytest.mark.parametrize("version", [0, 3, 1.0, "2", True, None])
def test_a_bad_version_fails_cleanly(scheme, version):
    with pytest.raises(ParameterError, match="version must be one of 1, 2"):
        create_key(scheme, {"version": version})


@pytest.mark.parametrize("trials", [1, 2, 173, 256])
def test_the_shipped_split_null_is_the_simulation_itself(trials):
    from provmark.detector.majormark import _NULL_SEED, simulate_split_cells
    from provmark.detector.split_null_table import STORED_TRIALS, stored_cells

    assert trials <= STORED_TRIALS
    stored = stored_cells(trials, 32, NULL_DRAWS, _NULL_SEED)
    simulated = simulate_split_cells(trials, 32)
    assert stored.keys() == simulated.keys() == set(salt_sizes(32))
    for lam in stored:
        for a, b in zip(stored[lam], simulated[lam]):
            np.testing.assert_array_equal(a, b)


def test_the_default_width_needs_no_simulation_up_to_the_stored_counts(monkeypatch):
    from provmark.detector import majormark
    from provmark.detector.split_null_table import STORED_TRIALS, stored_cells

    def refuse(trials, bits):
        raise AssertionError(f"simulated the null at {trials} tokens, {bits} shards")

    monkeypatch.setattr(majormark, "simulate_split_cells", refuse)
    majormark.split_null.cache_clear()
    try:
        for trials in (1, 57, 199, STORED_TRIALS):
            assert split_null(trials, 32)[0][1][-1] == NULL_DRAWS
        assert stored_cells(STORED_TRIALS + 1, 32, NULL_DRAWS, majormark._NULL_SEED) is None
        assert stored_cells(100, 16, NULL_DRAWS, majormark._NULL_SEED) is None  # other widths: simulated
        assert stored_cells(100, 32, NULL_DRAWS + 1, majormark._NULL_SEED) is None  # other draws: never the table
    finally:
        majormark.split_null.cache_clear()
