"""Step-at-a-time watermarked decoding for serving: rows with their own key, payload and sampling
settings decode in one batch, and each step's tokens come back as soon as they are sampled.

``generate()`` in ``watermark.hook`` serves one key and one set of settings per call and returns
when the whole batch is done. A server that streams, and batches requests of different callers
together, needs each token as it is sampled and rows that differ: ``BatchDecoder`` runs the model
with its key/value cache one step at a time and applies, to each group of rows under one key,
that key's ``WatermarkLogitsProcessor`` (the same hook ``generate`` uses, so detection is
unchanged), then each row's temperature and top-p, then samples the row from its own generator.
``TextStream`` turns a row's tokens into text deltas that are safe to send: never half a UTF-8
character, never the first characters of a stop string that may still complete.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from provmark.errors import ParameterError
from provmark.watermark.hook import WatermarkLogitsProcessor
from provmark.watermark.keys import WatermarkKey

__all__ = ["BatchDecoder", "RowRequest", "TextStream"]


@dataclass(frozen=True, kw_only=True)
class RowRequest:
    """One completion to decode: a batch row."""

    prompt_ids: tuple[int, ...]
    """The prompt as token ids (chat template already applied)."""
    key: WatermarkKey | None
    """The watermark key; None decodes without a watermark."""
    payload: int | None = None
    """Multi-bit keys: the payload this row carries."""
    max_new_tokens: int = 200
    temperature: float = 1.0
    """0 picks the most likely id of the watermarked distribution at every step (greedy)."""
    top_p: float = 1.0
    """Nucleus sampling: draw from the smallest set of ids whose watermarked mass reaches top_p."""
    seed: int | None = None
    """Seeds this row's own generator, so its text does not depend on the rows batched with it
    (up to the float rounding that padding can change)."""

    def __post_init__(self):
        if not self.prompt_ids:
            raise ParameterError("prompt_ids is empty; give at least one token")
        if self.max_new_tokens < 1:
            raise ParameterError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ParameterError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ParameterError(f"top_p must be in (0, 1], got {self.top_p}")


class BatchDecoder:
    """Decode ``rows`` in one left-padded batch, one ``step()`` at a time.

    Args:
        model: a transformers causal LM.
        rows: the completions, one batch row each.
        stop_ids: ids that end a row (EOS, pad); the stop id itself is returned, not part of the text.
        pad_id: the id finished rows are padded with.
        proxy: Balance-Marking keys that read the generated text: a ``watermark.proxy.Proxy``.

    Rows under the same key (same ``key_id``) share one processor, called on their rows alone:
    a processor tracks its rows' prompt to tell generated steps from prompt tokens, and every
    row of the batch has the same padded prompt width, so each sees exactly what ``generate``
    would show it.
    """

    def __init__(self, model, rows: Sequence[RowRequest], *, stop_ids: Sequence[int], pad_id: int, proxy=None):
        if not rows:
            raise ParameterError("no rows to decode")
        self.model = model
        self.rows = list(rows)
        device = next(model.parameters()).device
        width = max(len(r.prompt_ids) for r in self.rows)
        self._ids = torch.tensor([[pad_id] * (width - len(r.prompt_ids)) + list(r.prompt_ids) for r in self.rows],
                                 dtype=torch.int64, device=device)
        self._mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in self.rows],
                                  dtype=torch.int64, device=device)
        self._positions = (self._mask.cumsum(dim=1) - 1).clamp(min=0)
        self._step_ids = self._ids
        self._past = None
        self._pad = pad_id
        self._stop = set(stop_ids)
        self._groups: list[tuple[torch.Tensor, WatermarkLogitsProcessor]] = []
        by_key: dict[str, list[int]] = {}
        for index, row in enumerate(self.rows):
            if row.key is not None:
                by_key.setdefault(row.key.key_id, []).append(index)
        for indices in by_key.values():
            key = self.rows[indices[0]].key
            payloads = [self.rows[i].payload for i in indices] if key.config.supports_payload else None
            uses_proxy = key.config.generation_time and getattr(key.config, "proxy_context", "prompt") != "prompt"
            processor = WatermarkLogitsProcessor(key, payloads, proxy=proxy if uses_proxy else None)
            self._groups.append((torch.tensor(indices, device=device), processor))
        self._temperatures = torch.tensor([max(r.temperature, 1e-6) for r in self.rows], device=device)
        self._greedy = torch.tensor([r.temperature == 0 for r in self.rows], device=device)
        self._top_p = torch.tensor([r.top_p for r in self.rows], device=device)
        self._generators = [torch.Generator(device=device).manual_seed(secrets.randbits(63) if r.seed is None else r.seed)
                            for r in self.rows]
        self.finished = [False] * len(self.rows)
        """Whether each row is done: a stop id, its max_new_tokens, or ``finish``."""
        self.num_tokens = [0] * len(self.rows)
        """Tokens each row has sampled (its stop id included)."""

    @property
    def done(self) -> bool:
        return all(self.finished)

    def finish(self, index: int) -> None:
        """Stop decoding row ``index`` (its client left, or a stop string ended its text)."""
        self.finished[index] = True

    @torch.no_grad()
    def step(self) -> list[int | None]:
        """Run the model one step: the id sampled for each row still decoding, None for the others.
        A row whose id is a stop id, or which reached its ``max_new_tokens``, is finished after it."""
        if self.done:
            raise ParameterError("every row is finished")
        out = self.model(input_ids=self._step_ids, attention_mask=self._mask, position_ids=self._positions,
                         past_key_values=self._past, use_cache=True)
        self._past = out.past_key_values
        scores = out.logits[:, -1, :].float()
        for indices, processor in self._groups:
            scores[indices] = processor(self._ids[indices], scores[indices])
        next_ids = self._sample(scores)
        active = torch.tensor([not f for f in self.finished], device=next_ids.device)
        next_ids = torch.where(active, next_ids, torch.full_like(next_ids, self._pad))
        self._ids = torch.cat([self._ids, next_ids[:, None]], dim=1)
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        self._positions = self._positions[:, -1:] + 1
        self._step_ids = next_ids[:, None]
        sampled: list[int | None] = []
        for index, token in enumerate(next_ids.tolist()):
            if self.finished[index]:
                sampled.append(None)
                continue
            self.num_tokens[index] += 1
            sampled.append(token)
            if token in self._stop or self.num_tokens[index] >= self.rows[index].max_new_tokens:
                self.finished[index] = True
        return sampled

    def _sample(self, scores: torch.Tensor) -> torch.Tensor:
        """int64 (B,) ids from float (B, V) watermarked logits: argmax for greedy rows, else a draw
        from softmax(scores / T) restricted to the row's top-p nucleus (the most likely id always
        stays in it)."""
        probs = torch.softmax(scores / self._temperatures[:, None], dim=-1)
        if bool((self._top_p < 1).any()):  # sorting the vocabulary costs as much as sampling it
            ordered, order = probs.sort(dim=-1, descending=True)
            outside = (ordered.cumsum(dim=-1) - ordered) >= self._top_p[:, None]
            probs = torch.zeros_like(probs).scatter_(1, order, ordered.masked_fill(outside, 0.0))
        greedy = probs.argmax(dim=-1)
        picks = []
        for index, generator in enumerate(self._generators):
            if self._greedy[index] or self.finished[index]:
                picks.append(greedy[index])
            else:
                picks.append(torch.multinomial(probs[index], 1, generator=generator)[0])
        return torch.stack(picks)


class TextStream:
    """A row's tokens as text: ``push`` each id and get the text that became safe to show.

    Text is held back while it ends in an incomplete UTF-8 character (U+FFFD from the decoder)
    or in the first characters of a stop string; at a stop string the text ends before it. What
    ``push`` and ``close`` return, joined, is ``text``: the completion a client that streamed it
    and one that waited for it both hold, and the text whose hash its record stores.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self._decoded = ""
        self.text = ""
        """The text released so far (all of it once ``stopped`` or closed)."""
        self.stopped = False
        """Whether a stop string ended the text."""

    def push(self, token_id: int) -> str:
        """Add one sampled id (special ids decode to nothing); the newly safe text, possibly empty.
        After a stop string, nothing."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        self._decoded = self.tokenizer.decode(self._ids, skip_special_tokens=True)
        search_from = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        cut = min((i for i in (self._decoded.find(s, search_from) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._release(cut)
        end = len(self._decoded.rstrip("\ufffd"))
        safe = end
        for s in self.stop:  # hold back a tail that may be the start of a stop string
            for size in range(min(len(s) - 1, end), 0, -1):
                if self._decoded.endswith(s[:size], 0, end):
                    safe = min(safe, end - size)
                    break
        return self._release(safe)

    def close(self) -> str:
        """The rest of the text once the row has ended (nothing is held back any more)."""
        return "" if self.stopped else self._release(len(self._decoded))

    def _release(self, end: int) -> str:
        # Decoding a longer id list may rewrite the characters a shorter one ended with (a byte
        # sequence completing); only what lies beyond the released text is ever sent.
        if end <= len(self.text) or not self._decoded.startswith(self.text):
            return ""
        piece = self._decoded[len(self.text) : end]
        self.text += piece
        return piece
