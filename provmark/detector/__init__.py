"""Decoding and statistical tests: one detector per scheme, one result schema."""

from __future__ import annotations

from provmark.detector.balance import BalanceDetector, VanillaDetector
from provmark.detector.base import DEFAULT_ALPHA, Detector
from provmark.detector.kgw import KGWDetector
from provmark.detector.majormark import MajorMarkDetector, MajorMarkPlusDetector
from provmark.detector.mpac import MPACDetector
from provmark.detector.result import DetectionResult
from provmark.detector.synonym import SynonymDetector
from provmark.errors import InvalidTextError, ParameterError, UnknownSchemeError
from provmark.watermark.keys import WatermarkKey

__all__ = [
    "DEFAULT_ALPHA",
    "BalanceDetector",
    "DetectionResult",
    "Detector",
    "KGWDetector",
    "MPACDetector",
    "MajorMarkDetector",
    "MajorMarkPlusDetector",
    "SynonymDetector",
    "VanillaDetector",
    "create_detector",
    "detect_text",
]

DETECTORS: dict[str, type[Detector]] = {
    "kgw": KGWDetector,
    "mpac": MPACDetector,
    "majormark": MajorMarkDetector,
    "majormark+": MajorMarkPlusDetector,
    "vanilla": VanillaDetector,
    "balance": BalanceDetector,
    "synonym": SynonymDetector,
}


def create_detector(key: WatermarkKey, *, alpha: float = DEFAULT_ALPHA, proxy=None) -> Detector:
    """The detector for the key's scheme; ``proxy`` (a ``watermark.proxy.Proxy``) is required
    for Balance-Marking and refused by every other scheme."""
    try:
        detector_class = DETECTORS[key.scheme]
    except KeyError:
        raise UnknownSchemeError(f"no detector for scheme {key.scheme!r}; known: {', '.join(sorted(DETECTORS))}") from None
    if detector_class is BalanceDetector:
        return detector_class(key, alpha=alpha, proxy=proxy)
    if proxy is not None:
        raise ParameterError(f"{key.scheme} detection uses no proxy model; drop the proxy")
    return detector_class(key, alpha=alpha)


def detect_text(
    key: WatermarkKey, text: str, tokenizer=None, *, alpha: float = DEFAULT_ALPHA, min_tokens: int = 0, proxy=None
) -> DetectionResult:
    """Tokenise ``text`` (no special tokens added) and detect the key's watermark in it; a
    detector that reads text (the synonym scheme) gets the text itself and needs no tokenizer.

    Raises ``InvalidTextError`` for empty or whitespace-only text, and when fewer than
    ``min_tokens`` tokens (eligible words, for the synonym scheme) could be scored.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidTextError("text is empty; give the text to check")
    detector = create_detector(key, alpha=alpha, proxy=proxy)
    result = detector.detect(text if detector.reads_text else tokenizer(text, add_special_tokens=False)["input_ids"])
    if result.num_scored_tokens < max(min_tokens, 1):
        unit = "eligible words" if detector.reads_text else "scorable tokens"
        raise InvalidTextError(
            f"text too short to score: {result.num_scored_tokens} {unit}, need at least {max(min_tokens, 1)}"
        )
    return result
