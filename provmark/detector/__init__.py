"""Decoding and statistical tests: one detector per scheme, one result schema."""

from __future__ import annotations

from provmark.detector.balance import BalanceDetector, VanillaDetector
from provmark.detector.base import DEFAULT_ALPHA, Detector
from provmark.detector.kgw import KGWDetector
from provmark.detector.majormark import MajorMarkDetector, MajorMarkPlusDetector
from provmark.detector.mpac import MPACDetector
from provmark.detector.result import DetectionResult
from provmark.detector.synonym import SynonymDetector
from provmark.errors import ParameterError
from provmark.watermark.keys import WatermarkKey
from provmark.watermark.schemes import get_scheme

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
]


def create_detector(key: WatermarkKey, *, alpha: float = DEFAULT_ALPHA, proxy=None) -> Detector:
    """The detector the scheme registry names for the key's scheme; ``proxy`` (a
    ``watermark.proxy.Proxy``) is required by a scheme that uses one (Balance-Marking) and refused by
    every other scheme."""
    scheme = get_scheme(key.scheme)
    if scheme.uses_proxy:
        return scheme.detector_class(key, alpha=alpha, proxy=proxy)
    if proxy is not None:
        raise ParameterError(f"{key.scheme} detection uses no proxy model; drop the proxy")
    return scheme.detector_class(key, alpha=alpha)
