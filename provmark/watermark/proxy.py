"""The proxy LM of Balance-Marking: next-token distributions from a model that shares the
generating model's tokenizer.

The official code maps ids between two tokenizers by vocabulary string, which silently breaks
when they differ (research/balance_marking.md, pitfall 1). provmark works in the generating
model's ids throughout and refuses a proxy whose vocabulary is not the same id for id.

At generation the default proxy is the generating model itself, whose logits the hook already
has. A separate proxy runs alongside it with its own key/value cache (``step_probs``). At
detection the proxy reads the text alone, in one forward pass per batch of texts
(``heads``): it cannot see the prompt the text answered, so its distributions differ from the
ones generation used, most at the start of the text; the split is cut by mass, so a small
difference moves few ids across the cut.

With a window (the paper's choice: the last 10 ids), the proxy reads only the ids just before
each position, at generation (``window_probs``) as at detection (``window_heads``): text pasted
or edited more than a window away cannot change a position's split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from provmark.errors import ParameterError
from provmark.kernels.balanced_split import head_of

__all__ = ["Proxy", "check_same_vocabulary"]


def check_same_vocabulary(tokenizer, proxy_tokenizer) -> None:
    """Raise ``ParameterError`` unless both tokenizers map every token string to the same id."""
    main, proxy = tokenizer.get_vocab(), proxy_tokenizer.get_vocab()
    if main != proxy:
        differing = sorted(set(main.items()) ^ set(proxy.items()))[:3]
        raise ParameterError(
            "the proxy model's tokenizer differs from the generating model's "
            f"({len(main)} vs {len(proxy)} tokens; e.g. {differing}); Balance-Marking needs a proxy "
            "with the same tokenizer (the default proxy is the generating model itself)"
        )


class Proxy:
    """A causal LM used for its next-token distributions.

    Args:
        model: a transformers causal LM.
        tokenizer: its tokenizer, checked against ``main_tokenizer`` when that is given.
        main_tokenizer: the generating model's tokenizer.
        batch_size: texts per forward pass at detection.
    """

    def __init__(self, model, tokenizer, *, main_tokenizer=None, batch_size: int = 8):
        if main_tokenizer is not None:
            check_same_vocabulary(main_tokenizer, tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self._state: tuple[torch.Tensor, object, torch.Tensor] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def heads(self, sequences: Sequence[Sequence[int]], head: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each sequence x of n ids: ``head_of`` the proxy's distribution of x_i given
        x_0..x_{i-1}, for i = 1..n-1, as (float64 (n-1, k), int64 (n-1, k)) on the CPU."""
        results: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(sequences)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            length = max(len(sequences[i]) for i in batch)
            ids = torch.full((len(batch), length), pad, dtype=torch.int64)
            mask = torch.zeros((len(batch), length), dtype=torch.int64)
            for row, i in enumerate(batch):
                ids[row, : len(sequences[i])] = torch.as_tensor(list(sequences[i]), dtype=torch.int64)
                mask[row, : len(sequences[i])] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            for row, i in enumerate(batch):
                n = len(sequences[i])
                probs = torch.softmax(logits[row, : max(n - 1, 0)].float(), dim=-1).cpu()
                results[i] = head_of(probs, head)
        return results

    @torch.no_grad()
    def _last_probs(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """float (B, V) next-token distribution after each left-padded row of ``ids`` (B, T)."""
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=positions.to(self.device), logits_to_keep=1).logits
        return torch.softmax(logits[:, -1].float(), dim=-1)

    def window_probs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """float (B, V) next-token distribution after each row of ``input_ids`` (B, T), read
        without a cache: the caller passes the window (the last ids of the generated text)."""
        return self._last_probs(input_ids, torch.ones_like(input_ids))

    @torch.no_grad()
    def window_heads(self, sequences: Sequence[Sequence[int]], head: int, window: int,
                     rows_per_pass: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``heads`` with the proxy reading only the ``window`` ids before each position: for each
        sequence x of n ids, ``head_of`` the distribution of x_i given x_max(0, i-window)..x_{i-1},
        for i = 1..n-1, exactly as ``window_probs`` gives it at generation (left padding)."""
        windows, owners = [], []
        for index, seq in enumerate(sequences):
            seq = torch.as_tensor(list(seq), dtype=torch.int64)
            for i in range(1, seq.numel()):
                windows.append(seq[max(0, i - window) : i])
                owners.append(index)
        mass, top = self.heads_of_windows(windows, head, rows_per_pass)
        owners = torch.tensor(owners, dtype=torch.int64)
        return [(mass[owners == index], top[owners == index]) for index in range(len(sequences))]

    @torch.no_grad()
    def heads_of_windows(self, windows: Sequence[torch.Tensor], head: int,
                         rows_per_pass: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """``head_of`` the next-token distribution after each window (int64 (L_i,), L_i >= 1),
        read left-padded ``rows_per_pass`` at a time: (float64 (N, k), int64 (N, k)) on the CPU."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        masses, ids = [], []
        for start in range(0, len(windows), rows_per_pass):
            chunk = windows[start : start + rows_per_pass]
            width = max(w.numel() for w in chunk)
            batch = torch.full((len(chunk), width), pad, dtype=torch.int64)
            mask = torch.zeros((len(chunk), width), dtype=torch.int64)
            for row, w in enumerate(chunk):
                batch[row, width - w.numel() :] = w
                mask[row, width - w.numel() :] = 1
            mass, top = head_of(self._last_probs(batch, mask).cpu(), head)
            masses.append(mass)
            ids.append(top)
        mass = torch.cat(masses) if masses else torch.empty((0, head), dtype=torch.float64)
        top = torch.cat(ids) if ids else torch.empty((0, head), dtype=torch.int64)
        return mass, top

    @torch.no_grad()
    def step_probs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """float (B, V) next-token distribution after ``input_ids`` (B, T) during generation.

        The first call of a generation reads the whole (left-padded) prompt; each later call
        that extends the previous input by one column feeds only that column through the cache.
        """
        state = self._state
        if state is not None and state[0].shape[0] == input_ids.shape[0] and state[0].shape[1] + 1 == input_ids.shape[1] \
                and torch.equal(state[0], input_ids[:, :-1]):
            _, past, mask = state
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = mask.sum(dim=1, keepdim=True) - 1
            out = self.model(input_ids=input_ids[:, -1:], attention_mask=mask, position_ids=positions,
                             past_key_values=past, use_cache=True)
        else:
            pad = self.tokenizer.pad_token_id
            # Left padding: every column before a row's first non-pad id is padding.
            mask = (input_ids != pad).cumsum(dim=1).gt(0).to(torch.int64) if pad is not None else torch.ones_like(input_ids)
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        self._state = (input_ids, out.past_key_values, mask)
        return torch.softmax(out.logits[:, -1].float(), dim=-1)
