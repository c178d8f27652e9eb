"""The generation hook: transformers contract, batching, prompt handling, round trips."""

import warnings

import pytest
import torch

from provmark.detector import create_detector
from provmark.errors import InvalidTextError, ParameterError
from provmark.watermark.hook import WatermarkLogitsProcessor, generate
from provmark.watermark.keys import create_key

KEY = create_key("kgw", {"gamma": 0.25, "delta": 2.0}, secret=bytes(range(32)))


def test_processor_returns_new_scores_and_leaves_its_inputs_alone():
    processor = WatermarkLogitsProcessor(KEY)
    ids = torch.randint(0, 1000, (2, 6))
    scores = torch.randn(2, 49152)
    ids_before, scores_before = ids.clone(), scores.clone()
    out = processor(ids, scores)
    assert torch.equal(ids, ids_before) and torch.equal(scores, scores_before)
    assert out.shape == scores.shape and not torch.equal(out, scores)


def test_each_row_is_biased_as_if_it_were_alone_in_the_batch():
    ids = torch.tensor([[2, 2, 2, 50, 60, 70], [10, 20, 30, 40, 50, 60]])  # row 0 is left-padded
    scores = torch.randn(2, 3000)
    batch = WatermarkLogitsProcessor(KEY)(ids, scores)
    for row in range(2):
        alone = WatermarkLogitsProcessor(KEY)(ids[row : row + 1], scores[row : row + 1])
        assert torch.equal(batch[row : row + 1], alone)


def test_repetitions_inside_the_prompt_do_not_make_the_first_step_plain():
    processor = WatermarkLogitsProcessor(KEY)
    ids = torch.tensor([[5, 6, 7, 5, 6]])  # context (5, 6) twice, but only in the prompt
    scores = torch.zeros(1, 1000)
    assert processor(ids, scores).abs().sum() > 0


def test_a_repeated_generated_context_is_left_plain():
    processor = WatermarkLogitsProcessor(KEY)
    scores = torch.zeros(1, 1000)
    processor(torch.tensor([[1, 2, 3]]), scores)  # prompt [1, 2, 3]; step context (2, 3)
    steps = [[1, 2, 3, 8], [1, 2, 3, 8, 9], [1, 2, 3, 8, 9, 8]]
    for ids in steps:
        assert processor(torch.tensor([ids]), scores).abs().sum() > 0
    # next context (8, 9) was the context of the step at column 5
    assert torch.equal(processor(torch.tensor([[1, 2, 3, 8, 9, 8, 9]]), scores), scores)


def test_a_new_prompt_starts_a_new_generation():
    processor = WatermarkLogitsProcessor(KEY)
    scores = torch.zeros(1, 1000)
    processor(torch.tensor([[1, 2, 3]]), scores)
    processor(torch.tensor([[1, 2, 3, 8]]), scores)
    processor(torch.tensor([[1, 2, 3, 8, 9]]), scores)
    # A different prompt whose context (8, 9) was used by the previous generation: not repeated.
    assert processor(torch.tensor([[4, 8, 9]]), scores).abs().sum() > 0


def test_zero_bit_keys_refuse_payloads():
    with pytest.raises(ParameterError, match="kgw is a zero-bit scheme"):
        WatermarkLogitsProcessor(KEY, payloads=[1])


def test_processor_needs_a_key_object():
    with pytest.raises(ParameterError, match="key must be a WatermarkKey"):
        WatermarkLogitsProcessor("key.json")


def test_generate_round_trip_through_a_causal_lm(tiny_model, tokenizer):
    prompts = ["Tell me about rivers.", "A much longer prompt, so that the batch needs left padding here."]
    marked = generate(tiny_model, tokenizer, prompts, KEY, seed=1, max_new_tokens=60, min_new_tokens=60)
    plain = generate(tiny_model, tokenizer, prompts, None, seed=1, max_new_tokens=60, min_new_tokens=60)
    detector = create_detector(KEY)
    for g in marked:
        assert len(g.token_ids) == 60
        assert detector.detect(g.token_ids).p_value < 1e-6
    for g in plain:
        assert detector.detect(g.token_ids).p_value > 1e-3


def test_generate_is_reproducible_with_a_seed(tiny_model, tokenizer):
    a = generate(tiny_model, tokenizer, "Hello", KEY, seed=5, max_new_tokens=10)
    b = generate(tiny_model, tokenizer, "Hello", KEY, seed=5, max_new_tokens=10)
    assert a == b


def test_generate_refuses_empty_prompts_and_mismatched_payloads(tiny_model, tokenizer):
    with pytest.raises(InvalidTextError, match="a prompt is empty"):
        generate(tiny_model, tokenizer, ["ok", "  "], KEY)
    with pytest.raises(InvalidTextError, match="no prompts"):
        generate(tiny_model, tokenizer, [], KEY)
    with pytest.raises(ParameterError, match="got 1 payloads for 2 prompts"):
        generate(tiny_model, tokenizer, ["a", "b"], KEY, payloads=[1])


def test_greedy_generation_warns_once(tiny_model, tokenizer):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate(tiny_model, tokenizer, "Hi", KEY, do_sample=False, max_new_tokens=3)
    messages = [str(w.message) for w in caught if "do_sample=False" in str(w.message)]
    assert messages == ["watermarking with do_sample=False: outputs are deterministic per prompt"]


def test_a_begun_processor_never_compares_its_input_with_the_prompt(monkeypatch):
    # generate() calls begin(): from then on a step reads nothing back from the device.
    processor = WatermarkLogitsProcessor(KEY)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    processor.begin(prompt)
    unbegun = WatermarkLogitsProcessor(KEY)
    scores = torch.zeros(2, 1000)
    steps = [prompt, torch.tensor([[1, 2, 3, 8], [4, 5, 6, 9]]), torch.tensor([[1, 2, 3, 8, 2], [4, 5, 6, 9, 9]])]
    expected = [unbegun(ids, scores) for ids in steps]

    def refuse(*args):
        raise AssertionError("torch.equal called")

    monkeypatch.setattr(torch, "equal", refuse)
    assert all(bool((processor(ids, scores) == out).all()) for ids, out in zip(steps, expected))


def test_steps_the_caller_skipped_still_count_as_earlier_contexts():
    processor = WatermarkLogitsProcessor(KEY)
    scores = torch.zeros(1, 1000)
    processor(torch.tensor([[1, 2, 3]]), scores)  # prompt; the next call jumps three steps
    # the step at column 4 had context (3, 8); the next context is (3, 8) again
    assert torch.equal(processor(torch.tensor([[1, 2, 3, 8, 7, 3, 8]]), scores), scores)
