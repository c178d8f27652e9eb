"""What every attack shares: argument checks that raise ``provmark.errors`` classes, the count of
words a rate acts on, and the words of a text (``watermark.words.WORD_PATTERN``, the tokenizer the
synonym scheme scores, so that "a word" means the same thing to attack and detector)."""

from __future__ import annotations

import math
import random

from provmark.errors import InvalidTextError, ParameterError
from provmark.watermark.words import WORD_PATTERN, Word

__all__ = ["check_rate", "check_rng", "check_text", "check_model", "count", "words_of"]


def check_rate(value, name: str = "rate") -> float:
    """``value`` as a float when it is a number in [0, 1]; ``ParameterError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ParameterError(f"{name} must be a number in [0, 1], got {value!r}; 0.1 acts on a tenth of the words")
    return float(value)


def check_rng(rng) -> random.Random:
    """``rng`` when it is a ``random.Random``; attacks draw every choice from it, so a seed or None
    would make them irreproducible."""
    if not isinstance(rng, random.Random):
        raise ParameterError(f"rng must be a random.Random, got {type(rng).__name__}; pass random.Random(seed)")
    return rng


def check_text(text, name: str = "text") -> tuple[Word, ...]:
    """The words of ``text``; ``InvalidTextError`` when it is not a string or has no words."""
    if not isinstance(text, str):
        raise InvalidTextError(f"{name} must be a string, got {type(text).__name__}")
    words = words_of(text)
    if not words:
        raise InvalidTextError(f"{name} has no words; give the text to attack")
    return words


def check_model(name: str, model, tokenizer) -> None:
    """``ParameterError`` unless both the causal LM and its tokenizer are given."""
    if model is None or tokenizer is None:
        raise ParameterError(f"the {name} attack needs a causal LM and its tokenizer; pass model= and tokenizer= "
                             "(provmark.watermark.models.load_model() gives the embedded one)")


def count(rate: float, total: int) -> int:
    """``rate * total`` rounded half up (0.05 of 10 words is 1 word, not Python's round-to-even 0)."""
    return min(total, math.floor(rate * total + 0.5))


def words_of(text: str) -> tuple[Word, ...]:
    """The words of ``text`` with their character spans, model- and WordNet-free."""
    return tuple(Word(m.start(), m.end(), m.group()) for m in WORD_PATTERN.finditer(text))
