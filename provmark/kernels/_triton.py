"""PRF v1 in Triton: the device functions every provmark kernel shares, and the import guard.

Triton is optional: without it ``HAS_TRITON`` is False, the device functions are not defined,
and every public op in ``provmark.kernels`` runs its torch reference. The device functions below
restate no constant: they read them from ``prf`` (STYLE 1), wrapped as ``tl.constexpr`` because a
jitted function may only read constexpr globals.

Every launch passes ``enable_fp_fusion=False``: no kernel may contract a multiply and an add into
one rounding where its reference rounds twice (it matters to ``fused_sampling``; the others have
nothing to contract, and naming the option keeps Triton 3.9 from warning about its default).

Arithmetic is on ``tl.uint32``, whose multiply wraps modulo 2**32: the same words as ``prf``'s
int64 reference, which masks its products to 32 bits. ``fastrange`` is ``tl.umulhi``, the high
word of the 64-bit product, which is exactly ``(word * n) >> 32``.

``TRITON_INTERPRET=1`` (read by Triton when a kernel is decorated, so it must be set before
``provmark.kernels`` is imported) runs the same kernel source on CPU tensors; the parity tests
use it where no GPU is present (tests/conftest.py sets it then).
"""

from __future__ import annotations

import os

import torch

from provmark.kernels import prf

__all__ = ["HAS_TRITON", "INTERPRETING", "check_devices", "int64_rows", "triton_ready"]

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU install: every op takes its reference path
    HAS_TRITON = False
else:
    HAS_TRITON = True

INTERPRETING = HAS_TRITON and os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
"""Whether Triton was imported in interpreter mode (kernels then run on CPU tensors only)."""


def triton_ready(tensor) -> bool:
    """Whether the public ops send ``tensor`` to a Triton kernel: a CUDA tensor, with Triton
    installed and compiling. Everything else takes the torch reference, in interpreter mode too:
    there the tests call the private launchers on CPU tensors themselves, and the rest of the
    library stays at reference speed."""
    return HAS_TRITON and not INTERPRETING and tensor.device.type == "cuda"


def check_devices(device, **tensors) -> None:
    """Raise ``ValueError`` naming the first tensor that is not on ``device`` (None is skipped):
    a kernel handed a pointer from another device would read garbage or fault."""
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != device:
            raise ValueError(f"{name} is on {tensor.device} but the logits are on {device}; move it there")


def int64_rows(tensor):
    """``tensor`` as contiguous int64, itself when it already is: a launcher runs at every step,
    and a ``.to`` that changes nothing is still a dispatched operation on the host."""
    if tensor.dtype == torch.int64 and tensor.is_contiguous():
        return tensor
    return tensor.to(torch.int64).contiguous()


if HAS_TRITON:
    _MIX_C1 = tl.constexpr(prf.MIX_C1)
    _MIX_C2 = tl.constexpr(prf.MIX_C2)
    _LANE_A_TAG = tl.constexpr(prf.LANE_A_TAG)
    _LANE_B_TAG = tl.constexpr(prf.LANE_B_TAG)
    _TOKEN_TAG = tl.constexpr(prf.TOKEN_TAG)

    @triton.jit
    def mix32(x):
        """``prf.mix32`` of uint32 words (any shape)."""
        x ^= x >> 16
        x = x * _MIX_C1
        x ^= x >> 15
        x = x * _MIX_C2
        x ^= x >> 15
        return x

    @triton.jit
    def context_seed(keys_ptr, salt, context_ptr, CONTEXT_WIDTH: tl.constexpr):
        """``prf.context_seeds`` of one row: the (low, high) int64 key words at ``keys_ptr``,
        a uint32 salt and the row's CONTEXT_WIDTH int64 token ids at ``context_ptr``."""
        a = mix32(tl.load(keys_ptr).to(tl.uint32) ^ _LANE_A_TAG)
        b = mix32(tl.load(keys_ptr + 1).to(tl.uint32) ^ _LANE_B_TAG)
        a = mix32(a ^ salt)
        b = mix32(b ^ a)
        for i in tl.static_range(CONTEXT_WIDTH):
            a = mix32(a ^ tl.load(context_ptr + i).to(tl.uint32))
            b = mix32(b ^ a)
        return mix32(a ^ b)

    @triton.jit
    def token_words(seed, ids):
        """``prf.token_words`` of int32/int64 token ids under a uint32 seed."""
        return mix32(seed ^ mix32(ids.to(tl.uint32) ^ _TOKEN_TAG))

    @triton.jit
    def pool_salt(pool_keys_ptr, column, context_ptr, message, CONTEXT_WIDTH: tl.constexpr, POOL_BITS: tl.constexpr):
        """``shard_bias.pool_salts`` of one row: the pool index ``c XOR (A m)`` of the row's
        message under the (low, high) int64 key words at ``pool_keys_ptr``, with ``c`` and the
        rows of A the words ``token_word(context_seed(pool key, column, context), r)``, r = 0..k."""
        seed = context_seed(pool_keys_ptr, tl.cast(column, tl.uint32), context_ptr, CONTEXT_WIDTH)
        salt = token_words(seed, tl.zeros([], dtype=tl.uint32)) & ((1 << POOL_BITS) - 1)
        message = message.to(tl.uint32)
        for r in tl.static_range(POOL_BITS):
            bits = token_words(seed, tl.full([], r + 1, dtype=tl.uint32)) & message
            bits ^= bits >> 16  # the parity of the 32 bits, folded down to bit 0
            bits ^= bits >> 8
            bits ^= bits >> 4
            bits ^= bits >> 2
            bits ^= bits >> 1
            salt ^= (bits & 1) << r
        return salt

    @triton.jit
    def row_shard_params(
        keys_ptr, salts_ptr, contexts_ptr, shard_counts_ptr, preferred_ptr, position_keys_ptr, pool_keys_ptr, row,
        num_positions, contexts_row_stride, CONTEXT_WIDTH: tl.constexpr, HAS_POSITIONS: tl.constexpr,
        POOL_BITS: tl.constexpr,
    ):
        """(seed uint32, shard count uint32, preferred int64) of one row of ``shard_bias``'s inputs.

        Contexts may be a slice of the whole sequence (row stride ``contexts_row_stride``, ids
        adjacent). With HAS_POSITIONS, salts and preferred are (B, num_positions) tables and the
        row reads column ``fastrange(context_seed(position key, 0, context), num_positions)``;
        without, they are (B,) and ``num_positions`` is 1. With POOL_BITS > 0 the salt read is a
        message and the row's salt is its pool index (``pool_salt``, keys at ``pool_keys_ptr``)."""
        context_ptr = contexts_ptr + row * contexts_row_stride
        column = 0
        if HAS_POSITIONS:
            position_seed = context_seed(position_keys_ptr + 2 * row, 0, context_ptr, CONTEXT_WIDTH)
            # tl.cast, not .to: an int argument equal to 1 arrives as a constexpr
            column = tl.umulhi(position_seed, tl.cast(num_positions, tl.uint32)).to(tl.int64)
        salt = tl.load(salts_ptr + row * num_positions + column).to(tl.uint32)
        if POOL_BITS > 0:
            salt = pool_salt(pool_keys_ptr + 2 * row, column, context_ptr, salt, CONTEXT_WIDTH, POOL_BITS)
        preferred = tl.load(preferred_ptr + row * num_positions + column)
        seed = context_seed(keys_ptr + 2 * row, salt, context_ptr, CONTEXT_WIDTH)
        shard_count = tl.load(shard_counts_ptr + row).to(tl.uint32)
        return seed, shard_count, preferred

    @triton.jit
    def preferred_flags(seed, shard_count, preferred, ids):
        """Whether each id is preferred: bit ``fastrange(token_word(seed, id), S)`` of the
        64-bit preferred mask (an int64 whose sign bit is shard 63; ``>>`` then ``& 1`` reads
        any bit below 64 whether the shift is arithmetic or logical)."""
        shard = tl.umulhi(token_words(seed, ids), shard_count)
        return ((preferred >> shard.to(tl.int64)) & 1) != 0
