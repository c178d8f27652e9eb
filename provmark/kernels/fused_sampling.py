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

**One launch per step.** The kernel's programs (row, block) each find their block's best score,
write it to a scratch slot and count themselves in on a per-row counter (an atomic add with
acquire-release order, after a barrier, so the slot is visible first); the program that counts
last for its row reads the row's slots and writes the sampled id, then sets the counter back
to zero. So a step is a single launch with no second pick kernel, and the scratch needs no
clearing between steps.

**Generation state.** ``FusedSampler`` holds what a generation keeps for all its steps: the
watermark's row parameters, the inverse temperatures, every step's noise seeds, the token
sequence, the done flags and the repeated-context tables (``kernels.repeated_context``), all
on the device. A step on a GPU is then one kernel launch plus one in-place add: the kernel reads
the step number and the context from the device, decides the repeated context in the program
that picks the id (every block scores its ids with and without the bias, and the last program
keeps one of the two), masks stop ids before ``min_new_tokens``, pads finished rows, writes the
id into the sequence and updates the done flags. Nothing is read back by the host and no launch
argument changes from one step to the next, so the step can be captured in a CUDA graph. On a
CPU the same step runs the torch reference with the same rules.
"""

from __future__ import annotations

import torch

from provmark.kernels._triton import HAS_TRITON, check_devices, int64_rows, triton_ready
from provmark.kernels.prf import context_seeds, fold16, folded_token_hash_table, mix32_unfolded_, split_key
from provmark.kernels.repeated_context import RepeatedContexts
from provmark.kernels.shard_bias import _adjacent_ids, _check_row_params, preferred_mask

if HAS_TRITON:
    import triton
    import triton.language as tl

    from provmark.kernels._triton import preferred_flags, row_shard_params
    from provmark.kernels._triton import token_words as token_words_tl
    from provmark.kernels.repeated_context import repeated_step

__all__ = ["FusedSampler", "fused_sample", "sampling_seed_table", "sampling_seeds"]

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


def sampling_seed_table(seed: int, steps: int, batch: int) -> torch.Tensor:
    """int64 (steps, B): row t is ``sampling_seeds(seed, t, batch)``, hashed in one batch."""
    keys = torch.tensor([split_key(seed % (1 << 64))], dtype=torch.int64).expand(steps * batch, 2)
    salts = torch.arange(steps, dtype=torch.int64).repeat_interleave(batch)
    rows = torch.arange(batch, dtype=torch.int64).repeat(steps)[:, None]
    return context_seeds(keys, salts, rows).reshape(steps, batch)


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
                            inv_temperatures, noise_seeds, pool_keys=None, pool_bits=0):
    scores = logits.to(torch.float32)
    if keys is not None:
        mask = preferred_mask(keys, salts, contexts, shard_counts, preferred, logits.shape[1], position_keys=position_keys,
                              pool_keys=pool_keys, pool_bits=pool_bits)
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
        logits_ptr, logits_row_stride, logits_col_stride, vocab_size,
        keys_ptr, salts_ptr, shard_counts_ptr, preferred_ptr, deltas_ptr, position_keys_ptr, pool_keys_ptr, num_positions,
        sequence_ptr, sequence_row_stride, first_column, step_ptr, skip_ptr, table_ptr, table_capacity,
        inv_temperatures_ptr, noise_seeds_ptr, noise_step_stride, stop_ids_ptr, min_new, pad_id, done_ptr,
        partial_scores_ptr, partial_ids_ptr, counters_ptr, out_ptr, num_blocks, row_slots,
        CONTEXT_WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_POSITIONS: tl.constexpr, POOL_BITS: tl.constexpr,
        SKIP: tl.constexpr,
        STATEFUL: tl.constexpr, NUM_STOPS: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_BLOCKS: tl.constexpr,
    ):
        """Program (row, block): the best score of the block's ids (and, with SKIP == 2, the best
        unbiased one) into the row's scratch slots; the row's last program to finish picks the id.

        The context is ``sequence[row, column - h : column]``. Stateless (a ``fused_sample``
        call), the sequence is the (B, h) contexts and the column is h. STATEFUL (a
        ``FusedSampler`` step), the column is ``first_column + step`` with the step read from
        ``step_ptr``; noise seeds are row ``step`` of a (steps, B) table; stop ids are masked
        while ``step < min_new``; the picked id is padded on done rows, written to the sequence
        and the done flags updated. SKIP: 0 none, 1 a (B,) flag per row, 2 the repeated-context
        table (decided by the picking program, which is the only one to touch the row's table)."""
        row = tl.program_id(0).to(tl.int64)
        block = tl.program_id(1)
        step = 0
        column = tl.cast(first_column, tl.int64)  # an int argument equal to 1 arrives as a constexpr
        if STATEFUL:
            step = tl.load(step_ptr)
            column += step
        ids = block * BLOCK_V + tl.arange(0, BLOCK_V)
        in_vocab = ids < vocab_size
        x = tl.load(logits_ptr + row * logits_row_stride + ids.to(tl.int64) * logits_col_stride, mask=in_vocab,
                    other=float("-inf")).to(tl.float32)
        if NUM_STOPS > 0:
            banned = step < min_new
            for i in tl.static_range(NUM_STOPS):
                x = tl.where(banned & (ids == tl.load(stop_ids_ptr + i)), float("-inf"), x)
        words = token_words_tl(tl.load(noise_seeds_ptr + step * noise_step_stride + row).to(tl.uint32), ids)
        u = ((words >> 9) * 2 + 1).to(tl.float32) * 5.9604644775390625e-08  # 2**-24
        noise = -_log_tl(-_log_tl(u))
        inv_temperature = tl.load(inv_temperatures_ptr + row)
        has_context = column >= CONTEXT_WIDTH
        slots = partial_scores_ptr + row * row_slots
        slot_ids = partial_ids_ptr + row * row_slots
        if HAS_BIAS:
            # a context that would start before the sequence is never read: the step is plain
            context_ptr = sequence_ptr + tl.maximum(column - CONTEXT_WIDTH, 0)
            seed, shard_count, preferred = row_shard_params(
                keys_ptr, salts_ptr, context_ptr, shard_counts_ptr, preferred_ptr, position_keys_ptr, pool_keys_ptr, row,
                num_positions, sequence_row_stride, CONTEXT_WIDTH, HAS_POSITIONS, POOL_BITS,
            )
            hit = preferred_flags(seed, shard_count, preferred, ids) & has_context
            if SKIP == 1:
                hit = hit & (tl.load(skip_ptr + row) == 0)
            scores = tl.where(hit, x + tl.load(deltas_ptr + row), x) * inv_temperature + noise
        else:
            scores = x * inv_temperature + noise
        scores = tl.where((scores != scores) | ~in_vocab, float("-inf"), scores)
        tl.store(slots + block, tl.max(scores, axis=0))
        tl.store(slot_ids + block, (block * BLOCK_V + tl.argmax(scores, axis=0, tie_break_left=True)).to(tl.int64))
        if SKIP == 2:
            plain = x * inv_temperature + noise
            plain = tl.where((plain != plain) | ~in_vocab, float("-inf"), plain)
            tl.store(slots + num_blocks + block, tl.max(plain, axis=0))
            tl.store(slot_ids + num_blocks + block,
                     (block * BLOCK_V + tl.argmax(plain, axis=0, tie_break_left=True)).to(tl.int64))
        # The slots must be visible before the count: a barrier orders the block's threads, the
        # atomic's release orders the block against the picking program's acquire.
        tl.debug_barrier()
        if tl.atomic_add(counters_ptr + row, 1) == num_blocks - 1:
            first = 0
            if SKIP == 2:
                repeated = column < 0  # False
                if has_context:
                    repeated = repeated_step(table_ptr + row * table_capacity, table_capacity,
                                             sequence_ptr + row * sequence_row_stride, column, CONTEXT_WIDTH)
                first = tl.where(repeated, num_blocks, 0)
            j = tl.arange(0, BLOCK_BLOCKS)
            best_scores = tl.load(slots + first + j, mask=j < num_blocks, other=float("-inf"), volatile=True)
            # blocks are in id order, so the first best block holds the first best id
            sampled = tl.load(slot_ids + first + tl.argmax(best_scores, axis=0, tie_break_left=True), volatile=True)
            if STATEFUL:
                done = tl.load(done_ptr + row)
                sampled = tl.where(done != 0, pad_id, sampled).to(tl.int64)
                stopped = done != 0
                for i in tl.static_range(NUM_STOPS):
                    stopped = stopped | (sampled == tl.load(stop_ids_ptr + i))
                tl.store(done_ptr + row, stopped)
                tl.store(sequence_ptr + row * sequence_row_stride + column, sampled)
            tl.store(out_ptr + row, sampled)
            tl.atomic_xchg(counters_ptr + row, 0)  # ready for the next step: no clearing launch


def _launch(logits, keys, salts, shard_counts, preferred, deltas, position_keys, inv_temperatures, sequence,
            first_column, context_width, out, scratch, *, skip=None, table=None, step=None, noise_seeds,
            stop_ids=None, min_new=0, pad_id=0, done=None, pool_keys=None, pool_bits=0, block_v):
    """Launch ``_fused_sample_kernel``; ``scratch`` is (partial scores, partial ids, counters)."""
    batch, vocab_size = logits.shape
    num_blocks = triton.cdiv(vocab_size, block_v)
    has_bias = keys is not None
    placeholder = inv_temperatures  # any tensor on the device: the kernel reads none of the absent inputs
    partial_scores, partial_ids, counters = scratch
    _fused_sample_kernel[(batch, num_blocks)](
        logits_ptr=logits,
        logits_row_stride=logits.stride(0),
        logits_col_stride=logits.stride(1),
        vocab_size=vocab_size,
        keys_ptr=int64_rows(keys) if has_bias else placeholder,
        salts_ptr=int64_rows(salts) if has_bias else placeholder,
        shard_counts_ptr=int64_rows(shard_counts) if has_bias else placeholder,
        preferred_ptr=int64_rows(preferred) if has_bias else placeholder,
        deltas_ptr=deltas if has_bias else placeholder,
        position_keys_ptr=int64_rows(position_keys) if position_keys is not None else placeholder,
        pool_keys_ptr=int64_rows(pool_keys) if pool_keys is not None else placeholder,
        num_positions=salts.shape[1] if position_keys is not None else 1,
        sequence_ptr=sequence,
        sequence_row_stride=sequence.stride(0),
        first_column=first_column,
        step_ptr=step if step is not None else placeholder,
        skip_ptr=skip if skip is not None else placeholder,
        table_ptr=table.table if table is not None else placeholder,
        table_capacity=table.capacity if table is not None else 1,
        inv_temperatures_ptr=inv_temperatures,
        noise_seeds_ptr=noise_seeds,
        noise_step_stride=noise_seeds.stride(0) if noise_seeds.dim() == 2 else 0,
        stop_ids_ptr=stop_ids if stop_ids is not None else placeholder,
        min_new=min_new,
        pad_id=pad_id,
        done_ptr=done if done is not None else placeholder,
        partial_scores_ptr=partial_scores,
        partial_ids_ptr=partial_ids,
        counters_ptr=counters,
        out_ptr=out,
        num_blocks=num_blocks,
        row_slots=partial_scores.shape[1],
        CONTEXT_WIDTH=context_width,
        HAS_BIAS=has_bias,
        HAS_POSITIONS=position_keys is not None,
        POOL_BITS=pool_bits if pool_keys is not None else 0,
        SKIP=2 if table is not None else 1 if skip is not None else 0,
        STATEFUL=step is not None,
        NUM_STOPS=stop_ids.numel() if stop_ids is not None else 0,
        BLOCK_V=block_v,
        BLOCK_BLOCKS=triton.next_power_of_2(num_blocks),
        num_warps=4,
        enable_fp_fusion=False,  # a fused multiply-add rounds once where the reference rounds twice
    )
    return out


def _scratch(batch, vocab_size, block_v, device, two_candidates=False):
    """(partial scores, partial ids, counters) for ``_fused_sample_kernel``: counters start at
    zero and the kernel leaves them at zero, so one scratch serves every step of a generation."""
    slots = triton.cdiv(vocab_size, block_v) * (2 if two_candidates else 1)
    return (torch.empty((batch, slots), dtype=torch.float32, device=device),
            torch.empty((batch, slots), dtype=torch.int64, device=device),
            torch.zeros(batch, dtype=torch.int32, device=device))


def _fused_sample_triton(logits, keys, salts, contexts, shard_counts, preferred, deltas, skip, position_keys,
                         inv_temperatures, noise_seeds, pool_keys=None, pool_bits=0, block_v=BLOCK_V):
    """One launch of the kernel for a stateless step: contexts are the (B, h) sequence."""
    batch, vocab_size = logits.shape
    device = logits.device
    sampled = torch.empty(batch, dtype=torch.int64, device=device)
    if batch == 0:
        return sampled
    if keys is not None:
        contexts = _adjacent_ids(contexts)
        deltas = deltas if deltas.dtype == torch.float32 and deltas.is_contiguous() else deltas.float().contiguous()
    else:
        contexts = torch.zeros((batch, 0), dtype=torch.int64, device=device)
    return _launch(logits, keys, salts, shard_counts, preferred, deltas, position_keys,
                   inv_temperatures.contiguous(),
                   contexts, contexts.shape[1], contexts.shape[1], sampled,
                   _scratch(batch, vocab_size, block_v, device), skip=skip.contiguous() if skip is not None else None,
                   noise_seeds=int64_rows(noise_seeds), pool_keys=pool_keys, pool_bits=pool_bits, block_v=block_v)


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
    pool_keys: torch.Tensor | None = None,
    pool_bits: int = 0,
) -> torch.Tensor:
    """Sample one id per row from ``softmax((logits + bias) / T)`` by keyed Gumbel-max.

    CUDA tensors go to the fused Triton kernel (when Triton is installed), everything else to the
    torch reference; both return the same ids. ``logits`` is not modified.

    Args:
        logits: float (B, V) next-token logits (fp32, fp16 or bf16), any strides; NaN entries
            are never sampled.
        temperatures: float (B,) sampling temperature of each row, > 0.
        noise_seeds: int64 (B,) 32-bit noise seeds of this step (``sampling_seeds``).
        keys, salts, contexts, shard_counts, preferred, deltas, skip, position_keys, pool_keys,
            pool_bits: the watermark's row parameters, as in ``shard_bias``; ``keys`` None samples
            without bias.

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
        _check_row_params(batch, keys, salts, contexts, shard_counts, preferred, deltas, skip, position_keys, values=not fused,
                          pool_keys=pool_keys, pool_bits=pool_bits)
    check_devices(logits.device, temperatures=temperatures, noise_seeds=noise_seeds, keys=keys, salts=salts,
                  contexts=contexts, shard_counts=shard_counts, preferred=preferred, deltas=deltas, skip=skip,
                  position_keys=position_keys, pool_keys=pool_keys)
    if not fused and bool((temperatures <= 0).any()):
        raise ValueError(f"temperatures must be > 0, got {temperatures.tolist()}")
    inv_temperatures = 1.0 / temperatures.to(torch.float32)
    sample = _fused_sample_triton if fused else _fused_sample_reference
    return sample(logits, keys, salts, contexts, shard_counts, preferred, deltas, skip, position_keys,
                  inv_temperatures, noise_seeds, pool_keys, pool_bits)


class FusedSampler:
    """The state of one generation sampled with ``fused_sample``'s rule, built once (see the
    module docstring, "Generation state").

    Args:
        prompt_ids: int64 (B, P) the prompts (left padding included); generated ids follow them
            in ``sequence``.
        steps: the most steps the generation takes.
        temperature: sampling temperature, > 0.
        noise_key: the noise seed (``sampling_seeds(noise_key, step, B)`` at each step).
        stop_ids: ids that finish a row; a finished row gets ``pad_id`` from then on.
        pad_id: the id of finished rows.
        min_new: steps before which stop ids are never drawn.
        context_width: the watermark's h, or None without a watermark.
        skips_repeated_contexts: leave a step plain when its context repeats (the shard schemes).
        params: the watermark's ``StepParams`` for every step (None: give them at each step).
    """

    def __init__(self, prompt_ids: torch.Tensor, *, steps: int, temperature: float, noise_key: int, stop_ids=(),
                 pad_id: int = 0, min_new: int = 0, context_width: int | None = None,
                 skips_repeated_contexts: bool = False, params=None, block_v: int = BLOCK_V):
        batch, prompt = prompt_ids.shape
        device = prompt_ids.device
        self.device, self.batch, self.prompt_length, self.steps = device, batch, prompt, steps
        self.fused = triton_ready(prompt_ids)
        self.block_v = block_v
        self.context_width = context_width
        self.params = params
        self.sequence = torch.empty((batch, prompt + steps), dtype=torch.int64, device=device)
        self.sequence[:, :prompt] = prompt_ids
        self.inv_temperatures = 1.0 / torch.full((batch,), float(temperature), device=device)
        self.noise_seeds = sampling_seed_table(noise_key, steps, batch).to(device)
        self.stop_ids = torch.tensor(sorted(stop_ids), dtype=torch.int64, device=device)
        self.pad_id, self.min_new = int(pad_id), int(min_new)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.repeated = None
        if context_width is not None and skips_repeated_contexts:
            self.repeated = RepeatedContexts(batch, context_width, steps, device)
        self.step_number = torch.zeros((), dtype=torch.int64, device=device)  # read by the kernel
        self.taken = 0  # the same count on the host
        self.out = torch.empty(batch, dtype=torch.int64, device=device)
        self.next_input = self.out[:, None]
        if self.fused:
            self._scratch = _scratch(batch, 1, 1, device)  # replaced on the first step, once V is known

    @property
    def column(self) -> int:
        """The sequence column of the next step."""
        return self.prompt_length + self.taken

    def contexts(self) -> torch.Tensor:
        """int64 (B, h) the context of the next step (a view of ``sequence``)."""
        return self.sequence[:, self.column - self.context_width : self.column]

    def generated(self) -> torch.Tensor:
        """int64 (B, P + steps taken): prompts and the ids drawn so far (a view)."""
        return self.sequence[:, : self.column]

    def step(self, logits: torch.Tensor, params=None, *, watermarked: bool = True) -> torch.Tensor:
        """Draw the next id of every row from ``logits`` (B, V) (fp32, fp16 or bf16, any strides)
        and append it to ``sequence``; returns the (B,) ids (a buffer the next step overwrites).

        ``params`` are the step's ``StepParams`` when the constructor had none (a scheme whose
        parameters change with the context); ``watermarked=False`` samples ``logits`` as they
        are (a scheme that biased them itself)."""
        if self.taken >= self.steps:
            raise ValueError(f"the sampler was built for {self.steps} steps")
        params = params if params is not None else self.params
        bias = watermarked and params is not None and self.context_width is not None
        if self.fused:
            self._fused_step(logits, params if bias else None)
        else:
            self._reference_step(logits, params if bias else None)
        self.taken += 1
        return self.out

    def _fused_step(self, logits, params):
        if self._scratch[0].shape[1] != -(-logits.shape[1] // self.block_v) * (2 if self.repeated else 1):
            self._scratch = _scratch(self.batch, logits.shape[1], self.block_v, self.device, self.repeated is not None)
        _launch(logits, *(params[:5] if params is not None else (None,) * 5),
                params.position_keys if params is not None else None, self.inv_temperatures, self.sequence,
                self.prompt_length, self.context_width or 0, self.out, self._scratch,
                table=self.repeated if params is not None else None, step=self.step_number,
                noise_seeds=self.noise_seeds, stop_ids=self.stop_ids if self.stop_ids.numel() else None,
                min_new=self.min_new, pad_id=self.pad_id, done=self.done,
                pool_keys=params.pool_keys if params is not None else None,
                pool_bits=params.pool_bits if params is not None else 0, block_v=self.block_v)
        self.step_number += 1

    def _reference_step(self, logits, params):
        column, width = self.column, self.context_width
        scores = logits
        if self.taken < self.min_new and self.stop_ids.numel():
            scores = logits.to(torch.float32).index_fill(1, self.stop_ids, float("-inf"))
        rows, pool = (None,) * 8, (None, 0)
        if params is not None and column >= width:
            skip = self.repeated.step(self.sequence, column) if self.repeated is not None else None
            rows = (params.keys, params.salts, self.contexts(), params.shard_counts, params.preferred, params.deltas,
                    skip, params.position_keys)
            pool = (params.pool_keys, params.pool_bits)
        sampled = _fused_sample_reference(scores, *rows, self.inv_temperatures, self.noise_seeds[self.taken], *pool)
        sampled = torch.where(self.done, self.pad_id, sampled)
        self.done |= torch.isin(sampled, self.stop_ids)
        self.sequence[:, column] = sampled
        self.out.copy_(sampled)
