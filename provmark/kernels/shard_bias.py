"""Keyed shard colouring and bias: the shared per-step logit operation of the shard schemes.

For each row of a batch at one generation step (DESIGN.md, "The shared core"):

1. ``seed = context_seed(key, salt, last h context tokens)`` (PRF v1),
2. every vocabulary id v gets ``shard = fastrange(token_word(seed, v), S)``,
3. v is preferred when bit ``shard`` of the row's 64-bit preferred-shard mask is set,
4. preferred logits get ``+delta``; rows flagged in ``skip`` are left untouched.

Key, salt, shard count S, mask and delta are per row, so one batch can mix keys and payloads.
KGW uses S = 1/gamma with shard 0 preferred; the multi-bit schemes choose salt and mask from the
payload. MPAC and MajorMark+ also let the context choose which payload position (digit, block)
a step carries: given ``position_keys``, salts and masks are (B, L) tables and each row uses
column ``fastrange(context_seed(position key, 0, context), L)`` (``select_positions``), so the
whole step, position choice included, is one kernel launch on a GPU. Vanilla-Marking also lets
the context pick the salt: given ``pool_keys``, the salt read from the table is the row's message
m, and the row's salt is its partition's pool index ``c XOR (A m)``, with the offset c and the k
rows of the binary matrix A drawn from the context (``pool_salts``; Wang et al.'s partition pool,
see ``watermark.balance``). So Vanilla's parameters, too, stay constant for a whole generation
and its step is one launch.

``_shard_bias_reference`` is the specification and the CPU path. ``_shard_bias_kernel`` is the
fused Triton kernel: one pass over the logits that hashes each row's context inside the kernel,
colours every id and adds delta; its preferred set is bit-identical to the reference's and its
logits equal the reference's in fp32 (within one rounding of the dtype in fp16 and bf16).
``shard_bias`` sends CUDA tensors to the kernel and everything else to the reference.
"""

from __future__ import annotations

import torch

from provmark.kernels._triton import HAS_TRITON, check_devices, int64_rows, triton_ready
from provmark.kernels.prf import context_seeds, fastrange, fold16, folded_token_hash_table, mix32_unfolded_, token_words

if HAS_TRITON:
    import triton
    import triton.language as tl

    from provmark.kernels._triton import preferred_flags, row_shard_params

__all__ = ["MAX_POOL_BITS", "MAX_SHARDS", "parity", "pool_indices", "pool_salts", "pool_words", "preferred_mask",
           "select_positions", "shard_bias"]

MAX_SHARDS = 64  # the preferred-shard set is one 64-bit word per row
MAX_POOL_BITS = 16  # pool indices of up to 2**16 partitions
_CHUNK_ELEMENTS = 1 << 16  # int64 scratch per vocabulary chunk: stays in cache on CPU
BLOCK_V = 2048  # vocabulary ids per Triton program; 16 per thread at 4 warps


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


def parity(x: torch.Tensor) -> torch.Tensor:
    """Parity of the set bits of each non-negative int64 below 2**32."""
    for shift in (16, 8, 4, 2, 1):
        x = x ^ (x >> shift)
    return x & 1


def pool_words(pool_keys: torch.Tensor, columns: torch.Tensor, contexts: torch.Tensor, pool_bits: int):
    """The affine map of each context from messages to pool indices: (offset c int64 (N,) in
    [0, 2**k), rows int64 (N, k) of 32-bit words). Word r = ``token_word(seed, r)``, r = 0..k, with
    ``seed = context_seed(pool key, column, context)``; c is word 0 mod 2**k, row r of A is word r + 1.

    Args:
        pool_keys: int64 (N, 2) key words; columns: int64 (N,) the payload position (segment)
            each context carries, the seed's salt; contexts: int64 (N, h); pool_bits: k.
    """
    seeds = context_seeds(pool_keys, columns, contexts)
    words = token_words(seeds[:, None], torch.arange(pool_bits + 1, device=contexts.device)[None, :])
    return words[:, 0] & ((1 << pool_bits) - 1), words[:, 1:]


def pool_indices(offsets: torch.Tensor, rows: torch.Tensor, messages: torch.Tensor) -> torch.Tensor:
    """``c XOR (A m)``: the partition of each (context, message); bit r of A m is the parity of
    ``rows[:, r] & m``. Shapes broadcast: offsets (N,), rows (N, k), messages (N,) below 2**32."""
    bits = parity(rows & messages[:, None])
    weights = 1 << torch.arange(rows.shape[1], device=rows.device)
    return offsets ^ (bits * weights).sum(dim=1)


def pool_salts(pool_keys, columns, contexts, messages, pool_bits):
    """int64 (N,): the pool index of each row's message at its context (``pool_words`` then
    ``pool_indices``): the salt of the row's shard seed."""
    return pool_indices(*pool_words(pool_keys, columns, contexts, pool_bits), messages)


def _check_row_params(batch, keys, salts, contexts, shard_counts, preferred, deltas, skip, position_keys, *, values=True,
                      pool_keys=None, pool_bits=0):
    """Raise ``ValueError`` on a malformed row parameter. ``values=False`` checks shapes only:
    reading a CUDA tensor's values would synchronise the device at every generation step."""
    table = (batch,) if position_keys is None else (batch, salts.shape[-1] if salts.dim() == 2 else -1)
    shapes = {
        "keys": (keys, (batch, 2)),
        "salts": (salts, table),
        "shard_counts": (shard_counts, (batch,)),
        "preferred": (preferred, table),
    }
    if position_keys is not None:
        shapes["position_keys"] = (position_keys, (batch, 2))
    if pool_keys is not None:
        shapes["pool_keys"] = (pool_keys, (batch, 2))
        if not isinstance(pool_bits, int) or not 1 <= pool_bits <= MAX_POOL_BITS:
            raise ValueError(f"pool_bits must be an integer in [1, {MAX_POOL_BITS}] with pool_keys, got {pool_bits!r}")
    for name, (tensor, shape) in shapes.items():
        if tuple(tensor.shape) != shape:
            tables = "" if position_keys is None else " (a table of L >= 1 columns, since position_keys is given)"
            raise ValueError(f"{name} must have shape {shape}{tables}, got {tuple(tensor.shape)}")
    if position_keys is not None and salts.shape[1] < 1:
        raise ValueError(f"salts and preferred tables need at least one column, got shape {tuple(salts.shape)}")
    if contexts.dim() != 2 or contexts.shape[0] != batch:
        raise ValueError(f"contexts must have shape ({batch}, h), got {tuple(contexts.shape)}")
    if deltas is not None and tuple(deltas.shape) != (batch,):
        raise ValueError(f"deltas must have shape ({batch},), got {tuple(deltas.shape)}")
    if skip is not None and tuple(skip.shape) != (batch,):
        raise ValueError(f"skip must have shape ({batch},), got {tuple(skip.shape)}")
    if values and bool(((shard_counts < 1) | (shard_counts > MAX_SHARDS)).any()):
        raise ValueError(f"shard_counts must lie in [1, {MAX_SHARDS}], got {shard_counts.tolist()}")


def select_positions(position_keys, contexts, salts, preferred, pool_keys=None, pool_bits=0):
    """(salts (B,), preferred (B,)): each row's column of its (B, L) tables, the column being
    ``fastrange(context_seed(position key, 0, context), L)``; tables pass through when
    ``position_keys`` is None (the column is then 0). With ``pool_keys``, the salt read is a
    message and each row's salt is its pool index at that column (``pool_salts``)."""
    column = None
    if position_keys is not None:
        seeds = context_seeds(position_keys, torch.zeros_like(salts[:, 0]), contexts)
        column = fastrange(seeds, salts.shape[1])
        salts = salts.gather(1, column[:, None]).squeeze(1)
        preferred = preferred.gather(1, column[:, None]).squeeze(1)
    if pool_keys is not None:
        column = torch.zeros_like(salts) if column is None else column
        salts = pool_salts(pool_keys, column, contexts, salts, pool_bits)
    return salts, preferred


def preferred_mask(
    keys: torch.Tensor,
    salts: torch.Tensor,
    contexts: torch.Tensor,
    shard_counts: torch.Tensor,
    preferred: torch.Tensor,
    vocab_size: int,
    *,
    position_keys: torch.Tensor | None = None,
    pool_keys: torch.Tensor | None = None,
    pool_bits: int = 0,
) -> torch.Tensor:
    """Boolean (B, vocab_size) mask of the preferred ids of each row (reference, any device).

    Args:
        keys: int64 (B, 2) (low, high) words of each row's 64-bit PRF key.
        salts: int64 (B,) scheme salt, in [0, 2**32); (B, L) with ``position_keys``.
        contexts: int64 (B, h) last h tokens before the step, oldest first.
        shard_counts: int64 (B,) number of shards S, in [1, 64].
        preferred: int64 (B,) bit i set when shard i is preferred; (B, L) with ``position_keys``.
        vocab_size: number of ids to colour.
        position_keys: int64 (B, 2) key words of the PRF that picks each row's column of the
            salt and preferred tables (MPAC's digit, MajorMark+'s block), or None.
        pool_keys: int64 (B, 2) key words of the partition pool, or None: with them, salts hold
            messages (below 2**32) and each row's salt is its message's pool index among
            ``2**pool_bits`` partitions (Vanilla-Marking; ``pool_salts``).
        pool_bits: k, in [1, MAX_POOL_BITS] with ``pool_keys``.
    """
    batch = keys.shape[0]
    _check_row_params(batch, keys, salts, contexts, shard_counts, preferred, None, None, position_keys,
                      pool_keys=pool_keys, pool_bits=pool_bits)
    salts, preferred = select_positions(position_keys, contexts, salts, preferred, pool_keys, pool_bits)
    seeds = fold16(context_seeds(keys, salts, contexts))
    table = folded_token_hash_table(vocab_size, keys.device)
    return _preferred_chunk(seeds, shard_counts, preferred, _word_ranges(shard_counts, preferred), table)


def _shard_bias_reference(logits, keys, salts, contexts, shard_counts, preferred, deltas, skip, position_keys, out,
                          pool_keys=None, pool_bits=0):
    if skip is not None and bool(skip.all()):
        return out
    salts, preferred = select_positions(position_keys, contexts, salts, preferred, pool_keys, pool_bits)
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


if HAS_TRITON:

    @triton.jit
    def _shard_bias_kernel(
        logits_ptr, out_ptr, keys_ptr, salts_ptr, contexts_ptr, shard_counts_ptr, preferred_ptr, deltas_ptr,
        skip_ptr, position_keys_ptr, pool_keys_ptr, vocab_size, num_positions, contexts_row_stride,
        logits_row_stride, logits_col_stride, out_row_stride, out_col_stride,
        CONTEXT_WIDTH: tl.constexpr, HAS_POSITIONS: tl.constexpr, POOL_BITS: tl.constexpr, HAS_SKIP: tl.constexpr,
        INPLACE: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        """Program (row, block): bias ids [block * BLOCK_V, (block + 1) * BLOCK_V) of one row.

        Every program of a row hashes the row's context itself (a few dozen scalar mixes): that
        costs less than a second launch and a round trip through memory for the seed."""
        row = tl.program_id(0).to(tl.int64)
        ids = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
        in_vocab = ids < vocab_size
        seed, shard_count, preferred = row_shard_params(
            keys_ptr, salts_ptr, contexts_ptr, shard_counts_ptr, preferred_ptr, position_keys_ptr, pool_keys_ptr, row,
            num_positions, contexts_row_stride, CONTEXT_WIDTH, HAS_POSITIONS, POOL_BITS,
        )
        hit = preferred_flags(seed, shard_count, preferred, ids)
        if HAS_SKIP:
            hit = hit & (tl.load(skip_ptr + row) == 0)
        ids64 = ids.to(tl.int64)
        x = tl.load(logits_ptr + row * logits_row_stride + ids64 * logits_col_stride, mask=in_vocab)
        # fp32 sum, one rounding to the logits' dtype: what torch's add with a float alpha does.
        # (Compiled, the rounding is to nearest even; Triton's interpreter truncates to bf16.)
        biased = (x.to(tl.float32) + tl.load(deltas_ptr + row).to(tl.float32)).to(x.dtype)
        out = out_ptr + row * out_row_stride + ids64 * out_col_stride
        if INPLACE:
            tl.store(out, biased, mask=in_vocab & hit)  # untouched ids are not written at all
        else:
            tl.store(out, tl.where(hit, biased, x), mask=in_vocab)


def _adjacent_ids(contexts: torch.Tensor) -> torch.Tensor:
    """int64 contexts whose ids are adjacent in memory: a column slice of the sequence (what the
    hook passes) is used in place, without a copy launch at every step."""
    if contexts.dtype != torch.int64:
        contexts = contexts.to(torch.int64)
    return contexts if contexts.shape[1] <= 1 or contexts.stride(1) == 1 else contexts.contiguous()


def _shard_bias_triton(logits, keys, salts, contexts, shard_counts, preferred, deltas, skip, position_keys, out,
                       pool_keys=None, pool_bits=0, block_v=BLOCK_V):
    """Launch ``_shard_bias_kernel`` writing into ``out`` (``logits`` itself when in place)."""
    batch, vocab_size = logits.shape
    if batch == 0 or vocab_size == 0:
        return out
    contexts = _adjacent_ids(contexts)
    _shard_bias_kernel[(batch, triton.cdiv(vocab_size, block_v))](
        logits_ptr=logits,
        out_ptr=out,
        keys_ptr=int64_rows(keys),
        salts_ptr=int64_rows(salts),
        contexts_ptr=contexts,
        shard_counts_ptr=int64_rows(shard_counts),
        preferred_ptr=int64_rows(preferred),
        deltas_ptr=deltas if deltas.dtype == torch.float32 and deltas.is_contiguous() else deltas.float().contiguous(),
        skip_ptr=skip.contiguous() if skip is not None else keys,  # unread without HAS_SKIP
        position_keys_ptr=int64_rows(position_keys) if position_keys is not None else keys,
        pool_keys_ptr=int64_rows(pool_keys) if pool_keys is not None else keys,
        vocab_size=vocab_size,
        num_positions=salts.shape[1] if position_keys is not None else 1,
        contexts_row_stride=contexts.stride(0),
        logits_row_stride=logits.stride(0),
        logits_col_stride=logits.stride(1),
        out_row_stride=out.stride(0),
        out_col_stride=out.stride(1),
        CONTEXT_WIDTH=contexts.shape[1],
        HAS_POSITIONS=position_keys is not None,
        POOL_BITS=pool_bits if pool_keys is not None else 0,
        HAS_SKIP=skip is not None,
        INPLACE=out.data_ptr() == logits.data_ptr(),
        BLOCK_V=block_v,
        num_warps=4,
        enable_fp_fusion=False,
    )
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
    position_keys: torch.Tensor | None = None,
    pool_keys: torch.Tensor | None = None,
    pool_bits: int = 0,
    inplace: bool = False,
) -> torch.Tensor:
    """Add each row's delta to the logits of its preferred ids.

    CUDA tensors go to the fused Triton kernel (when Triton is installed), everything else to
    the torch reference. On CUDA the row parameters' values are not range-checked, since reading
    them would synchronise the device at every step; the watermarkers build them from validated
    configs.

    Args:
        logits: float (B, V) next-token logits (fp32, fp16 or bf16), any strides. -inf stays
            -inf and NaN stays NaN.
        keys, salts, contexts, shard_counts, preferred, position_keys, pool_keys, pool_bits: as in
            ``preferred_mask``.
        deltas: float (B,) bias added to preferred logits.
        skip: bool (B,) rows left unchanged (for example a repeated context), or None.
        inplace: write into ``logits`` instead of a copy.

    Returns:
        The biased logits, (B, V), same dtype and device as ``logits``.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, V), got {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"logits must be float32, float16 or bfloat16, got {logits.dtype}")
    batch = logits.shape[0]
    fused = triton_ready(logits)
    _check_row_params(batch, keys, salts, contexts, shard_counts, preferred, deltas, skip, position_keys, values=not fused,
                      pool_keys=pool_keys, pool_bits=pool_bits)
    check_devices(logits.device, keys=keys, salts=salts, contexts=contexts, shard_counts=shard_counts,
                  preferred=preferred, deltas=deltas, skip=skip, position_keys=position_keys, pool_keys=pool_keys)
    if fused:
        out = logits if inplace else torch.empty_like(logits, memory_format=torch.contiguous_format)
        return _shard_bias_triton(logits, keys, salts, contexts, shard_counts, preferred, deltas, skip, position_keys, out,
                                  pool_keys, pool_bits)
    out = logits if inplace else logits.clone()
    return _shard_bias_reference(logits, keys, salts, contexts, shard_counts, preferred, deltas, skip, position_keys, out,
                                 pool_keys, pool_bits)
