"""Payloads: what a multi-bit key carries, given as an integer, a hex string or bytes.

A payload is an integer in [0, capacity), where a scheme's capacity may be below 2**bits
(MajorMark cannot carry some codewords). ``parse_payload`` accepts the forms a user types and
refuses anything that does not fit; ``payload_hex`` is the canonical text form (``0x`` and
bits/4 hex digits, rounded up).
"""

from __future__ import annotations

import math

import numpy as np

from provmark.errors import ParameterError

__all__ = [
    "capacity_bits",
    "parse_payload",
    "payload_hex",
    "to_bits",
    "from_bits",
    "to_digits",
    "from_digits",
    "to_digit_rows",
    "from_digit_rows",
]


def capacity_bits(capacity: int) -> float:
    """log2 of the number of distinct payloads."""
    return math.log2(capacity)


def parse_payload(value: int | str | bytes, capacity: int) -> int:
    """The payload as an integer in [0, capacity).

    Args:
        value: an int, a string of decimal digits or of hex digits after ``0x``, or bytes
            (big-endian).
        capacity: the number of distinct payloads the key carries.
    """
    if isinstance(value, bool):
        raise ParameterError(f"payload must be an integer, hex string or bytes, got {value!r}")
    if isinstance(value, (bytes, bytearray)):
        number = int.from_bytes(value, "big")
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            number = int(text[2:], 16) if text.lower().startswith("0x") else int(text, 10)
        except ValueError:
            raise ParameterError(f"payload {value!r} is neither decimal nor 0x-prefixed hex") from None
    else:
        raise ParameterError(f"payload must be an integer, hex string or bytes, got {type(value).__name__}")
    if not 0 <= number < capacity:
        raise ParameterError(
            f"payload {value!r} does not fit the key's capacity: payloads are integers in [0, {capacity}) "
            f"({capacity_bits(capacity):.2f} bits)"
        )
    return number


def payload_hex(value: int, bits: int) -> str:
    """Canonical hex form, zero-padded to the key's capacity: ``payload_hex(0x1234, 32) == '0x00001234'``."""
    return f"0x{value:0{(bits + 3) // 4}x}"


def to_bits(value: int, bits: int) -> list[int]:
    """The payload's bits, most significant first."""
    return [(value >> (bits - 1 - i)) & 1 for i in range(bits)]


def from_bits(bits: list[int]) -> int:
    """Inverse of ``to_bits``."""
    value = 0
    for bit in bits:
        value = (value << 1) | bit
    return value


def to_digits(value: int, radix: int, length: int) -> list[int]:
    """The payload's radix-r digits, most significant first, ``length`` of them."""
    digits = []
    for _ in range(length):
        value, digit = divmod(value, radix)
        digits.append(digit)
    return digits[::-1]


def from_digits(digits: list[int], radix: int) -> int:
    """Inverse of ``to_digits``."""
    value = 0
    for digit in digits:
        value = value * radix + digit
    return value


def to_digit_rows(values: np.ndarray, radix: int, length: int) -> np.ndarray:
    """int64 (R, length): ``to_digits`` of every value of a uint64 array, most significant first."""
    out = np.empty((values.shape[0], length), dtype=np.int64)
    rest = values.astype(np.uint64, copy=True)
    for j in reversed(range(length)):
        out[:, j] = (rest % np.uint64(radix)).astype(np.int64)
        rest //= np.uint64(radix)
    return out


def from_digit_rows(digits: np.ndarray, radix: int) -> list[int]:
    """``from_digits`` of every row of ``digits`` (int (R, L)), for values below 2**64 (every
    payload is: capacities are at most 2**64)."""
    digits = np.asarray(digits).astype(np.uint64)
    value = np.zeros(digits.shape[0], dtype=np.uint64)
    for column in digits.T:
        value = value * np.uint64(radix) + column
    return value.tolist()
