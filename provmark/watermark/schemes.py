"""The scheme registry: scheme name -> config class and watermarker class."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

from provmark.errors import ParameterError, UnknownSchemeError
from provmark.watermark.balance import BalanceConfig, BalanceWatermarker, VanillaConfig, VanillaWatermarker
from provmark.watermark.base import SchemeConfig, Watermarker
from provmark.watermark.kgw import KGWConfig, KGWWatermarker
from provmark.watermark.majormark import (
    MajorMarkConfig,
    MajorMarkPlusConfig,
    MajorMarkPlusWatermarker,
    MajorMarkWatermarker,
)
from provmark.watermark.mpac import MPACConfig, MPACWatermarker
from provmark.watermark.synonym import SynonymConfig

__all__ = ["SCHEMES", "config_for", "watermarker_class"]

# A scheme that rewrites finished text (generation_time False) has no watermarker class.
SCHEMES: dict[str, tuple[type[SchemeConfig], type[Watermarker] | None]] = {
    "kgw": (KGWConfig, KGWWatermarker),
    "mpac": (MPACConfig, MPACWatermarker),
    "majormark": (MajorMarkConfig, MajorMarkWatermarker),
    "majormark+": (MajorMarkPlusConfig, MajorMarkPlusWatermarker),
    "vanilla": (VanillaConfig, VanillaWatermarker),
    "balance": (BalanceConfig, BalanceWatermarker),
    "synonym": (SynonymConfig, None),
}


def _entry(scheme: str):
    try:
        return SCHEMES[scheme]
    except (KeyError, TypeError):
        raise UnknownSchemeError(f"unknown scheme {scheme!r}; known schemes: {', '.join(sorted(SCHEMES))}") from None


def config_for(scheme: str, params: Mapping | None = None) -> SchemeConfig:
    """Build and validate the config of ``scheme`` from a params mapping (defaults fill the rest)."""
    config_class, _ = _entry(scheme)
    params = dict(params or {})
    names = {f.name for f in fields(config_class)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) for {scheme}: {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(names))}"
        )
    return config_class(**params)


def watermarker_class(scheme: str) -> type[Watermarker]:
    """The watermarker class that embeds ``scheme`` while a model generates; a scheme that
    rewrites finished text has none and raises ``ParameterError``."""
    watermarker = _entry(scheme)[1]
    if watermarker is None:
        raise ParameterError(
            f"{scheme} watermarks finished text, not generation: use provmark.watermark.synonym.embed_text "
            "(provmark embed --key KEY --text FILE)"
        )
    return watermarker
