"""KGW zero-bit watermark (Kirchenbauer et al., "A Watermark for Large Language Models", 2023).

A fraction gamma of the vocabulary is "green" under a seed derived from the previous h tokens,
and green logits get +delta. On provmark's shared core, gamma = k/S: the PRF colours every id
with one of S shards and shards 0..k-1 are green. Unlike the paper's randperm green list, the
colour of each id is an independent PRF draw, so the green-list size varies around gamma*|V|
(binomially); in exchange every green bit is independent under the null, which is what the
exact binomial test in ``detector.kgw`` assumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from provmark.errors import ParameterError
from provmark.kernels.shard_bias import MAX_SHARDS
from provmark.watermark.base import SchemeConfig, StepParams, Watermarker

__all__ = ["KGWConfig", "KGWWatermarker"]

MAX_CONTEXT_WIDTH = 16


def is_number(value) -> bool:
    """Whether ``value`` is a finite int or float (a bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_delta(delta: float) -> None:
    """Raise unless delta is a finite bias in (0, 20]."""
    if not is_number(delta) or not 0 < delta <= 20:
        raise ParameterError(f"delta must be a number in (0, 20], got {delta!r}; 2.0 is a common choice")


def validate_context_width(context_width: int) -> None:
    """Raise unless the context width h is an integer in [1, 16]."""
    if isinstance(context_width, bool) or not isinstance(context_width, int) or not 1 <= context_width <= MAX_CONTEXT_WIDTH:
        raise ParameterError(
            f"context_width must be an integer in [1, {MAX_CONTEXT_WIDTH}], got {context_width!r}; 2 is the default"
        )


@dataclass(frozen=True, kw_only=True)
class KGWConfig(SchemeConfig):
    """KGW parameters; gamma and delta default to the paper's 0.25 and 2."""

    scheme = "kgw"
    gamma: float = 0.25
    """Green fraction of the vocabulary, a fraction k/S with S <= 64 (0.25, 0.5, 0.3, ...)."""
    delta: float = 2.0
    """Bias added to green logits."""
    context_width: int = 2
    """Number h of previous tokens that seed the green list. The paper uses 1; we default to 2
    because with one token about half the steps of a 200-token SmolLM2 answer repeat a context
    and go unbiased (benchmarks/roundtrip: 3 of 20 texts stayed above p = 1e-6 at h = 1, none
    at h = 2)."""

    def __post_init__(self):
        if not is_number(self.gamma) or not 0 < self.gamma < 1:
            raise ParameterError(f"gamma must be a number in (0, 1), got {self.gamma!r}; 0.25 is the paper's default")
        fraction = Fraction(self.gamma).limit_denominator(MAX_SHARDS)
        if abs(float(fraction) - self.gamma) > 1e-9:
            raise ParameterError(
                f"gamma must be a fraction k/S with S <= {MAX_SHARDS}, got {self.gamma!r}; try {float(fraction):.6g}"
            )
        # A gamma within 1e-9 of 0 or 1 rounds to k = 0 or k = S: no green (or no red) shard, and
        # the binomial test divides by gamma * (1 - gamma). Both ends are refused here.
        if not 0 < fraction < 1:
            raise ParameterError(
                f"gamma must leave at least one green and one red shard (k/S with 1 <= k < S <= {MAX_SHARDS}, "
                f"between 1/{MAX_SHARDS} and {MAX_SHARDS - 1}/{MAX_SHARDS}), got {self.gamma!r}; 0.25 is the paper's default"
            )
        validate_delta(self.delta)
        validate_context_width(self.context_width)

    @property
    def shard_count(self) -> int:
        """S, the number of shards the PRF colours ids with."""
        return Fraction(self.gamma).limit_denominator(MAX_SHARDS).denominator

    @property
    def green_shards(self) -> int:
        """k, the number of green shards (shards 0..k-1)."""
        return Fraction(self.gamma).limit_denominator(MAX_SHARDS).numerator


class KGWWatermarker(Watermarker):
    """Every row: salt 0, S shards, shards 0..k-1 preferred, the config's delta."""

    def step_params(self, contexts: torch.Tensor, payloads: list | None) -> StepParams:
        if payloads is not None and any(p is not None for p in payloads):
            raise ParameterError("kgw is a zero-bit scheme and carries no payload; drop --payload or use a multi-bit key")
        batch, device = contexts.shape[0], contexts.device
        config: KGWConfig = self.config

        def full(value):
            return torch.full((batch,), value, dtype=torch.int64, device=device)

        return self.constant_params((batch, device), lambda: StepParams(
            keys=self.key_words(batch, device),
            salts=full(0),
            shard_counts=full(config.shard_count),
            preferred=full((1 << config.green_shards) - 1),
            deltas=torch.full((batch,), float(config.delta), device=device),
        ))
