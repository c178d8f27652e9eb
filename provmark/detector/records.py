"""Record scoring: which of a set of known payloads a text carries, with an exact record-level p-value.

A registry knows every payload it issued, so naming the record behind a text is a test among
those candidates, not a decode over the whole code space. For each candidate payload m the
evidence is the number of scored (first-occurrence, deduplicated) tokens that fall in m's
preferred sets, ``hits(m)``, and its exact upper tail under text written without the key:

- **MPAC**: every scored token lands in m's colour list with probability gamma = 1/S, whatever m:
  ``Binomial(N, 1/S)``.
- **MajorMark**: in m's majority-bit shards with probability n_lambda(m)/b: ``Binomial(N, n/b)``.
- **MajorMark+**: a token allocated to block j hits with probability n_j(m)/s, so the law is a
  Poisson-binomial, the sum of ``Binomial(T_j, n_j/s)`` over blocks (exact convolution; T_j
  tokens in block j).
- **Vanilla/Balance**: the count of each segment message from the exhaustive decoder; for any
  fixed message the pool index of each (segment, context) group is uniform, so the law is the
  same for every candidate, the sum over groups of a uniform pick among their K availability
  counts (``detector.balance``).

Each scheme's detector builds one count table per text (``Detector.record_tables``, the PRF work,
as for detection); scoring a candidate is then a few table look-ups, vectorised over all of them
(``digit_sums``), and the tails are computed once per distinct (hits, law). The winner is the
candidate with the smallest p-value (not the most hits: candidates differ in preferred share),
and its p-value is corrected for the number of distinct candidates scored (Bonferroni: valid
whatever the dependence between candidates; three_bricks' argmin-and-correct, research note
section 8 of STYLE.md). The runner-up's p-value comes with it, so a caller sees how clearly the
text separates the two.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
from scipy.stats import binom

from provmark.detector.stats import LN10, binomial_log_sf_array, log_pmf_of_sum, p_value_from_log
from provmark.errors import ParameterError
from provmark.watermark.check import codeword_values
from provmark.watermark.payload import parse_payload, payload_hex

__all__ = [
    "RecordMatch",
    "RecordScores",
    "RecordTable",
    "candidate_payloads",
    "parse_candidates",
    "digit_sums",
    "mixed_digit_sums",
    "binomial_tails",
    "poisson_binomial_tails",
    "score_records",
    "match_records",
    "match_records_batch",
    "match_tables",
]

_CHUNK_BITS = 8
"""Digits are looked up a byte (or the whole digits that fit in one) at a time."""


class RecordTable(Protocol):
    """One text's count table under one key: scores any candidate payloads by table look-ups."""

    num_scored_tokens: int

    def score(self, payloads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hits int64 (M,), natural-log exact tail float64 (M,)) of the codeword values uint64
        (M,) of payloads already checked to lie in the key's capacity (``watermark.check``: the
        payloads themselves without check bits)."""


@dataclass(frozen=True, kw_only=True)
class RecordScores:
    """Every candidate's evidence on one text, candidates in the order given (duplicates dropped)."""

    payloads: np.ndarray
    """uint64 (M,) distinct candidate payloads."""
    hits: np.ndarray
    """int64 (M,) scored tokens in each payload's preferred sets."""
    log_p: np.ndarray
    """float64 (M,) natural log of each payload's exact tail, uncorrected."""
    num_scored_tokens: int


@dataclass(frozen=True, kw_only=True)
class RecordMatch:
    """The candidate a text most likely carries. ``p_value`` is its exact tail alone;
    ``corrected_p_value`` multiplies it by the number of distinct candidates scored (Bonferroni),
    the record-level p-value to compare with ``alpha``. With no scored token there is no
    winner (payload None, p = 1)."""

    scheme: str
    key_id: str
    payload: int | None
    payload_hex: str | None
    hits: int
    num_scored_tokens: int
    p_value: float
    log10_p_value: float
    corrected_p_value: float
    corrected_log10_p_value: float
    runner_up: int | None
    """The candidate with the next smallest p-value (None with a single candidate)."""
    runner_up_hex: str | None
    runner_up_log10_p_value: float | None
    """The runner-up's uncorrected log10 tail."""
    num_candidates: int
    alpha: float
    is_match: bool
    """Whether the corrected p-value is at most ``alpha``: the text is attributed to ``payload``."""

    def to_dict(self) -> dict:
        """JSON-ready dict of every field."""
        return asdict(self)


def candidate_payloads(candidates, capacity: int) -> np.ndarray:
    """uint64 (M,): the distinct candidates in the order first given.

    Args:
        candidates: ints (or a numpy integer array) in [0, capacity); strings are parsed by the
            caller (``watermark.payload.parse_payload``).
        capacity: the key's number of distinct payloads (at most 2**64).

    Raises ``ParameterError`` for no candidates, a non-integer, or one outside the capacity.
    """
    if isinstance(candidates, np.ndarray):
        if candidates.dtype.kind not in "iu":
            raise ParameterError(f"candidate payloads must be integers, got an array of {candidates.dtype}")
        if candidates.dtype.kind == "i" and candidates.size and int(candidates.min()) < 0:
            raise ParameterError("candidate payloads must be non-negative")
        values = candidates.astype(np.uint64, copy=False).ravel()
    else:
        candidates = list(candidates)
        bad = [c for c in candidates if isinstance(c, bool) or not isinstance(c, (int, np.integer))]
        if bad:
            raise ParameterError(f"candidate payloads must be integers, got {bad[0]!r}")
        try:
            values = np.array([int(c) for c in candidates], dtype=np.uint64)
        except OverflowError:
            raise ParameterError(f"candidate payloads must lie in [0, {capacity})") from None
    if values.size == 0:
        raise ParameterError("no candidate payloads; give at least one")
    if capacity < 1 << 64 and int(values.max()) >= capacity:
        raise ParameterError(f"candidate payload {int(values.max())} does not fit the key's capacity [0, {capacity})")
    if np.all(values[1:] > values[:-1]):  # a registry's numbers (``Registry.issued_numbers``): ascending, no sort
        return values
    ordered = np.sort(values)
    if not np.any(ordered[1:] == ordered[:-1]):  # distinct: one sort
        return values
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]


def parse_candidates(lines, capacity: int) -> np.ndarray:
    """uint64 (M,): the payloads of a candidates file, one per line (decimal or 0x hex, as
    ``parse_payload`` reads them); blank lines and lines starting with # are skipped, duplicates
    count once. Raises ``ParameterError`` naming the first bad line (1-based)."""
    values = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            values.append(parse_payload(text, capacity))
        except ParameterError as error:
            raise ParameterError(f"line {number}: {error}") from None
    return candidate_payloads(values, capacity)


def digit_sums(words: np.ndarray, table: np.ndarray, width: int) -> np.ndarray:
    """``sum_p table[p, digit_p(word)]`` for every word, where word is L digits of ``width`` bits,
    digit 0 the most significant (L = ``table.shape[0]``; ``table`` (L, 2**width) int64).

    The digits are read a chunk at a time (as many whole digits as fit in a byte): one look-up
    table per chunk of 2**chunk_bits entries, built from ``table``, so M words cost M look-ups
    per chunk instead of M * L."""
    table = np.asarray(table, dtype=np.int64)
    length = table.shape[0]
    per_chunk = max(1, _CHUNK_BITS // width)
    total = np.zeros(words.shape[0], dtype=np.int64)
    mask = np.uint64((1 << width) - 1)
    for start in range(0, length, per_chunk):
        digits = range(start, min(start + per_chunk, length))
        chunk_bits = width * len(digits)
        shift = np.uint64(width * (length - digits[-1] - 1))  # where the chunk's last digit starts
        values = np.arange(1 << chunk_bits, dtype=np.int64)
        lookup = np.zeros(1 << chunk_bits, dtype=np.int64)
        for place, p in enumerate(reversed(digits)):  # the chunk's last digit is its lowest bits
            lookup += table[p, (values >> (width * place)) & int(mask)]
        chunk = ((words >> shift) & np.uint64((1 << chunk_bits) - 1)).astype(np.int64)
        total += lookup[chunk]
    return total


def mixed_digit_sums(values: np.ndarray, tables: np.ndarray, base: int) -> np.ndarray:
    """``sum_j tables[:, j, digit_j(value)]`` for every value, where value is L digits in ``base``,
    digit 0 the most significant (tables int64 (K, L, base): K sums at once; returns int64 (K, M)).

    ``digit_sums`` for a base that is not a power of two: the digits are read a chunk at a time, as
    many whole digits as keep ``base ** k`` at most 2**10, each chunk through one look-up table per
    sum (outer sums of the chunk's digit tables), so M values cost one division and K look-ups per
    chunk instead of L of each."""
    tables = np.asarray(tables, dtype=np.int64)
    sums, length = tables.shape[0], tables.shape[1]
    per_chunk = 1
    while base ** (per_chunk + 1) <= 1 << 10:
        per_chunk += 1
    total = np.zeros((sums, values.shape[0]), dtype=np.int64)
    rest = values.astype(np.uint64, copy=True)
    end = length
    while end > 0:  # the last digits are the least significant
        start = max(0, end - per_chunk)
        size = np.uint64(base ** (end - start))
        chunk = (rest % size).astype(np.intp)
        rest //= size
        lookup = tables[:, start]
        for j in range(start + 1, end):  # most significant digit first: the flat index is the chunk's value
            lookup = (lookup[:, :, None] + tables[:, j, None, :]).reshape(sums, -1)
        for k in range(sums):
            total[k] += lookup[k].take(chunk)
        end = start
    return total


@functools.lru_cache(maxsize=64)
def _binomial_grid(size: int, share: float) -> np.ndarray:
    """float64 (size, size): Binomial(t, share) pmf at [t, k] (zero past k = t), shared read-only."""
    support = np.arange(size)
    grid = binom.pmf(support[None, :], support[:, None], share)
    grid.flags.writeable = False
    return grid


def _distinct(keys: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values ascending, inverse) of non-negative int64 keys below ``size``: a
    presence table instead of a sort when the range is small."""
    if size <= max(1 << 22, 8 * keys.size):
        present = np.zeros(size, dtype=bool)
        present[keys] = True
        distinct = np.flatnonzero(present)
        rank = np.cumsum(present) - 1
        return distinct, rank[keys]
    distinct, inverse = np.unique(keys, return_inverse=True)
    return distinct, inverse.ravel()


def binomial_tails(hits: np.ndarray, trials: int, preferred: np.ndarray, shards: int) -> np.ndarray:
    """Natural-log ``P(Binomial(trials, preferred / shards) >= hits)`` elementwise (hits and
    preferred int (M,)), exact (``stats.binomial_log_sf_array``), once per distinct pair."""
    if trials == 0:
        return np.zeros(hits.shape[0])
    keys = np.clip(hits, 0, trials + 1) * (shards + 1) + preferred
    distinct, inverse = _distinct(keys, (trials + 2) * (shards + 1))
    tails = binomial_log_sf_array(distinct // (shards + 1), trials, (distinct % (shards + 1)) / shards)
    return tails[inverse]


def poisson_binomial_tails(hits: np.ndarray, trials: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Natural-log ``P(sum_q Binomial(trials[:, q], shares[q]) >= hits)`` for every row (hits int
    (M,), trials int (M, Q) tokens at each preferred share, shares float (Q,)): the exact tail of
    a sum of independent binomials, one convolution per distinct row of ``trials`` (rows with the
    same total share their law whatever the order of their blocks).

    The convolution runs in float64; a tail below 1e-290 is recomputed in log space
    (``stats.log_pmf_of_sum``), so tails below float64's range keep their value."""
    trials = np.asarray(trials, dtype=np.int64)
    radix = int(trials.max(initial=0)) + 1
    if radix ** trials.shape[1] < 1 << 62:  # one int64 per row: a 1-D look-up, much faster than rows
        packed = trials @ (radix ** np.arange(trials.shape[1], dtype=np.int64))
        distinct, inverse = _distinct(packed, radix ** trials.shape[1])
        profiles = (distinct[:, None] // radix ** np.arange(trials.shape[1])) % radix
    else:
        profiles, inverse = np.unique(trials, axis=0, return_inverse=True)
        inverse = inverse.ravel()
    width = int(trials.sum(axis=1).max(initial=0)) + 2
    table = np.zeros((profiles.shape[0], width))  # natural-log tail of each profile at 0..width-1
    # Every binomial pmf the profiles need, one scipy call per share (rows: trials 0..max).
    grids = [_binomial_grid(radix, share) for share in shares.tolist()]
    pmfs_of = []
    for u, profile in enumerate(profiles.tolist()):
        pmfs = [grid[t, : t + 1] for t, grid in zip(profile, grids) if t]
        pmfs_of.append(pmfs)
        if not pmfs:
            continue
        pmf = pmfs[0]
        for other in pmfs[1:]:
            pmf = np.convolve(pmf, other)
        tail = np.cumsum(pmf[::-1])[::-1]
        with np.errstate(divide="ignore"):
            table[u, : tail.size] = np.minimum(0.0, np.log(tail))
        table[u, tail.size :] = -np.inf
    out = table[inverse, np.clip(hits, 0, width - 1)]
    for i in np.flatnonzero((out <= math.log(1e-290)) & np.isfinite(out) | np.isneginf(out)).tolist():
        log_pmf = log_pmf_of_sum(pmfs_of[inverse[i]])
        out[i] = min(0.0, float(np.logaddexp.reduce(log_pmf[hits[i] :]))) if hits[i] < log_pmf.size else -np.inf
    return out


def score_records(detector, token_ids, candidates, *, prompt_ids=None) -> RecordScores:
    """Every candidate payload's hits and exact tail on one text of token ids under the
    detector's key (``create_detector``); see the module docstring for each scheme's law."""
    payloads = candidate_payloads(candidates, _capacity(detector))
    table = detector.record_tables([token_ids], prompt_ids=None if prompt_ids is None else [prompt_ids])[0]
    return _scores(table, payloads, codeword_values(detector.key, payloads))


def match_records(detector, token_ids, candidates, *, prompt_ids=None) -> RecordMatch:
    """The candidate payload with the smallest exact tail on one text, its tail corrected for the
    number of distinct candidates, and the runner-up (see ``RecordMatch``).

    Args:
        detector: a multi-bit scheme's detector (``create_detector``); its ``alpha`` decides
            ``is_match``.
        token_ids: the text's token ids (no special tokens).
        candidates: the payloads to test, ints in [0, capacity) (for a registry: every payload
            issued under the key); duplicates count once.
        prompt_ids: optional prompt ids, context only.
    """
    return match_records_batch(detector, [token_ids], candidates, prompt_ids=None if prompt_ids is None else [prompt_ids])[0]


def match_records_batch(detector, sequences: Sequence, candidates, *, prompt_ids: Sequence | None = None) -> list[RecordMatch]:
    """``match_records`` of many texts against the same candidates (count tables built in one
    vectorised pass)."""
    payloads = candidate_payloads(candidates, _capacity(detector))
    return _match_tables(detector, detector.record_tables(sequences, prompt_ids=prompt_ids), payloads)


def match_tables(detector, tables: Sequence[RecordTable], candidates) -> list[RecordMatch]:
    """``match_records`` of texts whose count tables are built already (``Detector.record_tables``
    or ``Detector.detect_with_tables``, which shares the PRF work with the presence test)."""
    return _match_tables(detector, tables, candidate_payloads(candidates, _capacity(detector)))


def _match_tables(detector, tables: Sequence[RecordTable], payloads: np.ndarray) -> list[RecordMatch]:
    values = codeword_values(detector.key, payloads)
    return [_match(detector, _scores(table, payloads, values)) for table in tables]


def _capacity(detector) -> int:
    config = detector.key.config
    if not config.supports_payload:
        raise ParameterError(f"{detector.key.scheme} keys carry no payload: there are no records to score")
    return config.capacity


def _scores(table: RecordTable, payloads: np.ndarray, values: np.ndarray) -> RecordScores:
    hits, log_p = table.score(values)
    return RecordScores(payloads=payloads, hits=hits, log_p=log_p, num_scored_tokens=table.num_scored_tokens)


def _match(detector, scores: RecordScores) -> RecordMatch:
    key, alpha = detector.key, detector.alpha
    bits, count = key.config.bits, scores.payloads.size
    base = {"scheme": key.scheme, "key_id": key.key_id, "num_candidates": count, "alpha": alpha,
            "num_scored_tokens": scores.num_scored_tokens}
    if scores.num_scored_tokens == 0:
        return RecordMatch(**base, payload=None, payload_hex=None, hits=0, p_value=1.0, log10_p_value=0.0,
                           corrected_p_value=1.0, corrected_log10_p_value=0.0, runner_up=None, runner_up_hex=None,
                           runner_up_log10_p_value=None, is_match=False)
    best = int(np.argmin(scores.log_p))  # ties go to the candidate given first
    log_p = float(scores.log_p[best])
    corrected = min(0.0, log_p + math.log(count))
    runner_up = runner_log_p = None
    if count > 1:
        rest = scores.log_p.copy()
        rest[best] = np.inf
        second = int(np.argmin(rest))
        runner_up, runner_log_p = int(scores.payloads[second]), float(rest[second])
    payload = int(scores.payloads[best])
    return RecordMatch(
        **base,
        payload=payload,
        payload_hex=payload_hex(payload, bits),
        hits=int(scores.hits[best]),
        p_value=p_value_from_log(log_p),
        log10_p_value=log_p / LN10,
        corrected_p_value=p_value_from_log(corrected),
        corrected_log10_p_value=corrected / LN10,
        runner_up=runner_up,
        runner_up_hex=None if runner_up is None else payload_hex(runner_up, bits),
        runner_up_log10_p_value=None if runner_log_p is None else runner_log_p / LN10,
        is_match=math.exp(corrected) <= alpha,
    )
