"""The generation hook: a transformers ``LogitsProcessor`` and a batched ``generate()`` helper.

``WatermarkLogitsProcessor`` fits the ``generate(logits_processor=...)`` contract of any causal LM:
it reads ``(input_ids, scores)`` and returns new scores without touching its inputs. It works on
left-padded batches; the prompt (padding included) is never a watermarked step, and for the
shard schemes a step whose context already occurred earlier in the same row's generation is left
unbiased (see ``kernels.repeated_context``). Place it before temperature and top-k/top-p
warpers (``generate`` does): Balance-Marking reads the model's distribution from its input.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from provmark.errors import InvalidTextError, ParameterError
from provmark.kernels.repeated_context import repeated_context_mask
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
    steps from prompt tokens. When it sees a different prompt it starts over, so one instance can
    serve several ``generate()`` calls in turn (not concurrently).
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

    def _start_column(self, input_ids: torch.Tensor) -> int:
        prompt = self._prompt
        same = (
            prompt is not None
            and prompt.shape[0] == input_ids.shape[0]
            and prompt.shape[1] < input_ids.shape[1]
            and torch.equal(input_ids[:, : prompt.shape[1]], prompt)
        )
        if not same:
            self._prompt = input_ids.clone()
        return self._prompt.shape[1]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        start = self._start_column(input_ids)
        width = self.watermarker.context_width
        if input_ids.shape[1] < width:
            return scores  # no full context yet: nothing to seed from
        if self.payloads is not None and len(self.payloads) != input_ids.shape[0]:
            raise ParameterError(f"got {len(self.payloads)} payloads for a batch of {input_ids.shape[0]} rows")
        contexts = input_ids[:, -width:].to(torch.int64)
        skip = None
        if self.watermarker.skips_repeated_contexts:
            skip = repeated_context_mask(input_ids, start=start, context_width=width)
        return self.watermarker.bias(input_ids, scores, contexts, self.payloads, skip, start)


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
    **gen_kwargs,
) -> list[Generation]:
    """Generate one watermarked completion per prompt in a single batched ``model.generate`` call.

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
    if not settings.get("do_sample", False):
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
        if proxy is None and scheme_class.uses_proxy and key.config.proxy_context == "text":
            from provmark.watermark.proxy import Proxy

            proxy = Proxy(model, tokenizer)
        processors.append(WatermarkLogitsProcessor(key, payloads, proxy=proxy))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings["max_new_tokens"], desc="generating", unit="tok", leave=False)
        criteria.append(_ProgressCriteria(bar))
    if seed is not None:
        torch.manual_seed(seed)
    try:
        with torch.no_grad():
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
    stop_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    results = []
    for prompt, ids in zip(prompts, output[:, input_ids.shape[1] :].tolist()):
        end = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
        ids = ids[:end]
        results.append(Generation(prompt=prompt, text=tokenizer.decode(ids, skip_special_tokens=True), token_ids=tuple(ids)))
    return results
