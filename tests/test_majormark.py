"""MajorMark and MajorMark+: codewords, the embedder/decoder contract, round trips, calibration."""

import itertools
import math

import numpy as np
import pytest
import torch

from provmark.detector import create_detector
from provmark.detector.majormark import two_means_split
from provmark.errors import ParameterError
from provmark.kernels.shard_bias import preferred_mask
from provmark.watermark.base import positions
from provmark.watermark.hook import generate
from provmark.watermark.keys import create_key
from provmark.watermark.schemes import watermarker_class
from provmark.watermark.majormark import (
    MajorMarkConfig,
    MajorMarkPlusConfig,
    MajorMarkPlusWatermarker,
    MajorMarkWatermarker,
    block_candidates,
    majority,
)
from tests.test_detector_kgw import _zipf_sequences

SECRET = bytes(range(32))


@pytest.mark.parametrize(
    "config_class,params,message",
    [
        (MajorMarkConfig, {"bits": 1}, "bits must be an integer in \\[2, 64\\]"),
        (MajorMarkConfig, {"bits": 65}, "bits must be"),
        (MajorMarkPlusConfig, {"bits": 30}, "bits must be a multiple of block_size 4"),
        (MajorMarkPlusConfig, {"block_size": 1}, "block_size must be an integer in \\[2, 8\\]"),
        (MajorMarkPlusConfig, {"delta": -2}, "delta must be"),
    ],
)
def test_bad_parameters_are_refused(config_class, params, message):
    with pytest.raises(ParameterError, match=message):
        config_class(**params)


def test_majormark_maps_payloads_bijectively_onto_codewords_that_are_not_constant():
    config = MajorMarkConfig(bits=6)
    codewords = [tuple(config.codeword_bits(p)) for p in range(config.capacity)]
    assert config.capacity == 62 and len(set(codewords)) == 62
    assert (0,) * 6 not in codewords and (1,) * 6 not in codewords
    assert all(config.payload_of(list(c)) == p for p, c in enumerate(codewords))
    with pytest.raises(ParameterError, match="integers in \\[0, 62\\)"):
        config.codeword_bits(62)


def test_majormark_plus_never_produces_a_constant_block():
    config = MajorMarkPlusConfig(bits=8, block_size=4)
    assert config.capacity == 14**2
    seen = set()
    for payload in range(config.capacity):
        blocks = config.blocks(payload)
        assert all(0 < sum(block) < 4 for block in blocks)
        assert config.payload_of(blocks) == payload
        seen.add(tuple(map(tuple, blocks)))
    assert len(seen) == 196
    assert math.log2(MajorMarkPlusConfig(bits=32).capacity) == pytest.approx(30.46, abs=0.01)


@pytest.mark.parametrize(
    "config",
    [MajorMarkConfig(bits=6), MajorMarkConfig(bits=64), MajorMarkPlusConfig(bits=8), MajorMarkPlusConfig(bits=64, block_size=8)],
)
def test_payloads_of_many_codewords_decode_like_payload_of(config):
    payloads = sorted({0, 1, config.capacity - 1, config.capacity // 3, config.capacity // 7})
    if isinstance(config, MajorMarkPlusConfig):
        codewords = [config.blocks(p) for p in payloads]
    else:
        codewords = [config.codeword_bits(p) for p in payloads]
    assert config.payloads_of(np.array(codewords)) == payloads == [config.payload_of(c) for c in codewords]


def test_majority_ties_go_to_one_and_candidates_cover_every_block():
    assert majority([1, 1, 0, 0]) == (1, 2) and majority([0, 0, 0, 1]) == (0, 3)
    for size in range(2, 9):
        blocks = [list(b) for b in itertools.product([0, 1], repeat=size) if 0 < sum(b) < size]
        assert {majority(b) for b in blocks} == set(block_candidates(size))
        assert len(block_candidates(size)) == size - 1


def test_two_means_split_is_the_least_squares_split_within_the_allowed_sizes():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        counts = torch.randint(0, 20, (8,), generator=gen).tolist()
        sizes = range(4, 8)
        best = min(
            (sum((counts[i] - sum(counts[j] for j in h) / len(h)) ** 2 for i in h)
             + sum((counts[i] - sum(counts[j] for j in range(8) if j not in h) / (8 - len(h))) ** 2
                   for i in range(8) if i not in h), k)
            for k in sizes for h in [sorted(range(8), key=lambda i: (-counts[i], i))[:k]]
        )
        high = two_means_split(counts, sizes)
        assert len(high) in sizes
        cost = sum((counts[i] - sum(counts[j] for j in high) / len(high)) ** 2 for i in high) + sum(
            (counts[i] - sum(counts[j] for j in range(8) if j not in high) / (8 - len(high))) ** 2
            for i in range(8) if i not in high)
        assert cost == pytest.approx(best[0], abs=1e-9)


def test_majormark_prefers_the_majority_bit_shards_with_lambda_in_the_salt():
    key = create_key("majormark", {"bits": 8}, secret=SECRET)
    params = MajorMarkWatermarker(key).step_params(torch.tensor([[5, 6], [7, 8]]), [0b00010110 - 1, 0b11101000 - 1])
    # codeword 00010110: lambda 0 (five zeros) -> shards 0, 1, 2, 4, 7;
    # 11101000: four of each, a tie, so lambda 1 -> shards 0, 1, 2, 4
    assert params.salts.tolist() == [0, 1]
    assert params.preferred.tolist() == [0b10010111, 0b00010111]
    assert params.shard_counts.tolist() == [8, 8]


def test_majormark_plus_embeds_the_block_the_context_selects():
    key = create_key("majormark+", {"bits": 16}, secret=SECRET)
    marker = MajorMarkPlusWatermarker(key)
    contexts = torch.randint(0, 49152, (6, 2), generator=torch.Generator().manual_seed(2))
    payload = 12345
    params = marker.step_params(contexts, [payload] * 6).resolved(contexts)
    blocks = key.config.blocks(payload)
    chosen = positions(marker.position_key, contexts, 4)
    detector = create_detector(key)
    for row in range(6):
        block = blocks[int(chosen[row])]
        lam, count = majority(block)
        assert int(params.salts[row]) == (int(chosen[row]) << 6) | (lam << 5) | count
        assert int(params.preferred[row]) == sum(1 << i for i, bit in enumerate(block) if bit == lam)
        # the decoder recomputes the same block and, under the true candidate, the same shards
        mask = preferred_mask(params.keys[row : row + 1], params.salts[row : row + 1], contexts[row : row + 1],
                              params.shard_counts[row : row + 1], params.preferred[row : row + 1], 4096)[0]
        tokens = torch.arange(4096)
        scores = detector._score_tokens(contexts[row].expand(4096, 2), tokens)
        assert torch.all(scores[:, 0] == chosen[row])
        k = detector._candidates.index((lam, count))
        assert torch.equal(((int(params.preferred[row]) >> scores[:, 1 + k]) & 1).bool(), mask)


@pytest.mark.parametrize("scheme", ["majormark", "majormark+"])
def test_per_row_payloads_decode_each_row_to_its_own_payload(tiny_model, tokenizer, scheme):
    key = create_key(scheme, {"bits": 16, "delta": 3.0}, secret=SECRET)
    payloads = [0x1234, 0x7A5C, 0x0F0F]  # balanced enough that every bit is decodable
    marked = generate(tiny_model, tokenizer, ["one", "two two", "three three three"], key, payloads=payloads,
                      seed=0, max_new_tokens=300, min_new_tokens=300)
    results = create_detector(key).detect_batch([g.token_ids for g in marked])
    assert [r.payload for r in results] == payloads
    assert all(r.is_watermarked and r.p_value < 1e-6 for r in results)
    assert all(len(r.bit_confidences) == 16 for r in results)


def test_a_64_bit_majormark_key_prefers_shard_63_and_generates_detectable_text(tiny_model, tokenizer):
    from provmark.detector.explain import explain

    key = create_key("majormark", {"bits": 64, "delta": 4.0}, secret=SECRET)
    payload = 0x5555_5555_5555_5555 - 1  # codeword 0101...01: 32 ones, a tie, so 1 is the majority bit
    step = watermarker_class("majormark")(key).step_params(torch.zeros((1, 2), dtype=torch.int64), [payload])
    mask = int(step.preferred[0])
    assert [(mask >> i) & 1 for i in range(64)] == [0, 1] * 32  # shard i is codeword bit i, MSB first
    (marked,) = generate(tiny_model, tokenizer, ["one"], key, payloads=[payload], seed=0, max_new_tokens=300,
                         min_new_tokens=300)
    explanation = explain(create_detector(key), marked.token_ids)
    assert explanation.result.is_watermarked and explanation.result.p_value < 1e-6
    bits = [int(b) for b in format(explanation.result.payload + 1, "064b")]
    assert sum(b == c for b, c in zip(bits, [0, 1] * 32)) >= 56
    scored = [t.expected for t in explanation.tokens if t.hit is not None]
    assert scored and all(0 < e < 1 for e in scored)  # the mask's sign bit counted as shard 63, not as 64 more


@pytest.mark.parametrize("scheme", ["majormark", "majormark+"])
def test_empty_text_gets_p_one(scheme):
    result = create_detector(create_key(scheme, secret=SECRET)).detect([])
    assert (result.p_value, result.payload, result.is_watermarked) == (1.0, None, False)


@pytest.mark.parametrize("scheme", ["majormark", "majormark+"])
def test_false_positive_rate_on_10000_unwatermarked_sequences_is_at_most_alpha(scheme):
    sequences = _zipf_sequences(10_000, 200, seed=20 + len(scheme))
    p_values = []
    for k in range(10):
        key = create_key(scheme, {"bits": 32}, secret=bytes([k + 1]) * 32)
        p_values += [r.p_value for r in create_detector(key).detect_batch(sequences[k * 1000 : (k + 1) * 1000])]
    for alpha in (0.01, 0.001):
        rate = sum(p <= alpha for p in p_values) / len(p_values)
        assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / len(p_values)), (alpha, rate)
