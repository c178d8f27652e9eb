"""Repeated-context mask: which rows are about to take a step whose context they already used.

Generation leaves such a step unbiased. A repeated context would otherwise push the same
preferred ids again and again, which makes outputs loop (vLLM's RFC measured responses hitting
the length cap go from 16% to 33% without this), and detection counts a repeated
(context, token) pair only once anyway.

``repeated_context_mask`` is the specification: it compares the next context with every earlier
step's over the whole sequence. ``RepeatedContexts`` is what generation uses: per row, the set
of contexts of the steps taken so far, updated one step at a time (each step looks its context
up, then adds it), so a step costs the same at token 10 and at token 2000. On the CPU the sets
are Python sets of id tuples. On a GPU they are open-addressing hash tables on the device,
``(B, C)`` int32 slots holding ``column + 1`` of a step whose context is
``sequence[row, column - h : column]`` (0: empty), looked up and filled by ``repeated_step``
inside the kernels without a host round trip; an entry is compared id by id with the sequence
itself, so a hash collision costs a probe, never a wrong answer. Both give exactly the mask of
``repeated_context_mask``.
"""

from __future__ import annotations

import torch

from provmark.kernels._triton import HAS_TRITON, triton_ready

if HAS_TRITON:
    import triton
    import triton.language as tl

    from provmark.kernels._triton import mix32

__all__ = ["RepeatedContexts", "repeated_context_mask"]


def repeated_context_mask(input_ids: torch.Tensor, *, start: int, context_width: int) -> torch.Tensor:
    """Bool (B,): True where the next step's context occurred at an earlier generated step.

    The next step (column T = input_ids.shape[1]) has context ``input_ids[:, T-h:T]``. Earlier
    generated steps are the columns s in [max(start, h), T); step s had context
    ``input_ids[:, s-h:s]``. Prompt columns (before ``start``) are never steps.

    Args:
        input_ids: int (B, T) tokens so far, prompt included.
        start: first generated column (the prompt length, left padding included).
        context_width: h >= 1.
    """
    if context_width < 1:
        raise ValueError(f"context_width must be >= 1, got {context_width}")
    total = input_ids.shape[1]
    first = max(start, context_width)
    if total <= first:
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    windows = input_ids[:, first - context_width :].unfold(1, context_width, 1)  # (B, n+1, h)
    current = windows[:, -1:, :]
    return (windows[:, :-1, :] == current).all(dim=2).any(dim=1)


if HAS_TRITON:

    @triton.jit
    def repeated_step(table_ptr, capacity, sequence_ptr, column, CONTEXT_WIDTH: tl.constexpr):
        """Whether the context ``sequence[column - h : column]`` of one row is in the row's table
        (``table_ptr`` and ``sequence_ptr`` point at the row), adding it when it is not.

        Linear probing from ``mix32``-chained ids; ``capacity`` is a power of two at least twice
        the steps of a generation, so a probe always meets an empty slot. The caller runs it once
        per row and step, in one program: nothing else reads or writes the row's table then."""
        hash_ = tl.zeros([], dtype=tl.uint32)
        for i in tl.static_range(CONTEXT_WIDTH):
            hash_ = mix32(hash_ ^ tl.load(sequence_ptr + column - CONTEXT_WIDTH + i).to(tl.uint32))
        last = tl.cast(capacity - 1, tl.int64)
        slot = hash_.to(tl.int64) & last
        entry = tl.load(table_ptr + slot)
        found = entry < 0  # False, as a scalar of the comparisons' type
        while (entry != 0) & (found == 0):
            same = entry > 0  # True
            for i in tl.static_range(CONTEXT_WIDTH):
                same = same & (tl.load(sequence_ptr + entry - 1 - CONTEXT_WIDTH + i)
                               == tl.load(sequence_ptr + column - CONTEXT_WIDTH + i))
            found = found | same
            slot = tl.where(same, slot, (slot + 1) & last)  # a hit stays on its slot and ends the loop
            entry = tl.load(table_ptr + slot)
        if found == 0:
            tl.store(table_ptr + slot, (column + 1).to(tl.int32))
        return found

    @triton.jit
    def _repeated_context_kernel(table_ptr, capacity, sequence_ptr, sequence_row_stride, column, skip_ptr,
                                 CONTEXT_WIDTH: tl.constexpr):
        """Program (row,): ``skip[row]`` = whether the row's next context repeats; adds it."""
        row = tl.program_id(0).to(tl.int64)
        found = repeated_step(table_ptr + row * capacity, capacity, sequence_ptr + row * sequence_row_stride, column,
                              CONTEXT_WIDTH)
        tl.store(skip_ptr + row, found)


def table_capacity(steps: int) -> int:
    """Slots of a device table for ``steps`` steps: a power of two, at most half full."""
    return 1 << max(2 * steps - 1, 15).bit_length()


class RepeatedContexts:
    """Per row, the contexts of a generation's steps so far (see the module docstring).

    Args:
        batch: rows of the generation.
        context_width: h >= 1.
        steps: the most steps the generation will take (sizes the device tables).
        device: where the sequences live; CUDA tables are used when the kernels run there.
    """

    def __init__(self, batch: int, context_width: int, steps: int, device: torch.device | str):
        if context_width < 1:
            raise ValueError(f"context_width must be >= 1, got {context_width}")
        self.context_width = context_width
        self.on_device = triton_ready(torch.empty(0, device=device))
        if self.on_device:
            self.capacity = table_capacity(steps)
            self.table = torch.zeros((batch, self.capacity), dtype=torch.int32, device=device)
            self.skip = torch.zeros(batch, dtype=torch.bool, device=device)
            self.columns: tuple[int, int] | None = None  # first and last column stepped
        else:
            self.seen = [set() for _ in range(batch)]

    def step(self, sequence: torch.Tensor, column: int) -> torch.Tensor:
        """Bool (B,): whether each row's context ``sequence[:, column - h : column]`` was the
        context of an earlier step given to ``step``; then records it. ``column`` >= h.

        On the device this launches one small kernel and returns a buffer that the next call
        overwrites; the values are read by later kernels in stream order, never by the host.
        Columns are stepped in order, one after the other."""
        if self.on_device:
            if sequence.dtype != torch.int64:
                raise ValueError(f"the device tables read int64 sequences, got {sequence.dtype}")
            first = column if self.columns is None else self.columns[0]
            if 2 * (column - first + 1) > self.capacity:  # keep the table at most half full
                self.capacity *= 2
                self.table = self.table.new_zeros((self.table.shape[0], self.capacity))
                for earlier in range(first, column):
                    self._launch(sequence, earlier)
            self.columns = (first, column)
            self._launch(sequence, column)
            return self.skip
        contexts = map(tuple, sequence[:, column - self.context_width : column].tolist())
        repeated = []
        for seen, context in zip(self.seen, contexts):
            repeated.append(context in seen)
            seen.add(context)
        return torch.tensor(repeated, dtype=torch.bool, device=sequence.device)

    def _launch(self, sequence, column):
        _repeated_context_kernel[(sequence.shape[0],)](
            table_ptr=self.table, capacity=self.capacity, sequence_ptr=sequence, sequence_row_stride=sequence.stride(0),
            column=column, skip_ptr=self.skip, CONTEXT_WIDTH=self.context_width, num_warps=1,
        )
