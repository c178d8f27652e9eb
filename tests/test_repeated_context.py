"""Repeated-context mask: which next steps reuse a context already used while generating, from the
whole sequence (the specification) and from the per-row sets a generation updates step by step."""

import importlib

import pytest
import torch

from provmark.kernels._triton import HAS_TRITON, INTERPRETING
from provmark.kernels.repeated_context import RepeatedContexts, repeated_context_mask

repeated_context = importlib.import_module("provmark.kernels.repeated_context")


def test_a_context_seen_at_an_earlier_generated_step_is_repeated():
    # prompt [9, 9], generated 1 2 3 1 2 -> next context (1, 2) was step 4's context.
    ids = torch.tensor([[9, 9, 1, 2, 3, 1, 2]])
    assert repeated_context_mask(ids, start=2, context_width=2).tolist() == [True]


def test_contexts_that_only_occur_inside_the_prompt_do_not_count():
    # (1, 2) occurs in the prompt, but no generated step had it as context.
    ids = torch.tensor([[1, 2, 5, 1, 2]])
    assert repeated_context_mask(ids, start=3, context_width=2).tolist() == [False]


def test_the_first_step_after_the_prompt_is_never_repeated():
    ids = torch.tensor([[4, 4, 4, 4]])
    assert repeated_context_mask(ids, start=4, context_width=1).tolist() == [False]


def test_rows_are_independent_and_left_padding_is_ignored():
    ids = torch.tensor([[0, 0, 7, 3, 7, 3], [5, 6, 7, 3, 8, 3]])
    # row 0: steps at columns 3..5 had contexts 7, 3, 7 (width 1); next context 3 -> repeated.
    # row 1: contexts 7, 3, 8 -> next context 3 -> repeated; width 2: (3,8) then next (8,3) -> new.
    assert repeated_context_mask(ids, start=3, context_width=1).tolist() == [True, True]
    assert repeated_context_mask(ids, start=3, context_width=2).tolist() == [True, False]


def test_context_width_must_be_positive():
    with pytest.raises(ValueError, match="context_width"):
        repeated_context_mask(torch.zeros(1, 3, dtype=torch.long), start=1, context_width=0)


def _incremental_masks(sequence, start, width, steps):
    contexts = RepeatedContexts(sequence.shape[0], width, steps, sequence.device)
    return [contexts.step(sequence, column).clone() for column in range(max(start, width), sequence.shape[1])]


def _spec_masks(sequence, start, width):
    return [repeated_context_mask(sequence[:, :column], start=start, context_width=width)
            for column in range(max(start, width), sequence.shape[1])]


@pytest.mark.parametrize("width,start", [(1, 3), (2, 5), (3, 1)])
def test_the_incremental_sets_give_the_mask_of_the_whole_sequence_at_every_step(width, start):
    # ids from a small alphabet, so contexts repeat often; rows are independent
    sequence = torch.randint(0, 3, (4, 60), generator=torch.Generator().manual_seed(width))
    masks = _incremental_masks(sequence, start, width, steps=60)
    assert all(map(torch.equal, masks, _spec_masks(sequence, start, width)))
    assert any(bool(m.any()) for m in masks) and not all(bool(m.all()) for m in masks)


@pytest.mark.skipif(not (HAS_TRITON and INTERPRETING), reason="needs Triton's interpreter (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("width,start,steps", [(1, 3, 60), (2, 5, 60), (3, 1, 60), (2, 4, 3)])
def test_the_device_tables_give_the_mask_of_the_whole_sequence_at_every_step(monkeypatch, width, start, steps):
    # The tables' kernel, run by the interpreter on CPU tensors; steps=3 makes the table grow
    # (it is sized for 3 steps and gets 56).
    monkeypatch.setattr(repeated_context, "triton_ready", lambda tensor: True)
    sequence = torch.randint(0, 3, (4, 60), generator=torch.Generator().manual_seed(width))
    masks = _incremental_masks(sequence, start, width, steps)
    assert all(map(torch.equal, masks, _spec_masks(sequence, start, width)))
