"""Fused watermarked sampling: shard bias, temperature and Gumbel-max in one kernel, to token ids.

For each row of a batch at one step (the optional sampler of ``watermark.hook.generate``):

1. ``biased_v = logit_v + delta`` on the row's preferred ids (the ``shard_bias`` rule, skip
   rows and position tables included), in float32;
2. ``score_v = biased_v * (1 / T) + G_v`` with keyed Gumbel noise ``G_v`` (below);
3. the sampled id is ``argmax_v score_v``, the first one on ties, NaN scores never win.

Gumbel-max samples exactly from ``softmax(biased / T)`` when the G_v are independent Gumbel
draws. Here ``G_v = -log(-log(u_v))`` with ``u_v`` from the PRF word ``token_word(noise_seed, v)``
(PRF v1): its top 23 bits give the odd multiple of 2**-24 ``u_v`` in (0, 1), so u is never 0 or 1
and the noise is bounded, -2.82 < G < 16.7. The cost of the bound: an id whose logit lies more
than 19.4 T below the best one is never drawn (its probability is below e**-19.4, 4e-9, times
the best id's). The noise seed of each row and step comes from ``sampling_seeds``: the same seed
gives the same ids on every device where the logits agree.

**Bit-identical ids.** A library log (libm, CUDA's libdevice, numpy) may differ from another in
the last bit, which would let the kernel and the reference pick different ids when two scores
nearly tie. Both therefore compute the log with ``_log``'s own sequence of IEEE float32
operations (the classic fdlibm reduction of logf: x = 2**k * m, then an odd polynomial in
s = (m - 1)/(m + 1), about 1 ulp), every operation correctly rounded: the division is
``div_rn`` in Triton and the kernel is compiled without fused multiply-adds. So the reference
and the kernel compute the same float32 score for every id, and the same argmax.
"""

from __future__ import annotations

import torch

from provmark.kernels._triton import HAS_TRITON, check_devices, triton_ready
from provmark.kernels.prf import context_seeds, fold16, folded_token_hash_table, mix32_unfolded_, split_key
from provmark.kernels.shard_bias import _adjacent_ids, _check_row_params, preferred_mask

if HAS_TRITON:
    import triton
    import triton.language as tl

    from provmark.kernels._triton import preferred_flags, row_shard_params
    from provmark.kernels._triton import token_words as token_words_tl

__all__ = ["fused_sample", "sampling_seeds"]

BLOCK_V = 2048  # vocabulary ids per program of the first (block argmax) stage

# float32 constants of the log (all exactly representable, so no rounding when torch or Triton
# converts them): ln 2 split into a high part with trailing zero bits and the rest, and the
# minimax coefficients of (log(1+s) - log(1-s)) / s on the reduced range.
_LN2_HI = float.fromhex("0x1.62e3p-1")
_LN2_LO = float.fromhex("0x1.2fefa2p-17")
_LG1 = float.fromhex("0x1.555554p-1")
_LG2 = float.fromhex("0x1.999c26p-2")
_LG3 = float.fromhex("0x1.23d3dcp-2")
_LG4 = float.fromhex("0x1.f13c4cp-3")
_SQRT_HALF_BITS = 0x3F3504F3  # float32 bits of sqrt(2)/2: the reduced mantissa lies in [sqrt(2)/2, sqrt(2))
_ONE_BITS = 0x3F800000


def sampling_seeds(seed: int, step: int, batch: int) -> torch.Tensor:
    """int64 (B,) noise seeds of one generation step: ``context_seed(seed, step, [row])`` under
    PRF v1, so every (seed, step, row) draws its own noise. ``seed`` is any integer (taken modulo
    2**64); it is not a secret."""
    keys = torch.tensor([split_key(seed % (1 << 64))], dtype=torch.int64).expand(batch, 2)
    return context_seeds(keys, torch.full((batch,), step, dtype=torch.int64), torch.arange(batch)[:, None])


def _log(x: torch.Tensor) -> torch.Tensor:
    """Natural log of positive normal float32 values, one IEEE float32 operation at a time (the
    kernel's ``_log_tl`` runs the very same sequence)."""
    bits = x.view(torch.int32) + (_ONE_BITS - _SQRT_HALF_BITS)
    k = (bits >> 23) - 0x7F
    m = ((bits & 0x007FFFFF) + _SQRT_HALF_BITS).view(torch.float32)
    f = m - 1.0
    s = f / (f + 2.0)
    z = s * s
    w = z * z
    r = z * (w * _LG3 + _LG1) + w * (w * _LG4 + _LG2)
    half_f2 = f * 0.5 * f
    dk = k.to(torch.float32)
    return s * (half_f2 + r) + dk * _LN2_LO - half_f2 + f + dk * _LN2_HI


def _gumbel_noise(noise_seeds: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """float32 (B, V) noise G of every row and id (the reference's, computed in full)."""
    table = folded_token_hash_table(vocab_size, noise_seeds.device)
    words = mix32_unfolded_(fold16(noise_seeds)[:, None] ^ table[None, :])
    u = ((words >> 9) * 2 + 1).to(torch.float32) * 2.0**-24
    return -_log(-_log(u))


def _fused_sample_reference(logits, keys, salts, contexts, shard_counts, preferred, deltas, skip, position_keys,
                            inv_temperatures, noise_seeds):
    scores = logits.to(torch.float32)
    if keys is not None:
        mask = preferred_mask(keys, salts, contexts, shard_counts, preferred, logits.shape[1], position_keys=position_keys)
        if skip is not None:
            mask &= ~skip[:, None]
        scores = torch.where(mask, scores + deltas.to(torch.float32)[:, None], scores)
    scores = scores * inv_temperatures[:, None] + _gumbel_noise(noise_seeds, logits.shape[1])
    return scores.masked_fill(torch.isnan(scores), float("-inf")).argmax(dim=1)


if HAS_TRITON:
    _LN2_HI_TL = tl.constexpr(_LN2_HI)
    _LN2_LO_TL = tl.constexpr(_LN2_LO)
    _LG1_TL = tl.constexpr(_LG1)
    _LG2_TL = tl.constexpr(_LG2)
    _LG3_TL = tl.constexpr(_LG3)
    _LG4_TL = tl.constexpr(_LG4)
    _SQRT_HALF_BITS_TL = tl.constexpr(_SQRT_HALF_BITS)
    _ONE_MINUS_SQRT_HALF_TL = tl.constexpr(_ONE_BITS - _SQRT_HALF_BITS)

    @triton.jit
    def _log_tl(x):
        """``_log`` in Triton: the same float32 operations in the same order."""
        bits = x.to(tl.int32, bitcast=True) + _ONE_MINUS_SQRT_HALF_TL
        k = (bits >> 23) - 0x7F
        m = ((bits & 0x007FFFFF) + _SQRT_HALF_BITS_TL).to(tl.float32, bitcast=True)
        f = m - 1.0
        s = tl.math.div_rn(f, f + 2.0)
        z = s * s
        w = z * z
        r = z * (w * _LG3_TL + _LG1_TL) + w * (w * _LG4_TL + _LG2_TL)
        half_f2 = f * 0.5 * f
        dk = k.to(tl.float32)
        return s * (half_f2 + r) + dk * _LN2_LO_TL - half_f2 + f + dk * _LN2_HI_TL

    @triton.jit
    def _fused_sample_kernel(
        logits_ptr, keys_ptr, salts_ptr, contexts_ptr, shard_counts_ptr, preferred_ptr, deltas_ptr, skip_ptr,
        position_keys_ptr, inv_temperatures_ptr, noise_seeds_ptr, best_scores_ptr, best_ids_ptr,
        vocab_size, num_positions, contexts_row_stride, num_blocks, logits_row_stride, logits_col_stride,
        CONTEXT_WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_POSITIONS: tl.constexpr, HAS_SKIP: tl.constexpr,
        BLOCK_V: tl.constexpr,
    ):
        """Program (row, block): the best score of the block's ids and the first id holding it."""
        row = tl.program_id(0).to(tl.int64)
        block = tl.program_id(1)
        ids = block * BLOCK_V + tl.arange(0, BLOCK_V)
        in_vocab = ids < vocab_size
        x = tl.load(logits_ptr + row * logits_row_stride + ids.to(tl.int64) * logits_col_stride, mask=in_vocab,
                    other=float("-inf")).to(tl.float32)
        if HAS_BIAS:
            seed, shard_count, preferred = row_shard_params(
                keys_ptr, salts_ptr, contexts_ptr, shard_counts_ptr, preferred_ptr, position_keys_ptr, row,
                num_positions, contexts_row_stride, CONTEXT_WIDTH, HAS_POSITIONS,
            )
            hit = preferred_flags(seed, shard_count, preferred, ids)
            if HAS_SKIP:
                hit = hit & (tl.load(skip_ptr + row) == 0)
            x = tl.where(hit, x + tl.load(deltas_ptr + row), x)
        words = token_words_tl(tl.load(noise_seeds_ptr + row).to(tl.uint32), ids)
        u = ((words >> 9) * 2 + 1).to(tl.float32) * 5.9604644775390625e-08  # 2**-24
        noise = -_log_tl(-_log_tl(u))
        scores = x * tl.load(inv_temperatures_ptr + row) + noise
        scores = tl.where((scores != scores) | ~in_vocab, float("-inf"), scores)
        best = tl.argmax(scores, axis=0, tie_break_left=True)
        best_score = tl.max(scores, axis=0)
        tl.store(best_scores_ptr + row * num_blocks + block, best_score)
        tl.store(best_ids_ptr + row * num_blocks + block, (block * BLOCK_V + best).to(tl.int64))

    @triton.jit
    def _pick_best_kernel(best_scores_ptr, best_ids_ptr, out_ptr, num_blocks, BLOCK_BLOCKS: tl.constexpr):
        """Program (row,): the id of the first block holding the row's best score (blocks are in
        id order, so this is the first id overall)."""
        row = tl.program_id(0).to(tl.int64)
        j = tl.arange(0, BLOCK_BLOCKS)
        scores = tl.load(best_scores_ptr + row * num_blocks + j, mask=j < num_blocks, other=float("-inf"))
        first = tl.argmax(scores, axis=0, tie_break_left=True)
        tl.store(out_ptr + row, tl.load(best_ids_ptr + row * num_blocks + first))


def _fused_sample_triton(logits, keys, salts, contexts, shard_counts, preferred, deltas, skip, position_keys,
                         inv_temperatures, noise_seeds, block_v=BLOCK_V):
    """Launch the two stages: a block argmax per (row, block), then the first best block."""
    batch, vocab_size = logits.shape
    device = logits.device
    num_blocks = triton.cdiv(vocab_size, block_v)
    best_scores = torch.empty((batch, num_blocks), dtype=torch.float32, device=device)
    best_ids = torch.empty((batch, num_blocks), dtype=torch.int64, device=device)
    sampled = torch.empty(batch, dtype=torch.int64, device=device)
    if batch == 0:
        return sampled
    has_bias = keys is not None
    contexts = _adjacent_ids(contexts) if has_bias else torch.zeros((batch, 0), dtype=torch.int64, device=device)
    placeholder = noise_seeds  # any tensor: the kernel reads none of the absent inputs
    _fused_sample_kernel[(batch, num_blocks)](
        logits_ptr=logits,
        keys_ptr=keys.to(torch.int64).contiguous() if has_bias else placeholder,
        salts_ptr=salts.to(torch.int64).contiguous() if has_bias else placeholder,
        contexts_ptr=contexts,
        shard_counts_ptr=shard_counts.to(torch.int64).contiguous() if has_bias else placeholder,
        preferred_ptr=preferred.to(torch.int64).contiguous() if has_bias else placeholder,
        deltas_ptr=deltas.to(torch.float32).contiguous() if has_bias else placeholder,
        skip_ptr=skip.contiguous() if skip is not None else placeholder,
        position_keys_ptr=position_keys.to(torch.int64).contiguous() if position_keys is not None else placeholder,
        inv_temperatures_ptr=inv_temperatures.to(torch.float32).contiguous(),
        noise_seeds_ptr=noise_seeds.to(torch.int64).contiguous(),
        best_scores_ptr=best_scores,
        best_ids_ptr=best_ids,
        vocab_size=vocab_size,
        num_positions=salts.shape[1] if position_keys is not None else 1,
        contexts_row_stride=contexts.stride(0),
        num_blocks=num_blocks,
        logits_row_stride=logits.stride(0),
        logits_col_stride=logits.stride(1),
        CONTEXT_WIDTH=contexts.shape[1],
        HAS_BIAS=has_bias,
        HAS_POSITIONS=position_keys is not None,
        HAS_SKIP=has_bias and skip is not None,
        BLOCK_V=block_v,
        num_warps=4,
        enable_fp_fusion=False,  # a fused multiply-add rounds once where the reference rounds twice
    )
    _pick_best_kernel[(batch,)](
        best_scores_ptr=best_scores,
        best_ids_ptr=best_ids,
        out_ptr=sampled,
        num_blocks=num_blocks,
        BLOCK_BLOCKS=triton.next_power_of_2(num_blocks),
        num_warps=4,
        enable_fp_fusion=False,
    )
    return sampled


def fused_sample(
    logits: torch.Tensor,
    *,
    temperatures: torch.Tensor,
    noise_seeds: torch.Tensor,
    keys: torch.Tensor | None = None,
    salts: torch.Tensor | None = None,
    contexts: torch.Tensor | None = None,
    shard_counts: torch.Tensor | None = None,
    preferred: torch.Tensor | None = None,
    deltas: torch.Tensor | None = None,
    skip: torch.Tensor | None = None,
    position_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample one id per row from ``softmax((logits + bias) / T)`` by keyed Gumbel-max.

    CUDA tensors go to the fused Triton kernel (when Triton is installed), everything else to the
    torch reference; both return the same ids. ``logits`` is not modified.

    Args:
        logits: float (B, V) next-token logits (fp32, fp16 or bf16), any strides; NaN entries
            are never sampled.
        temperatures: float (B,) sampling temperature of each row, > 0.
        noise_seeds: int64 (B,) 32-bit noise seeds of this step (``sampling_seeds``).
        keys, salts, contexts, shard_counts, preferred, deltas, skip, position_keys: the
            watermark's row parameters, as in ``shard_bias``; ``keys`` None samples without bias.

    Returns:
        int64 (B,) sampled ids.
    """
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (B, V) with V >= 1, got {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"logits must be float32, float16 or bfloat16, got {logits.dtype}")
    batch = logits.shape[0]
    for name, tensor in (("temperatures", temperatures), ("noise_seeds", noise_seeds)):
        if tuple(tensor.shape) != (batch,):
            raise ValueError(f"{name} must have shape ({batch},), got {tuple(tensor.shape)}")
    fused = triton_ready(logits)
    if keys is not None:
        if any(t is None for t in (salts, contexts, shard_counts, preferred, deltas)):
            raise ValueError("with keys, give salts, contexts, shard_counts, preferred and deltas too")
        _check_row_params(batch, keys, salts, contexts, shard_counts, preferred, deltas, skip, position_keys, values=not fused)
    check_devices(logits.device, temperatures=temperatures, noise_seeds=noise_seeds, keys=keys, salts=salts,
                  contexts=contexts, shard_counts=shard_counts, preferred=preferred, deltas=deltas, skip=skip,
                  position_keys=position_keys)
    if not fused and bool((temperatures <= 0).any()):
        raise ValueError(f"temperatures must be > 0, got {temperatures.tolist()}")
    inv_temperatures = 1.0 / temperatures.to(torch.float32)
    sample = _fused_sample_triton if fused else _fused_sample_reference
    return sample(logits, keys, salts, contexts, shard_counts, preferred, deltas, skip, position_keys,
                  inv_temperatures, noise_seeds)
