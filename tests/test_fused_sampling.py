"""Fused sampling: the Gumbel-max rule (reference path) and generate(fused_sampling=True)."""

import pytest
import torch

from provmark.detector import create_detector
from provmark.errors import ParameterError
from provmark.kernels.fused_sampling import fused_sample, sampling_seeds
from provmark.kernels.prf import split_key
from provmark.kernels.shard_bias import preferred_mask
from provmark.watermark.hook import generate
from provmark.watermark.keys import create_key

KEY = create_key("kgw", {"gamma": 0.25, "delta": 2.0}, secret=bytes(range(32)))


def test_sampled_frequencies_follow_the_softmax_of_the_logits_over_the_temperature():
    # 40,000 rows share one distribution over 8 ids; each row has its own noise seed.
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5, -3.0, 1.5, float("-inf")]])
    for temperature in (1.0, 0.5):
        n = 40_000
        sampled = fused_sample(logits.expand(n, 8), temperatures=torch.full((n,), temperature),
                               noise_seeds=sampling_seeds(7, int(temperature * 10), n))
        counts = torch.bincount(sampled, minlength=8).double()
        p = torch.softmax(logits[0].double() / temperature, dim=0)
        assert counts[7] == 0
        assert torch.all((counts - n * p).abs() <= 5 * (n * p * (1 - p)).sqrt() + 1)


def test_the_bias_raises_the_preferred_ids_by_delta_before_the_temperature():
    # With the bias fused in, sampling equals sampling the shard-biased logits without it.
    n, vocab = 2000, 64
    keys = torch.tensor([split_key(99)] * n)
    contexts = torch.randint(0, 1000, (n, 2), generator=torch.Generator().manual_seed(1))
    salts, counts, preferred = torch.zeros(n, dtype=torch.int64), torch.full((n,), 4), torch.full((n,), 1)
    deltas = torch.full((n,), 2.0)
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(2)).expand(n, vocab)
    seeds, temperatures = sampling_seeds(3, 0, n), torch.full((n,), 0.8)
    fused = fused_sample(logits, temperatures=temperatures, noise_seeds=seeds, keys=keys, salts=salts, contexts=contexts,
                         shard_counts=counts, preferred=preferred, deltas=deltas)
    mask = preferred_mask(keys, salts, contexts, counts, preferred, vocab)
    separate = fused_sample(torch.where(mask, logits + 2.0, logits), temperatures=temperatures, noise_seeds=seeds)
    assert torch.equal(fused, separate)
    assert float(mask.gather(1, fused[:, None]).double().mean()) > 0.5  # green share well above gamma


def test_fused_sample_refuses_bad_temperatures_and_partial_watermark_parameters():
    logits = torch.zeros(2, 10)
    with pytest.raises(ValueError, match="temperatures must be > 0"):
        fused_sample(logits, temperatures=torch.tensor([1.0, 0.0]), noise_seeds=sampling_seeds(0, 0, 2))
    with pytest.raises(ValueError, match="with keys, give salts"):
        fused_sample(logits, temperatures=torch.ones(2), noise_seeds=sampling_seeds(0, 0, 2), keys=torch.zeros(2, 2))


def test_fused_generation_is_watermarked_reproducible_and_plain_without_a_key(tiny_model, tokenizer):
    prompts = ["Tell me about rivers.", "A much longer prompt, so that the batch needs left padding here."]
    settings = dict(max_new_tokens=40, min_new_tokens=40, fused_sampling=True)
    marked = generate(tiny_model, tokenizer, prompts, KEY, seed=1, **settings)
    assert marked == generate(tiny_model, tokenizer, prompts, KEY, seed=1, **settings)
    assert marked != generate(tiny_model, tokenizer, prompts, KEY, seed=2, **settings)
    plain = generate(tiny_model, tokenizer, prompts, None, seed=1, **settings)
    detector = create_detector(KEY)
    assert all(len(g.token_ids) == 40 and detector.detect(g.token_ids).p_value < 1e-4 for g in marked)
    assert all(detector.detect(g.token_ids).p_value > 1e-3 for g in plain)


def test_fused_generation_carries_each_rows_payload(tiny_model, tokenizer):
    key = create_key("mpac", {"bits": 8, "delta": 4.0}, secret=bytes(range(32)))
    outs = generate(tiny_model, tokenizer, ["Rivers.", "Mountains and their weather."], key, payloads=[0xA5, 0x3C],
                    seed=3, max_new_tokens=80, min_new_tokens=80, fused_sampling=True)
    assert [create_detector(key).detect(g.token_ids).payload for g in outs] == [0xA5, 0x3C]


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"top_k": 50}, "fused_sampling has no top-k/top-p"),
        ({"do_sample": False}, "fused_sampling samples"),
        ({"num_beams": 2}, "fused_sampling takes only max_new_tokens, min_new_tokens and temperature; got \\['num_beams'\\]"),
        ({"temperature": 0}, "temperature must be a number > 0"),
    ],
)
def test_fused_generation_refuses_settings_it_cannot_honour(tiny_model, tokenizer, settings, message):
    with pytest.raises(ParameterError, match=message):
        generate(tiny_model, tokenizer, "Hi", KEY, fused_sampling=True, max_new_tokens=2, **settings)
