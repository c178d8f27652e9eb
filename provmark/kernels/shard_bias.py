"""Keyed shard colouring and bias: the shared per-step logit operation of the shard schemes.

For each row of a batch at one generation step (DESIGN.md, "The shared core"):

1. ``seed = context_seed(key, salt, last h context tokens)`` (PRF v1),
2. every vocabulary id v gets ``shard = fastrange(token_word(seed, v), S)``,
3. v is preferred when bit ``shard`` of the row's 64-bit preferred-shard mask is set,
4. preferred logits get ``+delta``; rows flagged in ``skip`` are left untouched.

Key, salt, shard count S, mask and delta are per row, so one batch can mix keys and payloads.
KGW uses S = 1/gamma with shard 0 preferred; the multi-bit schemes choose salt and mask from the
payload. ``_shard_bias_reference`` is the specification and the CPU path; a GPU kernel with the
same inputs arrives with the fused-kernel work and must match it bit for bit on the mask.
"""

from __future__ import annotations

import torch

from provmark.kernels.prf import context_seeds, fold16, folded_token_hash_table, mix32_unfolded_

__all__ = ["MAX_SHARDS", "preferred_mask", "shard_bias"]

MAX_SHARDS = 64  # the preferred-shard set is one 64-bit word per row
_CHUNK_ELEMENTS = 1 << 16  # int64 scratch per vocabulary chunk: stays in cache on CPU


def _word_ranges(shard_counts: torch.Tensor, preferred: torch.Tensor):
    """(low, high) int64 (B,) word bounds when every row prefers one contiguous run of shards.

    Shards lo..hi-1 are preferred exactly when ``ceil(lo * 2**32 / S) <= word <
    ceil(hi * 2**32 / S)``, because ``fastrange(word, S) >= lo`` iff ``word * S >= lo * 2**32``.
    Comparing words with two bounds is what KGW, MPAC and Vanilla-Marking need, and is cheaper
    on CPU than computing each shard. Returns None when some row's preferred set is not a run.
    """
    lows, highs = [], []
    for count, bits in zip(shard_counts.tolist(), preferred.tolist()):
        bits &= (1 << count) - 1  # bits at or above S name no shard
        low = (bits & -bits).bit_length() - 1 if bits else 0
        run = bits >> low if bits else 0
        if run & (run + 1):
            return None
        high = low + run.bit_length()
        lows.append(-(-low * 2**32 // count))
        highs.append(-(-high * 2**32 // count))
    device = shard_counts.device
    return torch.tensor(lows, dtype=torch.int64, device=device), torch.tensor(highs, dtype=torch.int64, device=device)


def _preferred_chunk(folded_seeds, shard_counts, preferred, ranges, table_chunk, dtype=torch.bool):
    """(B, chunk) preference of the ids whose folded token hashes are ``table_chunk``, as
    ``dtype``: bool, or 0/1 in a float dtype ready to scale and add to logits."""
    words = folded_seeds[:, None] ^ table_chunk[None, :]
    mix32_unfolded_(words)  # now token_word(seed, v) for every row and id
    if ranges is not None:
        low, high = ranges
        if not bool(low.any()):
            return torch.lt(words, high[:, None], out=torch.empty(words.shape, dtype=dtype, device=words.device))
        return ((words >= low[:, None]) & (words < high[:, None])).to(dtype)
    words.mul_(shard_counts[:, None])
    words >>= 32  # now the shard of each id
    return ((preferred[:, None] >> words) & 1).to(dtype)


def _check_row_params(batch, keys, salts, contexts, shard_counts, preferred, deltas, skip):
    shapes = {
        "keys": (keys, (batch, 2)),
        "salts": (salts, (batch,)),
        "shard_counts": (shard_counts, (batch,)),
        "preferred": (preferred, (batch,)),
    }
    for name, (tensor, shape) in shapes.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    if contexts.dim() != 2 or contexts.shape[0] != batch:
        raise ValueError(f"contexts must have shape ({batch}, h), got {tuple(contexts.shape)}")
    if deltas is not None and tuple(deltas.shape) != (batch,):
        raise ValueError(f"deltas must have shape ({batch},), got {tuple(deltas.shape)}")
    if skip is not None and tuple(skip.shape) != (batch,):
        raise ValueError(f"skip must have shape ({batch},), got {tuple(skip.shape)}")
    if bool(((shard_counts < 1) | (shard_counts > MAX_SHARDS)).any()):
        raise ValueError(f"shard_counts must lie in [1, {MAX_SHARDS}], got {shard_counts.tolist()}")


def preferred_mask(
    keys: torch.Tensor,
    salts: torch.Tensor,
    contexts: torch.Tensor,
    shard_counts: torch.Tensor,
    preferred: torch.Tensor,
    vocab_size: int,
) -> torch.Tensor:
    """Boolean (B, vocab_size) mask of the preferred ids of each row (reference, any device).

    Args:
        keys: int64 (B, 2) (low, high) words of each row's 64-bit PRF key.
        salts: int64 (B,) scheme salt, in [0, 2**32).
        contexts: int64 (B, h) last h tokens before the step, oldest first.
        shard_counts: int64 (B,) number of shards S, in [1, 64].
        preferred: int64 (B,) bit i set when shard i is preferred.
        vocab_size: number of ids to colour.
    """
    batch = keys.shape[0]
    _check_row_params(batch, keys, salts, contexts, shard_counts, preferred, None, None)
    seeds = fold16(context_seeds(keys, salts, contexts))
    table = folded_token_hash_table(vocab_size, keys.device)
    return _preferred_chunk(seeds, shard_counts, preferred, _word_ranges(shard_counts, preferred), table)


def _shard_bias_reference(logits, keys, salts, contexts, shard_counts, preferred, deltas, skip, out):
    seeds = fold16(context_seeds(keys, salts, contexts))
    table = folded_token_hash_table(logits.shape[1], logits.device)
    rows = torch.nonzero(~skip).flatten() if skip is not None and bool(skip.any()) else None
    if rows is not None:
        seeds, shard_counts, preferred, deltas = seeds[rows], shard_counts[rows], preferred[rows], deltas[rows]
    ranges = _word_ranges(shard_counts, preferred)
    bias = deltas.to(torch.float32)[:, None]
    # One delta for every row (one key): add the mask scaled in one pass.
    uniform = float(deltas[0]) if bool((deltas == deltas[0]).all()) else None
    chunk = max(_CHUNK_ELEMENTS // max(seeds.shape[0], 1), 1 << 12)
    for start in range(0, logits.shape[1], chunk):
        stop = min(start + chunk, logits.shape[1])
        mask = _preferred_chunk(seeds, shard_counts, preferred, ranges, table[start:stop], dtype=out.dtype)
        if rows is None and uniform is not None:
            out[:, start:stop].add_(mask, alpha=uniform)
            continue
        add = (mask * bias).to(out.dtype)
        if rows is None:
            out[:, start:stop] += add
        else:
            out[rows, start:stop] += add
    return out


def shard_bias(
    logits: torch.Tensor,
    *,
    keys: torch.Tensor,
    salts: torch.Tensor,
    contexts: torch.Tensor,
    shard_counts: torch.Tensor,
    preferred: torch.Tensor,
    deltas: torch.Tensor,
    skip: torch.Tensor | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """Add each row's delta to the logits of its preferred ids.

    Args:
        logits: float (B, V) next-token logits (fp32, fp16 or bf16). -inf stays -inf.
        keys, salts, contexts, shard_counts, preferred: as in ``preferred_mask``.
        deltas: float (B,) bias added to preferred logits.
        skip: bool (B,) rows left unchanged (for example a repeated context), or None.
        inplace: write into ``logits`` instead of a copy.

    Returns:
        The biased logits, (B, V), same dtype and device as ``logits``.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, V), got {tuple(logits.shape)}")
    batch = logits.shape[0]
    _check_row_params(batch, keys, salts, contexts, shard_counts, preferred, deltas, skip)
    out = logits if inplace else logits.clone()
    if skip is not None and bool(skip.all()):
        return out
    return _shard_bias_reference(logits, keys, salts, contexts, shard_counts, preferred, deltas, skip, out)

