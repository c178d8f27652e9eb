"""Open-set decoding of self-checking payloads (``watermark.check``).

The decoder's codeword is the first candidate; the others flip subsets of its least confident
bits (per-bit confidences from the scheme's decoder), cheapest first, where a subset costs the sum
of its bits' confidences. The first candidate that is a valid codeword and whose checksum matches
its payload is the answer; if none of the ``search_size(c)`` candidates checks, there is no
payload (the text may still be watermarked: presence does not depend on it).

A wrong codeword passes the keyed check with probability 2**-c, so a text whose true codeword is
not among the candidates gets a wrong payload with probability about search_size(c) * 2**-c =
2**-(c - c // 2): half the check bits pay for the search, half guard against wrong payloads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from provmark.watermark.check import payloads_of_values

__all__ = ["SEARCH_BITS", "search_size", "checked_payloads"]

SEARCH_BITS = 12
"""The least confident bits whose subsets are candidates (at most 2**12 subsets ranked per text)."""


def search_size(check_bits: int) -> int:
    """How many candidates the decoder tries with c check bits: 2**(c // 2)."""
    return 1 << (check_bits // 2)


@functools.lru_cache(maxsize=16)
def _subsets(width: int) -> np.ndarray:
    """bool (2**width, width): every subset of ``width`` positions."""
    return ((np.arange(1 << width)[:, None] >> np.arange(width)[None, :]) & 1).astype(bool)


def checked_payloads(key, bits: np.ndarray, confidences: np.ndarray,
                     values_of: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> list[int | None]:
    """The payload of every decoded codeword, searched as the module docstring says.

    Args:
        key: the watermark key (its ``check_bits`` c > 0 and checksum sub-key).
        bits: int (M, b) decoded codeword bits.
        confidences: float (M, b) per-bit confidences in [0, 1] (higher: surer).
        values_of: codeword bits int (K, b) -> (codeword values uint64 (K,), valid bool (K,)).

    Returns:
        Per row, the first candidate's payload that checks, or None.
    """
    bits = np.asarray(bits, dtype=np.int64)
    count = search_size(key.config.check_bits)
    width = min(bits.shape[1], SEARCH_BITS)
    subsets = _subsets(width)
    out: list[int | None] = []
    for row, confidence in zip(bits, np.asarray(confidences, dtype=np.float64)):
        weakest = np.argsort(confidence, kind="stable")[:width]
        order = np.argsort(subsets @ confidence[weakest], kind="stable")[:count]  # the empty subset first
        candidates = np.repeat(row[None, :], order.size, axis=0)
        candidates[:, weakest] ^= subsets[order]
        values, valid = values_of(candidates)
        payloads, good = payloads_of_values(key, np.where(valid, values, 0).astype(np.uint64))
        hit = np.flatnonzero(valid & good)
        out.append(int(payloads[hit[0]]) if hit.size else None)
    return out
