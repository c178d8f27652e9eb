"""MPAC: multi-bit watermark via position allocation (Yoo, Ahn, Kwak, NAACL 2024).

The payload is written as L radix-r digits. At each step a keyed PRF of the context picks the
position p the token carries, and the colour list of digit m[p] gets +delta. On provmark's core
the vocabulary is coloured into S = 1/gamma shards and colour c is shard c (c < r <= S), so
one token seeds two PRFs: the "position" sub-key picks p, the "shard" sub-key colours ids.

Choices where provmark departs from the official code (research/majormark.md §2): positions
come from our keyed PRF instead of Python's ``random`` seeded by 15485863 * x_{t-1}; the radix is
a power of two so every digit carries log2(r) whole bits (bits must be a multiple of it);
repeated contexts are skipped at generation and scored once at detection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from provmark.errors import ParameterError
from provmark.kernels.prf import split_key
from provmark.kernels.shard_bias import MAX_SHARDS
from provmark.watermark import subkeys
from provmark.watermark.base import SchemeConfig, StepParams, Watermarker
from provmark.watermark.check import codeword_values, validate_check_bits
from provmark.watermark.kgw import is_number, validate_context_width, validate_delta
from provmark.watermark.payload import parse_payload, to_bits, to_digits

__all__ = ["MPACConfig", "MPACWatermarker"]


@dataclass(frozen=True, kw_only=True)
class MPACConfig(SchemeConfig):
    """MPAC parameters; the defaults are the paper's (gamma 0.25, radix 2, delta 2)."""

    scheme = "mpac"
    supports_payload = True
    bits: int = 32
    """Payload capacity in bits."""
    radix: int = 4
    """Digit radix r, a power of two with r <= 1/gamma; each digit carries log2(r) bits. 4 (the
    paper's choice at gamma 1/4) rather than 2: at the same length and quality it decodes better
    (benchmarks/results/eval-full: 32 bits at 200 tokens)."""
    gamma: float = 0.25
    """Size of each colour list as a fraction of the vocabulary, 1/S for an integer S <= 64."""
    delta: float = 2.0
    """Bias added to the colour list of the allocated digit."""
    context_width: int = 2
    """Tokens of context that seed position and colouring."""
    check_bits: int = 0
    """Codeword bits given to a keyed checksum of the payload, 0 to 16 (``watermark.check``): the
    payload capacity shrinks by 2**check_bits, and the open-set decoder returns a payload only
    when a codeword near its decode checks (else none), wrong ones passing about 2**-(c/2) of the time."""

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 64:
            raise ParameterError(f"bits must be an integer in [1, 64], got {self.bits!r}; 32 is the default")
        # The range is checked before 1/gamma is taken: a subnormal gamma overflows it.
        if not is_number(self.gamma) or not 1 / MAX_SHARDS - 1e-12 <= self.gamma <= 0.5 + 1e-12 \
                or abs(1 / self.gamma - round(1 / self.gamma)) > 1e-9:
            raise ParameterError(f"gamma must be 1/S for an integer S in [2, {MAX_SHARDS}], got {self.gamma!r}; 0.25 is the default")
        if isinstance(self.radix, bool) or not isinstance(self.radix, int) or self.radix < 2 or self.radix & (self.radix - 1):
            raise ParameterError(f"radix must be a power of two >= 2, got {self.radix!r}; 2 or 4 are usual")
        if self.radix > self.shard_count:
            raise ParameterError(f"radix {self.radix} needs gamma <= 1/{self.radix}, got gamma {self.gamma}")
        if self.bits % self.bits_per_digit:
            raise ParameterError(f"bits must be a multiple of log2(radix) = {self.bits_per_digit}, got {self.bits}")
        validate_delta(self.delta)
        validate_context_width(self.context_width)
        validate_check_bits(self.check_bits, self.codeword_capacity)

    @property
    def codeword_capacity(self) -> int:
        """Number of distinct codeword values, 2**bits."""
        return 1 << self.bits

    @property
    def capacity(self) -> int:
        """Number of distinct payloads, 2**(bits - check_bits)."""
        return self.codeword_capacity >> self.check_bits

    def codeword_bits(self, value) -> list[int]:
        """The bits the text carries for a codeword value (``watermark.check``: the payload itself
        without check bits), most significant first."""
        return to_bits(parse_payload(value, self.codeword_capacity), self.bits)

    @property
    def shard_count(self) -> int:
        """S = 1/gamma."""
        return round(1 / self.gamma)

    @property
    def bits_per_digit(self) -> int:
        return int(math.log2(self.radix))

    @property
    def num_positions(self) -> int:
        """L, the number of digits (positions) of a payload."""
        return self.bits // self.bits_per_digit


class MPACWatermarker(Watermarker):
    """Each row prefers shard m[p] of its own payload, p chosen by the context (inside the op:
    the step parameters are (B, L) tables with the position key)."""

    def __init__(self, key):
        super().__init__(key)
        self.position_key = split_key(key.subkey(subkeys.POSITION))

    def digits(self, payloads) -> torch.Tensor:
        """int64 (B, L) digits of each row's codeword value (payloads validated against the capacity)."""
        config: MPACConfig = self.config

        def build(rows):
            values = codeword_values(self.key, [parse_payload(p, config.capacity) for p in rows]).tolist()
            digits = [to_digits(value, config.radix, config.num_positions) for value in values]
            return torch.tensor(digits, dtype=torch.int64)

        return self.payload_rows(payloads, build)

    def step_params(self, contexts: torch.Tensor, payloads: list | None) -> StepParams:
        config: MPACConfig = self.config
        batch, device = contexts.shape[0], contexts.device
        digits = self.digits(payloads)
        return self.constant_params((tuple(payloads), device), lambda: StepParams(
            keys=self.key_words(batch, device),
            salts=torch.zeros(digits.shape, dtype=torch.int64, device=device),
            shard_counts=torch.full((batch,), config.shard_count, dtype=torch.int64, device=device),
            preferred=(torch.ones_like(digits) << digits).to(device),
            deltas=torch.full((batch,), float(config.delta), device=device),
            position_keys=torch.tensor([self.position_key] * batch, dtype=torch.int64, device=device),
        ))
