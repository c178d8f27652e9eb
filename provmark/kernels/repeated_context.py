"""Repeated-context mask: which rows are about to take a step whose context they already used.

Generation leaves such a step unbiased. A repeated context would otherwise push the same
preferred ids again and again, which makes outputs loop (vLLM's RFC measured responses hitting
the length cap go from 16% to 33% without this), and detection counts a repeated
(context, token) pair only once anyway.
"""

from __future__ import annotations

import torch

__all__ = ["repeated_context_mask"]


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
