"""One detection result schema for every scheme."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

__all__ = ["DetectionResult"]


@dataclass(frozen=True, kw_only=True)
class DetectionResult:
    """What a detector concluded about one text. ``score`` is oriented so that higher means more
    evidence of the watermark for every scheme; ``p_value`` is the exact probability, under
    unwatermarked text, of evidence at least this strong (corrected for any search the decoder
    made). ``log10_p_value`` carries p-values below float range (never rounded to 0)."""

    scheme: str
    key_id: str
    prf_version: str
    is_watermarked: bool
    p_value: float
    log10_p_value: float
    score: float
    num_scored_tokens: int
    alpha: float
    """Significance level of the ``is_watermarked`` decision."""
    payload: int | None = None
    payload_hex: str | None = None
    bit_confidences: tuple[float, ...] | None = None
    spans: tuple[tuple[int, int], ...] = field(default_factory=tuple)
    """Token spans (start, end) that carry the watermark, when the detector localises it."""
    word_bits: tuple[tuple[int, int, int], ...] = field(default_factory=tuple)
    """Synonym scheme: the character span (start, end) of every scored word and its keyed bit."""

    def to_dict(self) -> dict:
        """JSON-ready dict of every field."""
        data = asdict(self)
        data["bit_confidences"] = None if self.bit_confidences is None else list(self.bit_confidences)
        data["spans"] = [list(span) for span in self.spans]
        data["word_bits"] = [list(item) for item in self.word_bits]
        return data

    def to_json(self, **kwargs) -> str:
        """The result as a JSON object."""
        return json.dumps(self.to_dict(), **kwargs)
