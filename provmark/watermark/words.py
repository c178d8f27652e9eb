"""Words of finished text for the synonym scheme: tokens with exact character offsets, the
eligibility rule and the keyed bit of each word. Embedder and detector share this module.

**Words.** A word is a maximal run of ``WORD_PATTERN`` (letters, digits and underscores, with
inner apostrophes: ``don't`` is one word). Everything between two words is a *gap*. Replacing a
word's characters and joining the gaps back gives the text byte for byte (``replace_words``).

**Eligible words** (the carriers; a word is eligible when every rule holds):

1. *Form*: ASCII letters only (no digits, underscores or apostrophes: numbers, identifiers and
   contractions are out), and lower case, or title case at a sentence start. ALL-CAPS and
   mixed-case words (acronyms, names like ``iPhone``) are out.
2. *Not a name*: a title-case word not at a sentence start is a name (and fails rule 1); a
   title-case word at a sentence start is a name when its lower-case form occurs in title case
   somewhere in the text not at a sentence start (``Paris ... in Paris``). A sentence starts at
   the first word of the text and at every word whose preceding gap holds a line break or one
   of ``.!?`` followed, after closing quotes or brackets, by white space.
3. *Not a stopword*: ``STOPWORDS`` (pronouns, determiners, prepositions, conjunctions,
   auxiliaries and modals, a few very common adverbs).
4. *A content word*: WordNet 3.0 knows it as a noun, verb, adjective or adverb with at least
   one single-word synonym (``lexicon.has_synonyms``).
5. *Not marked as code, link or quotation*: outside fenced code blocks (lines between ````` or
   ``~~~`` fences), inline code (between backticks), URLs (``scheme://...``, ``www....``), e-mail
   addresses and quotations (between straight double quotes ``"``, or curly ``“`` and ``”``).
6. *Not attached*: both gaps to the neighbouring words contain white space or punctuation
   other than ``- / . _ @ & + = ' ’``; ``well-known``, ``and/or``, ``example.com`` are out.

**Carriers** (version 2 keys score only these; version 1 keys score every eligible word):

7. *A carrier*: an eligible word that WordNet knows with a common one-word synonym in a common
   sense (``lexicon.has_common_synonym``: a synset holding the word and another lemma, both with
   a SemCor tag count above 0). On the development set of ``benchmarks.synonym_dev`` it keeps
   77% of the eligible words and 91% of those where the embedder had a substitute (similarity
   0.93, 4 candidates), so a larger share of the scored words can be moved (0.58 against 0.49)
   for 23% fewer scored words; rules that need the LM would sort better but could not be
   recomputed from the text alone.

**Stability.** Rules 1, 3-4 and 7 look at the word alone; rules 2, 5 and 6 look only at gaps and
at words that are never eligible (title-case words off sentence starts), which substitution does
not touch. So replacing an eligible word by a lower-case (or, at a sentence start, title-case)
word that itself passes rules 1-4 (and, for version 2, is a carrier exactly when the word it
replaces is: ``substitute_is_eligible``) leaves every word's eligibility and carrier status
unchanged, which is what ``watermark.synonym``
checks for each candidate; the same rule then gives the same scored words at detection, before
and after substitution.

**The keyed bit** of word i is the lowest bit of HMAC-SHA256(k, tag || c_1 US ... c_h US w),
where w and the context words c (the h words before it, any words, "" before the text starts)
are NFC-normalised and case-folded, US is the separator ``\\x1f`` (so ``"ab"+"c"`` differs from
``"a"+"bc"``), tag is ``WORD_BIT_VERSION`` and a NUL byte, and k is the key's 64-bit
``"word-bit"`` sub-key. Without the key the bits are fair coins independent of the text. The
paper hashes unkeyed SHA-256 of two BERT word pieces, which anyone can forge or strip.

**The payload position** of word i under a key with an L-bit payload (``WORD_POSITION_VERSION``)
is read from the same HMAC digest: ``floor(u * L / 2**64)`` where u is the digest's first 8 bytes
as a big-endian integer (fastrange), as MPAC draws a token's position from its context. It is a
function of the word as it stands and its context, like the bit, so a detector computes it from
the text alone, and the embedder knows each candidate's position at the candidate's own slot.
The first and the last bytes of one HMAC output are independent draws, so the position says
nothing about the bit.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Sequence
from typing import NamedTuple

from provmark.watermark import lexicon

__all__ = ["WORD_BIT_VERSION", "WORD_POSITION_VERSION", "WORD_PATTERN", "STOPWORDS", "Word", "TextWords", "analyse",
           "word_bit", "word_bit_position", "normalise", "replace_words", "form_is_eligible", "match_case", "sentences",
           "is_carrier", "scored_words", "substitute_is_eligible"]

WORD_BIT_VERSION = "word-bit-v1"
"""Version of the bit derivation; a change to it, the normalisation or the eligibility rule is a
new version (STYLE 4)."""
WORD_POSITION_VERSION = "word-position-v1"
"""Version of the payload-position derivation (``word_bit_position``)."""

WORD_PATTERN = re.compile(r"\w+(?:['’]\w+)*")
_ASCII_WORD = re.compile(r"[A-Za-z]+")
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*\s")
_JOINERS = frozenset("-/._@&+='’")
_MARKED = [
    re.compile(r"^[ \t]*(```|~~~).*?(?:^[ \t]*\1[^\n]*$|\Z)", re.M | re.S),  # fenced code
    re.compile(r"`[^`\n]+`"),  # inline code
    re.compile(r"\b(?:[A-Za-z][A-Za-z0-9+.-]*://|www\.)\S+"),  # URLs
    re.compile(r"[^\s@]+@[^\s@]+\.\w+"),  # e-mail addresses
    re.compile(r"\"[^\"]*\"|“[^”]*”"),  # quotations
]

STOPWORDS = frozenset("""
a about above across after afterwards again against ago all almost alone along already also although always am among
an and another any anybody anyone anything anyway anywhere are around as at be became because become becomes been
before beforehand behind being below beside besides between beyond both but by can cannot could did do does doing
done down during each either else elsewhere enough etc even ever every everybody everyone everything everywhere
except few for from further get gets getting got had has have having he hence her here hers herself him himself his
how however i if in indeed instead into is it its itself just least less let lets like many may me meanwhile might
mine more moreover most mostly much must my myself neither never nevertheless next no nobody none noone nor not
nothing now nowhere of off often on once one only onto or other others otherwise our ours ourselves out over own
per perhaps please quite rather really same several shall she should since so some somebody someone something
sometime sometimes somewhere still such than that the their theirs them themselves then thence there thereafter
thereby therefore therein these they this those though through throughout thus to together too toward towards
under unless until up upon us very via was we well were what whatever when whence whenever where whereas whereby
wherever whether which while whither who whoever whole whom whose why will with within without would yes yet you
your yours yourself yourselves
""".split())
"""Function words that never carry a bit, whatever WordNet says about them (``a``, ``be``,
``will`` are WordNet nouns)."""


class Word(NamedTuple):
    """One word of a text: character span [start, end) and the text there."""

    start: int
    end: int
    text: str


class TextWords(NamedTuple):
    """A text cut into words, with each word's eligibility and sentence start."""

    text: str
    words: tuple[Word, ...]
    eligible: tuple[bool, ...]
    sentence_start: tuple[bool, ...]
    names: frozenset[str]
    """Lower-case forms used as names (title case off a sentence start), see rule 2."""

    def context(self, index: int, width: int, forms: Sequence[str] | None = None) -> tuple[str, ...]:
        """The ``width`` words before word ``index`` ("" before the text), from ``forms`` when
        given (the embedder's current words) or the text's own."""
        forms = forms if forms is not None else [w.text for w in self.words]
        return tuple(forms[j] if j >= 0 else "" for j in range(index - width, index))


def normalise(word: str) -> str:
    """NFC, then case-folded: the form that is hashed."""
    return unicodedata.normalize("NFC", word).casefold()


def _word_digest(subkey: bytes, context: Sequence[str], word: str) -> bytes:
    message = "\x1f".join([*(normalise(c) for c in context), normalise(word)])
    return hmac.new(subkey, WORD_BIT_VERSION.encode() + b"\x00" + message.encode("utf-8"), hashlib.sha256).digest()


def word_bit(subkey: bytes, context: Sequence[str], word: str) -> int:
    """The keyed bit of ``word`` after the context words (oldest first), 0 or 1."""
    return _word_digest(subkey, context, word)[-1] & 1


def word_bit_position(subkey: bytes, context: Sequence[str], word: str, num_positions: int) -> tuple[int, int]:
    """(keyed bit, payload position in [0, num_positions)) of ``word`` after the context words,
    from one HMAC (module doc): the bit is ``word_bit``'s."""
    digest = _word_digest(subkey, context, word)
    return digest[-1] & 1, (int.from_bytes(digest[:8], "big") * num_positions) >> 64


def match_case(word: str, like: str) -> str:
    """``word`` in the case of ``like``: title case when ``like`` starts with a capital."""
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


def form_is_eligible(word: str, sentence_start: bool, names: frozenset[str]) -> bool:
    """Rules 1-4 for a word at a position (sentence start or not) of a text with these names."""
    if not _ASCII_WORD.fullmatch(word):
        return False
    lower = word.lower()
    if word != lower and not (sentence_start and word == lower.capitalize() and lower not in names):
        return False
    return lower not in STOPWORDS and lexicon.has_synonyms(lower)


def is_carrier(word: str) -> bool:
    """Rule 7 (version 2): whether a lower-case eligible word is a carrier, i.e. WordNet knows a
    common one-word synonym of it in a common sense (``lexicon.has_common_synonym``)."""
    return lexicon.has_common_synonym(word)


def scored_words(tw: TextWords, version: int) -> tuple[bool, ...]:
    """Which words of ``tw`` detection scores: the eligible ones (version 1), or the eligible
    carriers (version 2, rule 7)."""
    if version == 1:
        return tw.eligible
    return tuple(e and is_carrier(w.text.lower()) for w, e in zip(tw.words, tw.eligible))


def substitute_is_eligible(word: str, original: str, sentence_start: bool, names: frozenset[str], version: int) -> bool:
    """Whether ``word`` may replace the eligible word ``original`` at a position: rules 1-4 and,
    in version 2, the same carrier status (rule 7), so that no word's eligibility or scoring
    changes (see Stability)."""
    return form_is_eligible(word, sentence_start, names) and (
        version == 1 or is_carrier(word.lower()) == is_carrier(original.lower()))


def _marked_mask(text: str) -> list[bool]:
    mask = [False] * (len(text) + 1)
    for pattern in _MARKED:
        for match in pattern.finditer(text):
            mask[match.start() : match.end()] = [True] * (match.end() - match.start())
    return mask


def _attached(gap: str) -> bool:
    return bool(gap) and not any(ch.isspace() for ch in gap) and any(ch in _JOINERS for ch in gap)


def analyse(text: str) -> TextWords:
    """Cut ``text`` into words and apply the eligibility rule to each (see the module doc)."""
    words = tuple(Word(m.start(), m.end(), m.group()) for m in WORD_PATTERN.finditer(text))
    gaps = [text[words[i - 1].end if i else 0 : w.start] for i, w in enumerate(words)]
    starts = tuple(i == 0 or "\n" in gaps[i] or bool(_SENTENCE_END.search(gaps[i])) for i in range(len(words)))
    names = frozenset(w.text.lower() for w, s in zip(words, starts) if not s and w.text[:1].isupper())
    marked = _marked_mask(text)
    eligible = []
    for i, w in enumerate(words):
        ok = not any(marked[w.start : w.end])
        ok = ok and not (i > 0 and _attached(gaps[i])) and not (i + 1 < len(words) and _attached(gaps[i + 1]))
        eligible.append(ok and form_is_eligible(w.text, starts[i], names))
    return TextWords(text, words, tuple(eligible), starts, names)


def replace_words(text: str, words: Sequence[Word], replacements: dict[int, str]) -> str:
    """``text`` with word ``i`` replaced by ``replacements[i]``; every other character kept."""
    out, last = [], 0
    for i in sorted(replacements):
        out += [text[last : words[i].start], replacements[i]]
        last = words[i].end
    out.append(text[last:])
    return "".join(out)


def sentences(tw: TextWords) -> tuple[list[int], list[tuple[int, int]]]:
    """The sentence index of every word and each sentence's character span, from its first word
    to the next sentence's first word with the trailing white space dropped (rule 2's starts)."""
    firsts = [i for i, s in enumerate(tw.sentence_start) if s]
    spans, sentence_of = [], []
    for k, i in enumerate(firsts):
        nxt = firsts[k + 1] if k + 1 < len(firsts) else len(tw.words)
        end = tw.words[nxt].start if nxt < len(tw.words) else len(tw.text)
        spans.append((tw.words[i].start, len(tw.text[:end].rstrip())))
        sentence_of += [k] * (nxt - i)
    return sentence_of, spans
