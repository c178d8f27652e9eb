"""The detector template: context construction, deduplication, aggregation and the decision.

``Detector`` owns what every scheme reports the same way (the result and the decision).
``PairDetector`` is the template of the shard schemes: each supplies ``_score_tokens`` (per-token
evidence from (context, token) pairs) and ``_aggregate_scores`` (per-text score and exact log
p-value), and the template fixes which tokens are scored and that repeated pairs count once.
"""

from __future__ import annotations

import abc
import array
import itertools
import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import numpy as np
import torch

from provmark.detector.result import DetectionResult
from provmark.detector.stats import LN10, p_value_from_log
from provmark.errors import ParameterError
from provmark.kernels.prf import context_seeds, fastrange, split_key, token_words
from provmark.watermark import subkeys
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


def _flat_ids(parts: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of token ids (None for none) as one int64 array, one after the other, and the length
    of each; raises as ``_as_ids`` does.

    Lists and tuples of ints, what callers mostly pass, are read in one ``array`` pass (a tensor per
    sequence costs more than the rest of decoding); anything else, or lists holding anything but ints,
    goes through ``_as_ids`` one sequence at a time, with its conversions and errors."""
    parts = [() if part is None else part for part in parts]
    if all(isinstance(part, (list, tuple)) for part in parts):
        try:
            flat = np.frombuffer(array.array("q", itertools.chain.from_iterable(parts)), dtype=np.int64)
        except (TypeError, OverflowError):  # floats, nested lists, ids past int64: _as_ids decides
            pass
        else:
            if flat.size and int(flat.min()) < 0:
                raise ParameterError("token ids must be non-negative")
            return flat, np.array([len(part) for part in parts], dtype=np.int64)
    ids = [_as_ids(part).numpy() for part in parts]
    return np.concatenate([np.empty(0, dtype=np.int64), *ids]), np.array([part.size for part in ids], dtype=np.int64)


def _first_of_each_group(sequence: np.ndarray, contexts: list[np.ndarray]) -> np.ndarray:
    """bool (N,): which rows are the first (lowest index) of their (sequence, context) group, for rows
    in sequence order (``sequence`` int64 (N,), non-decreasing) with their contexts given column by
    column (``contexts``: h int64 (N,) arrays of non-negative ids, oldest first).

    One sort groups equal contexts with their rows in index order, hence in sequence order: a row
    starts a group where its context or its sequence differs from the row before it. The sort key is
    the context packed into one int64 above the row index when both fit in 63 bits, else a lexsort of
    the columns."""
    n = sequence.size
    index = np.arange(n, dtype=np.int64)
    width = max((int(column.max()).bit_length() for column in contexts), default=0) if n else 0
    index_bits = max(n - 1, 1).bit_length()
    if len(contexts) * width + index_bits <= 63:
        packed = np.zeros(n, dtype=np.int64)
        for column in contexts:
            packed = (packed << width) | column
        key = np.sort((packed << index_bits) | index)
        order, packed = key & ((1 << index_bits) - 1), key >> index_bits
        new_context = packed[1:] != packed[:-1]
    else:
        order = np.lexsort((index, *contexts))
        new_context = np.any([column[order[1:]] != column[order[:-1]] for column in contexts], axis=0)
    sequence = sequence[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = new_context | (sequence[1:] != sequence[:-1])
    first = np.zeros(n, dtype=bool)
    first[order[starts]] = True
    return first


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
    supports_locate: ClassVar[bool] = False
    """Whether ``locate`` searches windows of a longer text for a watermarked span."""

    def __init__(self, key: WatermarkKey, *, alpha: float = DEFAULT_ALPHA):
        if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise ParameterError(f"alpha must lie in (0, 1), got {alpha!r}; 1e-3 is the default")
        self.key = key
        self.alpha = float(alpha)
        self.context_width = key.config.context_width
        self._shard_key = torch.tensor([split_key(key.subkey(subkeys.SHARD))], dtype=torch.int64)

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

    def record_tables(self, sequences: Sequence, *, prompt_ids: Sequence | None = None) -> list:
        """One count table per sequence that scores candidate payloads (``detector.records``);
        multi-bit schemes override this, the others carry no payload and raise ``ParameterError``."""
        raise ParameterError(f"{self.key.scheme} keys carry no payload: there are no records to score")

    def detect_with_tables(self, sequences: Sequence, *, prompt_ids: Sequence | None = None) -> tuple[list[DetectionResult], list]:
        """(``detect_batch``, ``record_tables``) of the same sequences: what verify asks of a
        multi-bit key (the presence test and the record test). Detectors whose two passes share
        their work override this to do it once."""
        return self.detect_batch(sequences, prompt_ids=prompt_ids), self.record_tables(sequences, prompt_ids=prompt_ids)

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
        h, count = self.context_width, len(sequences)
        if prompts is None:
            flat, sequence_len = _flat_ids(sequences)
            prompt_len = np.zeros(count, dtype=np.int64)
        else:
            flat, lengths = _flat_ids([part for index, ids in enumerate(sequences) for part in (prompts[index], ids)])
            prompt_len, sequence_len = lengths[0::2], lengths[1::2]
        full_len = prompt_len + sequence_len
        first = np.maximum(prompt_len, h)  # first scored index in prompt + sequence
        scored = np.maximum(full_len - first, 0)
        sequence = np.repeat(np.arange(count, dtype=np.int64), scored)
        where = np.arange(sequence.size) - np.repeat(np.cumsum(scored) - scored, scored) + first[sequence]
        token_at = where + (np.cumsum(full_len) - full_len)[sequence]  # index in flat of each scored token
        contexts = [flat[token_at - h + j] for j in range(h)]
        kept = np.flatnonzero(_first_of_each_group(sequence, contexts))
        rows = np.empty((kept.size, h + 3), dtype=np.int64)
        rows[:, 0] = sequence[kept]
        rows[:, 1] = where[kept] - prompt_len[rows[:, 0]]
        for j, column in enumerate(contexts):
            rows[:, 2 + j] = column[kept]
        rows[:, -1] = flat[token_at[kept]]
        return torch.from_numpy(rows)

    def detect_batch(self, sequences: Sequence, *, prompt_ids: Sequence | None = None) -> list[DetectionResult]:
        """Detect the watermark in many sequences at once (vectorised over all their tokens)."""
        token_scores, seq_index = self._token_scores(sequences, prompt_ids)
        return self._results(token_scores, seq_index, len(sequences))

    def detect_with_tables(self, sequences: Sequence, *, prompt_ids: Sequence | None = None) -> tuple[list[DetectionResult], list]:
        """(``detect_batch``, ``record_tables``) from one pass over the scored pairs: the PRF work
        (pairs, dedup, per-pair evidence) is done once for both tests."""
        if not self.key.config.supports_payload:
            return super().detect_with_tables(sequences, prompt_ids=prompt_ids)
        token_scores, seq_index = self._token_scores(sequences, prompt_ids)
        return (self._results(token_scores, seq_index, len(sequences)),
                self._record_tables(token_scores, seq_index, len(sequences)))

    def _token_scores(self, sequences: Sequence, prompt_ids: Sequence | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(``_score_tokens`` of the scored pairs, sequence index int64 (N,)) of every sequence."""
        if prompt_ids is not None and len(prompt_ids) != len(sequences):
            raise ParameterError(f"got {len(prompt_ids)} prompts for {len(sequences)} sequences")
        pairs, seq_index = self.scored_pairs(sequences, prompt_ids)
        return self._score_tokens(pairs[:, :-1], pairs[:, -1]), seq_index

    def _results(self, token_scores: torch.Tensor, seq_index: torch.Tensor, num_sequences: int) -> list[DetectionResult]:
        counts = torch.bincount(seq_index, minlength=num_sequences).tolist()
        evidence = self._aggregate_scores(token_scores, seq_index, num_sequences)
        return [self._result(e, n) for e, n in zip(evidence, counts)]

    def token_evidence(self, token_ids, payload, prompt_ids=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(index int64 (N,) of each scored token in ``token_ids``, hit bool (N,), expected float64
        (N,)): whether each scored token lies in the set the embedder prefers at its step for
        ``payload`` (None for a zero-bit key), and the chance of that in text written without the
        key (the preferred share of the step's shards). The rule is the embedder's own
        (``Watermarker.step_params`` with this detector's shard PRF)."""
        from provmark.watermark.schemes import watermarker_class

        pairs, where = self.scored_positions(token_ids, prompt_ids)
        contexts, tokens = pairs[:, :-1], pairs[:, -1]
        payloads = None if payload is None else [payload] * tokens.shape[0]
        params = watermarker_class(self.key.scheme)(self.key).step_params(contexts, payloads).resolved(contexts)
        counts = params.shard_counts
        shard = torch.empty_like(tokens)
        for count in torch.unique(counts).tolist():  # fastrange takes one shard count at a time
            rows = (counts == count).nonzero().squeeze(1)
            shard[rows] = self.shards(contexts[rows], tokens[rows], params.salts[rows], count)
        hit = ((params.preferred >> shard) & 1).bool()
        # bits at or above S name no shard (Python ints: a 64-shard mask's sign bit is shard 63)
        usable = [m & ((1 << c) - 1) for m, c in zip(params.preferred.tolist(), counts.tolist())]
        expected = torch.tensor([bin(m).count("1") for m in usable], dtype=torch.float64) / counts.double()
        return where, hit, expected

    def record_tables(self, sequences: Sequence, *, prompt_ids: Sequence | None = None) -> list:
        """The count tables of ``detector.records`` from the same scored pairs and per-pair
        evidence as ``detect_batch`` (the scheme's ``_record_tables`` turns them into tables)."""
        if prompt_ids is not None and len(prompt_ids) != len(sequences):
            raise ParameterError(f"got {len(prompt_ids)} prompts for {len(sequences)} sequences")
        if not self.key.config.supports_payload:
            return super().record_tables(sequences, prompt_ids=prompt_ids)
        return self._record_tables(*self._token_scores(sequences, prompt_ids), len(sequences))

    def _record_tables(self, token_scores: torch.Tensor, seq_index: torch.Tensor, num_sequences: int) -> list:
        """The record tables of every sequence from ``_score_tokens``'s output (multi-bit schemes)."""
        raise NotImplementedError

    @abc.abstractmethod
    def _score_tokens(self, contexts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Per-pair evidence for contexts int64 (N, h) and tokens int64 (N,)."""

    @abc.abstractmethod
    def _aggregate_scores(self, token_scores: torch.Tensor, seq_index: torch.Tensor, num_sequences: int) -> list[Evidence]:
        """The evidence of each sequence; a sequence with no pairs gets score 0 and p = 1."""
