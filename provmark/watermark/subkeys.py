"""The purposes a key's sub-keys are derived for (``WatermarkKey.subkey``), named once for the
embedding and the detecting side: a purpose is part of the HMAC domain tag, so renaming one
changes every derived sub-key (and the golden vectors)."""

from __future__ import annotations

__all__ = ["CHECK", "ORDER", "POOL", "POSITION", "SHARD", "WORD_BIT"]

SHARD = "shard"
"""Colours each vocabulary id with a shard under a context seed (every shard scheme, and the
coin of Balance and Vanilla)."""
POSITION = "position"
"""Picks the payload position a context carries (MPAC digit, MajorMark+ block, Balance and
Vanilla segment)."""
POOL = "pool"
"""Balance and Vanilla: the partition pool of a context."""
ORDER = "order"
"""Balance: the keyed permutation of the proxy's head ids."""
WORD_BIT = "word-bit"
"""Synonym: the keyed bit of a (context, word) pair, and its payload position for a key with a
payload (``words.word_bit_position``: other bytes of the same HMAC)."""
CHECK = "check"
"""MPAC, MajorMark, MajorMark+ with check bits: the keyed checksum of a payload (``watermark.check``)."""
