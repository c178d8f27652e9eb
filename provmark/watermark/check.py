"""Self-checking payloads: part of a multi-bit codeword is a keyed checksum of the payload.

A key with ``check_bits`` c > 0 carries fewer payloads, ``capacity = codeword_capacity >> c``, and
embeds for payload m the codeword value ``m + capacity * check(m)`` (below ``codeword_capacity``),
where ``check(m)`` is the top c bits of the key's PRF (prf-v1 ``context_seeds`` under the
"check" sub-key, salt 0, the payload's two 32-bit halves as context). With c = 0 the codeword value
is the payload itself, as for keys made before the option. The scheme configs' codeword methods
(``codeword_bits``, ``blocks``, ``payloads_of``) read codeword values; the open-set decoder
(``detector.check``) turns them back into payloads, trying the codewords nearest its decode until
one's checksum matches. Keyed, so that text written under one payload cannot be relabelled with
a valid other one without the key, and a wrong codeword passes with probability 2**-c.
"""

from __future__ import annotations

import numpy as np
import torch

from provmark.errors import ParameterError
from provmark.kernels.prf import context_seeds, fastrange, split_key
from provmark.watermark import subkeys

__all__ = ["MAX_CHECK_BITS", "validate_check_bits", "check_values", "codeword_values", "payloads_of_values"]

MAX_CHECK_BITS = 16


def validate_check_bits(check_bits, codeword_capacity: int) -> None:
    """``check_bits`` must be an integer in [0, MAX_CHECK_BITS] that leaves at least 2 payloads."""
    if isinstance(check_bits, bool) or not isinstance(check_bits, int) or not 0 <= check_bits <= MAX_CHECK_BITS:
        raise ParameterError(f"check_bits must be an integer in [0, {MAX_CHECK_BITS}], got {check_bits!r}; "
                             "0 (no checksum) is the default, 8 is usual")
    if codeword_capacity >> check_bits < 2:
        raise ParameterError(f"check_bits {check_bits} leaves fewer than 2 payloads in a codeword space of "
                             f"{codeword_capacity}; use fewer check bits or more bits")


def check_values(key, payloads: np.ndarray) -> np.ndarray:
    """int64 (M,): the keyed checksum in [0, 2**c) of every payload (uint64 (M,)) under ``key``."""
    bits = key.config.check_bits
    payloads = np.asarray(payloads, dtype=np.uint64)
    halves = np.stack([payloads >> np.uint64(32), payloads & np.uint64(0xFFFFFFFF)], axis=1).astype(np.int64)
    words = torch.tensor([split_key(key.subkey(subkeys.CHECK))], dtype=torch.int64).expand(payloads.size, 2)
    seeds = context_seeds(words, torch.zeros(payloads.size, dtype=torch.int64), torch.from_numpy(halves))
    return fastrange(seeds, 1 << bits).numpy()


def codeword_values(key, payloads) -> np.ndarray:
    """uint64 (M,): the codeword value each payload (ints in [0, capacity)) is embedded as."""
    config = key.config
    payloads = np.asarray(payloads, dtype=np.uint64)
    if getattr(config, "check_bits", 0) == 0:  # Balance and Vanilla have no check bits
        return payloads
    if payloads.size and int(payloads.max()) >= config.capacity:
        raise ParameterError(f"payload {int(payloads.max())} does not fit the key's capacity [0, {config.capacity})")
    return payloads + np.uint64(config.capacity) * check_values(key, payloads).astype(np.uint64)


def payloads_of_values(key, values) -> tuple[np.ndarray, np.ndarray]:
    """(payloads uint64 (M,), checks bool (M,)): the payload part of each codeword value (uint64
    (M,), below ``codeword_capacity``) and whether its checksum part matches it."""
    config = key.config
    values = np.asarray(values, dtype=np.uint64)
    if getattr(config, "check_bits", 0) == 0:
        return values, np.ones(values.size, dtype=bool)
    capacity = np.uint64(config.capacity)
    payloads, checks = values % capacity, values // capacity
    fits = checks < np.uint64(1 << config.check_bits)  # values past capacity << c carry no payload
    good = np.zeros(values.size, dtype=bool)
    good[fits] = check_values(key, payloads[fits]) == checks[fits].astype(np.int64)
    return payloads, good
