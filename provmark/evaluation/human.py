"""Human-written English available offline: the negatives of the false-positive checks.

The corpus is the prose of the Python Language Reference help topics that CPython ships in
``pydoc_data/topics.py`` (PSF licence): written by people, years before language models wrote
text, and present on every machine that has Python. Headings, grammar rules and indented code
blocks are dropped; consecutive prose paragraphs are packed into texts of at least ``min_words``
words, in topic order. The texts depend on the Python version (``CORPUS`` names it).
"""

from __future__ import annotations

import platform
import re

from provmark.errors import ParameterError

__all__ = ["CORPUS", "human_texts"]

CORPUS = f"Python {platform.python_version()} Language Reference help topics (pydoc_data/topics.py, PSF licence)"
"""How reports name the corpus."""


def human_texts(limit: int, min_words: int) -> list[str]:
    """Up to ``limit`` texts of at least ``min_words`` words of ``pydoc_data.topics`` prose, in
    topic order (fewer only when the corpus runs out)."""
    for name, value in (("limit", limit), ("min_words", min_words)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParameterError(f"{name} must be a positive integer, got {value!r}")
    from pydoc_data.topics import topics

    texts, current = [], []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            lines = block.strip("\n").splitlines()
            if not lines or lines[0].startswith(" ") or re.fullmatch(r"[*=\-]+", lines[-1].strip()):
                continue  # code, grammar, headings
            paragraph = " ".join(line.strip() for line in lines)
            if len(paragraph.split()) < 25 or not paragraph.endswith((".", ":")):
                continue
            current.append(paragraph)
            if sum(len(p.split()) for p in current) >= min_words:
                texts.append("\n\n".join(current))
                current = []
                if len(texts) == limit:
                    return texts
    return texts
