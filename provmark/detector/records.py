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

**Exclusion: no wrong record by construction.** The corrected p-value bounds the chance that a
text written without the key is attributed; it says nothing of a watermarked text that another
issued payload explains better (a MajorMark candidate whose majority shards are nearly a subset
of the true payload's gets almost the same hits under a smaller preferred share). So a record is
named only if every other candidate C is *excluded*: tested as the text's record and rejected.
Under "C is the record", which of C's preferred shards a boosted token fell in, and which of its
other shards an unboosted token fell in, are uniform (the shard PRF), and colourings under salts
C does not use are null; the winner W's hits beyond what C explains then have an exact law given
C's own counts (each scheme's ``RecordTable.exclusion``). C's p-value is taken at a weighted
Bonferroni level ``alpha / (D * n)``: D levels of distance from C (differing digits, bits or
blocks), n the candidates at W's level from C, so the weights over all W != C sum to at most 1.
If the text's true record T is a candidate, a wrong record needs T excluded, which happens with
probability at most alpha whatever W the data pick: **an exclusive record is wrong at most as
an alpha event**, while near candidates (few) keep a level far larger than alpha / M. A match
that is not exclusive (``is_exclusive`` False) still names the candidate that explains the text
best, without that guarantee. Vanilla and Balance keys have no exclusion test yet
(``exclusion_log10_p_value`` None).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
from scipy.special import gammaln, rel_entr
from scipy.stats import binom, hypergeom

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
    "product_log_sf",
    "split_tails",
    "digit_levels_from",
    "hypergeometric_low_tails",
    "binomial_log_sf_bound",
    "split_bounds",
    "hypergeometric_low_bound",
    "poisson_binomial_bound",
    "refined",
]

_CHUNK_BITS = 8
"""Digits are looked up a byte (or the whole digits that fit in one) at a time."""
_REFINED = 32
"""Competitors whose level count is counted exactly (the rest take the bound n <= M - 1)."""
_EXACT = 256
"""Competitors whose exclusion tail is computed exactly per text (the rest keep a Chernoff bound)."""


class RecordTable(Protocol):
    """One text's count table under one key: scores any candidate payloads by table look-ups."""

    num_scored_tokens: int

    def score(self, payloads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hits int64 (M,), natural-log exact tail float64 (M,)) of the codeword values uint64
        (M,) of payloads already checked to lie in the key's capacity (``watermark.check``: the
        payloads themselves without check bits)."""


class ExclusionTable(RecordTable, Protocol):
    """A record table that can also exclude candidates (module docstring, "Exclusion")."""

    num_levels: int
    """D: the distance levels between two codewords (1..D)."""

    def exclusion(self, winner: np.uint64, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(natural-log p float64 (M,), level int64 (M,)) for each candidate C of codeword values
        (M,): the exact tail of the winner's evidence under "C is the text's record" (0 where C
        is the winner), and C's distance level from the winner (0 for the winner itself)."""

    def levels_from(self, values: np.ndarray) -> Callable[[int], np.ndarray]:
        """A function of i giving int64 (M,): every candidate's level from candidate i (0 for i)."""


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
    competitor: int | None
    """The other candidate hardest to exclude (None with a single candidate or no exclusion test)."""
    competitor_hex: str | None
    exclusion_log10_p_value: float | None
    """log10 of the largest weighted exclusion p-value over the other candidates (the competitor's;
    module docstring, "Exclusion"): at most log10 ``alpha`` when every other candidate is
    excluded. None when the text names no record, for a single candidate, or for a scheme without
    an exclusion test (vanilla, balance)."""
    num_candidates: int
    alpha: float
    is_match: bool
    """Whether the corrected p-value is at most ``alpha``: the text carries a record of this key,
    and ``payload`` is the candidate that explains it best."""
    is_exclusive: bool
    """Whether, besides, every other candidate is excluded at ``alpha``: then a wrong ``payload``
    is at most an ``alpha`` event for a text whose record is among the candidates. A match that
    is not exclusive names the most likely record without that guarantee; a vanilla or balance
    match is never exclusive (no exclusion test yet), a match among a single candidate always."""

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
    digit 0 the most significant (L = ``table.shape[0]``; ``table`` (L, 2**width) int64). With
    tables (K, L, 2**width), K such sums at once, int64 (K, M).

    The digits are read a chunk at a time (as many whole digits as fit in a byte): one look-up
    table per chunk of 2**chunk_bits entries, built from ``table``, so M words cost M look-ups
    per chunk instead of M * L (and K sums share the chunks' extraction)."""
    table = np.asarray(table, dtype=np.int64)
    tables = table if table.ndim == 3 else table[None]
    sums, length = tables.shape[0], tables.shape[1]
    per_chunk = max(1, _CHUNK_BITS // width)
    total = np.zeros((sums, words.shape[0]), dtype=np.int64)
    mask = np.uint64((1 << width) - 1)
    for start in range(0, length, per_chunk):
        digits = range(start, min(start + per_chunk, length))
        chunk_bits = width * len(digits)
        shift = np.uint64(width * (length - digits[-1] - 1))  # where the chunk's last digit starts
        values = np.arange(1 << chunk_bits, dtype=np.int64)
        lookup = np.zeros((sums, 1 << chunk_bits), dtype=np.int64)
        for place, p in enumerate(reversed(digits)):  # the chunk's last digit is its lowest bits
            lookup += tables[:, p, (values >> (width * place)) & int(mask)]
        chunk = ((words >> shift) & np.uint64((1 << chunk_bits) - 1)).astype(np.intp)
        for k in range(sums):
            total[k] += lookup[k].take(chunk)
    return total if table.ndim == 3 else total[0]


def mixed_digit_sums(values: np.ndarray, tables: np.ndarray, base: int) -> np.ndarray:
    """``sum_j tables[:, j, digit_j(value)]`` for every value, where value is L digits in ``base``,
    digit 0 the most significant (tables int64 or float64 (K, L, base): K sums at once; returns
    (K, M) of the tables' kind).

    ``digit_sums`` for a base that is not a power of two: the digits are read a chunk at a time, as
    many whole digits as keep ``base ** k`` at most 2**10, each chunk through one look-up table per
    sum (outer sums of the chunk's digit tables), so M values cost one division and K look-ups per
    chunk instead of L of each."""
    tables = np.asarray(tables)
    tables = tables.astype(np.float64 if tables.dtype.kind == "f" else np.int64, copy=False)
    sums, length = tables.shape[0], tables.shape[1]
    per_chunk = 1
    while base ** (per_chunk + 1) <= 1 << 10:
        per_chunk += 1
    total = np.zeros((sums, values.shape[0]), dtype=tables.dtype)
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


def digit_levels_from(values: np.ndarray, width: int, length: int) -> Callable[[int], np.ndarray]:
    """``ExclusionTable.levels_from`` for codewords of ``length`` digits of ``width`` bits: the
    number of digits in which each value differs from value i."""
    low = np.uint64(sum(1 << (width * p) for p in range(length)))  # the lowest bit of every digit

    def levels(i: int) -> np.ndarray:
        x = values ^ values[i]
        folded = x
        for shift in range(1, width):
            folded = folded | (x >> np.uint64(shift))
        return np.bitwise_count(folded & low).astype(np.int64)

    return levels


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


def _columns(*arrays) -> np.ndarray:
    """int64 (M, K): the arrays (or scalars) broadcast to one shape, flattened, side by side."""
    return np.stack([a.ravel() for a in np.broadcast_arrays(*(np.asarray(a, dtype=np.int64) for a in arrays))], axis=1)


def _distinct_rows(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows, inverse) of a non-negative int64 (M, K) array: each row packed into one int64
    when the columns' ranges allow (``_distinct``, much faster than comparing rows), else
    ``np.unique`` over rows. The rows come back in the packing's order."""
    radix = columns.max(axis=0, initial=0) + 1
    if math.prod(radix.tolist()) < 1 << 62:
        places = np.concatenate([[1], np.cumprod(radix[:-1])]).astype(np.int64)
        distinct, inverse = _distinct(columns @ places, math.prod(radix.tolist()))
        return (distinct[:, None] // places) % radix, inverse
    rows, inverse = np.unique(columns, axis=0, return_inverse=True)
    return rows, inverse.ravel()


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
    profiles, inverse = _distinct_rows(trials)
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
    return match_tables(detector, detector.record_tables(sequences, prompt_ids=prompt_ids), payloads)


def match_tables(detector, tables: Sequence[RecordTable], candidates) -> list[RecordMatch]:
    """``match_records`` of texts whose count tables are built already (``Detector.record_tables``
    or ``Detector.detect_with_tables``, which shares the PRF work with the presence test)."""
    payloads = candidate_payloads(candidates, _capacity(detector))
    values = codeword_values(detector.key, payloads)
    return [_match(detector, table, values, _scores(table, payloads, values)) for table in tables]


def _capacity(detector) -> int:
    config = detector.key.config
    if not config.supports_payload:
        raise ParameterError(f"{detector.key.scheme} keys carry no payload: there are no records to score")
    return config.capacity


def _scores(table: RecordTable, payloads: np.ndarray, values: np.ndarray) -> RecordScores:
    hits, log_p = table.score(values)
    return RecordScores(payloads=payloads, hits=hits, log_p=log_p, num_scored_tokens=table.num_scored_tokens)


def product_log_sf(log_t: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Natural-log ``P(U_1 * ... * U_K <= t)`` for K = ``factors`` independent uniforms, elementwise:
    ``t * sum_{i<K} (-ln t)**i / i!`` (Fisher's combination, exact; for super-uniform p-values,
    such as exact discrete tails, a valid upper bound). 0 where K = 0."""
    log_t = np.minimum(np.asarray(log_t, dtype=np.float64), 0.0)
    factors = np.asarray(factors, dtype=np.int64)
    if int(factors.max(initial=0)) <= 2:  # t, or t (1 - ln t): closed forms
        with np.errstate(invalid="ignore"):
            out = log_t + np.where(factors == 2, np.log1p(-log_t), 0.0)
        return np.where(factors > 0, np.minimum(0.0, np.where(np.isneginf(log_t), -np.inf, out)), 0.0)
    x = -log_t
    total = np.zeros_like(log_t)  # log of the sum's term i = 0
    with np.errstate(divide="ignore"):
        log_x = np.log(x)
    for i in range(1, int(factors.max(initial=0))):
        term = i * log_x - gammaln(i + 1)
        total = np.where(i < factors, np.logaddexp(total, term), total)
    with np.errstate(invalid="ignore"):
        out = np.where(factors > 0, np.minimum(0.0, log_t + total), 0.0)
    return np.where((factors > 0) & np.isneginf(log_t), -np.inf, out)  # an impossible count stays impossible


def split_tails(hits: np.ndarray, trials: np.ndarray, preferred: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Natural-log ``P(Binomial(trials, preferred / size) >= hits)`` elementwise (int arrays that
    broadcast to one shape; 0 where ``preferred`` is 0 or there are no trials), once per distinct quadruple: the
    within-group tests of an exclusion (a group of ``size`` shards, ``preferred`` of them the
    winner's)."""
    rows, inverse = _distinct_rows(_columns(hits, trials, preferred, size))
    live = (rows[:, 2] > 0) & (rows[:, 1] > 0)
    out = np.zeros(rows.shape[0])
    if live.any():
        r = rows[live]
        out[live] = binomial_log_sf_array(r[:, 0], r[:, 1], np.minimum(r[:, 2] / np.maximum(r[:, 3], 1), 1.0))
    return out[inverse]


def _kl(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Bernoulli relative entropy KL(x || p) elementwise (0 log 0 = 0)."""
    return rel_entr(x, p) + rel_entr(1.0 - x, 1.0 - p)


def binomial_log_sf_bound(successes, trials, p) -> np.ndarray:
    """Chernoff bound on natural-log ``P(Binomial(trials, p) >= successes)`` elementwise:
    ``-trials * KL(successes/trials || p)`` above the mean, 0 at or below it (never below the
    exact tail)."""
    successes, trials, p = np.broadcast_arrays(np.asarray(successes, dtype=np.float64),
                                               np.asarray(trials, dtype=np.float64), np.asarray(p, dtype=np.float64))
    x = successes / np.maximum(trials, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = -trials * _kl(x, p)
    return np.where((trials > 0) & (x > p), np.minimum(0.0, bound), 0.0)


def split_bounds(hits, trials, preferred, size) -> np.ndarray:
    """``split_tails``' Chernoff bounds (``binomial_log_sf_bound``), never below them."""
    preferred, size = np.asarray(preferred, dtype=np.float64), np.asarray(size, dtype=np.float64)
    return np.where(preferred > 0, binomial_log_sf_bound(hits, trials, np.minimum(preferred / np.maximum(size, 1.0), 1.0)), 0.0)


def hypergeometric_low_bound(successes, population, marked, drawn) -> np.ndarray:
    """Bound on ``hypergeometric_low_tails``: ``-drawn * KL(successes/drawn || marked/population)``
    below the mean, 0 above it (Hoeffding: sampling without replacement obeys the binomial
    Chernoff bound)."""
    successes, population, marked, drawn = (np.asarray(a, dtype=np.float64) for a in (successes, population, marked, drawn))
    x = successes / np.maximum(drawn, 1.0)
    p = marked / np.maximum(population, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = -drawn * _kl(x, p)
    return np.where((drawn > 0) & (x < p), np.minimum(0.0, bound), 0.0)


def poisson_binomial_bound(hits: np.ndarray, trials: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Chernoff bound on ``poisson_binomial_tails``: the least over a grid of theta > 0 of
    ``-theta * hits + sum_q T_q log(1 - s_q + s_q e**theta)`` (valid at every theta)."""
    theta = np.geomspace(0.05, 6.0, 12)
    cumulant = np.log1p(shares[:, None] * np.expm1(theta)[None, :])  # (Q, G)
    exponent = -theta[:, None] * np.asarray(hits, dtype=np.float64)[None, :]  # (G, M)
    for q, column in enumerate(np.asarray(trials).T):  # a few shares: rank-one updates beat a thin matmul
        exponent += cumulant[q][:, None] * column[None, :]
    return np.minimum(0.0, exponent.min(axis=0))


def refined(tails: Callable[[np.ndarray, bool], np.ndarray], size: int, count: int = _EXACT) -> np.ndarray:
    """``tails(index, exact)`` (natural-log p-values of the candidates at ``index``, exact or an
    upper bound) for all ``size`` candidates: bounds everywhere, exact for the ``count`` largest
    bounds, the only ones an exclusion's maximum can hinge on when the rest are far below."""
    out = tails(np.arange(size), False)
    top = np.argpartition(-out, count)[:count] if size > count else np.arange(size)
    out[top] = tails(top, True)
    return out


def hypergeometric_low_tails(successes, population, marked, drawn) -> np.ndarray:
    """Natural-log ``P(Hypergeometric(population, marked, drawn) <= successes)`` elementwise (int
    arrays of one shape, or scalars), once per distinct quadruple: how few of ``drawn``
    exchangeable tokens carry a mark that ``marked`` of ``population`` carry (the homogeneity part
    of an exclusion). 0 where nothing is drawn."""
    rows, inverse = _distinct_rows(_columns(successes, population, marked, drawn))
    with np.errstate(divide="ignore"):
        tails = np.log(hypergeom.cdf(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]))
    small = tails <= math.log(1e-290)  # recomputed in log space, so tails below float64's range keep their value
    if small.any():
        tails[small] = hypergeom.logcdf(rows[small, 0], rows[small, 1], rows[small, 2], rows[small, 3])
    tails = np.minimum(0.0, tails)
    return np.where(rows[:, 3] > 0, tails, 0.0)[inverse]


def _exclusion(table: ExclusionTable, values: np.ndarray, best: int, alpha: float) -> tuple[int, float]:
    """(competitor index, natural-log weighted exclusion p-value) for the winner ``best``: the other
    candidate with the largest ``p_C * D * n_C`` (module docstring, "Exclusion"), capped at 0.

    Every competitor first takes the bound n_C <= M - 1; those above ``alpha`` with it are counted
    exactly, hardest first (at most ``_REFINED``), until one stays above ``alpha``, or would even
    alone at its level (the text is then not exclusive, and the rest keep the bound). The value
    returned errs only upwards."""
    log_p, level = table.exclusion(values[best], values)
    log_p = np.where(np.arange(values.size) == best, -np.inf, log_p)
    weight = math.log(table.num_levels)
    adjusted = log_p + weight + math.log(values.size - 1)
    hardest = np.argpartition(-adjusted, _REFINED)[:_REFINED] if adjusted.size > _REFINED else np.arange(adjusted.size)
    hardest = hardest[np.argsort(-adjusted[hardest], kind="stable")]
    levels_from = None
    for i in hardest[adjusted[hardest] > math.log(alpha)].tolist():
        if log_p[i] + weight > math.log(alpha):  # not excluded even were it alone at its level
            break
        levels_from = levels_from or table.levels_from(values)
        count = int(np.count_nonzero(levels_from(i) == level[i]))
        adjusted[i] = log_p[i] + weight + math.log(count)
        if adjusted[i] > math.log(alpha):
            break
    worst = int(np.argmax(adjusted))
    return worst, min(0.0, float(adjusted[worst]))


def _match(detector, table: RecordTable, values: np.ndarray, scores: RecordScores) -> RecordMatch:
    key, alpha = detector.key, detector.alpha
    bits, count = key.config.bits, scores.payloads.size
    base = {"scheme": key.scheme, "key_id": key.key_id, "num_candidates": count, "alpha": alpha,
            "num_scored_tokens": scores.num_scored_tokens}
    if scores.num_scored_tokens == 0:
        return RecordMatch(**base, payload=None, payload_hex=None, hits=0, p_value=1.0, log10_p_value=0.0,
                           corrected_p_value=1.0, corrected_log10_p_value=0.0, runner_up=None, runner_up_hex=None,
                           runner_up_log10_p_value=None, competitor=None, competitor_hex=None,
                           exclusion_log10_p_value=None, is_match=False, is_exclusive=False)
    best = int(np.argmin(scores.log_p))  # ties go to the candidate given first
    log_p = float(scores.log_p[best])
    corrected = min(0.0, log_p + math.log(count))
    runner_up = runner_log_p = None
    if count > 1:
        rest = scores.log_p.copy()
        rest[best] = np.inf
        second = int(np.argmin(rest))
        runner_up, runner_log_p = int(scores.payloads[second]), float(rest[second])
    significant = math.exp(corrected) <= alpha
    competitor = exclusion = None
    exclusive = significant and count == 1  # a lone candidate has no other to exclude
    if significant and count > 1 and hasattr(table, "exclusion"):  # a text naming no record needs no exclusion
        index, exclusion = _exclusion(table, values, best, alpha)
        competitor, exclusive = int(scores.payloads[index]), math.exp(exclusion) <= alpha
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
        competitor=competitor,
        competitor_hex=None if competitor is None else payload_hex(competitor, bits),
        exclusion_log10_p_value=None if exclusion is None else exclusion / LN10,
        is_match=significant,
        is_exclusive=exclusive,
    )
