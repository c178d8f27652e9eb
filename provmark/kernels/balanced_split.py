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
"""

from __future__ import annotations

import torch

from provmark.kernels.prf import MASK32, fastrange, fold16, folded_token_hash_table, mix32_unfolded_, token_words

__all__ = ["head_of", "partition_starts", "available_ids", "available_in_pool"]


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


def available_ids(
    probs: torch.Tensor, order_seeds: torch.Tensor, coin_seeds: torch.Tensor, starts: torch.Tensor, head: int
) -> torch.Tensor:
    """bool (B, V): the ids available in each row's partition.

    Args:
        probs: float (B, V) proxy next-token probabilities (rows sum to one).
        order_seeds: int64 (B,) seeds of the cyclic order (32-bit words).
        coin_seeds: int64 (B,) seeds of the partition's coin for ids outside the head.
        starts: int64 (B,) ``partition_starts`` of each row's partition.
        head: size of the proxy head that is split by mass; 0 gives Vanilla-Marking's coin.
    """
    available = fastrange(_all_words(coin_seeds, probs.shape[-1]), 2) == 1
    if head > 0:
        mass, ids = head_of(probs, head)
        rotated = (token_words(order_seeds[:, None], ids) - starts[:, None]) & MASK32
        order = torch.argsort(rotated, dim=1)
        cumulative = mass.gather(1, order).cumsum(dim=1)
        in_order = cumulative >= mass.sum(dim=1, keepdim=True) / 2
        available.scatter_(1, ids, torch.empty_like(in_order).scatter_(1, order, in_order))
    return available


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
