"""Model-free edits at the word level: deletion, insertion, swaps, truncation and copy-paste.

Words are ``watermark.words.WORD_PATTERN`` runs; the characters between two words (white space,
punctuation) are the *gap*. Every attack here changes only the words it picks and the white space
next to them, says how many words it picks from ``rate`` (rounded half up, ``base.count``), and
draws every choice from the ``random.Random`` it is given, so a seed replays it exactly.
"""

from __future__ import annotations

import math
import re

from provmark.attacks.base import check_rate, check_rng, check_text, count
from provmark.errors import ParameterError
from provmark.watermark.words import Word, replace_words

__all__ = ["INSERT_WORDS", "delete_words", "insert_words", "swap_words", "truncate", "copy_paste"]

INSERT_WORDS = ("the", "and", "of", "to", "in", "that", "it", "for", "very", "also", "just", "really", "so", "then",
                "still", "quite", "indeed", "now", "well", "often")
"""Common English words ``insert_words`` draws from: function words and fillers, mostly stopwords
(``watermark.words.STOPWORDS``), so an insertion rarely adds a word the synonym detector scores."""

_OPENERS = frozenset("([{“‘«")
_TRAILING_PUNCTUATION = re.compile(r"[^\w\s]*")


def _join_gaps(left: str, right: str, at_start: bool) -> str:
    """The gap that replaces ``left`` + deleted word + ``right``: both kept, less one white-space run."""
    left_core, right_core = left.rstrip(), right.lstrip()
    left_space, right_space = left[len(left_core):], right[: len(right) - len(right_core)]
    if at_start or (not left_space and left_core[-1:] in _OPENERS):
        return left + right_core  # "(big thing)" -> "(thing)"; the text's own leading space stays
    if left_space and right_space:  # keep the run that holds more line breaks: paragraphs survive
        return left_core + right if right_space.count("\n") >= left_space.count("\n") else left + right_core
    if left_space and "\n" not in left_space:
        return left_core + right  # "big, thing." -> "big,."; "a b" -> "a"
    return left + right


def delete_words(text: str, rate: float, rng) -> str:
    """``text`` without ``rate`` of its words, picked uniformly at random.

    Each deleted word goes with one run of white space next to it: the one before it, or the one
    after it at the start of the text or after an opening bracket; of two runs the one with more
    line breaks stays. Every other character (the other words, punctuation, line breaks) is kept
    in order."""
    words = check_text(text)
    rate, rng = check_rate(rate), check_rng(rng)
    gone = set(rng.sample(range(len(words)), count(rate, len(words))))
    out, gap, kept = [], text[: words[0].start], 0
    for i, w in enumerate(words):
        after = text[w.end : words[i + 1].start if i + 1 < len(words) else len(text)]
        if i in gone:
            gap = _join_gaps(gap, after, at_start=not kept)
        else:
            out += [gap, w.text]
            gap, kept = after, kept + 1
    out.append(gap)
    return "".join(out)


def insert_words(text: str, rate: float, rng) -> str:
    """``text`` with ``round(rate * n)`` words from ``INSERT_WORDS`` inserted at distinct random
    word boundaries (before a word, or after the last), n being its word count.

    An insertion before a word is the new word and a space; after the last word it is a space and
    the new word (before any closing punctuation). Inserted words are lower case and every
    original character is kept."""
    words = check_text(text)
    rate, rng = check_rate(rate), check_rng(rng)
    boundaries = sorted(rng.sample(range(len(words) + 1), count(rate, len(words))))
    out, last = [], 0
    for j in boundaries:
        new = rng.choice(INSERT_WORDS)
        at, piece = (words[j].start, new + " ") if j < len(words) else (words[-1].end, " " + new)
        out += [text[last:at], piece]
        last = at
    out.append(text[last:])
    return "".join(out)


def swap_words(text: str, rate: float, rng) -> str:
    """``text`` with ``round(rate * n / 2)`` disjoint pairs of adjacent words swapped (so that
    ``rate`` of its n words move), the pairs drawn uniformly among all such sets.

    Only the two words' characters trade places; the gap between them stays where it is
    (``"big, red"`` -> ``"red, big"``). A pair of equal words swaps to the same text."""
    words = check_text(text)
    rate, rng = check_rate(rate), check_rng(rng)
    pairs = min(len(words) // 2, count(rate / 2, len(words)))
    # Stars and bars: k sorted picks from n - k slots, the i-th shifted by i, are the first words
    # of k disjoint adjacent pairs, and every such set is equally likely.
    firsts = [p + i for i, p in enumerate(sorted(rng.sample(range(len(words) - pairs), pairs)))]
    swapped = {}
    for i in firsts:
        swapped[i], swapped[i + 1] = words[i + 1].text, words[i].text
    return replace_words(text, words, swapped)


def _cut(text: str, words: tuple[Word, ...], keep: int) -> str:
    if keep >= len(words):
        return text
    if keep == 0:
        return ""
    end = words[keep - 1].end
    gap = text[end : words[keep].start]
    if any(ch.isspace() for ch in gap):  # "two. three" keeps the full stop; "well-known" cuts at "well"
        end += _TRAILING_PUNCTUATION.match(gap).end()
    return text[:end]


def truncate(text: str, keep: float) -> str:
    """The start of ``text`` up to its ``round(keep * n)``-th word and the punctuation directly
    after it (the rest cut, from the white space on); all of ``text`` when every word is kept,
    "" when none is."""
    words = check_text(text)
    return _cut(text, words, count(check_rate(keep, "keep"), len(words)))


def copy_paste(marked: str, host: str, rng, share: float | None = None) -> tuple[str, tuple[int, int]]:
    """``marked`` pasted at a random word boundary of ``host``: the new text and the character
    span ``(start, end)`` that ``marked`` occupies in it, ``new[start:end] == marked``.

    Before a host word the paste is followed by a space; after the last host word it is preceded
    by one (unless ``host`` ends in white space). With ``share`` in (0, 1], ``host`` is first cut
    (like ``truncate``) to the words that make ``marked`` that share of all words; a host too
    short for it is a ``ParameterError``."""
    marked_words = check_text(marked, "marked")
    host_words = check_text(host, "host")
    rng = check_rng(rng)
    if share is not None:
        share = check_rate(share, "share")
        if share == 0:
            raise ParameterError("share must be above 0: the marked text cannot be none of the result")
        need = math.floor(len(marked_words) * (1 - share) / share + 0.5)
        if need > len(host_words):
            raise ParameterError(f"host has {len(host_words)} words but {need} are needed for the marked text to be "
                                 f"{share:g} of the result; give a longer host")
        host, host_words = _cut(host, host_words, need), host_words[:need]
    j = rng.randrange(len(host_words) + 1)
    if j < len(host_words):
        at = host_words[j].start
        return host[:at] + marked + " " + host[at:], (at, at + len(marked))
    at = len(host) + (0 if not host or host[-1].isspace() else 1)
    return host + " " * (at - len(host)) + marked, (at, at + len(marked))
