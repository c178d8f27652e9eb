"""KGW detection: the embedder's colouring, first-occurrence scoring, exact p-values, calibration."""

import json
import math

import pytest
import torch

from provmark.detector import DetectionResult, create_detector
from provmark.errors import InvalidTextError, ParameterError
from provmark.front import detect_text
from provmark.kernels.shard_bias import preferred_mask
from provmark.watermark.keys import create_key
from provmark.watermark.kgw import KGWWatermarker

SECRET = bytes(range(32))


def _key(**params):
    return create_key("kgw", params, secret=SECRET)


def _green_walk(key, length, start=(11, 12), seed=0):
    """A token sequence whose every token is green under its context (a perfectly marked text)."""
    detector = create_detector(key)
    gen = torch.Generator().manual_seed(seed)
    ids = list(start)
    h = key.config.context_width
    while len(ids) < length + len(start):
        candidates = torch.randint(0, 49152, (64,), generator=gen)
        contexts = torch.tensor([ids[-h:]] * 64)
        green = detector.green_mask(contexts, candidates)
        ids.append(int(candidates[green][0]))
    return ids[len(start):]


def test_detector_colours_tokens_exactly_as_the_embedder_prefers_them():
    key = _key(gamma=0.25, context_width=2)
    contexts = torch.randint(0, 49152, (8, 2), generator=torch.Generator().manual_seed(3))
    params = KGWWatermarker(key).step_params(contexts, None)
    mask = preferred_mask(params.keys, params.salts, contexts, params.shard_counts, params.preferred, 49152)
    detector = create_detector(key)
    for row in range(8):
        green = detector.green_mask(contexts[row].expand(49152, 2), torch.arange(49152))
        assert torch.equal(green, mask[row])


def test_green_fraction_of_random_text_is_gamma():
    key = _key(gamma=0.25)
    detector = create_detector(key)
    tokens = torch.randint(0, 49152, (200_000,), generator=torch.Generator().manual_seed(4))
    contexts = torch.randint(0, 49152, (200_000, 2), generator=torch.Generator().manual_seed(5))
    share = detector.green_mask(contexts, tokens).double().mean().item()
    assert share == pytest.approx(0.25, abs=4 * math.sqrt(0.25 * 0.75 / 200_000))


def test_a_fully_green_text_is_detected_with_an_exact_tiny_p_value():
    key = _key()
    result = create_detector(key).detect(_green_walk(key, 300))
    assert result.is_watermarked
    # 298 scored tokens (first h are context), all green: p = 0.25**298, about 10**-179.4
    assert result.num_scored_tokens == 298
    assert result.log10_p_value == pytest.approx(298 * math.log10(0.25), rel=1e-9)
    assert 0 < result.p_value < 1e-170


def test_p_values_below_float_range_are_reported_in_log10_and_never_as_zero():
    key = _key()
    result = create_detector(key).detect(_green_walk(key, 700))
    assert result.log10_p_value < -400
    assert result.p_value > 0.0
    assert json.loads(result.to_json())["log10_p_value"] < -400


def test_each_context_is_scored_once_at_its_first_occurrence():
    key = _key(context_width=1)
    detector = create_detector(key)
    once = detector.detect([1, 2, 3, 4])
    # Contexts 1, 2 and 3 recur with other tokens (9, 8, 7): generation left those steps plain.
    sequence = [1, 2, 3, 4, 1, 9, 2, 8, 3, 7]
    pairs, _ = detector.scored_pairs([sequence])
    assert once.num_scored_tokens == 3
    assert pairs.tolist() == [[1, 2], [2, 3], [3, 4], [4, 1], [9, 2], [8, 3]]
    assert detector.detect(sequence).num_scored_tokens == 6
    assert detector.detect(sequence + sequence).num_scored_tokens == 7  # adds only context 7 (-> 1)


def test_the_prompt_is_context_only():
    key = _key(context_width=2)
    detector = create_detector(key)
    pairs, _ = detector.scored_pairs([[7, 8, 9]], prompts=[[5, 6]])
    assert pairs.tolist() == [[5, 6, 7], [6, 7, 8], [7, 8, 9]]
    assert detector.detect([7, 8, 9], prompt_ids=[5, 6]).num_scored_tokens == 3
    assert detector.detect([7, 8, 9]).num_scored_tokens == 1


def test_empty_input_is_not_watermarked_with_p_one():
    result = create_detector(_key()).detect([])
    assert (result.p_value, result.num_scored_tokens, result.is_watermarked) == (1.0, 0, False)


def test_batch_detection_equals_one_by_one():
    key = _key()
    detector = create_detector(key)
    gen = torch.Generator().manual_seed(8)
    texts = [torch.randint(0, 500, (n,), generator=gen).tolist() for n in (0, 1, 5, 50, 300)] + [_green_walk(key, 40)]
    assert detector.detect_batch(texts) == [detector.detect(t) for t in texts]


def test_result_schema_fields_and_json():
    result = create_detector(_key()).detect(list(range(100)))
    data = json.loads(result.to_json())
    for name in ("is_watermarked", "p_value", "log10_p_value", "num_scored_tokens", "scheme", "key_id", "score"):
        assert name in data
    assert data["scheme"] == "kgw" and data["key_id"] == _key().key_id and data["payload"] is None
    assert isinstance(result, DetectionResult)


def test_alpha_out_of_range_is_refused():
    with pytest.raises(ParameterError, match="alpha must lie in"):
        create_detector(_key(), alpha=1.0)


class _WhitespaceTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [hash(w) % 1000 for w in text.split()]}


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_detect_text_refuses_empty_text(text):
    with pytest.raises(InvalidTextError, match="text is empty"):
        detect_text(_key(), text, _WhitespaceTokenizer())


def test_detect_text_refuses_text_too_short_to_score():
    with pytest.raises(InvalidTextError, match="text too short to score: 1 scorable tokens, need at least 10"):
        detect_text(_key(), "one two three", _WhitespaceTokenizer(), min_tokens=10)


def _zipf_sequences(count, length, seed):
    """Unwatermarked token sequences with natural-text-like repetition (Zipf, exponent 1.1)."""
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, 49153, dtype=torch.float64)
    weights = ranks ** -1.1
    ids = torch.multinomial(weights, count * length, replacement=True, generator=gen)
    return ids.view(count, length).tolist()


@pytest.mark.parametrize("context_width", [1, 2])
def test_false_positive_rate_on_10000_unwatermarked_sequences_is_at_most_alpha(context_width):
    # 10 keys x 1,000 sequences of 200 tokens. The bound allows three binomial standard errors.
    sequences = _zipf_sequences(10_000, 200, seed=context_width)
    p_values = []
    for k in range(10):
        key = create_key("kgw", {"context_width": context_width}, secret=bytes([k + 1]) * 32)
        results = create_detector(key).detect_batch(sequences[k * 1000 : (k + 1) * 1000])
        p_values += [r.p_value for r in results]
    assert len(p_values) == 10_000
    for alpha in (0.01, 0.001):
        rate = sum(p <= alpha for p in p_values) / len(p_values)
        assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / len(p_values)), (alpha, rate)


def test_first_occurrence_dedup_is_the_same_when_rows_are_too_wide_to_pack():
    # Ids near 2**31 with two tokens of context need more than 63 bits per row: the row-wise path.
    detector = create_detector(_key(context_width=2))
    small = [[1, 2, 3, 1, 2, 4, 1, 2, 3, 5], [7, 7, 7, 7]]
    wide = [[t + 2**31 - 10 for t in seq] for seq in small]
    narrow_pairs, narrow_index = detector.scored_pairs(small)
    wide_pairs, wide_index = detector.scored_pairs(wide)
    assert torch.equal(wide_pairs - (2**31 - 10), narrow_pairs) and torch.equal(wide_index, narrow_index)
    assert narrow_pairs.tolist() == [[1, 2, 3], [2, 3, 1], [3, 1, 2], [2, 4, 1], [4, 1, 2], [7, 7, 7]]
    assert narrow_index.tolist() == [0, 0, 0, 0, 0, 1]


def test_scored_pairs_are_the_same_for_lists_tuples_tensors_and_missing_prompts():
    detector = create_detector(_key(context_width=2))
    sequences, prompts = [[1, 2, 3, 1, 2, 4], [], [9], [5, 6, 7, 5, 6, 7]], [[8, 1], None, [3, 3], []]
    pairs, index = detector.scored_pairs(sequences, prompts)
    for form in (tuple, torch.tensor):
        other = [form(seq) if seq else seq for seq in sequences]
        other_pairs, other_index = detector.scored_pairs(other, [None if p is None else form(p) for p in prompts])
        assert torch.equal(other_pairs, pairs) and torch.equal(other_index, index)
    # Context (1, 2) recurs in sequence 0 and (5, 6) in sequence 3: scored once each.
    assert pairs.tolist() == [[8, 1, 1], [1, 1, 2], [1, 2, 3], [2, 3, 1], [3, 1, 2], [3, 3, 9], [5, 6, 7], [6, 7, 5],
                              [7, 5, 6]]
    assert index.tolist() == [0, 0, 0, 0, 0, 2, 3, 3, 3]
    with pytest.raises(ParameterError, match="non-negative"):
        detector.scored_pairs([[1, 2, -3]])
