"""Text-to-text attacks for robustness evaluation, with a registry and three standard strengths each.

Every attack takes finished text and returns text; it is deterministic given the
``random.Random`` it draws from (the LM attacks also given the model and machine) and raises
``provmark.errors`` classes on bad input: ``InvalidTextError`` for text with no words,
``ParameterError`` for a rate outside [0, 1], a missing ``random.Random``, model or host, or an
unknown attack name.

=================  ==========================================  ============  =======================
name               what it does                                strength is   ``STRENGTHS``
=================  ==========================================  ============  =======================
delete             deletes random words                        rate          0.05, 0.1, 0.2
insert             inserts common words at random boundaries   rate          0.05, 0.1, 0.2
swap               swaps random adjacent words                 rate          0.05, 0.1, 0.2
wordnet_synonyms   random WordNet synonym of content words     rate          0.05, 0.1, 0.2
lm_synonyms        the LM's favourite WordNet synonym          rate          0.05, 0.1, 0.2
paraphrase         the LM rewrites whole sentences             share         0.2, 0.35, 0.5
truncate           keeps the start of the text                 keep          0.75, 0.5, 0.25
copy_paste         pastes the text into a host text            share         0.5, 0.25, 0.1
=================  ==========================================  ============  =======================

``apply(name, text, strength, rng, ...)`` runs any of them by name and says where the marked
text now lies (all of the result, except after copy-paste).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from provmark.attacks.base import check_model, check_rng
from provmark.attacks.edits import INSERT_WORDS, copy_paste, delete_words, insert_words, swap_words, truncate
from provmark.attacks.paraphrase import paraphrase, paraphrase_batch
from provmark.attacks.synonyms import lm_synonyms, wordnet_synonyms
from provmark.errors import ParameterError

__all__ = ["Attack", "Attacked", "ATTACKS", "STRENGTHS", "INSERT_WORDS", "apply", "delete_words", "insert_words",
           "swap_words", "wordnet_synonyms", "lm_synonyms", "paraphrase", "paraphrase_batch", "truncate", "copy_paste"]


@dataclass(frozen=True)
class Attack:
    """One registered attack."""

    function: Callable
    needs_model: bool
    """Whether it takes ``model`` and ``tokenizer`` (a causal LM)."""
    strength: str
    """What the strength is: ``rate`` of the words, ``share`` of the sentences (paraphrase) or of
    the result (copy-paste), or the share of words to ``keep`` (truncation)."""


ATTACKS: dict[str, Attack] = {
    "delete": Attack(delete_words, False, "rate"),
    "insert": Attack(insert_words, False, "rate"),
    "swap": Attack(swap_words, False, "rate"),
    "wordnet_synonyms": Attack(wordnet_synonyms, False, "rate"),
    "lm_synonyms": Attack(lm_synonyms, True, "rate"),
    "paraphrase": Attack(paraphrase, True, "share"),
    "truncate": Attack(truncate, False, "keep"),
    "copy_paste": Attack(copy_paste, False, "share"),
}
"""Attack name -> its function and whether it needs a model."""

STRENGTHS: dict[str, tuple[float, float, float]] = {
    **dict.fromkeys(("delete", "insert", "swap", "wordnet_synonyms", "lm_synonyms"), (0.05, 0.1, 0.2)),
    "paraphrase": (0.2, 0.35, 0.5),
    "truncate": (0.75, 0.5, 0.25),
    "copy_paste": (0.5, 0.25, 0.1),
}
"""Attack name -> three standard strengths, weakest attack first (for truncation and copy-paste a
smaller number is the stronger attack)."""


@dataclass(frozen=True)
class Attacked:
    """The result of ``apply``."""

    attack: str
    strength: float
    text: str
    marked_span: tuple[int, int]
    """Characters of ``text`` that hold the (attacked) marked text: ``(0, len(text))`` except after copy-paste."""


def apply(name: str, text: str, strength: float, rng, model=None, tokenizer=None, host: str | None = None) -> Attacked:
    """Run attack ``name`` on ``text`` at ``strength`` (see ``Attack.strength``), drawing from ``rng``.

    ``model`` and ``tokenizer`` are required by the attacks with ``needs_model`` and ignored by
    the others; ``host`` is the text copy-paste pastes into (it must hold enough words for the
    share; it is cut to them). ``truncate`` draws nothing, but ``rng`` is checked all the same."""
    attack = ATTACKS.get(name)
    if attack is None:
        raise ParameterError(f"unknown attack {name!r}; the attacks are {', '.join(ATTACKS)}")
    rng = check_rng(rng)
    if attack.needs_model:
        check_model(name, model, tokenizer)
        return _whole(name, strength, attack.function(text, strength, rng, model, tokenizer))
    if name == "copy_paste":
        if host is None:
            raise ParameterError("the copy_paste attack needs host=, the text to paste the marked text into")
        pasted, span = copy_paste(text, host, rng, share=strength)
        return Attacked(name, strength, pasted, span)
    if name == "truncate":
        return _whole(name, strength, truncate(text, strength))
    return _whole(name, strength, attack.function(text, strength, rng))


def _whole(name: str, strength: float, text: str) -> Attacked:
    return Attacked(name, strength, text, (0, len(text)))
