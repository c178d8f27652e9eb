"""The scheme registry: one entry per scheme, naming its config, how it embeds and how it detects.

Front ends (the CLI, the API, the evaluation runner) and the library's front door
(``provmark.front``) ask an entry what they need to know and never branch on a concrete class:

- ``generation_time``: whether the scheme embeds while a model generates (it has a watermarker)
  or rewrites finished text (it has a finished-text embedder);
- ``supports_payload``: whether keys carry a payload (declared by the config; a synonym key
  decides it per key, so code with a key reads ``key.config.supports_payload``);
- ``uses_proxy``: whether embedding and detection read a proxy LM (declared by the watermarker);
- ``supports_locate``: whether the detector can find a watermarked span inside longer text, and
  ``reads_text``: whether it reads words rather than token ids (both declared by the detector).

Each fact is declared once, on the class that owns it, and the entry reads it from there. The
detector layer sits above this one (a detector imports keys and configs), so an entry may name its
detector as ``"module:Class"``, imported on first use; a scheme registered from outside (a plugin,
a test) passes the class itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, fields

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
from provmark.watermark.synonym import SynonymConfig, SynonymEmbedder

__all__ = ["SCHEMES", "Scheme", "config_for", "get_scheme", "register", "stored_config", "unregister", "watermarker_class"]


@dataclass(frozen=True, kw_only=True)
class Scheme:
    """One scheme: its name, config class, embedding class and detector class.

    Exactly one of ``watermarker`` (embeds while a model generates: a ``Watermarker`` subclass)
    and ``embedder`` (rewrites finished text: a class built as ``embedder(key, model=,
    tokenizer=, encoder=)`` with an ``embed_batch(texts)`` method) is given."""

    name: str
    config: type[SchemeConfig]
    detector: type | str
    """The ``detector.base.Detector`` subclass, or its import path "package.module:Class"."""
    watermarker: type[Watermarker] | None = None
    embedder: type | None = None

    def __post_init__(self):
        if (self.watermarker is None) == (self.embedder is None):
            raise ParameterError(f"scheme {self.name!r}: give a watermarker (generation time) or an embedder "
                                 "(finished text), exactly one")
        if self.config.scheme != self.name:
            raise ParameterError(f"scheme {self.name!r}: its config {self.config.__name__} says {self.config.scheme!r}")

    @property
    def generation_time(self) -> bool:
        """Whether the scheme embeds while a model generates (False: it rewrites finished text)."""
        return self.watermarker is not None

    @property
    def supports_payload(self) -> bool:
        """Whether a key carries a payload (multi-bit). False for the synonym scheme, whose keys
        choose (``payload_bits``): where a key is at hand, ask ``key.config.supports_payload``."""
        return self.config.supports_payload

    @property
    def uses_proxy(self) -> bool:
        """Whether embedding and detection read a proxy LM's distribution (Balance-Marking)."""
        return self.watermarker is not None and self.watermarker.uses_proxy

    @property
    def supports_locate(self) -> bool:
        """Whether the detector searches windows for a watermarked span (``Detector.locate``)."""
        return self.detector_class.supports_locate

    @property
    def reads_text(self) -> bool:
        """Whether the detector reads words of the text rather than token ids (the synonym scheme)."""
        return self.detector_class.reads_text

    @property
    def detector_class(self) -> type:
        """The detector class (imported on first use when the entry names it by path)."""
        if isinstance(self.detector, str):
            module, _, name = self.detector.partition(":")
            return getattr(importlib.import_module(module), name)
        return self.detector


SCHEMES: dict[str, Scheme] = {}
"""Every registered scheme by name, in registration order."""


def register(scheme: Scheme) -> Scheme:
    """Add ``scheme`` to the registry (its name must be new) and return it."""
    if scheme.name in SCHEMES:
        raise ParameterError(f"a scheme named {scheme.name!r} is registered already")
    SCHEMES[scheme.name] = scheme
    return scheme


def unregister(name: str) -> None:
    """Remove a scheme registered by ``register`` (tests and plugins that add their own)."""
    del SCHEMES[get_scheme(name).name]


for _entry in (
    Scheme(name="kgw", config=KGWConfig, watermarker=KGWWatermarker, detector="provmark.detector.kgw:KGWDetector"),
    Scheme(name="mpac", config=MPACConfig, watermarker=MPACWatermarker, detector="provmark.detector.mpac:MPACDetector"),
    Scheme(name="majormark", config=MajorMarkConfig, watermarker=MajorMarkWatermarker,
           detector="provmark.detector.majormark:MajorMarkDetector"),
    Scheme(name="majormark+", config=MajorMarkPlusConfig, watermarker=MajorMarkPlusWatermarker,
           detector="provmark.detector.majormark:MajorMarkPlusDetector"),
    Scheme(name="vanilla", config=VanillaConfig, watermarker=VanillaWatermarker,
           detector="provmark.detector.balance:VanillaDetector"),
    Scheme(name="balance", config=BalanceConfig, watermarker=BalanceWatermarker,
           detector="provmark.detector.balance:BalanceDetector"),
    Scheme(name="synonym", config=SynonymConfig, embedder=SynonymEmbedder,
           detector="provmark.detector.synonym:SynonymDetector"),
):
    register(_entry)


def get_scheme(name: str) -> Scheme:
    """The registry entry of ``name``; ``UnknownSchemeError`` lists the known ones."""
    try:
        return SCHEMES[name]
    except (KeyError, TypeError):
        raise UnknownSchemeError(f"unknown scheme {name!r}; known schemes: {', '.join(sorted(SCHEMES))}") from None


def config_for(scheme: str, params: Mapping | None = None) -> SchemeConfig:
    """Build and validate the config of ``scheme`` from a params mapping (defaults fill the rest)."""
    config_class = get_scheme(scheme).config
    params = dict(params or {})
    names = {f.name for f in fields(config_class)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) for {scheme}: {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(names))}"
        )
    return config_class(**params)


def stored_config(scheme: str, params: Mapping | None = None) -> SchemeConfig:
    """``config_for`` of parameters stored earlier (a key file, a registry row): a field they lack
    takes the config's ``stored_defaults`` value where it has one (so a key made before the field
    existed keeps its results), else its default as for a new key."""
    return config_for(scheme, {**get_scheme(scheme).config.stored_defaults, **dict(params or {})})


def watermarker_class(scheme: str) -> type[Watermarker]:
    """The watermarker class that embeds ``scheme`` while a model generates; a scheme that
    rewrites finished text has none and raises ``ParameterError``."""
    entry = get_scheme(scheme)
    if entry.watermarker is None:
        raise ParameterError(
            f"{scheme} watermarks finished text, not generation: use provmark.watermark.synonym.embed_text "
            "(provmark embed --key KEY --text FILE)"
        )
    return entry.watermarker
