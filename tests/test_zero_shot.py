"""Zero-shot attribution (detector.zero_shot): calibration of test (a) on A's own samples, the
statistics against closed forms and transformers' warpers, the conformal test (b), chunking,
attribution and bad inputs."""

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from provmark.detector.zero_shot import (
    HumanReference,
    SamplingSettings,
    TokenStats,
    ZeroShotScorer,
    attribute,
    bennett_log_p_value,
    load_human_texts,
    normal_log_p_value,
)
from provmark.errors import InvalidTextError, ParameterError

CALIBRATION_TEXTS, CALIBRATION_TOKENS = 2000, 32
TRUNCATED = SamplingSettings(temperature=0.7, top_k=50, top_p=0.9)
IDS_TOKENIZER = SimpleNamespace(bos_token_id=1, eos_token_id=None, pad_token_id=0)


def small_llama(seed: int, vocab: int = 512) -> LlamaForCausalLM:
    """A 1-layer random Llama (like conftest's tiny_model) over a small vocabulary, with weights
    large enough that its next-token distributions are far from uniform (entropy 2-4 nats)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, bos_token_id=1,
                         eos_token_id=None, initializer_range=0.5)
    return LlamaForCausalLM(config).eval()


def sample_ids(model, sampling: SamplingSettings, count: int, tokens: int, seed: int) -> list[list[int]]:
    """``count`` texts of ``tokens`` ids drawn by transformers' own generate from the start token."""
    torch.manual_seed(seed)
    start = torch.ones((count, 1), dtype=torch.int64)
    with torch.no_grad():
        out = model.generate(input_ids=start, attention_mask=torch.ones_like(start), do_sample=True,
                             temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                             max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0)
    return out[:, 1:].tolist()


@pytest.fixture(scope="module")
def model_a():
    return small_llama(0)


@pytest.fixture(scope="module", params=[SamplingSettings(), TRUNCATED], ids=["pure", "truncated"])
def calibration(request, model_a):
    """(sampling, stats of 2,000 texts A sampled with it) with a fixed seed."""
    ids = sample_ids(model_a, request.param, CALIBRATION_TEXTS, CALIBRATION_TOKENS, seed=1)
    scorer = ZeroShotScorer(model_a, IDS_TOKENIZER, sampling=request.param, batch_tokens=16384)
    return request.param, scorer, scorer.token_stats_ids(ids)


def stats_of(surprisal, entropy, variance, max_surprisal=None) -> TokenStats:
    arrays = [np.asarray(a, dtype=np.float64) for a in (surprisal, entropy, variance)]
    top = arrays[0] + 5 if max_surprisal is None else np.asarray(max_surprisal, dtype=np.float64)
    return TokenStats(*arrays, top)


# -- calibration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.01, 0.001])
@pytest.mark.parametrize("method", ["normal", "bennett"])
def test_written_by_a_rejects_a_own_samples_at_most_alpha_of_the_time(calibration, alpha, method):
    sampling, scorer, stats = calibration
    rejected = sum(not scorer.test_stats(s, alpha=alpha, method=method).consistent_with_model for s in stats)
    # Binomial(2000, alpha) exceeds its 99.9% quantile with probability 0.001: a calibrated test passes.
    assert rejected <= binom.ppf(0.999, len(stats), alpha), (sampling, method, rejected)


def test_z_scores_of_a_own_samples_are_standard_normal(calibration):
    _, _, stats = calibration
    z = np.array([s.z_score for s in stats])
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1
    assert np.mean(np.abs(z) > norm.ppf(0.975)) == pytest.approx(0.05, abs=0.015)


def test_no_token_of_a_own_samples_falls_outside_the_sampling_support(calibration):
    _, _, stats = calibration
    assert all(np.isfinite(s.surprisal).all() for s in stats)


def test_written_by_a_rejects_text_sampled_with_another_temperature(model_a):
    colder = sample_ids(model_a, SamplingSettings(temperature=0.6), 200, 64, seed=2)
    scorer = ZeroShotScorer(model_a, IDS_TOKENIZER, sampling=SamplingSettings(), batch_tokens=16384)
    results = [scorer.test_stats(s, alpha=0.01) for s in scorer.token_stats_ids(colder)]
    assert np.mean([not r.consistent_with_model for r in results]) > 0.5
    assert np.median([r.z_score for r in results]) < 0  # more predictable than A's own samples


def test_written_by_a_rejects_text_of_another_model(model_a):
    other = sample_ids(small_llama(7), SamplingSettings(), 200, CALIBRATION_TOKENS, seed=3)
    scorer = ZeroShotScorer(model_a, IDS_TOKENIZER, batch_tokens=16384)
    results = [scorer.test_stats(s, alpha=0.01) for s in scorer.token_stats_ids(other)]
    assert np.mean([not r.consistent_with_model for r in results]) > 0.9
    assert np.median([r.z_score for r in results]) > 0  # less predictable than A's own samples


# -- the statistics ------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", [SamplingSettings(), TRUNCATED, SamplingSettings(temperature=1.5, top_k=3),
                                      SamplingSettings(top_p=0.5)])
def test_sampling_distribution_matches_transformers_warpers(sampling):
    torch.manual_seed(0)
    logits = torch.randn(6, 101) * 3
    warped = logits.clone()
    warped = TemperatureLogitsWarper(sampling.temperature)(None, warped)
    if sampling.top_k:
        warped = TopKLogitsWarper(sampling.top_k)(None, warped)
    if sampling.top_p < 1:
        warped = TopPLogitsWarper(sampling.top_p)(None, warped)
    ours = sampling.log_probs(logits)
    expected = torch.log_softmax(warped.double(), dim=-1)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(expected))
    torch.testing.assert_close(ours[torch.isfinite(ours)], expected[torch.isfinite(expected)], rtol=0, atol=1e-5)


def test_statistics_of_a_uniform_support_are_log_k_with_no_variance():
    scorer = ZeroShotScorer(small_llama(0, vocab=16), IDS_TOKENIZER, sampling=SamplingSettings(top_k=4))
    logits = torch.tensor([[5.0, 5.0, 5.0, 5.0] + [0.0] * 12])
    surprisal, entropy, variance, top = scorer._stats(logits, torch.tensor([2]))
    assert surprisal[0] == pytest.approx(math.log(4)) and entropy[0] == pytest.approx(math.log(4))
    assert variance[0] == pytest.approx(0, abs=1e-12) and top[0] == pytest.approx(math.log(4))
    assert math.isinf(scorer._stats(logits, torch.tensor([9]))[0][0])  # outside the top-4 support


def test_variance_of_a_two_point_distribution_matches_its_closed_form():
    scorer = ZeroShotScorer(small_llama(0, vocab=16), IDS_TOKENIZER, sampling=SamplingSettings(top_k=2))
    p = 0.8
    logits = torch.tensor([[math.log(p), math.log(1 - p)] + [-30.0] * 14])
    _, entropy, variance, top = scorer._stats(logits, torch.tensor([0]))
    a, b = -math.log(p), -math.log(1 - p)
    assert entropy[0] == pytest.approx(p * a + (1 - p) * b)
    assert variance[0] == pytest.approx(p * (1 - p) * (a - b) ** 2)
    assert top[0] == pytest.approx(b)


def test_normal_p_value_is_two_sided():
    assert normal_log_p_value(0.0) == 0.0
    assert math.exp(normal_log_p_value(norm.ppf(0.975))) == pytest.approx(0.05)
    assert normal_log_p_value(-3.0) == normal_log_p_value(3.0)
    assert normal_log_p_value(60.0) < -1700  # far below float range, still finite
    assert normal_log_p_value(math.inf) == -math.inf


def test_bennett_p_value_is_never_below_the_gaussian_tail_bound():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(10, 300))
        entropy, variance = rng.uniform(0.5, 4, n), rng.uniform(0.1, 3, n)
        stats = stats_of(entropy + rng.normal(rng.normal(0, 0.5), 1.2, n), entropy, variance, entropy + 10)
        # The mixture of e-values never exceeds the best single one, exp(z^2/2).
        assert bennett_log_p_value(stats) >= min(0.0, math.log(2) - stats.z_score**2 / 2) - 1e-9
        if abs(stats.z_score) >= 1:
            assert bennett_log_p_value(stats) >= normal_log_p_value(stats.z_score)


def test_bennett_p_value_is_one_at_zero_deviation_and_small_far_out():
    stats = stats_of([2.0] * 100, [2.0] * 100, [1.0] * 100)
    assert bennett_log_p_value(stats) == 0.0
    far = stats_of([3.0] * 400, [2.0] * 400, [1.0] * 400)  # z = 20
    assert bennett_log_p_value(far) < math.log(1e-20)


def test_a_token_outside_the_support_rejects_with_p_zero(model_a):
    scorer = ZeroShotScorer(model_a, IDS_TOKENIZER)
    stats = stats_of([1.0, math.inf, 1.0], [1.0] * 3, [1.0] * 3)
    for method in ("normal", "bennett"):
        result = scorer.test_stats(stats, method=method)
        assert result.p_value_model == 0.0 and not result.consistent_with_model
        assert result.num_outside_support == 1 and result.to_dict()["z_score"] == "inf"


def test_result_is_frozen(model_a):
    result = ZeroShotScorer(model_a, IDS_TOKENIZER).test_stats(stats_of([1.0] * 20, [1.0] * 20, [1.0] * 20))
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.z_score = 0.0


# -- test (b): the conformal p-value -------------------------------------------------------------


def test_not_human_p_value_is_the_rank_among_references_cut_to_the_same_length():
    # Reference i has deviation i per token and unit variance: z at n tokens is i * sqrt(n).
    references = HumanReference([stats_of([i + 1.0] * 50, [1.0] * 50, [1.0] * 50) for i in range(-10, 30)])
    query = stats_of([1.0 - 2.5] * 9, [1.0] * 9, [1.0] * 9)  # deviation -2.5: below 8 of the 40 references
    p, used = references.p_value(query)
    assert used == 40 and p == pytest.approx((1 + 8) / 41)
    assert references.p_value(stats_of([1.0 - 100] * 9, [1.0] * 9, [1.0] * 9))[0] == pytest.approx(1 / 41)


def test_not_human_p_value_cuts_a_long_text_to_the_references_length():
    references = HumanReference([stats_of([2.0] * 30, [1.0] * 30, [1.0] * 30) for _ in range(20)]
                                + [stats_of([2.0] * 80, [1.0] * 80, [1.0] * 80)])
    p, used = references.p_value(stats_of([0.0] * 200, [1.0] * 200, [1.0] * 200))
    assert used == 21 and p == pytest.approx(1 / 22)


def test_not_human_test_is_skipped_with_too_few_references():
    references = HumanReference([stats_of([2.0] * 30, [1.0] * 30, [1.0] * 30) for _ in range(5)])
    assert references.p_value(stats_of([0.0] * 20, [1.0] * 20, [1.0] * 20)) == (None, 0)


def test_the_committed_human_set_is_long_enough_for_400_tokens(tokenizer):
    texts = load_human_texts()
    assert len(texts) == 200 and len(set(texts)) == 200
    assert min(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts[:20]) >= 450


# -- texts, chunking, prompts, attribution -------------------------------------------------------


def test_chunked_scoring_keeps_every_token_and_the_first_window_exact(tiny_model, tokenizer):
    text = load_human_texts(1)[0]
    whole = ZeroShotScorer(tiny_model, tokenizer).token_stats_ids([tokenizer(text, add_special_tokens=False)["input_ids"]])[0]
    chunked_scorer = ZeroShotScorer(tiny_model, tokenizer, max_context=64)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    chunked = chunked_scorer.token_stats_ids([ids])[0]
    assert chunked.num_tokens == whole.num_tokens == len(ids)
    np.testing.assert_allclose(chunked.entropy[:63], whole.entropy[:63], rtol=1e-6)
    assert chunked_scorer._truncated([1], ids) == len(ids) - 63
    windows = chunked_scorer._windows([1], ids)
    assert [f for _, f, _ in windows] == [1] + [e for _, _, e in windows[:-1]]  # contiguous, no overlap scored twice
    assert all(e - b <= 64 and f - b >= min(32, f) for b, f, e in windows)


def test_scoring_in_the_prompt_context_changes_the_statistics(tiny_model, tokenizer):
    scorer = ZeroShotScorer(tiny_model, tokenizer)
    text = "The lighthouse keeper climbed the stairs every evening to light the lamp."
    plain, prompted = (scorer.test([text], prompts, human=False)[0] for prompts in (None, ["Tell me a story."]))
    assert not plain.prompt_scored and prompted.prompt_scored
    assert plain.num_tokens == prompted.num_tokens and plain.z_score != prompted.z_score


def test_written_by_a_accepts_the_sampling_model_and_rejects_another_on_the_same_text(model_a):
    ids = sample_ids(model_a, SamplingSettings(), 1, 64, seed=4)[0]
    scorers = [ZeroShotScorer(small_llama(7), IDS_TOKENIZER, name="B"), ZeroShotScorer(model_a, IDS_TOKENIZER, name="A")]
    results = [s.test_stats(s.token_stats_ids([ids])[0]) for s in scorers]
    assert results[1].consistent_with_model and not results[0].consistent_with_model


def test_attribute_on_text_reports_every_candidate(tiny_model, tokenizer):
    text = load_human_texts(1)[0][:600]
    outcome = attribute([ZeroShotScorer(tiny_model, tokenizer, name="tiny")], text, human=False)
    assert outcome.winner == "tiny" and len(outcome.candidates) == 1
    assert outcome.consistent == outcome.candidates[0].consistent_with_model
    assert outcome.log_likelihood_per_char[0] < 0


# -- bad inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text_is_refused(tiny_model, tokenizer, text):
    with pytest.raises(InvalidTextError, match="text is empty"):
        ZeroShotScorer(tiny_model, tokenizer).test([text], human=False)


def test_too_short_text_is_refused(tiny_model, tokenizer):
    with pytest.raises(InvalidTextError, match=r"text too short to score: 2 tokens, need at least 10"):
        ZeroShotScorer(tiny_model, tokenizer).test(["Hello there"], human=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0}, "temperature must be a number > 0"),
    ({"top_k": -1}, "top_k must be an integer >= 0"),
    ({"top_p": 0}, r"top_p must lie in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must lie in \(0, 1\]"),
])
def test_bad_sampling_settings_are_refused(kwargs, message):
    with pytest.raises(ParameterError, match=message):
        SamplingSettings(**kwargs)


def test_bad_test_arguments_are_refused(tiny_model, tokenizer):
    scorer = ZeroShotScorer(tiny_model, tokenizer)
    stats = stats_of([1.0] * 20, [1.0] * 20, [1.0] * 20)
    with pytest.raises(ParameterError, match="alpha must lie in"):
        scorer.test_stats(stats, alpha=1.5)
    with pytest.raises(ParameterError, match="method must be"):
        scorer.test_stats(stats, method="azuma")
    with pytest.raises(ParameterError, match="give one per text"):
        scorer.test(["some text here"], ["a", "b"], human=False)
    with pytest.raises(ParameterError, match="texts must be a list"):
        scorer.test("some text here", human=False)
    with pytest.raises(ParameterError, match="give at least one candidate"):
        attribute([], "some text here")
