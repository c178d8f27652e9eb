"""Balance-Marking and Vanilla-Marking decoding: exhaustive over every message of a segment, with
a calibrated presence p-value and a sliding-window search for a watermarked span.

**Evidence.** Each scored (context, token) pair i (first occurrences of each pair) gets a row
``available[i, j]``: whether its token lies on the available side of partition j of its
context's pool, j = 0..K-1 (``kernels.balanced_split``; the proxy reads the text alone). Pairs
are grouped by (segment, context): a group g shares its pool map ``j = c_g XOR (A_g m)`` and
has ``a_g[j]``, the number of its pairs available under partition j.

**Exhaustive decoding.** The count of message m is ``C(m) = sum_g a_g[c_g XOR A_g m]``. Writing
each ``a_g`` in the Walsh basis of its K indices and pushing it through A_g gives
``C = WHT(G) / K`` with ``G[xi] = sum_g sum_{eta: A_g^T eta = xi} (-1)^(eta . c_g) WHT(a_g)[eta]``:
one Walsh-Hadamard transform of length 2**b per segment, in exact integers, whatever the number
of tokens (the official code instead gathers a (positions x 2**b) matrix). The decoded message is
the first argmax.

**Presence p-value.** Without the key, the pool index of any fixed message at a context is a
uniform draw independent of the text and of the partitions, and distinct contexts draw
independently; so given the text, ``C(m)`` is distributed as ``sum_g X_g`` with X_g uniform over
the K values of ``a_g``: an exact law, convolved in log space. The decoder took the best of 2**b
messages per segment, so the p-value of the decoded payload is 2**bits times the tail of the sum
of its segments' counts (a union bound over every payload: conservative, valid whatever the
dependence between messages). The official code reports only a softmax confidence.

**Per-bit confidence.** The marginal, over the softmax of every message's count (the official
code's confidence), of the decoded value of that bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from provmark.detector.base import DEFAULT_ALPHA, Detector, Evidence, _as_ids, _pack_rows
from provmark.detector.result import DetectionResult
from provmark.detector.stats import log_pmf_of_sum, log_upper_tail
from provmark.errors import ParameterError
from provmark.kernels.balanced_split import available_in_pool, partition_starts
from provmark.kernels.prf import context_seeds, split_key
from provmark.watermark import subkeys
from provmark.watermark.balance import PROXY_WINDOW, VanillaConfig, order_seeds_of, parity, pool_indices, pool_words, segments_of
from provmark.watermark.payload import from_digits

__all__ = ["VanillaDetector", "BalanceDetector", "walsh_hadamard"]

LN2 = math.log(2.0)
SPAN_LIFT = 0.5
"""Share of the unavailable probability a watermarked token is assumed to move to the available
side, for locating spans only (a rough middle of what deltas 1 to 3 do)."""


def walsh_hadamard(values: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform along the last dimension (a power of two), exact
    for integer tensors: ``out[..., u] = sum_m values[..., m] * (-1)**popcount(u & m)``."""
    out = values.clone()
    n = out.shape[-1]
    half = 1
    while half < n:
        view = out.view(*out.shape[:-1], n // (2 * half), 2, half)
        low = view[..., 0, :].clone()
        view[..., 0, :] += view[..., 1, :]
        view[..., 1, :] = low - view[..., 1, :]
        half *= 2
    return out


class Pairs(NamedTuple):
    """The scored pairs of one sequence, in text order."""

    contexts: torch.Tensor  # int64 (n, h)
    tokens: torch.Tensor  # int64 (n,)
    positions: torch.Tensor  # int64 (n,) index of the token in the sequence
    available: torch.Tensor  # bool (n, K)


class _Segment(NamedTuple):
    message: int
    count: int
    log_pmf: np.ndarray
    counts: torch.Tensor  # int64 (2**b,) count of every message


class VanillaDetector(Detector):
    """Decodes Vanilla-Marking keys; needs only the key."""

    supports_locate = True
    locate_caveat: str | None = None
    """Why ``locate`` may miss a pasted span with this key, for the front ends to pass on (None: it
    should not)."""

    def __init__(self, key, *, alpha: float = DEFAULT_ALPHA, proxy=None):
        super().__init__(key, alpha=alpha)
        self.config: VanillaConfig = key.config
        if self.config.head and proxy is None:
            raise ParameterError(f"{key.scheme} detection needs the proxy model (watermark.proxy.Proxy)")
        self.proxy = proxy
        self._position_key = split_key(key.subkey(subkeys.POSITION))
        self._pool_key = split_key(key.subkey(subkeys.POOL))
        self._order_key = split_key(key.subkey(subkeys.ORDER))
        self._starts = partition_starts(torch.arange(self.config.pool_size, dtype=torch.int64), self.config.pool_size)

    # -- evidence ---------------------------------------------------------------------------

    def pairs(self, sequences: Sequence, prompt_ids: Sequence | None = None) -> list[Pairs]:
        """The scored pairs of every sequence with their availability under each partition.

        Token i is scored when it has h tokens of context before it (from the prompt where one is
        given); a repeated (context, token) pair is the same PRF draw and counts once."""
        h, pool = self.context_width, self.config.pool_size
        fulls, firsts = [], []
        for index, ids in enumerate(sequences):
            prompt = _as_ids(prompt_ids[index] if prompt_ids is not None else None)
            fulls.append(torch.cat([prompt, _as_ids(ids)]))
            firsts.append(prompt.numel())
        heads = None
        if self.config.head and self.config.proxy_context == "window":
            heads = self.proxy.window_heads([f.tolist() for f in fulls], self.config.head, PROXY_WINDOW)
        elif self.config.head:
            heads = self.proxy.heads([f.tolist() for f in fulls], self.config.head)
        out = []
        for index, (full, offset) in enumerate(zip(fulls, firsts)):
            first = max(offset, h)
            if full.numel() <= first:
                empty = torch.empty((0, h), dtype=torch.int64)
                out.append(Pairs(empty, empty[:, 0], empty[:, 0], torch.empty((0, pool), dtype=torch.bool)))
                continue
            windows = full.unfold(0, h + 1, 1)[first - h :]
            where = torch.arange(first, full.numel())
            packed = _pack_rows(windows)
            _, group = torch.unique(packed, dim=0 if packed.dim() > 1 else None, return_inverse=True)
            first_seen = torch.full((int(group.max()) + 1,), windows.shape[0], dtype=torch.int64)
            keep = torch.sort(first_seen.scatter_reduce(0, group, torch.arange(windows.shape[0]), reduce="amin")).values
            windows, where = windows[keep], where[keep]
            contexts, tokens = windows[:, :-1], windows[:, -1]
            n = tokens.shape[0]
            salts = torch.arange(pool, dtype=torch.int64).repeat(n)
            coin_seeds = context_seeds(self._shard_key.expand(n * pool, 2), salts, contexts.repeat_interleave(pool, dim=0)).view(n, pool)
            if heads is None:
                mass, ids = torch.empty((n, 0), dtype=torch.float64), torch.empty((n, 0), dtype=torch.int64)
            else:
                mass, ids = heads[index][0][where - 1], heads[index][1][where - 1]
            available = available_in_pool(mass, ids, tokens, order_seeds_of(self._order_key, contexts), coin_seeds, self._starts)
            out.append(Pairs(contexts, tokens, where - offset, available))
        return out

    # -- decoding ---------------------------------------------------------------------------

    def _decode_segment(self, available: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor, group: torch.Tensor) -> _Segment:
        """Exhaustive decoding of one segment from its pairs' availability (n, K) and the pool
        maps (offsets (G,), rows (G, k)) of its groups (``group`` (n,) indexes them)."""
        config = self.config
        pool, b = config.pool_size, config.segment_bits
        per_group = torch.zeros((offsets.shape[0], pool), dtype=torch.int64).index_add_(0, group, available.to(torch.int64))
        eta = torch.arange(pool, dtype=torch.int64)
        sign = 1 - 2 * parity(eta[None, :] & offsets[:, None])
        spectrum = walsh_hadamard(per_group) * sign
        xi = torch.zeros((offsets.shape[0], 1), dtype=torch.int64)
        for r in range(config.pool_bits):  # xi[:, eta] = XOR of the rows whose bit is set in eta
            xi = torch.cat([xi, xi ^ rows[:, r : r + 1]], dim=1)
        # Every partial sum of the transform is bounded by sum |spectrum| <= K**2 * n: int32 is
        # exact up to half a million pairs per segment at K = 64, and halves the memory traffic.
        dtype = torch.int32 if pool * pool * available.shape[0] < 1 << 31 else torch.int64
        total = torch.zeros(1 << b, dtype=dtype).index_add_(0, xi.flatten(), spectrum.flatten().to(dtype))
        counts = walsh_hadamard(total) // pool
        message = int(torch.argmax(counts))
        sizes = torch.bincount(group, minlength=offsets.shape[0])
        pmfs = [np.bincount(values, minlength=size + 1) / pool for values, size in zip(per_group.numpy(), sizes.tolist())]
        return _Segment(message, int(counts[message]), log_pmf_of_sum(pmfs), counts)

    def _bit_confidences(self, counts: torch.Tensor, message: int) -> list[float]:
        """Most significant bit first: the softmax mass of the messages that agree with it.

        Least significant bit first, the mass is halved pairwise: level u holds the mass of
        every value of m >> u, so each bit's marginal is one pairwise sum (2 * 2**b adds in all)."""
        level = torch.softmax(counts.to(torch.float64), dim=0)
        out = []
        for shift in range(self.config.segment_bits):
            pairs = level.view(-1, 2)
            out.append(float(pairs[:, (message >> shift) & 1].sum()))
            level = pairs.sum(dim=1)
        return out[::-1]

    def _segments(self, pairs: Pairs) -> list[_Segment | None]:
        """The exhaustive decoding of every segment of one sequence's pairs (at least one pair);
        None for a segment no pair carries."""
        config = self.config
        n = pairs.tokens.shape[0]
        segment = segments_of(self._position_key, pairs.contexts, config)
        keys = torch.cat([segment[:, None], pairs.contexts], dim=1)
        packed = _pack_rows(keys)
        _, group = torch.unique(packed, dim=0 if packed.dim() > 1 else None, return_inverse=True)
        first = torch.full((int(group.max()) + 1,), n, dtype=torch.int64).scatter_reduce(0, group, torch.arange(n), reduce="amin")
        offsets, rows = pool_words(self._pool_key, pairs.contexts[first], segment[first], config)
        segments = []
        for s in range(config.num_segments):
            members = (segment == s).nonzero().squeeze(1)
            if members.numel() == 0:
                segments.append(None)
                continue
            used, local = torch.unique(group[members], return_inverse=True)
            segments.append(self._decode_segment(pairs.available[members], offsets[used], rows[used], local))
        return segments

    def _empty_segment(self) -> _Segment:
        return _Segment(0, 0, np.zeros(1), torch.zeros(1 << self.config.segment_bits, dtype=torch.int64))

    def decode(self, pairs: Pairs) -> Evidence:
        """Payload, presence p-value and per-bit confidences from one sequence's pairs."""
        config = self.config
        if pairs.tokens.shape[0] == 0:
            return Evidence(0.0, 0.0)
        segments, confidences = [], []
        for decoded in self._segments(pairs):
            if decoded is None:
                segments.append(self._empty_segment())
                confidences += [0.5] * config.segment_bits
            else:
                segments.append(decoded)
                confidences += self._bit_confidences(decoded.counts, decoded.message)
        log_pmf = _log_pmf_of_segments(segments)
        observed = sum(s.count for s in segments)
        log_p = min(0.0, config.bits * LN2 + log_upper_tail(log_pmf, observed))
        pmf = np.exp(log_pmf)
        support = np.arange(pmf.size)
        mean = float((support * pmf).sum())
        sd = math.sqrt(max(float(((support - mean) ** 2 * pmf).sum()), 0.0))
        score = (observed - mean) / sd if sd > 0 else 0.0
        payload = from_digits([s.message for s in segments], 1 << config.segment_bits)
        return Evidence(score, log_p, payload, tuple(confidences))

    def record_tables(self, sequences: Sequence, *, prompt_ids: Sequence | None = None) -> list[VanillaRecordTable]:
        """One ``VanillaRecordTable`` per sequence, from the exhaustive decoder's message counts."""
        if prompt_ids is not None and len(prompt_ids) != len(sequences):
            raise ParameterError(f"got {len(prompt_ids)} prompts for {len(sequences)} sequences")
        tables = []
        for pairs in self.pairs(sequences, prompt_ids):
            if pairs.tokens.shape[0] == 0:
                tables.append(VanillaRecordTable([], np.zeros(1), 0, self.config))
                continue
            segments = [self._empty_segment() if s is None else s for s in self._segments(pairs)]
            tables.append(VanillaRecordTable([s.counts.numpy() for s in segments], _log_pmf_of_segments(segments),
                                             pairs.tokens.shape[0], self.config))
        return tables

    def detect_batch(self, sequences: Sequence, *, prompt_ids: Sequence | None = None) -> list[DetectionResult]:
        if prompt_ids is not None and len(prompt_ids) != len(sequences):
            raise ParameterError(f"got {len(prompt_ids)} prompts for {len(sequences)} sequences")
        return [self._result(self.decode(p), p.tokens.shape[0]) for p in self.pairs(sequences, prompt_ids)]

    # -- copy-paste -------------------------------------------------------------------------

    def locate(self, token_ids, *, window: int = 200, stride: int = 25) -> DetectionResult:
        """Find and decode a watermarked span inside longer text.

        Every window of ``window`` tokens starting at multiples of ``stride`` is decoded; the
        best (smallest p-value) gives the payload hypothesis, and its p-value times the number of
        windows (Bonferroni over the search) is the reported p-value. The span is the run of
        pairs with the largest summed log-likelihood ratio under that payload (maximum-sum
        subarray; see ``_log_likelihood_ratios``); the payload and bit confidences are decoded
        again from the span alone.
        """
        if not isinstance(window, int) or window < 2 or not isinstance(stride, int) or stride < 1:
            raise ParameterError(f"window must be an integer >= 2 and stride >= 1, got {window!r}, {stride!r}")
        (pairs,) = self.pairs([token_ids])
        n_tokens = len(_as_ids(token_ids))
        starts = list(range(0, max(n_tokens - window, 0) + 1, stride))
        if starts[-1] + window < n_tokens:
            starts.append(n_tokens - window)
        best = None
        for start in starts:
            inside = (pairs.positions >= start) & (pairs.positions < start + window)
            evidence = self.decode(_subset(pairs, inside))
            if best is None or evidence.log_p < best.log_p:
                best = evidence
        if best.payload is None:
            return self._result(best, 0)
        lo, hi = _max_subarray(self._log_likelihood_ratios(pairs, best.payload))
        span_pairs = _subset(pairs, torch.arange(pairs.tokens.shape[0]).ge(lo) & torch.arange(pairs.tokens.shape[0]).lt(hi))
        span = self.decode(span_pairs)
        log_p = min(0.0, best.log_p + math.log(len(starts)))
        span_tokens = (int(pairs.positions[lo]), int(pairs.positions[hi - 1]) + 1)
        evidence = Evidence(span.score, log_p, span.payload, span.bit_confidences, (span_tokens,))
        return self._result(evidence, span_pairs.tokens.shape[0])

    def token_hits(self, pairs: Pairs, payload: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(bool (n,) whether each pair's token is available under the payload's partition,
        float64 (n,) the share of its context's partitions under which it is available: the
        chance of availability for text written without the key)."""
        config = self.config
        segment = segments_of(self._position_key, pairs.contexts, config)
        messages = torch.tensor(config.segments(payload), dtype=torch.int64)[segment]
        offsets, rows = pool_words(self._pool_key, pairs.contexts, segment, config)
        chosen = pairs.available.gather(1, pool_indices(offsets, rows, messages)[:, None]).squeeze(1)
        return chosen, pairs.available.to(torch.float64).mean(dim=1)

    def token_evidence(self, token_ids, payload: int, prompt_ids=None) -> tuple[torch.Tensor, ...]:
        """(index int64 (n,) of each scored token in ``token_ids``, hit, expected) as ``token_hits``:
        the explanation of one sequence under ``payload``."""
        (pairs,) = self.pairs([token_ids], None if prompt_ids is None else [prompt_ids])
        hit, expected = self.token_hits(pairs, payload)
        return pairs.positions, hit, expected

    def _log_likelihood_ratios(self, pairs: Pairs, payload: int) -> np.ndarray:
        """Per pair, log P(observation | watermarked) / P(observation | not), under the payload's
        partition: unwatermarked, the token is available with probability p0 (its share of the
        pool's partitions); watermarked, with p1 = p0 + SPAN_LIFT * (1 - p0) (p1 = 0 when
        p0 = 0). The sum drifts down outside a watermarked span and up inside it."""
        chosen, p0 = (t.numpy() for t in self.token_hits(pairs, payload))
        p1 = np.where(p0 > 0, p0 + SPAN_LIFT * (1 - p0), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            hit = np.log(p1 / p0)
            miss = np.log((1 - p1) / (1 - p0))
        return np.where(chosen, np.nan_to_num(hit, nan=0.0), np.nan_to_num(miss, nan=0.0))


def _log_pmf_of_segments(segments: list[_Segment]) -> np.ndarray:
    """Natural-log null pmf of the summed counts of one message per segment (the same law for
    every payload: each group's pool index is uniform whatever the message)."""
    return log_pmf_of_sum([np.exp(s.log_pmf) for s in segments]) if len(segments) > 1 else segments[0].log_pmf


class VanillaRecordTable:
    """One text's count of every segment message, for scoring candidate payloads
    (``detector.records``). A payload's hits are the sum over segments of its segment message's
    count; under the null that sum has the law of ``_log_pmf_of_segments`` whatever the payload."""

    def __init__(self, counts: list[np.ndarray], log_pmf: np.ndarray, num_scored_tokens: int, config: VanillaConfig):
        self.counts = counts  # per segment, int (2**b,)
        self.num_scored_tokens = num_scored_tokens
        self.config = config
        self._log_tail = np.append(np.logaddexp.accumulate(log_pmf[::-1])[::-1], -np.inf)  # log P(sum >= k)

    def score(self, payloads):
        config = self.config
        hits = np.zeros(payloads.shape[0], dtype=np.int64)
        if not self.counts:
            return hits, np.zeros(payloads.shape[0])
        mask = np.uint64((1 << config.segment_bits) - 1)
        for index, counts in enumerate(self.counts):  # segment 0 is the most significant
            shift = np.uint64(config.segment_bits * (config.num_segments - 1 - index))
            hits += counts[((payloads >> shift) & mask).astype(np.int64)]
        return hits, np.minimum(0.0, self._log_tail[np.minimum(hits, self._log_tail.size - 1)])


class BalanceDetector(VanillaDetector):
    """Decodes Balance-Marking keys; needs the proxy model (``watermark.proxy.Proxy``)."""

    @property
    def locate_caveat(self) -> str | None:
        if self.config.proxy_context != "text":
            return None
        return ("this balance key's proxy reads the whole text (proxy_context 'text'), so a span pasted after other "
                "text loses most of its evidence; keys made with --proxy-context window are located reliably")


def _subset(pairs: Pairs, mask: torch.Tensor) -> Pairs:
    return Pairs(pairs.contexts[mask], pairs.tokens[mask], pairs.positions[mask], pairs.available[mask])


def _max_subarray(values: np.ndarray) -> tuple[int, int]:
    """(lo, hi) of the contiguous run with the largest sum (Kadane; the first such run)."""
    best, best_lo, best_hi = -math.inf, 0, 1
    running, lo = 0.0, 0
    for i, value in enumerate(values.tolist()):
        if running <= 0:
            running, lo = value, i
        else:
            running += value
        if running > best:
            best, best_lo, best_hi = running, lo, i + 1
    return best_lo, best_hi
