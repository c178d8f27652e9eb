"""Balance-Marking's probability-balanced vocabulary split (torch reference, the specification).

At a context, the K partitions of the pool share one keyed cyclic order of the vocabulary and
differ in where the walk starts. Every id v gets the word ``w_v = token_word(order_seed, v)``
(PRF v1; for a fixed seed the words are distinct, so they order the ids without ties), and
partition j starts its walk at the word ``start_j = j * 2**32 / K``: it orders the ids by
``(w_v - start_j) mod 2**32``. The split of partition j:

- the *head* is the ``head`` most probable ids under the proxy distribution q (``torch.topk``).
  Walk the head in partition j's order and accumulate q. Head ids whose inclusive cumulative
  mass is below half the head's mass are unavailable; the rest (the id where the mass crosses
  one half included) are available. So the available head mass is at least half, and an id
  holding at least half the head's mass is available in every partition: low-entropy steps cost
  nothing and carry no evidence, as in the paper.
- ids outside the head are available when ``fastrange(token_word(coin_seed_j, v), 2) == 1``: a
  keyed fair coin per partition, the Vanilla-Marking rule, which is Balance-Marking with an
  empty head.

Two choices are provmark's (the official code sorts all V words of each of the K partitions at
every scored position). The head: outside it the proxy mass is small, so a coin changes the
split little. The shared cyclic order: with it, the detector needs the head's words once per
position, one sort and a binary search per partition, O(head log head + K log head), instead of
O(head * K) words. Each partition is still a keyed order cut at half the mass; partitions of the
same context are correlated with their neighbours in j, but the message's pool index is a
uniform draw (``watermark.balance.pool_indices``), so a wrong message meets an unrelated start.
Cumulative masses are float64.

Generation calls ``available_ids`` (one partition per row, every id); detection calls
``available_in_pool`` (the observed id under each of the K partitions). Both apply this one rule.

On CUDA, ``available_ids`` runs two Triton kernels after ``torch.topk`` picks the head:
``_coin_kernel`` draws every id's coin in one pass over the vocabulary, and
``_head_split_kernel`` cuts each row's head without sorting it. The cut is the smallest rotated
word t* whose head mass at or below it reaches half the head's mass, and the available head ids
are those at or after t*: the kernel finds t* by bisection over the 32 bits of the word (a radix
select with two buckets per pass: prefix masses of the lower half, recurse into the half that
crosses), 33 masked sums over the head, O(33 head) per row whatever the head size; a head of up
to ``MAX_BLOCK_HEAD`` ids stays in registers for all of them. The masked sums are monotone in t
even in floating point, so the search is exact for the sums it computes. Those sums add the
float64 masses in another order than the reference's cumsum, so a cumulative mass within a
float64 rounding of exactly half may fall on the other side; sums of masses that are exact in
float64 (dyadic masses, where the tie at half is real) agree exactly. (The reference itself is
in the same position between CPU and CUDA, whose cumsum and sum add in other orders, and
against the detector's ``available_in_pool``, which subtracts prefix masses.)
"""

from __future__ import annotations

import torch

from provmark.kernels._triton import HAS_TRITON, check_devices, triton_ready
from provmark.kernels.prf import MASK32, fastrange, fold16, folded_token_hash_table, mix32_unfolded_, token_words

if HAS_TRITON:
    import triton
    import triton.language as tl

    from provmark.kernels._triton import token_words as token_words_tl

__all__ = ["head_of", "partition_starts", "available_ids", "available_in_pool"]

BLOCK_V = 2048  # vocabulary ids per program of the coin kernel
MAX_BLOCK_HEAD = 1024  # head ids per chunk of the split kernel's masked sums


def head_of(probs: torch.Tensor, head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(float64 masses (N, k), int64 ids (N, k)) of the ``min(head, V)`` most probable ids."""
    k = min(head, probs.shape[-1])
    values, ids = torch.topk(probs, k, dim=-1, sorted=False)
    return values.to(torch.float64), ids


def partition_starts(pool_indices: torch.Tensor, pool_size: int) -> torch.Tensor:
    """The word where partition j's walk starts: ``j * 2**32 / K`` (K a power of two)."""
    return pool_indices << (32 - (pool_size.bit_length() - 1))


def _all_words(seeds: torch.Tensor, vocab_size: int) -> torch.Tensor:
    table = folded_token_hash_table(vocab_size, seeds.device)
    return mix32_unfolded_(fold16(seeds)[:, None] ^ table[None, :])


def _available_ids_reference(probs, order_seeds, coin_seeds, starts, head):
    available = fastrange(_all_words(coin_seeds, probs.shape[-1]), 2) == 1
    if head > 0:
        mass, ids = head_of(probs, head)
        rotated = (token_words(order_seeds[:, None], ids) - starts[:, None]) & MASK32
        order = torch.argsort(rotated, dim=1)
        cumulative = mass.gather(1, order).cumsum(dim=1)
        in_order = cumulative >= mass.sum(dim=1, keepdim=True) / 2
        available.scatter_(1, ids, torch.empty_like(in_order).scatter_(1, order, in_order))
    return available


if HAS_TRITON:

    @triton.jit
    def _coin_kernel(out_ptr, coin_seeds_ptr, vocab_size, out_row_stride, BLOCK_V: tl.constexpr):
        """Program (row, block): ``fastrange(token_word(coin seed, v), 2) == 1``, i.e. the top bit
        of the word, for a block of ids."""
        row = tl.program_id(0).to(tl.int64)
        ids = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
        words = token_words_tl(tl.load(coin_seeds_ptr + row).to(tl.uint32), ids)
        tl.store(out_ptr + row * out_row_stride + ids, (words >> 31) != 0, mask=ids < vocab_size)

    @triton.jit
    def _head_mass_at_or_below(mass_ptr, ids_ptr, seed, start, head, threshold, BLOCK_HEAD: tl.constexpr):
        """float64 mass of the head ids whose rotated word ``token_word(seed, id) - start`` (mod
        2**32) is at most ``threshold``; every call adds in the same order, so the result is
        monotone in the threshold."""
        total = tl.zeros([], dtype=tl.float64)
        for offset in range(0, head, BLOCK_HEAD):
            j = offset + tl.arange(0, BLOCK_HEAD)
            in_head = j < head
            rotated = token_words_tl(seed, tl.load(ids_ptr + j, mask=in_head, other=0)) - start
            mass = tl.load(mass_ptr + j, mask=in_head & (rotated <= threshold), other=0.0)
            total += tl.sum(mass, axis=0)
        return total

    @triton.jit
    def _head_split_kernel(out_ptr, mass_ptr, ids_ptr, order_seeds_ptr, starts_ptr, head, out_row_stride,
                           BLOCK_HEAD: tl.constexpr, ONE_CHUNK: tl.constexpr):
        """Program (row,): write the availability of the row's head ids into ``out``.

        With ONE_CHUNK (head <= BLOCK_HEAD, the usual case) the head's words and masses are
        loaded and hashed once and every bisection step is a masked sum in registers; otherwise
        each step streams the head again in chunks."""
        row = tl.program_id(0).to(tl.int64)
        mass_ptr += row * head
        ids_ptr += row * head
        seed = tl.load(order_seeds_ptr + row).to(tl.uint32)
        start = tl.load(starts_ptr + row).to(tl.uint32)
        top = tl.full([], 0xFFFFFFFF, dtype=tl.uint32)
        j = tl.arange(0, BLOCK_HEAD)
        if ONE_CHUNK:
            ids = tl.load(ids_ptr + j, mask=j < head, other=0)
            mass = tl.load(mass_ptr + j, mask=j < head, other=0.0)
            rotated = token_words_tl(seed, ids) - start
            half = tl.sum(tl.where(rotated <= top, mass, 0.0), axis=0) * 0.5
        else:
            half = _head_mass_at_or_below(mass_ptr, ids_ptr, seed, start, head, top, BLOCK_HEAD) * 0.5
        # Smallest t with mass(<= t) >= half: the rotated word of the id where the mass crosses.
        low = tl.zeros([], dtype=tl.uint32)
        high = top
        for _ in tl.static_range(32):
            middle = low + ((high - low) >> 1)
            if ONE_CHUNK:
                below = tl.sum(tl.where(rotated <= middle, mass, 0.0), axis=0)
            else:
                below = _head_mass_at_or_below(mass_ptr, ids_ptr, seed, start, head, middle, BLOCK_HEAD)
            crossed = below >= half
            high = tl.where(crossed, middle, high)
            low = tl.where(crossed, low, middle + 1)
        for offset in range(0, head, BLOCK_HEAD):
            in_head = offset + j < head
            ids = tl.load(ids_ptr + offset + j, mask=in_head, other=0)
            rotated = token_words_tl(seed, ids) - start
            tl.store(out_ptr + row * out_row_stride + ids, rotated >= low, mask=in_head)


def _available_ids_triton(probs, order_seeds, coin_seeds, starts, head, block_v=BLOCK_V, max_block_head=MAX_BLOCK_HEAD):
    """Launch the coin kernel, then (with a head) ``torch.topk`` and the split kernel."""
    batch, vocab_size = probs.shape
    available = torch.empty((batch, vocab_size), dtype=torch.bool, device=probs.device)
    if batch == 0 or vocab_size == 0:
        return available
    _coin_kernel[(batch, triton.cdiv(vocab_size, block_v))](
        out_ptr=available,
        coin_seeds_ptr=coin_seeds.to(torch.int64).contiguous(),
        vocab_size=vocab_size,
        out_row_stride=available.stride(0),
        BLOCK_V=block_v,
        num_warps=4,
        enable_fp_fusion=False,
    )
    if head > 0:
        mass, ids = head_of(probs, head)
        _head_split_kernel[(batch,)](
            out_ptr=available,
            mass_ptr=mass.contiguous(),
            ids_ptr=ids.contiguous(),
            order_seeds_ptr=order_seeds.to(torch.int64).contiguous(),
            starts_ptr=starts.to(torch.int64).contiguous(),
            head=mass.shape[1],
            out_row_stride=available.stride(0),
            BLOCK_HEAD=min(triton.next_power_of_2(mass.shape[1]), max_block_head),
            ONE_CHUNK=mass.shape[1] <= max_block_head,
            num_warps=4,
            enable_fp_fusion=False,
        )
    return available


def available_ids(
    probs: torch.Tensor, order_seeds: torch.Tensor, coin_seeds: torch.Tensor, starts: torch.Tensor, head: int
) -> torch.Tensor:
    """bool (B, V): the ids available in each row's partition.

    CUDA tensors go to the Triton kernels (when Triton is installed), everything else to the
    torch reference; both pick the head with ``head_of``.

    Args:
        probs: float (B, V) proxy next-token probabilities (rows sum to one).
        order_seeds: int64 (B,) seeds of the cyclic order (32-bit words).
        coin_seeds: int64 (B,) seeds of the partition's coin for ids outside the head.
        starts: int64 (B,) ``partition_starts`` of each row's partition.
        head: size of the proxy head that is split by mass; 0 gives Vanilla-Marking's coin.
    """
    if probs.dim() != 2:
        raise ValueError(f"probs must have shape (B, V), got {tuple(probs.shape)}")
    batch = probs.shape[0]
    for name, tensor in (("order_seeds", order_seeds), ("coin_seeds", coin_seeds), ("starts", starts)):
        if tuple(tensor.shape) != (batch,):
            raise ValueError(f"{name} must have shape ({batch},), got {tuple(tensor.shape)}")
    if head < 0:
        raise ValueError(f"head must be >= 0, got {head}")
    check_devices(probs.device, order_seeds=order_seeds, coin_seeds=coin_seeds, starts=starts)
    if triton_ready(probs):
        return _available_ids_triton(probs, order_seeds, coin_seeds, starts, head)
    return _available_ids_reference(probs, order_seeds, coin_seeds, starts, head)


def available_in_pool(
    head_mass: torch.Tensor,
    head_ids: torch.Tensor,
    tokens: torch.Tensor,
    order_seeds: torch.Tensor,
    coin_seeds: torch.Tensor,
    starts: torch.Tensor,
) -> torch.Tensor:
    """bool (N, K): whether each observed token is available under each of the K partitions.

    Args:
        head_mass, head_ids: ``head_of`` the proxy distribution at each position, (N, k); k may
            be 0 (Vanilla-Marking).
        tokens: int64 (N,) the observed ids.
        order_seeds: int64 (N,) seeds of each position's cyclic order.
        coin_seeds: int64 (N, K) seeds of each position's partition coins.
        starts: int64 (K,) ``partition_starts`` of the K partitions.
    """
    available = fastrange(token_words(coin_seeds, tokens[:, None]), 2) == 1
    if head_ids.shape[1] == 0:
        return available
    in_head = head_ids == tokens[:, None]
    member = in_head.any(dim=1)
    if not bool(member.any()):
        return available
    mass, in_head = head_mass[member], in_head[member]
    words = token_words(order_seeds[member][:, None], head_ids[member])  # (n, k)
    own_word = words.masked_fill(~in_head, 0).sum(dim=1, keepdim=True)
    own_mass = (mass * in_head).sum(dim=1, keepdim=True)
    sorted_words, order = torch.sort(words, dim=1)
    below = torch.cat([torch.zeros_like(mass[:, :1]), mass.gather(1, order).cumsum(dim=1)], dim=1)  # mass of words < t
    total = below[:, -1:]

    def mass_below(values):
        return below.gather(1, torch.searchsorted(sorted_words, values.contiguous()))

    start = starts[None, :].expand(mass.shape[0], -1)
    from_start = mass_below(start)
    to_own = mass_below(own_word)
    before = torch.where(start <= own_word, to_own - from_start, total - from_start + to_own)  # (n, K)
    available[member] = before + own_mass >= total / 2
    return available
