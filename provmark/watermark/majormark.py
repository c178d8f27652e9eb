"""MajorMark and MajorMark+ (Xu, Hu, Zhang, arXiv 2508.03829): majority-bit-aware encoding.

**MajorMark.** The b-bit codeword m gets one vocabulary shard per bit (S = b). Its majority bit
lambda (ties go to 1, after the reviewers' example 1100 -> {8, 8, 0, 0}) is the salt of the
colouring seed, and the shards i with m[i] == lambda are preferred, so the preferred share is
n_lambda / b >= 1/2 whatever the payload.

**MajorMark+.** The codeword is cut into r = b/s blocks of s bits (default 4). The block j a
token carries is chosen from its context by the position PRF (as MPAC allocates positions);
block j is then embedded as MajorMark over s shards, with (j, lambda_j, n_j) in the salt.

The paper's full text was not available (research/majormark.md §0); these are the
reconstructions of §3.2 and §4.2, with the choices recorded here: shards from our PRF rather
than a split randperm; lambda (and for MajorMark+ n_j and j) enter the seed through the salt;
context width 2; bit i of the codeword (most significant first) is shard i.

**Codewords.** MajorMark cannot carry the all-0 or all-1 codeword (no signal), MajorMark+ no
all-0 or all-1 block. Payloads are mapped bijectively onto valid codewords so users never meet
a forbidden message: MajorMark codeword = payload + 1 (capacity 2**b - 2); MajorMark+ writes
the payload in base 2**s - 2 and block j holds digit j + 1 (capacity (2**s - 2)**r, log2 14 =
3.81 bits per 4-bit block).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from provmark.errors import ParameterError
from provmark.kernels.prf import split_key
from provmark.watermark import subkeys
from provmark.watermark.base import SchemeConfig, StepParams, Watermarker
from provmark.watermark.check import codeword_values, validate_check_bits
from provmark.watermark.kgw import validate_context_width, validate_delta
from provmark.watermark.payload import from_bits, from_digit_rows, from_digits, parse_payload, to_bits, to_digits

__all__ = [
    "MajorMarkConfig",
    "MajorMarkPlusConfig",
    "MajorMarkWatermarker",
    "MajorMarkPlusWatermarker",
    "majority",
    "block_salt",
    "block_candidates",
]


def _validate_bits(bits, low=2, high=64):
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high:
        raise ParameterError(f"bits must be an integer in [{low}, {high}], got {bits!r}; 32 is the default")


VERSIONS = (1, 2)
"""Presence tests of MajorMark and MajorMark+ keys (the ``version`` field); 2 is the newest."""


def validate_version(version) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version not in VERSIONS:
        raise ParameterError(f"version must be one of {', '.join(map(str, VERSIONS))}, got {version!r}; "
                             f"{VERSIONS[-1]} is the default for new keys")


def majority(bits: list[int]) -> tuple[int, int]:
    """(lambda, n_lambda): the majority bit (ties go to 1) and how many bits equal it."""
    ones = sum(bits)
    return (1, ones) if 2 * ones >= len(bits) else (0, len(bits) - ones)


def block_salt(block: int, majority_bit: int, count: int) -> int:
    """Salt of MajorMark+'s colouring seed for block j under hypothesis (lambda, n)."""
    return (block << 6) | (majority_bit << 5) | count


def block_candidates(size: int) -> list[tuple[int, int]]:
    """The s - 1 (lambda, n) hypotheses a block of s bits can have: n from ceil(s/2) to s - 1,
    and lambda = 0 only when n > s/2 (a tie means lambda = 1)."""
    candidates = []
    for count in range((size + 1) // 2, size):
        candidates.append((1, count))
        if 2 * count > size:
            candidates.append((0, count))
    return candidates


def _preferred_bits(bits: list[int], majority_bit: int) -> int:
    """The shards whose bit is the majority bit, as the kernels' int64 mask (bit i: shard i).
    Shard 63 of a 64-bit codeword is the sign bit: the mask is returned in two's complement,
    which ``(mask >> shard) & 1`` reads like any other bit."""
    mask = sum(1 << i for i, bit in enumerate(bits) if bit == majority_bit)
    return mask - (1 << 64) if mask >> 63 else mask


@dataclass(frozen=True, kw_only=True)
class MajorMarkConfig(SchemeConfig):
    """MajorMark parameters: one shard per codeword bit."""

    scheme = "majormark"
    supports_payload = True
    stored_defaults = {"version": 1}
    bits: int = 32
    """Codeword length b (= number of shards), 2 to 64."""
    delta: float = 2.0
    """Bias added to the majority-bit shards."""
    context_width: int = 2
    """Tokens of context that seed the colouring."""
    version: int = 2
    """Presence test: 1 the decoder's union bound (key files without the field), 2 (new keys) the
    payload-free split test, handing over to the union bound below p = 1e-4 (``detector.majormark``)."""
    check_bits: int = 0
    """Codeword bits given to a keyed checksum of the payload, 0 to 16 (``watermark.check``): the
    payload capacity shrinks by 2**check_bits, and the open-set decoder returns a payload only
    when a codeword near its decode checks (else none), wrong ones passing about 2**-(c/2) of the time."""

    def __post_init__(self):
        _validate_bits(self.bits)
        validate_delta(self.delta)
        validate_context_width(self.context_width)
        validate_version(self.version)
        validate_check_bits(self.check_bits, self.codeword_capacity)

    @property
    def codeword_capacity(self) -> int:
        """Number of distinct codeword values, 2**b - 2 (no all-0 or all-1 codeword)."""
        return (1 << self.bits) - 2

    @property
    def capacity(self) -> int:
        """Number of distinct payloads, (2**b - 2) >> check_bits."""
        return self.codeword_capacity >> self.check_bits

    def codeword_bits(self, value) -> list[int]:
        """The b codeword bits of a codeword value (``watermark.check``: the payload itself without
        check bits), most significant first."""
        return to_bits(parse_payload(value, self.codeword_capacity) + 1, self.bits)

    def payload_of(self, codeword: list[int]) -> int:
        """Inverse of ``codeword_bits``: the codeword value (the codeword must be valid)."""
        return from_bits(codeword) - 1

    def payloads_of(self, codewords: np.ndarray) -> list[int]:
        """``payload_of`` (codeword values) of every row of ``codewords`` (int (R, b) bits)."""
        return [value - 1 for value in from_digit_rows(codewords, 2)]


@dataclass(frozen=True, kw_only=True)
class MajorMarkPlusConfig(SchemeConfig):
    """MajorMark+ parameters: blocks of s bits, each embedded as MajorMark over s shards."""

    scheme = "majormark+"
    supports_payload = True
    stored_defaults = {"version": 1}
    bits: int = 32
    """Codeword length b, a multiple of the block size, at most 64."""
    block_size: int = 4
    """Bits per block s (2 to 8); the paper's harness uses 4."""
    delta: float = 2.0
    """Bias added to each block's majority-bit shards."""
    context_width: int = 2
    """Tokens of context that seed block choice and colouring."""
    version: int = 2
    """Presence test: 1 the decoder's union bound (key files without the field), 2 (new keys) the
    payload-free block-excess test, handing over to the union bound below p = 1e-4 (``detector.majormark``)."""
    check_bits: int = 0
    """Codeword bits given to a keyed checksum of the payload, 0 to 16 (``watermark.check``): the
    payload capacity shrinks by 2**check_bits, and the open-set decoder returns a payload only
    when a codeword near its decode checks (else none), wrong ones passing about 2**-(c/2) of the time."""

    def __post_init__(self):
        _validate_bits(self.bits)
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or not 2 <= self.block_size <= 8:
            raise ParameterError(f"block_size must be an integer in [2, 8], got {self.block_size!r}; 4 is the default")
        if self.bits % self.block_size:
            raise ParameterError(f"bits must be a multiple of block_size {self.block_size}, got {self.bits}")
        validate_delta(self.delta)
        validate_context_width(self.context_width)
        validate_version(self.version)
        validate_check_bits(self.check_bits, self.codeword_capacity)

    @property
    def num_blocks(self) -> int:
        """r = b / s."""
        return self.bits // self.block_size

    @property
    def block_values(self) -> int:
        """Valid values of one block: 2**s - 2."""
        return (1 << self.block_size) - 2

    @property
    def codeword_capacity(self) -> int:
        """Number of distinct codeword values, (2**s - 2)**r."""
        return self.block_values**self.num_blocks

    @property
    def capacity(self) -> int:
        """Number of distinct payloads, (2**s - 2)**r >> check_bits."""
        return self.codeword_capacity >> self.check_bits

    def blocks(self, value) -> list[list[int]]:
        """The r blocks of s bits each of a codeword value (``watermark.check``: the payload itself
        without check bits)."""
        digits = to_digits(parse_payload(value, self.codeword_capacity), self.block_values, self.num_blocks)
        return [to_bits(digit + 1, self.block_size) for digit in digits]

    def codeword_bits(self, value) -> list[int]:
        """The b codeword bits of a codeword value (its blocks one after the other)."""
        return [bit for block in self.blocks(value) for bit in block]

    def payload_of(self, blocks: list[list[int]]) -> int:
        """Inverse of ``blocks``: the codeword value (every block must be valid)."""
        return from_digits([from_bits(block) - 1 for block in blocks], self.block_values)

    def payloads_of(self, blocks: np.ndarray) -> list[int]:
        """``payload_of`` (codeword values) of every row of ``blocks`` (int (R, r, s) bits)."""
        values = np.array(from_digit_rows(np.reshape(blocks, (-1, self.block_size)), 2), dtype=np.int64)
        return from_digit_rows(values.reshape(-1, self.num_blocks) - 1, self.block_values)


def _codeword_values(key, payloads) -> list[int]:
    """The codeword value of every payload (validated against the key's capacity)."""
    return codeword_values(key, [parse_payload(p, key.config.capacity) for p in payloads]).tolist()


class MajorMarkWatermarker(Watermarker):
    """Each row: salt lambda, b shards, the majority-bit shards preferred."""

    def _build_rows(self, payloads):
        """int64 (B,) salts and preferred masks."""
        salts, preferred = [], []
        for value in _codeword_values(self.key, payloads):
            bits = self.config.codeword_bits(value)
            majority_bit, _ = majority(bits)
            salts.append(majority_bit)
            preferred.append(_preferred_bits(bits, majority_bit))
        return torch.tensor(salts), torch.tensor(preferred)

    def step_params(self, contexts: torch.Tensor, payloads: list | None) -> StepParams:
        batch, device = contexts.shape[0], contexts.device
        salts, preferred = self.payload_rows(payloads, self._build_rows)
        return self.constant_params((tuple(payloads), device), lambda: StepParams(
            keys=self.key_words(batch, device),
            salts=salts.to(device),
            shard_counts=torch.full((batch,), self.config.bits, dtype=torch.int64, device=device),
            preferred=preferred.to(device),
            deltas=torch.full((batch,), float(self.config.delta), device=device),
        ))


class MajorMarkPlusWatermarker(Watermarker):
    """Each row: the context picks block j; salt (j, lambda_j, n_j), s shards, block j's
    majority-bit shards preferred (the pick happens inside the op: (B, r) tables with the
    position key)."""

    def __init__(self, key):
        super().__init__(key)
        self.position_key = split_key(key.subkey(subkeys.POSITION))

    def _build_rows(self, payloads):
        """int64 (B, r) salts and preferred masks of every block of every row."""
        salts, preferred = [], []
        for value in _codeword_values(self.key, payloads):
            row_salts, row_preferred = [], []
            for j, block in enumerate(self.config.blocks(value)):
                majority_bit, count = majority(block)
                row_salts.append(block_salt(j, majority_bit, count))
                row_preferred.append(_preferred_bits(block, majority_bit))
            salts.append(row_salts)
            preferred.append(row_preferred)
        return torch.tensor(salts), torch.tensor(preferred)

    def step_params(self, contexts: torch.Tensor, payloads: list | None) -> StepParams:
        config: MajorMarkPlusConfig = self.config
        batch, device = contexts.shape[0], contexts.device
        salts, preferred = self.payload_rows(payloads, self._build_rows)
        return self.constant_params((tuple(payloads), device), lambda: StepParams(
            keys=self.key_words(batch, device),
            salts=salts.to(device),
            shard_counts=torch.full((batch,), config.block_size, dtype=torch.int64, device=device),
            preferred=preferred.to(device),
            deltas=torch.full((batch,), float(config.delta), device=device),
            position_keys=torch.tensor([self.position_key] * batch, dtype=torch.int64, device=device),
        ))
