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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from provmark.detector.base import Detector, PairDetector, _as_ids
from provmark.detector.result import DetectionResult

__all__ = ["TokenEvidence", "Explanation", "explain", "explain_text"]


@dataclass(frozen=True)
class TokenEvidence:
    """One token of the explained sequence."""

    index: int
    """Position of the token in the sequence."""
    token_id: int
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
            "num_hits": self.num_hits,
            "expected_hits": self.expected_hits,
            "tokens": [
                {"index": t.index, "token_id": t.token_id, "hit": t.hit, "expected": t.expected, "start": t.start, "end": t.end}
                for t in self.tokens
            ],
        }


def _shard_hits(detector: PairDetector, contexts: torch.Tensor, tokens: torch.Tensor, payload) -> tuple[torch.Tensor, torch.Tensor]:
    """(hit bool (N,), expected float64 (N,)) of scored pairs under the embedder's step rule."""
    from provmark.watermark.schemes import watermarker_class

    key = detector.key
    payloads = None if payload is None else [payload] * tokens.shape[0]
    params = watermarker_class(key.scheme)(key).step_params(contexts, payloads).resolved(contexts)
    counts = params.shard_counts
    shard = torch.empty_like(tokens)
    for count in torch.unique(counts).tolist():  # fastrange takes one shard count at a time
        rows = (counts == count).nonzero().squeeze(1)
        shard[rows] = detector.shards(contexts[rows], tokens[rows], params.salts[rows], count)
    hit = ((params.preferred >> shard) & 1).bool()
    # bits at or above S name no shard (Python ints: a 64-shard mask's sign bit is shard 63)
    usable = [m & ((1 << c) - 1) for m, c in zip(params.preferred.tolist(), counts.tolist())]
    expected = torch.tensor([bin(m).count("1") for m in usable], dtype=torch.float64) / counts.double()
    return hit, expected


def explain(detector: Detector, token_ids, *, prompt_ids=None) -> Explanation:
    """Detect the watermark in ``token_ids`` and say, token by token, which carried evidence."""
    from provmark.detector.balance import VanillaDetector

    ids = _as_ids(token_ids)
    result = detector.detect(ids, prompt_ids=prompt_ids)
    hits: dict[int, tuple[bool, float]] = {}
    multi_bit = detector.key.config.supports_payload
    if result.num_scored_tokens and (result.payload is not None or not multi_bit):
        if isinstance(detector, VanillaDetector):
            (pairs,) = detector.pairs([ids], None if prompt_ids is None else [prompt_ids])
            hit, expected = detector.token_hits(pairs, result.payload)
            where = pairs.positions
        else:
            pairs, where = detector.scored_positions(ids, prompt_ids)
            hit, expected = _shard_hits(detector, pairs[:, :-1], pairs[:, -1], result.payload)
        hits = {int(i): (bool(h), float(e)) for i, h, e in zip(where.tolist(), hit.tolist(), expected.tolist())}
    tokens = tuple(
        TokenEvidence(index, token, *hits.get(index, (None, None))) for index, token in enumerate(ids.tolist())
    )
    return Explanation(result, tokens)


def explain_text(key, text: str, tokenizer, *, alpha: float | None = None, proxy=None) -> Explanation:
    """``explain`` for text: tokenise it as ``detector.detect_text`` does and give every token its
    character offsets in ``text``, so a renderer can colour the text itself."""
    from provmark.detector import DEFAULT_ALPHA, create_detector
    from provmark.errors import InvalidTextError

    if not isinstance(text, str) or not text.strip():
        raise InvalidTextError("text is empty; give the text to check")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    detector = create_detector(key, alpha=DEFAULT_ALPHA if alpha is None else alpha, proxy=proxy)
    explained = explain(detector, encoded["input_ids"])
    tokens = tuple(
        TokenEvidence(t.index, t.token_id, t.hit, t.expected, start, end)
        for t, (start, end) in zip(explained.tokens, encoded["offset_mapping"])
    )
    return Explanation(explained.result, tokens, text)
