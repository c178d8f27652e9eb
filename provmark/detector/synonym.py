"""Synonym-scheme detection: the share of 1-bits among scored words, exact binomial tail.

The text is cut into words and the eligibility rule applied exactly as the embedder did
(``watermark.words``); the scored words are the eligible ones (key version 1) or the eligible
carriers (version 2, ``words.scored_words``), and each one's keyed bit is recomputed from it
and the h words before it. Under the null (text written without the key) the bit of each distinct
(context, word) pair is a fair coin independent of the text, so the number of 1-bits among
the n distinct pairs is Binomial(n, 1/2) and the p-value is its exact upper tail, computed in
log space. The score is the z-statistic (2 ones - n) / sqrt(n), for ranking only.

A repeated (context, word) pair is counted once, at its first occurrence: it is the same HMAC
draw, so counting it again adds no evidence and would make the p-value anti-conservative (a
text repeating one 1-bit phrase would look watermarked). No model is needed, only WordNet.

**Payload keys** (``payload_bits`` L > 0) follow MPAC's decoder (``detector.mpac``) with two
colours: every scored word also has a keyed position p in [0, L) (``words.word_bit_position``),
c_p[b] counts the scored words at p with bit b, and payload bit p is the majority bit (ties and
empty positions read 0). The presence p-value is payload-free, so it needs no correction for
the decode: the statistic is G = sum_p max(c_p[0], c_p[1]); under the null each bit is a fair
coin independent of its position, so given the n_p words at each position max(c_p[0], c_p[1])
has the max-of-Binomial(n_p, 1/2) law (``stats.max_count_pmf``) and G the convolution of those
laws; the p-value is G's exact upper tail. (Counting the hits of the decoded payload against
Binomial(n, 1/2) would ignore the argmax and be anti-conservative.) The per-bit confidence of
bit p is 1 - P(max >= observed | n_p), 0 where no word fell. Record scoring
(``record_tables``, ``detector.records``): a candidate payload m's hits are sum_p c_p[m_p],
``Binomial(n, 1/2)`` under the null for every m.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from provmark.detector.base import DEFAULT_ALPHA, Detector, Evidence
from provmark.detector.records import (
    binomial_tails,
    digit_levels_from,
    digit_sums,
    hypergeometric_low_bound,
    hypergeometric_low_tails,
    refined,
)
from provmark.detector.result import DetectionResult
from provmark.detector.stats import binomial_log_sf, max_count_pmf, max_count_tail, sum_log_sf_rows
from provmark.errors import InvalidTextError, ParameterError
from provmark.watermark import subkeys
from provmark.watermark.payload import from_digit_rows
from provmark.watermark.words import TextWords, analyse, normalise, scored_words, word_bit_position

__all__ = ["SynonymDetector", "SynonymRecordTable"]


class SynonymRecordTable:
    """One text's bit counts per payload position, for scoring candidate payloads
    (``detector.records``): a payload's hits are the scored words whose bit equals its bit at
    their position, ``Binomial(N, 1/2)`` under the null whatever the payload."""

    def __init__(self, counts: np.ndarray, num_scored_tokens: int):
        self.counts = counts  # int64 (L, 2): scored words at position p with bit b
        self.num_scored_tokens = num_scored_tokens
        self.num_levels = counts.shape[0]

    def score(self, payloads):
        hits = digit_sums(payloads, self.counts, 1)
        return hits, binomial_tails(hits, self.num_scored_tokens, np.ones_like(hits), 2)

    def exclusion(self, winner, values):
        """Under "C is the record" the embedder picked words by whether their bit matches C's bit
        at their own position, and a word's position and bit are independent keyed hashes, so
        C's hits are spread over the positions at random: its hits at the positions where it
        differs from the winner are a hypergeometric draw of all its hits (with two bits the
        winner's hits there are the rest, so this is the whole test)."""
        length = self.counts.shape[0]
        own = [(int(winner) >> (length - 1 - p)) & 1 for p in range(length)]
        differ = np.ones_like(self.counts)
        differ[np.arange(length), own] = 0
        held, held_there, there, level = digit_sums(
            values, np.stack([self.counts, differ * self.counts, differ * self.counts.sum(axis=1)[:, None], differ]), 1)
        total = self.num_scored_tokens

        def tails(at, exact):
            low = hypergeometric_low_tails if exact else hypergeometric_low_bound
            return low(held_there[at], total, held[at], there[at])

        return refined(tails, values.shape[0]), level

    def levels_from(self, values):
        return digit_levels_from(values, 1, self.counts.shape[0])


class SynonymDetector(Detector):
    """Detects a synonym key's watermark in text (strings, not token ids); needs only the key."""

    reads_text = True

    def __init__(self, key, *, alpha: float = DEFAULT_ALPHA):
        if key.scheme != "synonym":
            raise ParameterError(f"SynonymDetector needs a synonym key, got a {key.scheme} key")
        super().__init__(key, alpha=alpha)
        self._subkey = key.subkey(subkeys.WORD_BIT).to_bytes(8, "big")
        self._version = key.config.version
        self._payload_bits = key.config.payload_bits

    def word_bits(self, text: str | TextWords) -> list[tuple[int, int, int]]:
        """(start, end, bit) of every scored word of ``text`` (or of its ``words.analyse``), in
        text order: the scored words, each distinct (context, word) pair once."""
        return [(start, end, bit) for start, end, bit, _ in self.word_bits_and_positions(text)]

    def word_bits_and_positions(self, text: str | TextWords) -> list[tuple[int, int, int, int]]:
        """(start, end, bit, payload position) of every scored word (``word_bits``); the position
        is 0 for a zero-bit key."""
        if not isinstance(text, (str, TextWords)):
            raise InvalidTextError(f"synonym detection reads text (str), got {type(text).__name__}")
        tw = text if isinstance(text, TextWords) else analyse(text)
        scored = scored_words(tw, self._version)
        positions = max(self._payload_bits, 1)
        seen, out = set(), []
        for i, w in enumerate(tw.words):
            if not scored[i]:
                continue
            context = tw.context(i, self.context_width)
            pair = (*map(normalise, context), normalise(w.text))
            if pair in seen:
                continue
            seen.add(pair)
            out.append((w.start, w.end, *word_bit_position(self._subkey, context, w.text, positions)))
        return out

    def detect_batch(self, sequences: Sequence[str | TextWords], *, prompt_ids=None) -> list[DetectionResult]:
        """Detect the watermark in each text of ``sequences`` (strings, or their ``words.analyse``
        to test one text under many keys without cutting it again)."""
        return self.detect_with_tables(sequences, prompt_ids=prompt_ids, tables=False)[0]

    def record_tables(self, sequences: Sequence[str | TextWords], *, prompt_ids=None) -> list[SynonymRecordTable]:
        """One ``SynonymRecordTable`` per text (a payload key's; a zero-bit key raises ``ParameterError``)."""
        if not self._payload_bits:
            return super().record_tables(sequences, prompt_ids=prompt_ids)
        self._check(prompt_ids)
        return [self._table(self.word_bits_and_positions(text)) for text in sequences]

    def detect_with_tables(self, sequences: Sequence[str | TextWords], *, prompt_ids=None,
                           tables: bool = True) -> tuple[list[DetectionResult], list]:
        """(``detect_batch``, ``record_tables``) of the same texts, each text cut and hashed once
        (``tables`` False: the results alone, the tables list empty)."""
        self._check(prompt_ids)
        if tables and not self._payload_bits:
            super().record_tables(sequences)  # raises: a zero-bit key has no records
        results, out = [], []
        for text in sequences:
            scored = self.word_bits_and_positions(text)
            n = len(scored)
            if not self._payload_bits:
                ones = sum(b for _, _, b, _ in scored)
                evidence = (Evidence((2 * ones - n) / math.sqrt(n), binomial_log_sf(ones, n, 0.5)) if n
                            else Evidence(0.0, 0.0))
            else:
                table = self._table(scored)
                evidence = self._payload_evidence(table.counts) if n else Evidence(0.0, 0.0)
                if tables:
                    out.append(table)
            results.append(replace(self._result(evidence, n), word_bits=tuple((a, b, c) for a, b, c, _ in scored)))
        return results, out

    @staticmethod
    def _check(prompt_ids) -> None:
        if prompt_ids is not None:
            raise ParameterError("synonym detection reads finished text and takes no prompt")

    def _table(self, scored: list[tuple[int, int, int, int]]) -> SynonymRecordTable:
        counts = np.zeros((self._payload_bits, 2), dtype=np.int64)
        for _, _, bit, position in scored:
            counts[position, bit] += 1
        return SynonymRecordTable(counts, len(scored))

    @staticmethod
    def _payload_evidence(counts: np.ndarray) -> Evidence:
        """The decoded payload, per-bit confidences and the payload-free presence test of one
        text's counts (L, 2) (module doc)."""
        words_at = counts.sum(axis=1)
        largest = counts.max(axis=1)
        pmfs = [max_count_pmf(n, 2, 0.5) for n in range(int(words_at.max()) + 1)]
        tails = [max_count_tail(n, 2, 0.5) for n in range(len(pmfs))]
        confidence = tuple(min(max(float(1.0 - tails[n][m]), 0.0), 1.0) if n else 0.0
                           for n, m in zip(words_at.tolist(), largest.tolist()))
        observed = int(largest.sum())
        log_p, mean, sd = (float(v[0]) for v in sum_log_sf_rows(pmfs, words_at[None, :], np.array([observed])))
        digits = (counts[:, 1] > counts[:, 0]).astype(np.int64)  # ties and empty positions read 0
        (payload,) = from_digit_rows(digits[None, :], 2)
        return Evidence((observed - mean) / sd if sd > 0 else 0.0, log_p, int(payload), confidence)
