"""Which tokens carried the evidence: a per-token account of one detection.

A scored token (one the detector counted: for the shard schemes the first occurrence of its
context, for Balance and Vanilla the first occurrence of its (context, token) pair) is a *hit*
when it lies in the set the embedder prefers at that step for the detected payload: the green
list (KGW), the colour of the decoded digit at the token's position (MPAC), the decoded majority
shards (MajorMark; per block for MajorMark+), or the available side of the decoded message's
partition (Vanilla, Balance). The rule is the embedder's own (``Watermarker.step_params`` with
the detector's shard PRF, and Balance's partition lookup), so an explanation cannot disagree
with what generation did. ``expected`` is the chance of a hit in text written without the key:
the preferred share of the step's shards, or for Balance and Vanilla the share of the context's
partitions under which the token is available.

For a multi-bit scheme the payload was chosen to fit the text, so hits are counted after that
search; the p-value of ``result`` is the one that accounts for it.

The synonym scheme scores words, not tokens: its explanation has one entry per word of the text
(``Explanation.unit`` "word", no token id), a scored word being a hit when its keyed bit is 1,
the bit the embedder's synonym choices push towards, with ``expected`` 1/2 (the bit of a distinct
(context, word) pair is a fair coin without the key). Ineligible and repeated words are unscored.
"""

from __future__ import annotations

from dataclasses import dataclass

from provmark.detector.base import Detector, _as_ids
from provmark.detector.result import DetectionResult

__all__ = ["TokenEvidence", "Explanation", "explain", "explain_text"]


@dataclass(frozen=True)
class TokenEvidence:
    """One token of the explained sequence."""

    index: int
    """Position of the token (or word) in the sequence."""
    token_id: int | None
    """The token's id; None for a word (``Explanation.unit`` "word")."""
    hit: bool | None
    """True or False for a scored token (in the preferred set or not); None when not scored."""
    expected: float | None
    """Probability of a hit without the watermark (None when not scored)."""
    start: int | None = None
    """Character offsets of the token in the explained text (``explain_text`` only)."""
    end: int | None = None


@dataclass(frozen=True)
class Explanation:
    """A detection result and the evidence of every token behind it."""

    result: DetectionResult
    tokens: tuple[TokenEvidence, ...]
    text: str | None = None
    """The explained text, when the explanation came from text (token offsets point into it)."""
    unit: str = "token"
    """What each entry of ``tokens`` is: "token", or "word" for the synonym scheme."""

    @property
    def num_hits(self) -> int:
        return sum(t.hit is True for t in self.tokens)

    @property
    def expected_hits(self) -> float:
        """Hits expected among the scored tokens in text written without the key."""
        return sum(t.expected for t in self.tokens if t.expected is not None)

    def to_dict(self) -> dict:
        """JSON-ready dict: the result's fields under ``result``, one entry per token."""
        return {
            "result": self.result.to_dict(),
            "text": self.text,
            "unit": self.unit,
            "num_hits": self.num_hits,
            "expected_hits": self.expected_hits,
            "tokens": [
                {"index": t.index, "token_id": t.token_id, "hit": t.hit, "expected": t.expected, "start": t.start, "end": t.end}
                for t in self.tokens
            ],
        }


def explain(detector: Detector, token_ids, *, prompt_ids=None) -> Explanation:
    """Detect the watermark in ``token_ids`` and say, token by token, which carried evidence."""
    ids = _as_ids(token_ids)
    result = detector.detect(ids, prompt_ids=prompt_ids)
    hits: dict[int, tuple[bool, float]] = {}
    multi_bit = detector.key.config.supports_payload
    if result.num_scored_tokens and (result.payload is not None or not multi_bit):
        where, hit, expected = detector.token_evidence(ids, result.payload, prompt_ids)
        hits = {int(i): (bool(h), float(e)) for i, h, e in zip(where.tolist(), hit.tolist(), expected.tolist())}
    tokens = tuple(
        TokenEvidence(index, token, *hits.get(index, (None, None))) for index, token in enumerate(ids.tolist())
    )
    return Explanation(result, tokens)


def explain_text(detector: Detector, text: str, tokenizer=None) -> Explanation:
    """``explain`` for text: tokenise it as detection does and give every token its character
    offsets in ``text``, so a renderer can colour the text itself. A detector that reads text (the
    synonym scheme) explains the words instead (see the module doc) and needs no tokenizer."""
    if detector.reads_text:
        return _explain_words(detector, text)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    explained = explain(detector, encoded["input_ids"])
    tokens = tuple(
        TokenEvidence(t.index, t.token_id, t.hit, t.expected, start, end)
        for t, (start, end) in zip(explained.tokens, encoded["offset_mapping"])
    )
    return Explanation(explained.result, tokens, text)


def _explain_words(detector, text: str) -> Explanation:
    """Every word of ``text``: scored words are hits when their keyed bit is 1, or for a payload
    key the decoded payload's bit at the word's position (expected 1/2 either way)."""
    from provmark.watermark.words import analyse

    words = analyse(text)
    (result,) = detector.detect_batch([words])
    bits = {start: bit for start, _, bit in result.word_bits}
    if result.payload is not None:
        wanted = detector.key.config.codeword_bits(result.payload)
        bits = {start: int(bit == wanted[position]) for start, _, bit, position in detector.word_bits_and_positions(words)}
    tokens = tuple(
        TokenEvidence(i, None, bool(bits[w.start]), 0.5, w.start, w.end) if w.start in bits
        else TokenEvidence(i, None, None, None, w.start, w.end)
        for i, w in enumerate(words.words)
    )
    return Explanation(result, tokens, text, unit="word")
