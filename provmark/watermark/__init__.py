"""Embedding: keys, schemes, the embedded default model and the generation hook."""

from provmark.watermark.base import SchemeConfig, StepParams, Watermarker
from provmark.watermark.keys import WatermarkKey, create_key, load_key, save_key
from provmark.watermark.kgw import KGWConfig, KGWWatermarker
from provmark.watermark.schemes import SCHEMES, config_for

__all__ = [
    "SCHEMES",
    "KGWConfig",
    "KGWWatermarker",
    "SchemeConfig",
    "StepParams",
    "WatermarkKey",
    "Watermarker",
    "config_for",
    "create_key",
    "load_key",
    "save_key",
]
