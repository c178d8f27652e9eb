"""MPAC: configuration, the embedder/decoder contract, round trips and calibration."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multinomial

from provmark.detector import create_detector
from provmark.detector.stats import max_count_pmf, max_count_tail, sum_log_sf, sum_log_sf_rows
from provmark.errors import ParameterError
from provmark.kernels.shard_bias import preferred_mask
from provmark.watermark.base import positions
from provmark.watermark.hook import WatermarkLogitsProcessor, generate
from provmark.watermark.keys import create_key
from provmark.watermark.mpac import MPACConfig, MPACWatermarker
from provmark.watermark.payload import to_digits
from tests.test_detector_kgw import _zipf_sequences

SECRET = bytes(range(32))


@pytest.mark.parametrize(
    "params,message",
    [
        ({"bits": 0}, "bits must be an integer in \\[1, 64\\]"),
        ({"bits": 65}, "bits must be"),
        ({"radix": 3}, "radix must be a power of two"),
        ({"radix": 8}, "radix 8 needs gamma <= 1/8"),
        ({"radix": 4, "bits": 31}, "bits must be a multiple of log2\\(radix\\) = 2"),
        ({"gamma": 0.3}, "gamma must be 1/S"),
        ({"delta": 0}, "delta must be"),
    ],
)
def test_bad_mpac_parameters_are_refused(params, message):
    with pytest.raises(ParameterError, match=message):
        MPACConfig(**params)


def test_num_positions_follow_radix_and_bits():
    assert MPACConfig(bits=32, radix=2).num_positions == 32
    assert MPACConfig(bits=32, radix=4).num_positions == 16
    assert MPACConfig(bits=24, radix=8, gamma=0.125).num_positions == 8


def test_each_step_prefers_the_colour_of_the_allocated_digit():
    key = create_key("mpac", {"bits": 16, "radix": 4}, secret=SECRET)
    marker = MPACWatermarker(key)
    payloads = [0xBEEF, 0x0123]
    contexts = torch.randint(0, 49152, (2, 2), generator=torch.Generator().manual_seed(1))
    params = marker.step_params(contexts, payloads).resolved(contexts)
    pos = positions(marker.position_key, contexts, 8)
    for row, payload in enumerate(payloads):
        digit = to_digits(payload, 4, 8)[int(pos[row])]
        assert int(params.preferred[row]) == 1 << digit
    # and the decoder reads the same shard and position back for a preferred token
    mask = preferred_mask(params.keys, params.salts, contexts, params.shard_counts, params.preferred, 49152)
    detector = create_detector(key)
    for row in range(2):
        token = int(torch.nonzero(mask[row])[0])
        code = int(detector._score_tokens(contexts[row : row + 1], torch.tensor([token]))[0])
        assert divmod(code, 4) == (int(pos[row]), int(params.preferred[row]).bit_length() - 1)


def test_mpac_needs_a_payload_per_row():
    key = create_key("mpac", secret=SECRET)
    with pytest.raises(ParameterError, match="mpac carries a payload"):
        WatermarkLogitsProcessor(key)(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 100))
    with pytest.raises(ParameterError, match="does not fit"):
        WatermarkLogitsProcessor(key, payloads=[2**40])


@pytest.mark.parametrize("trials,colours,p", [(0, 2, 0.25), (7, 2, 0.25), (12, 4, 0.25), (30, 1, 0.5)])
def test_max_count_tail_is_the_upper_tail_of_the_pmf(trials, colours, p):
    pmf = max_count_pmf(trials, colours, p)
    tail = max_count_tail(trials, colours, p)
    assert tail.shape == (trials + 2,) and tail[-1] == 0.0
    np.testing.assert_allclose(tail[:-1], [pmf[m:].sum() for m in range(trials + 1)], rtol=1e-12, atol=1e-300)


def test_max_count_pmf_matches_brute_force_enumeration():
    n, p = 7, 0.25
    brute = np.zeros(n + 1)
    for a in range(n + 1):
        for b in range(n + 1 - a):
            brute[max(a, b)] += multinomial.pmf([a, b, n - a - b], n, [p, p, 1 - 2 * p])
    np.testing.assert_allclose(max_count_pmf(n, 2, p), brute, rtol=1e-12, atol=1e-15)
    assert max_count_pmf(0, 2, p).tolist() == [1.0]
    np.testing.assert_allclose(max_count_pmf(30, 4, 0.25).sum(), 1.0, rtol=1e-12)


def test_sum_tail_is_exact_for_known_cases():
    log_p, mean, sd = sum_log_sf([np.array([0.5, 0.5])] * 10, 10)
    assert log_p == pytest.approx(10 * math.log(0.5)) and mean == pytest.approx(5) and sd == pytest.approx(math.sqrt(2.5))
    assert sum_log_sf([np.array([0.5, 0.5])], 0)[0] == 0.0


def test_sum_tails_of_many_rows_are_np_convolve_row_by_row_to_the_bit():
    rng = np.random.default_rng(0)
    pmfs = [max_count_pmf(n, 2, 0.25) for n in range(15)] + [rng.random(size) ** 8 for size in (1, 2, 30)]
    index = rng.integers(0, len(pmfs), size=(60, 9))
    index[0] = 0  # every count is 0: the sum is 0 for sure
    observed = rng.integers(0, 60, size=60)
    observed[:3] = [0, 500, 1]
    log_tail, mean, sd = sum_log_sf_rows(pmfs, index, observed)
    for row in range(60):
        total = np.ones(1)
        for i in index[row]:
            total = np.convolve(total, pmfs[i])
        support = np.arange(total.size)
        expected_mean = float((support * total).sum())
        expected_sd = math.sqrt(max(float(((support - expected_mean) ** 2 * total).sum()), 0.0))
        tail = float(total[observed[row]:].sum()) if observed[row] < total.size else 0.0
        expected_log_tail = min(0.0, math.log(tail) if tail > 0 else math.log(math.ulp(0.0)))
        assert (log_tail[row], mean[row], sd[row]) == (expected_log_tail, expected_mean, expected_sd)
    assert sum_log_sf([], 0) == (0.0, 0.0, 0.0)


def test_per_row_payloads_decode_each_row_to_its_own_payload(tiny_model, tokenizer):
    key = create_key("mpac", {"bits": 16, "radix": 4, "delta": 3.0}, secret=SECRET)
    payloads = [0xBEEF, 0x0123, 0xA5A5]
    marked = generate(tiny_model, tokenizer, ["one", "two two", "three three three"], key, payloads=payloads,
                      seed=0, max_new_tokens=300, min_new_tokens=300)
    results = create_detector(key).detect_batch([g.token_ids for g in marked])
    assert [r.payload for r in results] == payloads
    assert all(r.is_watermarked and r.p_value < 1e-6 for r in results)
    assert all(len(r.bit_confidences) == 16 and all(0 <= c <= 1 for c in r.bit_confidences) for r in results)
    assert results[0].payload_hex == "0xbeef"


def test_unwatermarked_text_is_not_detected_and_gets_p_one_when_empty():
    key = create_key("mpac", secret=SECRET)
    detector = create_detector(key)
    assert detector.detect([]).p_value == 1.0 and detector.detect([]).payload is None
    assert not detector.detect(list(range(300))).is_watermarked


@pytest.mark.parametrize("radix", [2, 4])
def test_mpac_false_positive_rate_on_10000_unwatermarked_sequences_is_at_most_alpha(radix):
    # 10 keys x 1,000 Zipf sequences of 200 tokens, decoded with the full argmax search.
    sequences = _zipf_sequences(10_000, 200, seed=10 + radix)
    p_values = []
    for k in range(10):
        key = create_key("mpac", {"bits": 32, "radix": radix}, secret=bytes([k + 1]) * 32)
        p_values += [r.p_value for r in create_detector(key).detect_batch(sequences[k * 1000 : (k + 1) * 1000])]
    for alpha in (0.01, 0.001):
        rate = sum(p <= alpha for p in p_values) / len(p_values)
        assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / len(p_values)), (alpha, rate)
