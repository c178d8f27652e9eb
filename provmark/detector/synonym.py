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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from provmark.detector.base import DEFAULT_ALPHA, Detector, Evidence
from provmark.detector.result import DetectionResult
from provmark.detector.stats import binomial_log_sf
from provmark.errors import InvalidTextError, ParameterError
from provmark.watermark import subkeys
from provmark.watermark.words import TextWords, analyse, normalise, scored_words, word_bit

__all__ = ["SynonymDetector"]


class SynonymDetector(Detector):
    """Detects a synonym key's watermark in text (strings, not token ids); needs only the key."""

    reads_text = True

    def __init__(self, key, *, alpha: float = DEFAULT_ALPHA):
        if key.scheme != "synonym":
            raise ParameterError(f"SynonymDetector needs a synonym key, got a {key.scheme} key")
        super().__init__(key, alpha=alpha)
        self._subkey = key.subkey(subkeys.WORD_BIT).to_bytes(8, "big")
        self._version = key.config.version

    def word_bits(self, text: str | TextWords) -> list[tuple[int, int, int]]:
        """(start, end, bit) of every scored word of ``text`` (or of its ``words.analyse``), in
        text order: the scored words, each distinct (context, word) pair once."""
        tw = text if isinstance(text, TextWords) else analyse(text)
        scored = scored_words(tw, self._version)
        seen, out = set(), []
        for i, w in enumerate(tw.words):
            if not scored[i]:
                continue
            context = tw.context(i, self.context_width)
            pair = (*map(normalise, context), normalise(w.text))
            if pair in seen:
                continue
            seen.add(pair)
            out.append((w.start, w.end, word_bit(self._subkey, context, w.text)))
        return out

    def detect_batch(self, sequences: Sequence[str | TextWords], *, prompt_ids=None) -> list[DetectionResult]:
        """Detect the watermark in each text of ``sequences`` (strings, or their ``words.analyse``
        to test one text under many keys without cutting it again)."""
        if prompt_ids is not None:
            raise ParameterError("synonym detection reads finished text and takes no prompt")
        results = []
        for text in sequences:
            if not isinstance(text, (str, TextWords)):
                raise InvalidTextError(f"synonym detection reads text (str), got {type(text).__name__}")
            bits = self.word_bits(text)
            n, ones = len(bits), sum(b for _, _, b in bits)
            evidence = Evidence((2 * ones - n) / math.sqrt(n), binomial_log_sf(ones, n, 0.5)) if n else Evidence(0.0, 0.0)
            results.append(replace(self._result(evidence, n), word_bits=tuple(bits)))
        return results
