"""The detector template: context construction, deduplication, aggregation and the decision.

``Detector`` owns what every scheme reports the same way (the result and the decision).
``PairDetector`` is the template of the shard schemes: each supplies ``_score_tokens`` (per-token
evidence from (context, token) pairs) and ``_aggregate_scores`` (per-text score and exact log
p-value), and the template fixes which tokens are scored and that repeated pairs count once.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import torch

from provmark.detector.result import DetectionResult
from provmark.detector.stats import LN10, p_value_from_log
from provmark.errors import ParameterError
from provmark.kernels.prf import context_seeds, fastrange, split_key, token_words
from provmark.watermark.keys import WatermarkKey
from provmark.watermark.payload import payload_hex

__all__ = ["Detector", "PairDetector", "DEFAULT_ALPHA", "Evidence"]

DEFAULT_ALPHA = 1e-3


def _as_ids(ids) -> torch.Tensor:
    tensor = torch.as_tensor(ids if ids is not None else [], dtype=torch.int64).flatten()
    if tensor.numel() and int(tensor.min()) < 0:
        raise ParameterError("token ids must be non-negative")
    return tensor


def _pack_rows(rows: torch.Tensor) -> torch.Tensor:
    """Rows of non-negative ints as one int64 each when their bit widths fit in 63 bits (a 1-D
    unique is much faster than a row-wise one); otherwise the rows themselves. Exact either way."""
    widths = [max(int(column.max()).bit_length(), 1) for column in rows.unbind(1)]
    if sum(widths) > 63:
        return rows
    packed = torch.zeros(rows.shape[0], dtype=torch.int64)
    for column, width in zip(rows.unbind(1), widths):
        packed = (packed << width) | column
    return packed


class Evidence(NamedTuple):
    """What a scheme concluded about one sequence, before the common decision and formatting."""

    score: float
    log_p: float
    """Natural log of the p-value."""
    payload: int | None = None
    bit_confidences: tuple[float, ...] | None = None
    spans: tuple[tuple[int, int], ...] = ()
    """Token spans (start, end) of the sequence that carry the watermark, when localised."""


class Detector(abc.ABC):
    """Scores token ids against one key; an empty or too-short text gets p = 1 and is not
    watermarked. Subclasses implement ``detect_batch``."""

    reads_text: ClassVar[bool] = False
    """Whether the detector reads strings (the synonym scheme) rather than token ids."""

    def __init__(self, key: WatermarkKey, *, alpha: float = DEFAULT_ALPHA):
        if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise ParameterError(f"alpha must lie in (0, 1), got {alpha!r}; 1e-3 is the default")
        self.key = key
        self.alpha = float(alpha)
        self.context_width = key.config.context_width
        self._shard_key = torch.tensor([split_key(key.subkey("shard"))], dtype=torch.int64)

    def shards(self, contexts: torch.Tensor, tokens: torch.Tensor, salts: torch.Tensor, shard_count: int) -> torch.Tensor:
        """int64 (N,): the shard the embedder gave each token under its context and salt
        (contexts (N, h), tokens and salts (N,)), from the key's "shard" sub-key."""
        seeds = context_seeds(self._shard_key.expand(tokens.shape[0], 2), salts, contexts)
        return fastrange(token_words(seeds, tokens), shard_count)

    def detect(self, token_ids, *, prompt_ids=None) -> DetectionResult:
        """Detect the watermark in one sequence of token ids (the prompt, if given, is context only)."""
        return self.detect_batch([token_ids], prompt_ids=None if prompt_ids is None else [prompt_ids])[0]

    @abc.abstractmethod
    def detect_batch(self, sequences: Sequence, *, prompt_ids: Sequence | None = None) -> list[DetectionResult]:
        """Detect the watermark in many sequences of token ids (prompts, if given, are context only)."""

    def _result(self, evidence: Evidence, num_scored: int) -> DetectionResult:
        score, log_p = evidence.score, evidence.log_p
        payload = evidence.payload
        return DetectionResult(
            scheme=self.key.scheme,
            key_id=self.key.key_id,
            prf_version=self.key.prf_version,
            is_watermarked=num_scored > 0 and math.exp(log_p) <= self.alpha,
            p_value=p_value_from_log(log_p),
            log10_p_value=log_p / LN10,
            score=score,
            num_scored_tokens=num_scored,
            alpha=self.alpha,
            payload=payload,
            payload_hex=None if payload is None else payload_hex(payload, self.key.config.bits),
            bit_confidences=evidence.bit_confidences,
            spans=evidence.spans,
        )


class PairDetector(Detector):
    """A detector whose evidence is a function of each (context, token) pair alone: the shard
    schemes. Subclasses implement ``_score_tokens`` and ``_aggregate_scores``."""

    def scored_pairs(self, sequences: Sequence, prompts: Sequence | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (context, token) pairs that carry evidence, for every sequence.

        Token t of a sequence is scored when it has h tokens of context before it, taken from
        the prompt where the prompt is given; prompt tokens themselves are never scored.
        Each context is scored once, at its first occurrence: generation biased only that step
        (later steps with the same context are left plain, see ``kernels.repeated_context``),
        and a repeated (context, token) pair is the same draw of the PRF, so counting it again
        would add dependent evidence and make the p-value anti-conservative. Scoring first
        occurrences only therefore counts every (context, token) pair at most once and drops
        the tokens that generation never biased.

        Returns:
            (pairs int64 (N, h + 1) with the context first and the token last,
             sequence index int64 (N,)), in sequence order.
        """
        rows = self._first_occurrences(sequences, prompts)
        return rows[:, 2:], rows[:, 0]

    def scored_positions(self, token_ids, prompt_ids=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The scored pairs of one sequence and where their tokens stand in it: (pairs int64
        (N, h + 1) as ``scored_pairs``, index int64 (N,) of each scored token in ``token_ids``)."""
        rows = self._first_occurrences([token_ids], None if prompt_ids is None else [prompt_ids])
        return rows[:, 2:], rows[:, 1]

    def _first_occurrences(self, sequences: Sequence, prompts: Sequence | None) -> torch.Tensor:
        """int64 (N, h + 3) rows (sequence index, token index in the sequence, context..., token)
        of the scored pairs (``scored_pairs`` says which), in sequence order."""
        h = self.context_width
        rows = []
        for index, ids in enumerate(sequences):
            prompt = _as_ids(prompts[index] if prompts is not None else None)
            full = torch.cat([prompt, _as_ids(ids)])
            first = max(prompt.numel(), h)
            if full.numel() <= first:
                continue
            windows = full.unfold(0, h + 1, 1)[first - h :]
            where = torch.arange(first, full.numel())[:, None] - prompt.numel()
            rows.append(torch.cat([torch.full((windows.shape[0], 1), index, dtype=torch.int64), where, windows], dim=1))
        if not rows:
            return torch.empty((0, h + 3), dtype=torch.int64)
        rows = torch.cat(rows)
        packed = _pack_rows(torch.cat([rows[:, :1], rows[:, 2:-1]], dim=1))  # (sequence, context)
        _, group = torch.unique(packed, dim=0 if packed.dim() > 1 else None, return_inverse=True)
        position = torch.arange(rows.shape[0])
        first_seen = torch.full((int(group.max()) + 1,), rows.shape[0], dtype=torch.int64)
        first_seen = first_seen.scatter_reduce(0, group, position, reduce="amin")
        return rows[torch.sort(first_seen).values]

    def detect_batch(self, sequences: Sequence, *, prompt_ids: Sequence | None = None) -> list[DetectionResult]:
        """Detect the watermark in many sequences at once (vectorised over all their tokens)."""
        if prompt_ids is not None and len(prompt_ids) != len(sequences):
            raise ParameterError(f"got {len(prompt_ids)} prompts for {len(sequences)} sequences")
        pairs, seq_index = self.scored_pairs(sequences, prompt_ids)
        token_scores = self._score_tokens(pairs[:, :-1], pairs[:, -1])
        counts = torch.bincount(seq_index, minlength=len(sequences)).tolist()
        evidence = self._aggregate_scores(token_scores, seq_index, len(sequences))
        return [self._result(e, n) for e, n in zip(evidence, counts)]

    @abc.abstractmethod
    def _score_tokens(self, contexts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Per-pair evidence for contexts int64 (N, h) and tokens int64 (N,)."""

    @abc.abstractmethod
    def _aggregate_scores(self, token_scores: torch.Tensor, seq_index: torch.Tensor, num_sequences: int) -> list[Evidence]:
        """The evidence of each sequence; a sequence with no pairs gets score 0 and p = 1."""
