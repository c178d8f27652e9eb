"""Fused sampling: the Gumbel-max rule (reference path) and generate(fused_sampling=True)."""

import pytest
import torch

from provmark.detector import create_detector
from provmark.errors import ParameterError
from provmark.kernels.fused_sampling import fused_sample, sampling_seed_table, sampling_seeds
from provmark.kernels.prf import split_key
from provmark.kernels.repeated_context import repeated_context_mask
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


def test_the_seed_table_holds_every_steps_sampling_seeds():
    table = sampling_seed_table(2**63 + 5, 7, 20)  # 140 rows: the batched (numpy) hashing path
    assert torch.equal(table, torch.stack([sampling_seeds(2**63 + 5, step, 20) for step in range(7)]))


def _peaky_model(vocab=500):
    """A 1-layer random Llama whose next-token distributions are sharp: contexts repeat and the
    stop id (2) comes up, so the loop's repeated-context and stopping rules are exercised."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=2, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(25)
        model.lm_head.weight[2] = model.lm_head.weight[338] * 1.05  # a frequent id's twin, a little likelier
    return model


def _step_by_step(model, input_ids, mask, key, payloads, max_new, min_new, temperature, noise_key):
    """The fused loop as it was written before the generation state: the whole sequence through
    the model at every step, the public ``fused_sample`` and the whole-sequence repeated-context
    mask. What ``_fused_decode`` must reproduce."""
    from provmark.watermark.schemes import watermarker_class

    watermarker = watermarker_class(key.scheme)(key) if key is not None else None
    ids, done, start = input_ids, torch.zeros(input_ids.shape[0], dtype=torch.bool), input_ids.shape[1]
    for step in range(max_new):
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        scores = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1, :].float()
        if step < min_new:
            scores[:, 2] = float("-inf")
        sampling = dict(temperatures=torch.full((ids.shape[0],), temperature), noise_seeds=sampling_seeds(noise_key, step, ids.shape[0]))
        if watermarker is None or ids.shape[1] < watermarker.context_width:
            drawn = fused_sample(scores, **sampling)
        else:
            width = watermarker.context_width
            contexts = ids[:, -width:]
            params = watermarker.step_params(contexts, payloads)
            skip = repeated_context_mask(ids, start=start, context_width=width) if watermarker.skips_repeated_contexts else None
            drawn = fused_sample(scores, **sampling, keys=params.keys, salts=params.salts, contexts=contexts,
                                 shard_counts=params.shard_counts, preferred=params.preferred, deltas=params.deltas,
                                 skip=skip, position_keys=params.position_keys, pool_keys=params.pool_keys,
                                 pool_bits=params.pool_bits)
        drawn = torch.where(done, 2, drawn)
        done |= drawn == 2
        ids = torch.cat([ids, drawn[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids


@pytest.mark.parametrize("scheme,params,payloads", [
    (None, None, None),
    ("kgw", {"context_width": 1}, None),
    ("mpac", {"bits": 8, "context_width": 2}, [0xA5, 0x3C, 7]),
    ("vanilla", {"bits": 8, "segment_bits": 8}, [1, 2, 255]),
])
def test_the_fused_loop_draws_the_ids_of_a_step_by_step_loop_over_the_public_ops(scheme, params, payloads):
    from provmark.watermark.hook import WatermarkLogitsProcessor, _fused_decode

    model = _peaky_model()
    key = create_key(scheme, params, secret=bytes(range(32))) if scheme else None
    input_ids = torch.tensor([[2, 2, 40, 41], [7, 8, 9, 10], [2, 2, 2, 99]])  # left padding with the pad id
    mask = (input_ids != 2).long()
    mask[1, 0] = 1
    for min_new in (0, 12):
        settings = {"max_new_tokens": 24, "min_new_tokens": min_new, "temperature": 0.7}
        processor = WatermarkLogitsProcessor(key, payloads) if key is not None else None
        with torch.no_grad():
            fused = _fused_decode(model, input_ids, mask, processor, settings, 11, [2], 2, None)
            expected = _step_by_step(model, input_ids, mask, key, payloads, 24, min_new, 0.7, 11)
        assert torch.equal(fused, expected[:, : fused.shape[1]])
        assert bool((expected[:, fused.shape[1]:] == 2).all())  # columns cut only when every row had stopped
        if key is not None and key.config.context_width == 1:
            assert any(bool(repeated_context_mask(expected[:, : 4 + c], start=4, context_width=1).any()) for c in range(1, 24))
        if min_new == 0:
            assert bool((expected[:, 4:] == 2).any())  # some row stopped
