"""Synonym substitution attacks: a random WordNet synonym, or the one a causal LM likes best.

Both act on *content words*: words that pass the form, name, stopword and WordNet rules of the
synonym scheme's eligibility (``watermark.words.form_is_eligible``, rules 1-4) and have at least
one inflected synonym (``watermark.synonym.candidate_forms``: WordNet 3.0 synonyms inflected like
the word, spellings of the same stem left out). Rules 5-6 (code, links, quotations, attached
words) are the detector's caution, not an attacker's, so they do not apply. A replacement takes
the word's case (``match_case``) and only the replaced words' characters change.

Neither attack knows a key: they model an adversary who rewrites words blindly
(``wordnet_synonyms``) or fluently (``lm_synonyms``), where the embedder picks keyed bit-1 synonyms.
"""

from __future__ import annotations

from provmark.attacks.base import check_model, check_rate, check_rng, check_text, count
from provmark.errors import ParameterError
from provmark.watermark.synonym import LMScorer, candidate_forms
from provmark.watermark.words import TextWords, analyse, form_is_eligible, match_case, replace_words, sentences

__all__ = ["LM_CANDIDATES", "content_words", "wordnet_synonyms", "lm_synonyms"]

LM_CANDIDATES = 16
"""Synonyms (most frequent senses first) that ``lm_synonyms`` scores per word: the LM's cost grows
with them, and WordNet's rarer senses seldom win."""
_WHOLE_SENTENCE = 1 << 30  # an LMScorer look-ahead past any sentence's length


def content_words(tw: TextWords) -> dict[int, tuple[str, ...]]:
    """Index -> lower-case inflected synonyms, for every content word of an analysed text."""
    options = {}
    for i, w in enumerate(tw.words):
        if form_is_eligible(w.text, tw.sentence_start[i], tw.names):
            forms = candidate_forms(w.text.lower())
            if forms:
                options[i] = forms
    return options


def _pick(text: str, rate, rng) -> tuple[TextWords, dict[int, tuple[str, ...]], list[int]]:
    check_text(text)
    rate, rng = check_rate(rate), check_rng(rng)
    tw = analyse(text)
    options = content_words(tw)
    return tw, options, sorted(rng.sample(sorted(options), count(rate, len(options))))


def wordnet_synonyms(text: str, rate: float, rng) -> str:
    """``text`` with ``round(rate * m)`` of its m content words, picked uniformly at random, each
    replaced by one of its synonyms picked uniformly at random (no key, no LM)."""
    tw, options, chosen = _pick(text, rate, rng)
    return replace_words(text, tw.words, {i: match_case(rng.choice(options[i]), tw.words[i].text) for i in chosen})


def lm_synonyms(text: str, rate: float, rng, model, tokenizer, *, max_candidates: int = LM_CANDIDATES) -> str:
    """``text`` with ``round(rate * m)`` of its m content words, picked uniformly at random, each
    replaced by the synonym under which the causal LM finds the sentence most likely.

    Masked-slot scoring with a causal LM: for each picked word, left to right, every one of its
    first ``max_candidates`` synonyms is put in the slot and the LM scores the whole sentence
    (log-likelihood of the synonym's tokens and every token after it to the sentence end, given a
    start token and the sentence before it, earlier replacements included; the part before the
    slot is common to all candidates and cancels). The best-scoring synonym replaces the word,
    ties going to the more frequent sense. Sentences are ``watermark.words.sentences``; the
    scoring machinery is the embedder's (``watermark.synonym.LMScorer``), the choice is not: no
    key, no similarity filter, and the word is always replaced."""
    check_model("lm_synonyms", model, tokenizer)
    if isinstance(max_candidates, bool) or not isinstance(max_candidates, int) or max_candidates < 1:
        raise ParameterError(f"max_candidates must be a positive integer, got {max_candidates!r}; "
                             f"{LM_CANDIDATES} is the default")
    tw, options, chosen = _pick(text, rate, rng)
    sentence_of, spans = sentences(tw)
    scorer = LMScorer(model, tokenizer, _WHOLE_SENTENCE)
    replaced: dict[int, str] = {}
    for i in chosen:
        w = tw.words[i]
        lo, hi = spans[sentence_of[i]]
        split = w.start  # the white space before the word goes with it, as the LM's tokens have it
        while split > lo and text[split - 1].isspace():
            split -= 1
        before = {j: r for j, r in replaced.items() if lo <= tw.words[j].start < split}
        prefix = replace_words(text[:split], tw.words, before)[lo:]  # lo precedes every replaced word
        scorer.restart(lo)
        scorer.feed(prefix, split)
        candidates = [match_case(form, w.text) for form in options[i][:max_candidates]]
        fits = scorer.score([text[split : w.start] + c for c in candidates], text[w.end : hi])
        replaced[i] = candidates[max(range(len(candidates)), key=fits.__getitem__)]
    return replace_words(text, tw.words, replaced)
