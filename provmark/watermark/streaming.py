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
from provmark.watermark.schemes import get_scheme

__all__ = ["BatchDecoder", "RowRequest", "TextStream", "reads_generated_text"]


def reads_generated_text(key: WatermarkKey) -> bool:
    """Whether the key's scheme needs a proxy model over the generated text (Balance-Marking
    unless its ``proxy_context`` is "prompt"), as ``hook.generate`` decides."""
    return get_scheme(key.scheme).uses_proxy and key.config.proxy_context != "prompt"


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
    """Decode ``rows`` in one left-padded batch, one ``step()`` at a time; more rows may ``join``
    between steps (continuous batching) and finished rows leave the batch.

    Args:
        model: a transformers causal LM.
        rows: the first completions, one batch row each.
        stop_ids: ids that end a row (EOS, pad); the stop id itself is returned, not part of the text.
        pad_id: the id padding columns hold.
        proxy: Balance-Marking keys that read the generated text: a ``watermark.proxy.Proxy``.

    A row is known by its handle, its index in ``rows`` (which only grows). Each row has its own
    ``WatermarkLogitsProcessor``, called on the row's own ids (its prompt and what it generated,
    without the batch's padding), so it sees exactly what ``generate`` would show it alone, however
    the batch around it is padded, joined or compacted.

    Joining needs the model's cache to be transformers' plain ``DynamicCache`` (one key and value
    tensor per layer); ``can_join`` says whether it is (checked after the first step).
    """

    def __init__(self, model, rows: Sequence[RowRequest], *, stop_ids: Sequence[int], pad_id: int, proxy=None):
        if not rows:
            raise ParameterError("no rows to decode")
        self.model = model
        self._device = next(model.parameters()).device
        self._pad = pad_id
        self._stop = set(stop_ids)
        self.proxy = proxy
        """Balance-Marking's proxy for rows that join later (set it before they do)."""
        self.rows: list[RowRequest] = []
        self.finished: list[bool] = []
        """Whether each row is done: a stop id, its max_new_tokens, or ``finish``."""
        self.num_tokens: list[int] = []
        """Tokens each row has sampled (its stop id included)."""
        self._processors: list[WatermarkLogitsProcessor | None] = []
        self._generators: list[torch.Generator] = []
        self._slots: list[int] = []  # handle of each batch row
        self._past = None
        self._register(rows)
        self._ids, self._mask = self._padded([self.rows[h].prompt_ids for h in self._slots])
        self._positions = (self._mask.cumsum(dim=1) - 1).clamp(min=0)
        self._step_ids = self._ids

    def _register(self, rows: Sequence[RowRequest]) -> list[int]:
        handles = []
        for row in rows:
            processor = None
            if row.key is not None:
                uses_proxy = reads_generated_text(row.key)
                payloads = [row.payload] if row.key.config.supports_payload else None
                processor = WatermarkLogitsProcessor(row.key, payloads, proxy=self.proxy if uses_proxy else None)
            seed = secrets.randbits(63) if row.seed is None else row.seed
            handles.append(len(self.rows))
            self.rows.append(row)
            self.finished.append(False)
            self.num_tokens.append(0)
            self._processors.append(processor)
            self._generators.append(torch.Generator(device=self._device).manual_seed(seed))
        self._slots += handles
        return handles

    def _padded(self, prompts, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        width = width or max(len(p) for p in prompts)
        ids = torch.tensor([[self._pad] * (width - len(p)) + list(p) for p in prompts], dtype=torch.int64,
                           device=self._device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.int64,
                            device=self._device)
        return ids, mask

    @property
    def done(self) -> bool:
        return all(self.finished)

    @property
    def active(self) -> list[int]:
        """Handles of the rows still decoding."""
        return [h for h in self._slots if not self.finished[h]]

    @property
    def can_join(self) -> bool:
        return self._past is None or (type(self._past).__name__ == "DynamicCache" and all(
            type(layer).__name__ == "DynamicLayer" for layer in self._past.layers))

    def finish(self, handle: int) -> None:
        """Stop decoding row ``handle`` (its client left, or a stop string ended its text)."""
        self.finished[handle] = True

    @torch.no_grad()
    def join(self, rows: Sequence[RowRequest]) -> list[int]:
        """Add rows that start decoding at the next step; their handles. Their prompts are run
        through the model now (one batch), and their cache joins the batch's, left-padded."""
        if not rows:
            return []
        if not self.can_join:
            raise ParameterError("this model's cache cannot take rows in a running batch")
        if self._past is None:  # nothing has run yet: one prefill for everyone
            handles = self._register(rows)
            self._ids, self._mask = self._padded([self.rows[h].prompt_ids for h in self._slots])
            self._positions = (self._mask.cumsum(dim=1) - 1).clamp(min=0)
            self._step_ids = self._ids
            return handles
        width = max(self._ids.shape[1], *(len(r.prompt_ids) for r in rows))
        if width > self._ids.shape[1]:  # a longer prompt: pad the running rows further on the left
            extra = width - self._ids.shape[1]
            self._ids = torch.nn.functional.pad(self._ids, (extra, 0), value=self._pad)
            self._mask = torch.nn.functional.pad(self._mask, (extra, 0), value=0)
            for layer in self._past.layers:
                layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, extra, 0))
                layer.values = torch.nn.functional.pad(layer.values, (0, 0, extra, 0))
        ids, mask = self._padded([r.prompt_ids for r in rows], width)
        prefix_mask = mask[:, :-1]
        out = self.model(input_ids=ids[:, :-1], attention_mask=prefix_mask,
                         position_ids=(prefix_mask.cumsum(dim=1) - 1).clamp(min=0), use_cache=True)
        for layer, new in zip(self._past.layers, out.past_key_values.layers):
            layer.keys = torch.cat([layer.keys, new.keys], dim=0)
            layer.values = torch.cat([layer.values, new.values], dim=0)
        self._ids = torch.cat([self._ids, ids], dim=0)
        self._mask = torch.cat([self._mask, mask], dim=0)
        self._positions = torch.cat([self._positions, mask.sum(dim=1, keepdim=True) - 1], dim=0)
        self._step_ids = torch.cat([self._step_ids, ids[:, -1:]], dim=0)
        return self._register(rows)

    @torch.no_grad()
    def step(self) -> list[int | None]:
        """Run the model one step: indexed by handle, the id sampled for each row still decoding,
        None for the others. A row whose id is a stop id, or which reached its ``max_new_tokens``,
        is finished after it (and leaves the batch before the next step)."""
        if self.done:
            raise ParameterError("every row is finished")
        self._compact()
        out = self.model(input_ids=self._step_ids, attention_mask=self._mask, position_ids=self._positions,
                         past_key_values=self._past, use_cache=True)
        self._past = out.past_key_values
        scores = out.logits[:, -1, :].float()
        for slot, handle in enumerate(self._slots):
            processor = self._processors[handle]
            if processor is not None:
                own = len(self.rows[handle].prompt_ids) + self.num_tokens[handle]
                scores[slot : slot + 1] = processor(self._ids[slot : slot + 1, -own:], scores[slot : slot + 1])
        next_ids = self._sample(scores)
        self._ids = torch.cat([self._ids, next_ids[:, None]], dim=1)
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        self._positions = self._positions[:, -1:] + 1
        self._step_ids = next_ids[:, None]
        sampled: list[int | None] = [None] * len(self.rows)
        for handle, token in zip(self._slots, next_ids.tolist()):
            self.num_tokens[handle] += 1
            sampled[handle] = token
            if token in self._stop or self.num_tokens[handle] >= self.rows[handle].max_new_tokens:
                self.finished[handle] = True
        return sampled

    def _compact(self) -> None:
        """Drop finished rows from the batch, then the leading columns that are padding in every
        remaining row (in the ids, the mask and the cache alike)."""
        keep = [slot for slot, handle in enumerate(self._slots) if not self.finished[handle]]
        if len(keep) == len(self._slots):
            return
        index = torch.tensor(keep, device=self._device)
        self._slots = [self._slots[k] for k in keep]
        self._ids, self._mask = self._ids[index], self._mask[index]
        self._positions, self._step_ids = self._positions[index], self._step_ids[index]
        if self._past is not None:
            for layer in self._past.layers:
                layer.batch_select_indices(index)
            first = int(self._mask.any(dim=0).nonzero()[0])
            if first and self.can_join:
                self._ids, self._mask = self._ids[:, first:], self._mask[:, first:]
                for layer in self._past.layers:
                    layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]

    def _sample(self, scores: torch.Tensor) -> torch.Tensor:
        """int64 (B,) ids from float (B, V) watermarked logits: argmax for greedy rows, else a draw
        from softmax(scores / T) restricted to the row's top-p nucleus (the most likely id always
        stays in it)."""
        rows = [self.rows[h] for h in self._slots]
        temperatures = torch.tensor([max(r.temperature, 1e-6) for r in rows], device=scores.device)
        top_p = torch.tensor([r.top_p for r in rows], device=scores.device)
        probs = torch.softmax(scores / temperatures[:, None], dim=-1)
        if bool((top_p < 1).any()):  # sorting the vocabulary costs as much as sampling it
            ordered, order = probs.sort(dim=-1, descending=True)
            outside = (ordered.cumsum(dim=-1) - ordered) >= top_p[:, None]
            probs = torch.zeros_like(probs).scatter_(1, order, ordered.masked_fill(outside, 0.0))
        greedy = probs.argmax(dim=-1)
        picks = []
        for slot, (handle, row) in enumerate(zip(self._slots, rows)):
            if row.temperature == 0:
                picks.append(greedy[slot])
            else:
                picks.append(torch.multinomial(probs[slot], 1, generator=self._generators[handle])[0])
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
