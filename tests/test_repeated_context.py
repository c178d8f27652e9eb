"""Repeated-context mask: which next steps reuse a context already used while generating."""

import pytest
import torch

from provmark.kernels.repeated_context import repeated_context_mask


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
