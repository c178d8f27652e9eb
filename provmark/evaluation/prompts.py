"""The evaluation prompts and batched, fixed-length generation over them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from provmark.errors import ParameterError
from provmark.watermark.hook import Generation

__all__ = ["PROMPTS_PATH", "load_prompts", "generate_batched"]

PROMPTS_PATH = Path(__file__).parent / "prompts.txt"
"""One instruction a line: the prompts every benchmark and evaluation suite draws from."""


def load_prompts(count: int | None = None) -> list[str]:
    """The first ``count`` prompts of ``PROMPTS_PATH`` (all of them when None)."""
    prompts = [line.strip() for line in PROMPTS_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
    if count is not None and count > len(prompts):
        raise ParameterError(f"asked for {count} prompts but {PROMPTS_PATH} holds {len(prompts)}")
    return prompts[:count]


def generate_batched(generate: Callable[..., list], prompts: Sequence[str], payloads: Sequence | None = None, *,
                     tokens: int, seed: int, batch: int, temperature: float = 1.0) -> list[Generation]:
    """``generate(prompts=..., payloads=..., seed=..., ...)`` (``Watermark.embed``, or ``hook.generate``
    with its model, tokenizer and key bound) over ``prompts``, ``batch`` at a time, each completion
    exactly ``tokens`` tokens long (EOS suppressed, so that every text of a comparison has the same
    length). Batch b is seeded with ``seed + b * batch``, so a seed replays the run."""
    out = []
    for start in range(0, len(prompts), batch):
        rows = slice(start, start + batch)
        out += generate(prompts=list(prompts[rows]), payloads=None if payloads is None else list(payloads[rows]),
                        seed=seed + start, temperature=temperature, max_new_tokens=tokens, min_new_tokens=tokens)
    return out
