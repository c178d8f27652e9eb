"""Named evaluation suites: which schemes, which attacks at which strengths, on how much text.

A suite is data (frozen dataclasses); ``runner.run_suite`` carries it out. Every scheme runs with
its default parameters except those a ``SchemeSpec`` fixes, so the suite reads as the list of
choices that matter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from provmark.attacks import ATTACKS, STRENGTHS
from provmark.errors import ParameterError
from provmark.watermark.keys import create_key

__all__ = ["SchemeSpec", "Suite", "SCHEMES", "SUITES", "ZERO_SHOT", "get_suite"]

ZERO_SHOT = "zero-shot"
"""The label of the zero-shot attribution row (``Suite.zero_shot_references``)."""


@dataclass(frozen=True)
class SchemeSpec:
    """One scheme of a suite: a label for tables, the scheme and the parameters it fixes."""

    label: str
    scheme: str
    params: Mapping = field(default_factory=dict)
    """Key parameters (``keys.create_key``); the scheme's defaults fill in the rest."""

    def __post_init__(self):
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        create_key(self.scheme, dict(self.params), secret=bytes(32))  # validates scheme and parameters now

    def describe(self) -> str:
        """"label: scheme (k=v, ...)" for the report."""
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.label}: {self.scheme}" + (f" ({params})" if params else "")


@dataclass(frozen=True)
class Suite:
    """What ``run_suite`` measures: every scheme under every attack at each of its strengths,
    plus "none" (the unattacked text)."""

    name: str
    schemes: tuple[SchemeSpec, ...]
    attacks: tuple[str, ...]
    """Names from ``provmark.attacks.ATTACKS``; "none" is always measured and is not listed."""
    prompts: int
    """How many prompts of ``prompts.txt`` (the first ones); each gives one watermarked text per
    scheme and one unwatermarked text shared by all (the false-positive control)."""
    tokens: int
    """New tokens of every generation (EOS suppressed, so every text has this length)."""
    human: int = 0
    """How many human-written texts (``human.human_texts``, cut to ``tokens`` tokens) every scheme
    detects unattacked: the false-positive check on text no model wrote."""
    batch: int = 8
    """Prompts per generation batch."""
    temperature: float = 1.0
    strengths: Mapping = field(default_factory=lambda: STRENGTHS)
    """Attack name -> strengths; ``provmark.attacks.STRENGTHS`` by default."""
    zero_shot_references: int = 0
    """Committed human texts (``detector.zero_shot``'s Debian Handbook set, not ``human``'s) that the
    zero-shot "not human" test ranks the model's own texts against, in a "zero-shot" row beside the
    schemes; 0 leaves the row out, else at least 20 (its p-value is at least 1 / (1 + this)). The
    first run per model and temperature scores them (about 7 CPU-minutes for 200 of 512 tokens with
    the embedded model, at benchmarks/results/zero_shot.txt's cost), later runs read them from the cache."""

    def __post_init__(self):
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ParameterError(f"unknown attack(s) {unknown}; the attacks are {', '.join(ATTACKS)}")
        missing = [a for a in self.attacks if a not in self.strengths]
        if missing:
            raise ParameterError(f"no strengths for attack(s) {missing}; give them in strengths=")
        object.__setattr__(self, "strengths", MappingProxyType({a: tuple(self.strengths[a]) for a in self.attacks}))
        labels = [s.label for s in self.schemes]
        if len(set(labels)) != len(labels) or not labels:
            raise ParameterError(f"a suite needs schemes with distinct labels, got {labels}")
        if isinstance(self.prompts, bool) or not isinstance(self.prompts, int) or self.prompts < 2:
            raise ParameterError(f"prompts must be an integer >= 2 (copy-paste pastes into the others), "
                                 f"got {self.prompts!r}")
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens < 8:
            raise ParameterError(f"tokens must be an integer >= 8, got {self.tokens!r}")
        if isinstance(self.human, bool) or not isinstance(self.human, int) or self.human < 0:
            raise ParameterError(f"human must be an integer >= 0, got {self.human!r}")
        references = self.zero_shot_references
        if isinstance(references, bool) or not isinstance(references, int) or not (references == 0 or references >= 20):
            raise ParameterError(f"zero_shot_references must be 0 (no zero-shot row) or an integer >= 20, "
                                 f"got {references!r}")
        if references and ZERO_SHOT in labels:
            raise ParameterError(f"the label {ZERO_SHOT!r} names the zero-shot row; give the scheme another label")

    def labels(self) -> list[str]:
        """The rows of the report: the schemes' labels, then the zero-shot row when it runs."""
        return [s.label for s in self.schemes] + ([ZERO_SHOT] if self.zero_shot_references else [])

    def conditions(self) -> list[tuple[str, float | None]]:
        """(attack, strength) in report order: ("none", None) first, then each attack weakest first."""
        return [("none", None)] + [(a, s) for a in self.attacks for s in self.strengths[a]]


SCHEMES = (
    SchemeSpec("kgw", "kgw"),
    SchemeSpec("mpac", "mpac", {"radix": 4, "bits": 32}),
    SchemeSpec("majormark+", "majormark+", {"bits": 32}),
    SchemeSpec("balance", "balance", {"bits": 20, "segment_bits": 20, "proxy_context": "window"}),
    SchemeSpec("vanilla", "vanilla", {"bits": 20, "segment_bits": 20}),
    SchemeSpec("synonym", "synonym"),
)
"""Every scheme, as both suites run it: MPAC at radix 4 and Balance/Vanilla-Marking at 20 bits
(one exhaustively decoded segment); Balance's proxy reads a 10-id window so that copy-paste can
be located. The synonym scheme watermarks the unwatermarked generations afterwards."""

SUITES: Mapping[str, Suite] = MappingProxyType({
    # Under 10 minutes on a 2-core CPU with the embedded model: few, short texts and no LM attacks.
    # Measured at 8 prompts: 13 min on one core, most of it Balance's window proxy; 6 prompts cut it
    # by a quarter. Too short for 20 and 32 bits to decode: a smoke test of the whole comparison.
    # The zero-shot row's 200 references are scored once per model and temperature, then cached.
    "quick": Suite("quick", SCHEMES, ("delete", "insert", "swap", "wordnet_synonyms", "truncate", "copy_paste"),
                   prompts=6, tokens=80, human=6, batch=6, zero_shot_references=200),
    # Every attack at 200 tokens. 20 prompts: Balance's window proxy reads one 10-id window per
    # position of every attacked text (about 5 s per 200-token text on one core), which bounds the
    # size on a CPU.
    "full": Suite("full", SCHEMES, tuple(ATTACKS), prompts=20, tokens=200, human=20, batch=20,
                  zero_shot_references=200),
})


def get_suite(name: str) -> Suite:
    """The suite called ``name``; ``ParameterError`` naming the suites otherwise."""
    try:
        return SUITES[name]
    except (KeyError, TypeError):
        raise ParameterError(f"unknown suite {name!r}; the suites are {', '.join(SUITES)}") from None
