"""PRF v1: the keyed pseudo-random function that every provmark scheme shares.

This module is the single source of truth for the watermark's randomness. Generation and
detection, the torch reference and (later) the Triton kernels all take their constants from
here; a kernel never restates them. Any change to a constant or to the order of operations is
a new derivation and must get a new ``PRF_VERSION`` (STYLE rule 4): keys and provenance
records store the version they were made with.

Definition (all arithmetic on unsigned 32-bit words, ``*`` wraps modulo 2**32):

``mix32(x)``
    Chris Wellons' "lowbias32" integer finaliser with the improved constants
    (x ^= x >> 16; x *= 0x21F0AAAD; x ^= x >> 15; x *= 0x735A2D97; x ^= x >> 15). It is a
    bijection on 32-bit words with strong avalanche. Both multipliers are below 2**31, so the
    torch reference computes every product exactly in int64 and masks to 32 bits; Triton gets
    the same words with native uint32 wrap-around.

``context_seed(key, salt, context)``
    A two-lane sponge over the 64-bit key. Lane ``a`` starts from the low key word, lane ``b``
    from the high key word, each xored with its own domain tag and mixed. Every absorbed word
    w (first the 32-bit scheme salt, then the context token ids, oldest first) does
    ``a = mix32(a ^ w); b = mix32(b ^ a)``. The seed is ``mix32(a ^ b)``. Lane ``b`` depends on
    both key words, so an attacker cannot test one 32-bit half of the key on its own.

``token_word(seed, v)``
    ``mix32(seed ^ mix32(v ^ TOKEN_TAG))``: the pseudo-random word of vocabulary id v under a
    context seed. For a fixed seed it is a bijection of v, so no two ids share a word; the
    inner ``mix32(v ^ TOKEN_TAG)`` does not depend on the key, which lets the CPU path cache
    it per vocabulary size.

``fastrange(word, n)``
    ``(word * n) >> 32``, Lemire's multiply-shift reduction of a 32-bit word onto [0, n). Each
    value gets floor or ceil of 2**32 / n words, so its probability is 1/n within 2**-32.

This is not a cryptographic PRF. It is keyed, counter-based, exact on integers and cheap on
every device, which is what a watermark needs: the key is 64 bits per purpose, and like any
KGW-style scheme the colouring can in principle be learned from many outputs.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

__all__ = [
    "PRF_VERSION",
    "MASK32",
    "MIX_C1",
    "MIX_C2",
    "LANE_A_TAG",
    "LANE_B_TAG",
    "TOKEN_TAG",
    "mix32",
    "mix32_int",
    "context_seed_int",
    "context_seeds",
    "fold16",
    "folded_token_hash_table",
    "mix32_unfolded_",
    "token_hashes",
    "token_words",
    "fastrange",
    "split_key",
]

PRF_VERSION = "prf-v1"

MASK32 = 0xFFFFFFFF
MIX_C1 = 0x21F0AAAD
MIX_C2 = 0x735A2D97
LANE_A_TAG = 0x9E3779B9  # floor(2**32 / golden ratio)
LANE_B_TAG = 0x85EBCA6B
TOKEN_TAG = 0x5BD1E995


def mix32(x: torch.Tensor) -> torch.Tensor:
    """Return ``mix32`` of every element of an int64 tensor holding 32-bit words.

    Args:
        x: int64 tensor of any shape, values in [0, 2**32). Not modified.

    Returns:
        int64 tensor of the same shape, values in [0, 2**32).
    """
    return mix32_unfolded_(fold16(x))


def mix32_(x: torch.Tensor) -> torch.Tensor:
    """In-place ``mix32`` on a scratch int64 tensor (the hot path avoids allocations)."""
    x ^= x >> 16
    return mix32_unfolded_(x)


def fold16(x: torch.Tensor) -> torch.Tensor:
    """``x ^ (x >> 16)``, mix32's first step. It is linear over xor, so for words s and g
    ``mix32(s ^ g) == mix32_unfolded_(fold16(s) ^ fold16(g))``: a per-token table can hold
    ``fold16(g)`` and save that step on every (seed, token) pair."""
    return x ^ (x >> 16)


def mix32_unfolded_(x: torch.Tensor) -> torch.Tensor:
    """In place, the rest of ``mix32`` after its first step ``fold16``."""
    x.mul_(MIX_C1).bitwise_and_(MASK32)
    x ^= x >> 15
    x.mul_(MIX_C2).bitwise_and_(MASK32)
    x ^= x >> 15
    return x


def split_key(key: int) -> tuple[int, int]:
    """Split a 64-bit key into its (low, high) 32-bit words; raise on keys outside [0, 2**64)."""
    if not 0 <= key < 1 << 64:
        raise ValueError(f"PRF key must be in [0, 2**64), got {key}")
    return key & MASK32, key >> 32


def mix32_int(x: int) -> int:
    """``mix32`` of one Python integer word (the same function as ``mix32``)."""
    x ^= x >> 16
    x = (x * MIX_C1) & MASK32
    x ^= x >> 15
    x = (x * MIX_C2) & MASK32
    return x ^ (x >> 15)


def context_seed_int(key_lo: int, key_hi: int, salt: int, context: list[int]) -> int:
    """``context_seeds`` of one row in plain integers."""
    a = mix32_int(key_lo ^ LANE_A_TAG)
    b = mix32_int(key_hi ^ LANE_B_TAG)
    for word in (salt, *context):
        a = mix32_int(a ^ word)
        b = mix32_int(b ^ a)
    return mix32_int(a ^ b)


# Below this many rows a CPU batch is hashed in plain integers: a torch op on a handful of
# elements costs microseconds of dispatch, and the seed chain is ~50 of them. Larger CPU batches
# go through numpy's uint32, whose ops cost about half a torch op's dispatch and whose multiply
# wraps like Triton's, so each mix32 is 5 ops instead of 9 (a 500-row batch of a verify request
# is hashed about 5x faster than by the torch chain).
_SMALL_BATCH = 16


def _mix32_numpy_(x: np.ndarray) -> np.ndarray:
    """In-place ``mix32`` on a uint32 array (its multiply wraps modulo 2**32)."""
    x ^= x >> 16
    x *= np.uint32(MIX_C1)
    x ^= x >> 15
    x *= np.uint32(MIX_C2)
    x ^= x >> 15
    return x


def _context_seeds_numpy(keys, salts, contexts):
    if keys.shape[0] > 1 and keys.stride(0) == 0:  # one key expanded over every row (detectors): its lanes once
        keys = keys[:1]
    keys, salts, contexts = (t.numpy().astype(np.uint32) for t in (keys, salts, contexts))
    a = _mix32_numpy_(keys[:, 0] ^ np.uint32(LANE_A_TAG))
    b = _mix32_numpy_(keys[:, 1] ^ np.uint32(LANE_B_TAG))
    for word in (salts, *contexts.T):
        a = _mix32_numpy_(a ^ word)
        b = _mix32_numpy_(b ^ a)
    return torch.from_numpy(_mix32_numpy_(a ^ b).astype(np.int64))


def _context_seeds_torch(keys, salts, contexts):
    if keys.shape[0] > 1 and keys.stride(0) == 0:  # one key expanded over every row (detectors): its lanes once
        keys = keys[:1]
    a = mix32_(keys[:, 0] ^ LANE_A_TAG)
    b = mix32_(keys[:, 1] ^ LANE_B_TAG)
    for word in (salts, *contexts.unbind(dim=1)):
        a = mix32_(a ^ word)
        b = mix32_(b ^ a)
    return mix32_(a ^ b)


def _context_seeds_int(keys, salts, contexts):
    rows = zip(keys.tolist(), salts.tolist(), contexts.tolist())
    return torch.tensor([context_seed_int(lo, hi, salt, ctx) for (lo, hi), salt, ctx in rows], dtype=torch.int64)


def context_seeds(keys: torch.Tensor, salts: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
    """Seed of each row's context under its own key and salt.

    Args:
        keys: int64 (B, 2) with the (low, high) 32-bit words of each row's 64-bit key.
        salts: int64 (B,) scheme salt of each row, in [0, 2**32).
        contexts: int64 (B, h) the last h token ids before the scored position, oldest first;
            h may be 0.

    Returns:
        int64 (B,) 32-bit seeds, on the device of ``keys``.
    """
    if keys.device.type != "cpu":
        return _context_seeds_torch(keys, salts, contexts)
    if keys.shape[0] <= _SMALL_BATCH:
        return _context_seeds_int(keys, salts, contexts)
    return _context_seeds_numpy(keys, salts, contexts)


@functools.lru_cache(maxsize=8)
def _folded_token_hash_table(vocab_size: int) -> torch.Tensor:
    return fold16(token_hashes(torch.arange(vocab_size, dtype=torch.int64)))


def token_hashes(token_ids: torch.Tensor) -> torch.Tensor:
    """Key-independent inner hash ``mix32(v ^ TOKEN_TAG)`` of each token id (int64, any shape)."""
    return mix32(token_ids.to(torch.int64) ^ TOKEN_TAG)


def folded_token_hash_table(vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``fold16(token_hashes(arange(vocab_size)))``, cached per vocabulary size (int64, (V,)).

    ``mix32_unfolded_(fold16(seed) ^ table[v])`` is ``token_word(seed, v)``."""
    return _folded_token_hash_table(vocab_size).to(device)


def token_words(seeds: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """PRF word of each (seed, token id) pair; the two tensors broadcast against each other."""
    if seeds.device.type == "cpu" and token_ids.device.type == "cpu":  # numpy's uint32, as in context_seeds
        hashes = _mix32_numpy_(token_ids.numpy().astype(np.uint32) ^ np.uint32(TOKEN_TAG))
        return torch.from_numpy(_mix32_numpy_(seeds.numpy().astype(np.uint32) ^ hashes).astype(np.int64))
    return mix32(seeds ^ token_hashes(token_ids))


def fastrange(words: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """Map 32-bit words onto [0, n) by ``(word * n) >> 32``; n broadcasts (int or int64 tensor)."""
    return (words * n) >> 32
