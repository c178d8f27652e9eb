"""WordNet 3.0, offline: where it lives, how it is installed, and the synonym lookups on it.

The database comes from Debian's ``wordnet-base`` package (``make wordnet``, which ``make
install`` runs: ``apt-get download`` needs no root), copied into an NLTK data folder inside the
virtual environment, ``<sys.prefix>/nltk_data/corpora/wordnet``, or the folder named by
``$PROVMARK_WORDNET_DIR``. Debian omits the ``lexnames`` file that NLTK's reader opens first;
``install_wordnet`` writes it from ``LEXNAMES``, the fixed list of the 45 lexicographer files of
``lexnames(5WN)``. Nothing is ever downloaded at run time: a missing folder is an error that
names the fix.

Eligibility (``watermark.words``) and candidates (``watermark.synonym``) both read WordNet, so
detection needs this database (no model). A different WordNet version would change which words
are eligible: keys record nothing about it, so WordNet 3.0 is part of the scheme's definition.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import warnings
from pathlib import Path

from provmark.errors import ProvmarkError

__all__ = ["LEXNAMES", "POS_ORDER", "WORDNET_ENV", "WordNetMissingError", "wordnet_dir", "install_wordnet", "wordnet",
           "has_synonyms", "has_common_synonym", "synonym_lemmas"]

WORDNET_ENV = "PROVMARK_WORDNET_DIR"

LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
"""Lexicographer file names 00-44, in order (``lexnames(5WN)``)."""

_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_REQUIRED = ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj", "index.adv",
             "noun.exc", "verb.exc", "adj.exc", "adv.exc", "cntlist.rev")
POS_ORDER = ("n", "v", "a", "r")
"""WordNet parts of speech a content word may have: noun, verb, adjective, adverb."""


class WordNetMissingError(ProvmarkError):
    """The WordNet folder is absent or incomplete."""


def wordnet_dir() -> Path:
    """``$PROVMARK_WORDNET_DIR`` if set, else ``<sys.prefix>/nltk_data/corpora/wordnet``."""
    override = os.environ.get(WORDNET_ENV)
    return Path(override) if override else Path(sys.prefix) / "nltk_data" / "corpora" / "wordnet"


def install_wordnet(source: str | os.PathLike, target: str | os.PathLike | None = None) -> Path:
    """Copy the WordNet 3.0 dict files of ``source`` (e.g. an extracted ``wordnet-base``'s
    ``usr/share/wordnet``) into ``target`` (default ``wordnet_dir()``) and write ``lexnames``."""
    source, target = Path(source), Path(target) if target is not None else wordnet_dir()
    missing = [name for name in _REQUIRED if not (source / name).is_file()]
    if missing:
        raise WordNetMissingError(f"{source} is not a WordNet 3.0 dict folder (lacks {', '.join(missing)})")
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file():
            shutil.copyfile(path, target / path.name)
    lines = (f"{i:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))
    (target / "lexnames").write_text("".join(lines))
    return target


@functools.lru_cache(maxsize=None)
def _reader(folder: str):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _WordNet30(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            # NLTK maps synsets to another WordNet for its multilingual data through index.sense,
            # which wordnet-base does not ship; provmark reads English WordNet 3.0 only.
            return None

    if folder not in nltk.data.path:
        nltk.data.path.append(folder)  # NLTK reads only folders on its data path
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        return _WordNet30(folder, None)


def wordnet():
    """The NLTK WordNet reader over ``wordnet_dir()`` (loaded once, about 3 s)."""
    folder = wordnet_dir()
    missing = [name for name in (*_REQUIRED, "lexnames") if not (folder / name).is_file()]
    if missing:
        raise WordNetMissingError(
            f"WordNet 3.0 not found in {folder} (lacks {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
            f"run `make wordnet` in the provmark checkout, or point ${WORDNET_ENV} at a folder made by "
            "`python -m provmark.watermark.lexicon SOURCE` from Debian's wordnet-base"
        )
    return _reader(str(folder.resolve()))


def _single_word(name: str) -> bool:
    return name.isascii() and name.isalpha() and name.islower()  # no phrases, no names (Mars, Einstein)


@functools.lru_cache(maxsize=200_000)
def synonym_lemmas(word: str) -> tuple[tuple[str, str, str], ...]:
    """(part of speech, base form of ``word``, synonym lemma) for every single-word synonym of a
    lower-case ``word``, most frequent senses first (WordNet's order), without repeats.

    The base form is WordNet's ``morphy`` of the word in that part of speech; the synonyms are
    the other one-word lemmas of its synsets (multi-word and hyphenated lemmas are dropped)."""
    reader = wordnet()
    out, seen = [], set()
    for pos in POS_ORDER:
        base = reader.morphy(word, pos)
        if base is None:
            continue
        for synset in reader.synsets(base, pos):
            for lemma in synset.lemmas():
                name = lemma.name()
                if name.lower() == base or not _single_word(name) or (pos, name) in seen:
                    continue
                seen.add((pos, name))
                out.append((pos, base, name))
    return tuple(out)


@functools.lru_cache(maxsize=200_000)
def has_common_synonym(word: str) -> bool:
    """Whether a lower-case ``word`` shares a synset with another single-word lemma, both used in
    that sense in WordNet's sense-tagged corpus (SemCor tag counts, ``cntlist.rev``, above 0):
    the carrier test of the synonym scheme's version 2 (``words.is_carrier``)."""
    reader = wordnet()
    for pos in POS_ORDER:
        base = reader.morphy(word, pos)
        if base is None:
            continue
        for synset in reader.synsets(base, pos):
            lemmas = synset.lemmas()
            own = [lemma for lemma in lemmas if lemma.name().lower() == base]
            if own and own[0].count() > 0 and any(
                lemma.name().lower() != base and _single_word(lemma.name()) and lemma.count() > 0 for lemma in lemmas
            ):
                return True
    return False


def has_synonyms(word: str) -> bool:
    """Whether a lower-case ``word`` is a WordNet noun, verb, adjective or adverb with at least
    one single-word synonym: the content-word test of eligibility."""
    return bool(synonym_lemmas(word))


def main(argv=None) -> int:
    """``python -m provmark.watermark.lexicon SOURCE [TARGET]``: install WordNet from SOURCE."""
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print("usage: python -m provmark.watermark.lexicon SOURCE [TARGET]", file=sys.stderr)
        return 2
    print(f"WordNet 3.0 installed in {install_wordnet(*args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
