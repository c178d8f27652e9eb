"""Payload parsing and digit conversion."""

import pytest

from provmark.errors import ParameterError
from provmark.watermark.payload import (
    from_bits,
    from_digit_rows,
    from_digits,
    parse_payload,
    payload_hex,
    to_bits,
    to_digits,
)


@pytest.mark.parametrize("value", [0x1234ABCD, "0x1234ABCD", "0x1234abcd", "305441741", b"\x12\x34\xab\xcd", " 0x1234_ABCD "])
def test_every_payload_form_parses_to_the_same_integer(value):
    assert parse_payload(value, 2**32) == 0x1234ABCD


@pytest.mark.parametrize("value", [2**32, -1, "0x100000000", b"\x01\x00\x00\x00\x00"])
def test_payloads_beyond_the_capacity_are_refused(value):
    with pytest.raises(ParameterError, match="does not fit the key's capacity: payloads are integers in \\[0, 4294967296\\) \\(32.00 bits\\)"):
        parse_payload(value, 2**32)


@pytest.mark.parametrize("value", ["0xZZ", "twelve", "", 1.5, True, None])
def test_malformed_payloads_are_refused(value):
    with pytest.raises(ParameterError, match="payload"):
        parse_payload(value, 2**32)


def test_hex_form_is_zero_padded_to_the_capacity():
    assert payload_hex(0x1234, 32) == "0x00001234"
    assert payload_hex(5, 6) == "0x05"


@pytest.mark.parametrize("radix,length", [(2, 32), (4, 16), (16, 8)])
def test_digits_round_trip(radix, length):
    for value in (0, 1, 0x1234ABCD, 2**32 - 1):
        digits = to_digits(value, radix, length)
        assert len(digits) == length and all(0 <= d < radix for d in digits)
        assert from_digits(digits, radix) == value


@pytest.mark.parametrize("radix,length", [(2, 64), (16, 16), (14, 16), (6, 24)])
def test_digit_rows_decode_like_from_digits_up_to_the_largest_capacity(radix, length):
    values = [0, 1, 0x1234ABCD, radix**length - 1, (radix**length - 1) // 3]
    digits = [to_digits(value, radix, length) for value in values]
    assert from_digit_rows(digits, radix) == values == [from_digits(row, radix) for row in digits]


def test_bits_are_most_significant_first():
    assert to_bits(0b1011, 4) == [1, 0, 1, 1]
    assert from_bits([1, 0, 1, 1]) == 0b1011
    assert to_digits(0b1011, 4, 2) == [2, 3]
