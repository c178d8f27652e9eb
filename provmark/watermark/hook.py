"""The generation hook: a transformers ``LogitsProcessor`` and a batched ``generate()`` helper.

``WatermarkLogitsProcessor`` fits the ``generate(logits_processor=...)`` contract of any causal LM:
it reads ``(input_ids, scores)`` and returns new scores without touching its inputs. It works on
left-padded batches; the prompt (padding included) is never a watermarked step, and for the
shard schemes a step whose context already occurred earlier in the same row's generation is left
unbiased (see ``kernels.repeated_context``). Place it before temperature and top-k/top-p
warpers (``generate`` does): Balance-Marking reads the model's distribution from its input.

``generate(..., fused_sampling=True)`` runs provmark's own decoding loop instead of
``model.generate``: the model with its key/value cache, then one step of a
``kernels.FusedSampler`` (built once per call, its state on the model's device) that adds the
watermark bias, applies the temperature and draws the token by keyed Gumbel-max (one Triton
launch on a GPU, Vanilla-Marking's pool index included; Balance-Marking biases first, then
samples).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from provmark.errors import InvalidTextError, ParameterError
from provmark.kernels.fused_sampling import FusedSampler
from provmark.kernels.repeated_context import RepeatedContexts
from provmark.watermark.keys import WatermarkKey
from provmark.watermark.models import format_prompts
from provmark.watermark.schemes import watermarker_class

__all__ = ["WatermarkLogitsProcessor", "Generation", "generate"]


class WatermarkLogitsProcessor(LogitsProcessor):
    """Biases each step's logits towards the key's preferred ids.

    Args:
        key: the watermark key (scheme and parameters included).
        payloads: one payload per batch row for multi-bit schemes, or None.
        proxy: Balance-Marking only: a ``watermark.proxy.Proxy`` over a model with the same
            tokenizer (the generating model itself is the usual choice); a key whose
            ``proxy_context`` is "prompt" may leave it None to use the generating model's logits.

    Call args:
        input_ids: int (B, T) prompt plus the tokens generated so far.
        scores: float (B, V) next-token logits.

    Returns:
        float (B, V) new logits; ``scores`` is not modified.

    The processor remembers the prompt of the generation it is serving, so it can tell generated
    steps from prompt tokens, and each row's contexts so far (``kernels.RepeatedContexts``, on the
    device on a GPU), so a repeated context costs the same at every step. ``begin(prompt_ids)``
    names the prompt (``generate`` calls it); a step then reads nothing back from the device.
    Without it, a call whose input does not extend the last one by the same prompt columns (one
    comparison read back per call) starts over, so one instance can serve several
    ``generate()`` calls in turn (not concurrently).
    """

    def __init__(self, key: WatermarkKey, payloads: Sequence | None = None, *, proxy=None):
        if not isinstance(key, WatermarkKey):
            raise ParameterError(f"key must be a WatermarkKey (see provmark.watermark.keys.load_key), got {type(key).__name__}")
        self.key = key
        scheme_class = watermarker_class(key.scheme)
        if proxy is not None and not scheme_class.uses_proxy:
            raise ParameterError(f"{key.scheme} uses no proxy model; drop the proxy")
        self.watermarker = scheme_class(key, proxy=proxy) if scheme_class.uses_proxy else scheme_class(key)
        self.payloads = None if payloads is None else list(payloads)
        if self.payloads is not None:
            self.watermarker.step_params(torch.zeros((len(self.payloads), key.config.context_width), dtype=torch.int64), self.payloads)
        self._prompt: torch.Tensor | None = None
        self._begun = False
        self._length: int | None = None
        self._repeated: RepeatedContexts | None = None
        self._sampler_params = None

    def begin(self, prompt_ids: torch.Tensor) -> None:
        """Start a generation from ``prompt_ids`` (B, P): the next call at length P is its first
        step. ``generate`` calls it; without it, the processor takes the first input it sees
        (and any input that does not extend the last one by a prompt it checks) as a prompt."""
        self._prompt = prompt_ids
        self._begun = True
        self._length = None
        self._repeated = None

    def _follow(self, input_ids: torch.Tensor) -> int:
        """Track the generation ``input_ids`` belongs to; returns its first generated column.

        A call that extends the last one (same rows, longer) continues its generation; after
        ``begin`` that is all there is to check, so a step costs no device round trip. Without
        ``begin`` the prompt columns are compared too (one read of a comparison per call), so
        one instance can serve several ``generate()`` calls in turn."""
        prompt, length = self._prompt, self._length
        rows, total = input_ids.shape
        if prompt is not None and self._begun and length is None and tuple(prompt.shape) == (rows, total):
            length = total  # the first step after begin()
        elif not (
            prompt is not None
            and prompt.shape[0] == rows
            and length is not None
            and length < total
            and (self._begun or torch.equal(input_ids[:, : prompt.shape[1]], prompt))
        ):
            self._prompt, self._begun, self._repeated = input_ids.clone(), False, None
            length = total
        start = self._prompt.shape[1]
        width = self.watermarker.context_width
        if self.watermarker.skips_repeated_contexts and self._repeated is None:
            self._repeated = RepeatedContexts(rows, width, _TABLE_STEPS, input_ids.device)
        if self._repeated is not None:
            # steps the caller skipped (the processor was not called at them) still count
            for column in range(max(start, width, (self._length or 0) + 1), total):
                self._repeated.step(input_ids, column)
        self._length = total
        return start

    def step_inputs(self, input_ids: torch.Tensor):
        """(contexts int64 (B, h), skip bool (B,) or None, start column) of the step after
        ``input_ids``, or None when there is no full context to seed from yet."""
        start = self._follow(input_ids)
        width = self.watermarker.context_width
        if input_ids.shape[1] < width:
            return None
        if self.payloads is not None and len(self.payloads) != input_ids.shape[0]:
            raise ParameterError(f"got {len(self.payloads)} payloads for a batch of {input_ids.shape[0]} rows")
        contexts = input_ids[:, -width:]
        skip = None
        if self._repeated is not None:
            skip = self._repeated.step(input_ids, input_ids.shape[1])
        return contexts, skip, start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = self.step_inputs(input_ids)
        if step is None:
            return scores
        contexts, skip, start = step
        return self.watermarker.bias(input_ids, scores, contexts, self.payloads, skip, start)

    def sampler(self, prompt_ids: torch.Tensor, **settings) -> FusedSampler:
        """A ``kernels.FusedSampler`` for a generation from ``prompt_ids`` under this key, with
        a shard scheme's parameters built once (they do not change during a generation).
        ``settings`` are the sampler's (steps, temperature, noise_key, stop_ids, pad_id, min_new)."""
        watermarker = self.watermarker
        params = None
        if watermarker.shard_rule:
            width = watermarker.context_width
            params = watermarker.step_params(prompt_ids.new_zeros((prompt_ids.shape[0], width)), self.payloads)
        self._sampler_params = params
        return FusedSampler(prompt_ids, context_width=watermarker.context_width,
                            skips_repeated_contexts=watermarker.shard_rule and watermarker.skips_repeated_contexts,
                            params=params, **settings)

    def sample(self, sampler: FusedSampler, logits: torch.Tensor) -> torch.Tensor:
        """One step of ``sampler`` (made by ``sampler()``) under the watermark: shard schemes
        gave their step parameters to the sampler, whose kernel applies them; others bias
        ``logits`` first (the scheme's own rule) and sample the result. Returns the (B,) ids."""
        watermarker = self.watermarker
        if self._sampler_params is not None:
            return sampler.step(logits)
        if sampler.column < watermarker.context_width:
            return sampler.step(logits, watermarked=False)
        contexts = sampler.contexts()
        # in float32, as the bias was always added (the shard kernels upcast as they load instead)
        biased = watermarker.bias(sampler.generated(), logits.float(), contexts, self.payloads, None, sampler.prompt_length)
        return sampler.step(biased, watermarked=False)


_TABLE_STEPS = 4096
"""Steps a processor's repeated-context tables are sized for when it does not know the length
of the generation (transformers' ``generate`` does not say); past it they grow."""


class _ProgressCriteria(StoppingCriteria):
    """Never stops generation; advances a progress bar by one step per call."""

    def __init__(self, bar):
        self.bar = bar

    def __call__(self, input_ids, scores, **kwargs):
        self.bar.update(1)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@dataclass(frozen=True)
class Generation:
    """One generated completion: the text, its token ids and the prompt it answers."""

    prompt: str
    text: str
    token_ids: tuple[int, ...]


_SAMPLING_DEFAULTS = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 200}


def generate(
    model,
    tokenizer,
    prompts: Sequence[str] | str,
    key: WatermarkKey | None,
    payloads: Sequence | None = None,
    *,
    chat: bool | None = None,
    seed: int | None = None,
    progress: bool = False,
    proxy=None,
    fused_sampling: bool = False,
    **gen_kwargs,
) -> list[Generation]:
    """Generate one watermarked completion per prompt in a single batched ``model.generate`` call
    (or, with ``fused_sampling``, one batched run of provmark's own decoding loop).

    Args:
        model, tokenizer: any transformers causal LM and its tokenizer.
        prompts: a prompt or a list of prompts (one batch row each).
        key: the watermark key; None generates without a watermark (for baselines).
        payloads: one payload per prompt for multi-bit schemes.
        chat: apply the tokenizer's chat template (None: when it has one).
        seed: seed torch's RNG first, for reproducible sampling.
        progress: show a progress bar on stderr.
        proxy: Balance-Marking's proxy when it is not the generating model (see
            ``WatermarkLogitsProcessor``); by default the generating model serves.
        fused_sampling: decode with provmark's own loop and ``kernels.fused_sample`` (bias,
            temperature and Gumbel-max sampling in one kernel on a GPU) instead of
            ``model.generate``. Its noise is keyed by ``seed`` (drawn from torch's RNG when None),
            so a seed gives the same text wherever the model's logits agree. It takes only
            ``max_new_tokens``, ``min_new_tokens`` and ``temperature`` (pure sampling: no
            top-k/top-p, no greedy decoding).
        gen_kwargs: passed to ``model.generate``; defaults are pure sampling
            (do_sample, temperature 1, no top-k/top-p) and 200 new tokens.

    Returns:
        One ``Generation`` per prompt, special tokens removed from the text.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise InvalidTextError("no prompts given")
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidTextError("a prompt is empty; give some text to continue")
    if payloads is not None and len(payloads) != len(prompts):
        raise ParameterError(f"got {len(payloads)} payloads for {len(prompts)} prompts; give one per prompt")
    scheme_class = watermarker_class(key.scheme) if key is not None else None  # refuses a scheme for finished text
    processors = LogitsProcessorList(gen_kwargs.pop("logits_processor", None) or [])
    criteria = StoppingCriteriaList(gen_kwargs.pop("stopping_criteria", None) or [])
    settings = {**_SAMPLING_DEFAULTS, **gen_kwargs}
    if fused_sampling:
        _check_fused_settings(settings, processors, criteria)
    elif not settings.get("do_sample", False):
        # Greedy or beam decoding still follows the biased logits, but every identical prompt
        # gives the identical text: say so once rather than silently change the request.
        warnings.warn("watermarking with do_sample=False: outputs are deterministic per prompt", stacklevel=2)
    texts = format_prompts(tokenizer, prompts, chat=chat)
    has_template = texts != prompts
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not has_template)
    device = next(model.parameters()).device
    input_ids = encoded["input_ids"].to(device)
    attention_mask = encoded["attention_mask"].to(device)
    if key is not None:
        if proxy is None and scheme_class.uses_proxy and key.config.proxy_context != "prompt":
            from provmark.watermark.proxy import Proxy

            proxy = Proxy(model, tokenizer)
        processors.append(WatermarkLogitsProcessor(key, payloads, proxy=proxy))
        processors[-1].begin(input_ids)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings["max_new_tokens"], desc="generating", unit="tok", leave=False)
        criteria.append(_ProgressCriteria(bar))
    if seed is not None:
        torch.manual_seed(seed)
    stop_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    try:
        with torch.no_grad():
            if fused_sampling:
                noise_key = seed if seed is not None else int(torch.randint(0, 2**62, ()))
                processor = processors[-1] if key is not None else None
                output = _fused_decode(model, input_ids, attention_mask, processor, settings, noise_key,
                                       sorted(stop_ids), tokenizer.pad_token_id, bar)
            else:
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    logits_processor=processors,
                    stopping_criteria=criteria,
                    pad_token_id=tokenizer.pad_token_id,
                    **settings,
                )
    finally:
        if bar is not None:
            bar.close()
    results = []
    for prompt, ids in zip(prompts, output[:, input_ids.shape[1] :].tolist()):
        end = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
        ids = ids[:end]
        results.append(Generation(prompt=prompt, text=tokenizer.decode(ids, skip_special_tokens=True), token_ids=tuple(ids)))
    return results


_FUSED_SETTINGS = {"do_sample", "temperature", "top_k", "top_p", "max_new_tokens", "min_new_tokens"}


def _check_fused_settings(settings: dict, processors, criteria) -> None:
    """Raise ``ParameterError`` for what the fused loop cannot honour (it never drops a setting)."""
    unknown = sorted(set(settings) - _FUSED_SETTINGS)
    if unknown or processors or criteria:
        what = unknown + (["logits_processor"] if processors else []) + (["stopping_criteria"] if criteria else [])
        raise ParameterError(f"fused_sampling takes only max_new_tokens, min_new_tokens and temperature; got {what}")
    if not settings["do_sample"]:
        raise ParameterError("fused_sampling samples; drop do_sample=False or fused_sampling")
    if settings["top_k"] not in (0, None) or settings["top_p"] not in (1.0, None):
        raise ParameterError(f"fused_sampling has no top-k/top-p, got top_k={settings['top_k']}, top_p={settings['top_p']}")
    temperature = settings["temperature"]
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ParameterError(f"temperature must be a number > 0, got {temperature!r}")


STOP_CHECK_EVERY = 16
"""Steps between two reads of the done flags on a GPU, when rows may stop early (each read waits
for the device); on a CPU the flags are read at every step, since a read costs nothing there."""


def _fused_decode(model, input_ids, attention_mask, processor, settings, noise_key, stop_ids, pad_id, bar):
    """Decode ``settings["max_new_tokens"]`` steps with the key/value cache, sampling each with a
    ``kernels.FusedSampler``; a row that emitted a stop id is padded with ``pad_id`` from then on
    (stop ids are masked before ``min_new_tokens``). Returns int64 (B, T + new) like
    ``model.generate``, or shorter when every row stopped (the columns cut are all padding).

    Per step the host reads nothing back (the done flags every ``STOP_CHECK_EVERY`` steps on a
    GPU, only when rows can stop early) and dispatches, besides the model, the logits view, the
    sampler's launch and step count, the attention-mask view and the position update."""
    batch, prompt = input_ids.shape
    max_new, min_new = settings["max_new_tokens"], settings.get("min_new_tokens") or 0
    sampler_settings = dict(steps=max_new, temperature=settings["temperature"], noise_key=noise_key, stop_ids=stop_ids,
                            pad_id=pad_id if pad_id is not None else stop_ids[0], min_new=min_new)
    if processor is None:
        sampler = FusedSampler(input_ids, **sampler_settings)
    else:
        sampler = processor.sampler(input_ids, **sampler_settings)
    mask = torch.cat([attention_mask, attention_mask.new_ones((batch, max_new))], dim=1)
    positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    step_ids, past = input_ids, None
    can_stop = bool(stop_ids) and min_new < max_new
    check_every = STOP_CHECK_EVERY if sampler.fused else 1
    for step in range(max_new):
        out = model(input_ids=step_ids, attention_mask=mask[:, : prompt + step], position_ids=positions,
                    past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits.select(1, -1)
        if processor is None:
            sampler.step(logits)
        else:
            processor.sample(sampler, logits)
        if bar is not None:
            bar.update(1)
        if can_stop and step + 1 >= min_new and (step + 1) % check_every == 0 and bool(sampler.done.all()):
            break
        if step == 0:
            positions = positions[:, -1:] + 1
        else:
            positions += 1
        step_ids = sampler.next_input  # the ids just drawn, (B, 1), in a buffer every step reuses
    return sampler.generated()
