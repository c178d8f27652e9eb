"""Self-checking payloads (``check_bits``): the keyed checksum, the codeword mapping, the open-set
search over the least confident bits, the wrong-pass rate on unwatermarked text, bad values, and a
round trip through the real embedded model."""

import math

import numpy as np
import pytest
from click.testing import CliRunner

from provmark.api.schemas import KeyParams
from provmark.cli import cli
from provmark.detector import create_detector
from provmark.detector.check import checked_payloads, search_size
from provmark.detector.records import match_records
from provmark.errors import ParameterError
from provmark.watermark.check import check_values, codeword_values, payloads_of_values
from provmark.watermark.keys import create_key
from provmark.watermark.params import scheme_params

SECRET = bytes(range(32))
SCHEMES = ["mpac", "majormark", "majormark+"]


def test_check_compatibility_vector():
    # prf-v1 context_seeds under the "check" sub-key: changing the checksum changes every key's codewords
    payloads = np.array([0, 1, 2**23, 12345678, 2**32 + 5], dtype=np.uint64)
    expected = {("mpac", 8): [34, 55, 70, 67, 157], ("majormark", 4): [8, 4, 13, 14, 10],
                ("majormark+", 16): [3051, 34915, 31857, 32362, 10652]}
    for (scheme, bits), values in expected.items():
        key = create_key(scheme, {"check_bits": bits}, secret=SECRET)
        assert check_values(key, payloads).tolist() == values


@pytest.mark.parametrize("scheme", SCHEMES)
def test_codeword_values_round_trip_and_a_corrupted_checksum_fails(scheme):
    key = create_key(scheme, {"check_bits": 8}, secret=SECRET)
    config = key.config
    assert config.capacity == config.codeword_capacity >> 8
    payloads = np.random.default_rng(1).integers(0, config.capacity, 500).astype(np.uint64)
    values = codeword_values(key, payloads)
    assert int(values.max()) < config.codeword_capacity
    back, good = payloads_of_values(key, values)
    assert np.array_equal(back, payloads) and good.all()
    _, good = payloads_of_values(key, values ^ np.uint64(1 << 3))  # a flipped low bit changes the payload part
    assert good.mean() < 0.02
    plain = create_key(scheme, secret=SECRET)
    assert np.array_equal(codeword_values(plain, payloads), payloads)  # no check bits: the payload itself


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_search_recovers_an_error_in_the_least_confident_bits_and_returns_none_otherwise(scheme):
    key = create_key(scheme, {"check_bits": 8}, secret=SECRET)
    detector = create_detector(key)
    config, rng = key.config, np.random.default_rng(7)
    values_of = detector._codeword_values if scheme != "mpac" else (
        lambda rows: (np.array([int("".join(map(str, r)), 2) for r in rows], dtype=np.uint64), np.ones(len(rows), bool)))
    recovered = none = 0
    for _ in range(50):
        payload = int(rng.integers(0, config.capacity))
        bits = np.array(config.codeword_bits(int(codeword_values(key, [payload])[0])))
        confidence = rng.uniform(0.5, 1.0, bits.size)
        weakest = np.argsort(confidence)[:2]
        confidence[weakest] = [0.01, 0.02]
        noisy = bits.copy()
        noisy[weakest[0]] ^= 1
        (found,) = checked_payloads(key, noisy[None], confidence[None], values_of)
        recovered += found == payload
        # many errors in confident bits: the search does not reach the truth
        far = bits.copy()
        far[np.argsort(confidence)[-6:]] ^= 1
        (other,) = checked_payloads(key, far[None], confidence[None], values_of)
        none += other is None
        assert other != payload
    assert recovered >= 49  # (the single flip can make a MajorMark+ block invalid: then no candidate)
    assert none >= 50 * (1 - search_size(8) / 256) - 8


@pytest.mark.parametrize("scheme", SCHEMES)
def test_unwatermarked_text_gets_a_wrong_payload_at_most_about_search_size_over_2_to_the_c(scheme):
    # the fast simulation: random token sequences through detect_batch
    key = create_key(scheme, {"check_bits": 8}, secret=SECRET)
    sequences = np.random.default_rng(3).integers(0, 49152, (4000, 200)).tolist()
    results = create_detector(key).detect_batch(sequences)
    rate = sum(r.payload is not None for r in results) / len(results)
    bound = search_size(8) / 256  # every candidate is wrong here; each passes with probability 2**-8
    assert rate <= bound + 3 * math.sqrt(bound / len(results)), rate
    assert rate >= bound / 4  # the check is not vacuous: candidates do pass at about 2**-8 each
    assert all(r.payload is None or r.payload < key.config.capacity for r in results)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("value", [-1, 17, 1.5, True, "8", None])
def test_a_bad_check_bits_value_fails_cleanly(scheme, value):
    with pytest.raises(ParameterError, match=r"check_bits must be an integer in \[0, 16\]"):
        create_key(scheme, {"check_bits": value})


def test_check_bits_that_leave_fewer_than_two_payloads_fail_cleanly():
    with pytest.raises(ParameterError, match="leaves fewer than 2 payloads"):
        create_key("mpac", {"bits": 4, "radix": 2, "check_bits": 4})
    with pytest.raises(ParameterError, match="leaves fewer than 2 payloads"):
        create_key("majormark", {"bits": 4, "check_bits": 3})


def test_check_bits_is_a_cli_and_api_parameter_of_the_three_schemes(tmp_path):
    param = scheme_params()["check_bits"]
    assert param.type is int and [s for s, _, _ in param.schemes] == SCHEMES
    assert KeyParams(check_bits=8).check_bits == 8  # the API key-parameter schema follows the configs
    runner = CliRunner()
    out = tmp_path / "k.json"
    result = runner.invoke(cli, ["keys", "create", "--scheme", "mpac", "--check-bits", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "16777216" in result.output or "24.00 bits" in result.output, result.output
    bad = runner.invoke(cli, ["keys", "create", "--scheme", "mpac", "--check-bits", "40", "--out", str(tmp_path / "b.json")])
    assert bad.exit_code != 0 and bad.output.count("Error:") == 1 and "check_bits must be an integer" in bad.output


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_trip_through_the_embedded_model_returns_the_payload_or_none_never_a_wrong_one(real_model, scheme):
    from provmark.watermark.hook import generate

    key = create_key(scheme, {"check_bits": 8}, secret=SECRET)
    payloads = [5, key.config.capacity - 1, 123457 % key.config.capacity]
    prompts = ["Write a short story about a fox.", "Explain how a bicycle gear works.", "Describe a rainy afternoon."]
    marked = generate(real_model.model, real_model.tokenizer, prompts, key, payloads=payloads, seed=0,
                      max_new_tokens=300, min_new_tokens=300)
    detector = create_detector(key)
    results = detector.detect_batch([list(g.token_ids) for g in marked])
    assert all(r.is_watermarked for r in results)
    assert all(r.payload in (p, None) for r, p in zip(results, payloads))  # never a wrong payload here
    if scheme == "mpac":  # 32-bit MajorMark(+) rarely decodes exactly at 300 tokens, checked or not
        assert sum(r.payload == p for r, p in zip(results, payloads)) >= 2
    # the record test scores payloads through the same codeword mapping
    for g, p in zip(marked, payloads):
        match = match_records(detector, list(g.token_ids), [p, (p + 1) % key.config.capacity])
        assert match.payload == p and match.is_match


def test_detect_says_when_no_decoded_codeword_passes_the_check(tmp_path):
    from provmark.watermark.keys import save_key

    key_file, text_file = tmp_path / "key.json", tmp_path / "plain.txt"
    save_key(create_key("mpac", {"check_bits": 16}, secret=SECRET), key_file)
    text_file.write_text("The tide comes in twice a day because the moon pulls the sea toward it. " * 6)
    result = CliRunner().invoke(cli, ["detect", "--key", str(key_file), str(text_file)])
    assert result.exit_code == 0, result.output
    assert "payload: none (no decoded codeword passed the key's check bits)" in result.output
