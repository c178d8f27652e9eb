"""Attacks: determinism under a seeded rng, the rate each applies, characters outside touched words
kept, copy-paste spans, the registry and errors; LM attacks on the tiny random Llama, one slow
round trip through the real model."""

import math
import random
import re

import pytest
import torch

from provmark import attacks
from provmark.attacks import (ATTACKS, INSERT_WORDS, STRENGTHS, apply, copy_paste, delete_words, insert_words,
                              lm_synonyms, paraphrase, swap_words, truncate, wordnet_synonyms)
from provmark.attacks.base import words_of
from provmark.attacks.paraphrase import paraphrase_batch
from provmark.attacks.synonyms import LM_CANDIDATES, content_words
from provmark.errors import InvalidTextError, ParameterError, ProvmarkError
from provmark.watermark.synonym import candidate_forms
from provmark.watermark.words import WORD_PATTERN, analyse, match_case, replace_words, sentences

# Every word occurs once and none is an INSERT_WORDS word, so an attacked text's words can be
# matched back to the original's.
TEXT = ("Quiet rivers wander through ancient towns, where (early) fishermen gather along muddy banks.\n\n"
        "Most sailors have worked on cold water over many years; they know every bend, each shallow place.\n"
        "Children watch them from stone bridges, hoping we see large catches brought ashore!")
WORDS = [w.text for w in words_of(TEXT)]
MODEL_FREE = [name for name, attack in ATTACKS.items() if not attack.needs_model]


def half_up(x):
    return math.floor(x + 0.5)


def gaps(text):
    """The characters between words, in order (the first before the first word, the last after the last)."""
    return WORD_PATTERN.split(text)


class Fixed(random.Random):
    """A Random whose ``sample`` returns chosen items (the attacks' word picks) and ``choice`` the first."""

    def __init__(self, *picks):
        super().__init__(0)
        self.picks = list(picks)

    def sample(self, population, k):
        assert len(self.picks) == k
        return [population[i] for i in self.picks]

    def choice(self, seq):
        return seq[0]


def test_the_text_has_unique_words_outside_the_insert_list():
    lowered = [w.lower() for w in WORDS]
    assert len(set(lowered)) == len(lowered) == 43 and not set(lowered) & set(INSERT_WORDS)


# -- determinism --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODEL_FREE)
def test_each_model_free_attack_is_deterministic_under_a_seeded_rng(name):
    host = "Another document about something else entirely. " * 30
    runs = [apply(name, TEXT, STRENGTHS[name][1], random.Random(seed), host=host) for seed in (7, 7, 8)]
    assert runs[0] == runs[1]
    if name != "truncate":  # the only attack that draws nothing
        assert runs[0].text != runs[2].text


# -- deletion -----------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0, 0.05, 0.1, 0.2, 0.5, 1])
def test_deletion_removes_the_rate_of_words_and_keeps_every_other_character(rate):
    out = delete_words(TEXT, rate, random.Random(1))
    kept = [w.text for w in words_of(out)]
    assert len(kept) == len(WORDS) - half_up(rate * len(WORDS))
    assert kept == [w for w in WORDS if w in kept]  # the survivors, in order
    gone = {i for i, w in enumerate(WORDS) if w not in kept}
    expected = "".join(g + (WORDS[i] if i < len(WORDS) and i not in gone else "") for i, g in enumerate(gaps(TEXT)))
    assert re.sub(r"[ \t]", "", out) == re.sub(r"[ \t]", "", expected)  # punctuation and line breaks all kept


@pytest.mark.parametrize("text,picks,expected", [
    ("One two three.", [0], "two three."),
    ("One two three.", [2], "One two."),
    ("One two three.", [1], "One three."),
    ("a b c d", [1, 2], "a d"),
    ("a b c", [0, 1], "c"),
    ("  Lead word here", [0], "  word here"),
    ("A (big red) thing", [1], "A (red) thing"),
    ("big, thing.", [1], "big,."),
    ("Para one.\n\nNext para.", [2], "Para one.\n\npara."),
    ("Para one.\n\nNext para.", [1], "Para.\n\nNext para."),
])
def test_deletion_takes_one_run_of_white_space_with_each_word(text, picks, expected):
    assert delete_words(text, len(picks) / len(words_of(text)), Fixed(*picks)) == expected


# -- insertion ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0, 0.05, 0.1, 0.2, 1])
def test_insertion_adds_the_rate_of_common_words_and_keeps_every_original_character(rate):
    out = insert_words(TEXT, rate, random.Random(2))
    words = [w.text for w in words_of(out)]
    added = [w for w in words if w not in WORDS]
    assert len(added) == half_up(rate * len(WORDS)) and set(added) <= set(INSERT_WORDS)
    assert [w for w in words if w in WORDS] == WORDS
    for w in set(added):  # each insertion is the word and one space: removing them gives the text back
        out = re.sub(rf"\b{w} | {w}\b", "", out)
    assert out == TEXT


def test_insertion_goes_before_a_word_or_after_the_last_one():
    assert insert_words("One two, three.", 1, Fixed(0, 2, 3)) == "the One two, the three the."


# -- swaps --------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0, 0.05, 0.1, 0.2, 0.5, 1])
def test_swapping_moves_the_rate_of_words_between_adjacent_pairs(rate):
    out = swap_words(TEXT, rate, random.Random(3))
    assert gaps(out) == gaps(TEXT)
    words = [w.text for w in words_of(out)]
    moved = [i for i, (a, b) in enumerate(zip(words, WORDS)) if a != b]
    assert len(moved) == 2 * min(len(WORDS) // 2, half_up(rate * len(WORDS) / 2))
    for first, second in zip(moved[::2], moved[1::2]):  # disjoint adjacent pairs, each swapped
        assert second == first + 1 and (words[first], words[second]) == (WORDS[second], WORDS[first])


def test_swapping_every_pair_of_an_even_text_flips_each_pair():
    assert swap_words("a b, c d.", 1, random.Random(0)) == "b a, d c."


# -- WordNet synonyms ---------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0, 0.1, 0.2, 0.5, 1])
def test_wordnet_synonyms_replace_the_rate_of_content_words_by_synonyms(rate):
    options = content_words(analyse(TEXT))
    out = wordnet_synonyms(TEXT, rate, random.Random(4))
    assert gaps(out) == gaps(TEXT)
    words = [w.text for w in words_of(out)]
    changed = [i for i, (a, b) in enumerate(zip(words, WORDS)) if a != b]
    assert len(changed) == half_up(rate * len(options)) and set(changed) <= set(options)
    for i in changed:
        assert words[i] in {match_case(f, WORDS[i]) for f in candidate_forms(WORDS[i].lower())}


def test_content_words_leave_out_stopwords_and_names():
    tw = analyse("The old man met Anna in Paris and they talked quickly at home.")
    chosen = {tw.words[i].text for i in content_words(tw)}
    assert {"old", "man", "met", "talked", "quickly", "home"} <= chosen
    assert not chosen & {"The", "Anna", "Paris", "in", "and", "they", "at"}


# -- truncation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("keep", [0.25, 0.5, 0.75])
def test_truncation_keeps_the_first_share_of_the_words(keep):
    out = truncate(TEXT, keep)
    assert TEXT.startswith(out) and [w.text for w in words_of(out)] == WORDS[: half_up(keep * len(WORDS))]


@pytest.mark.parametrize("text,keep,expected", [
    ("One two. Three four.", 0.5, "One two."),
    ("One two. Three four.", 1, "One two. Three four."),
    ("One two. Three four.", 0, ""),
    ("well-known fact here", 0.25, "well"),
    ("A (quoted) word here", 0.5, "A (quoted)"),
])
def test_truncation_cuts_after_a_word_and_its_punctuation(text, keep, expected):
    assert truncate(text, keep) == expected


# -- copy-paste ---------------------------------------------------------------------------------

HOST = "An unrelated note, written by someone else. It talks about trains and their timetables."


@pytest.mark.parametrize("seed", range(12))
def test_copy_paste_reports_the_span_of_the_marked_text(seed):
    out, (start, end) = copy_paste(TEXT, HOST, random.Random(seed))
    assert out[start:end] == TEXT
    outside = out[:start] + out[end:]
    assert outside in (HOST + " ", " " + HOST) or outside.replace("  ", " ", 1) == HOST


def test_copy_paste_lands_on_every_word_boundary():
    starts = {copy_paste("Marked.", "a b c", random.Random(seed))[0] for seed in range(60)}
    assert starts == {"Marked. a b c", "a Marked. b c", "a b Marked. c", "a b c Marked."}


@pytest.mark.parametrize("share", STRENGTHS["copy_paste"])
def test_copy_paste_cuts_the_host_to_the_share(share):
    host = " ".join(f"word{i}" for i in range(1000)) + "."
    out, (start, end) = copy_paste(TEXT, host, random.Random(0), share=share)
    assert len(words_of(out[start:end])) / len(words_of(out)) == pytest.approx(share, abs=0.01)


def test_copy_paste_needs_a_host_long_enough_for_the_share():
    with pytest.raises(ParameterError, match="host has 14 words but 387 are needed"):
        copy_paste(TEXT, HOST, random.Random(0), share=0.1)


# -- registry and apply -------------------------------------------------------------------------

def test_every_attack_has_three_strengths_weakest_first():
    assert set(STRENGTHS) == set(ATTACKS) and set(attacks.__all__) >= {"ATTACKS", "STRENGTHS", "apply"}
    for name, values in STRENGTHS.items():
        assert len(values) == 3 and all(0 < v <= 1 for v in values)
        grows = ATTACKS[name].strength == "rate" or name == "paraphrase"
        assert list(values) == sorted(values, reverse=not grows)
    assert {name for name, a in ATTACKS.items() if a.needs_model} == {"lm_synonyms", "paraphrase"}


def test_apply_gives_the_marked_span():
    whole = apply("delete", TEXT, 0.1, random.Random(0))
    assert whole.text == delete_words(TEXT, 0.1, random.Random(0)) and whole.marked_span == (0, len(whole.text))
    pasted = apply("copy_paste", "Marked text.", 0.5, random.Random(0), host=HOST)
    assert pasted.text[slice(*pasted.marked_span)] == "Marked text." and len(words_of(pasted.text)) == 4


# -- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), True, "0.1", None])
@pytest.mark.parametrize("name", [n for n in MODEL_FREE if n != "copy_paste"])
def test_a_rate_outside_zero_one_is_a_parameter_error(name, rate):
    with pytest.raises(ParameterError, match=r"must be a number in \[0, 1\]"):
        apply(name, TEXT, rate, random.Random(0))


@pytest.mark.parametrize("text", ["", "   \n", "?! ...", None])
@pytest.mark.parametrize("name", MODEL_FREE)
def test_text_without_words_is_an_invalid_text_error(name, text):
    with pytest.raises(InvalidTextError):
        apply(name, text, STRENGTHS[name][0], random.Random(0), host=HOST)


def test_an_empty_host_is_an_invalid_text_error():
    with pytest.raises(InvalidTextError, match="host has no words"):
        copy_paste(TEXT, " ", random.Random(0))


@pytest.mark.parametrize("call,match", [
    (lambda: apply("rewrite", TEXT, 0.1, random.Random(0)), "unknown attack 'rewrite'; the attacks are delete, "),
    (lambda: apply("delete", TEXT, 0.1, 42), "rng must be a random.Random, got int"),
    (lambda: delete_words(TEXT, 0.1, None), "rng must be a random.Random, got NoneType"),
    (lambda: apply("lm_synonyms", TEXT, 0.1, random.Random(0)), "lm_synonyms attack needs a causal LM"),
    (lambda: apply("paraphrase", TEXT, 0.2, random.Random(0), model=object()), "paraphrase attack needs a causal LM"),
    (lambda: lm_synonyms(TEXT, 0.1, random.Random(0), None, None), "lm_synonyms attack needs a causal LM"),
    (lambda: paraphrase(TEXT, 0.2, random.Random(0), None, None), "paraphrase attack needs a causal LM"),
    (lambda: apply("copy_paste", TEXT, 0.5, random.Random(0)), "copy_paste attack needs host="),
    (lambda: copy_paste(TEXT, HOST, random.Random(0), share=0), "share must be above 0"),
    (lambda: truncate(TEXT, 2), r"keep must be a number in \[0, 1\]"),
])
def test_bad_arguments_are_parameter_errors_that_name_the_fix(call, match):
    with pytest.raises(ParameterError, match=match) as info:
        call()
    assert isinstance(info.value, ProvmarkError)


# -- LM attacks on the tiny random Llama --------------------------------------------------------

def _reference_log_likelihood(model, tokenizer, pieces):
    """Sum of log-probabilities of every token after the first piece, pieces encoded one by one
    after a start token, in one plain forward pass (no cache, no batch)."""
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] if p else [] for p in pieces]
    ids = [tokenizer.bos_token_id] + encoded[0]
    scored = [t for piece in encoded[1:] for t in piece]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + scored])).logits[0].float()
    logp = torch.log_softmax(logits[len(ids) - 1 : -1], dim=-1)
    return float(logp.gather(1, torch.tensor(scored)[:, None]).sum())


def test_lm_synonyms_pick_the_synonym_the_lm_likes_best_in_the_slot(tiny_model, tokenizer):
    sentence = "Quiet rivers wander through ancient towns where fishermen gather."
    tw = analyse(sentence)
    options = content_words(tw)
    rate = 2 / len(options)
    out = lm_synonyms(sentence, rate, random.Random(5), tiny_model, tokenizer)
    assert out == lm_synonyms(sentence, rate, random.Random(5), tiny_model, tokenizer)
    assert gaps(out) == gaps(sentence)
    words = [w.text for w in words_of(out)]
    changed = [i for i, w in enumerate(tw.words) if words[i] != w.text]
    assert len(changed) == 2 and set(changed) <= set(options)
    for i in changed:  # left to right: each slot scored in the sentence with the earlier replacement in place
        w = tw.words[i]
        split = len(sentence[: w.start].rstrip())
        prefix = replace_words(sentence[:split], tw.words, {j: words[j] for j in changed if j < i})
        gap, tail = sentence[split : w.start], sentence[w.end :]
        candidates = [match_case(f, w.text) for f in options[i][:LM_CANDIDATES]]
        scores = [_reference_log_likelihood(tiny_model, tokenizer, [prefix, gap + c, tail]) for c in candidates]
        assert words[i] in candidates
        assert scores[candidates.index(words[i])] == pytest.approx(max(scores), abs=1e-4)


def test_lm_synonyms_score_at_most_max_candidates(tiny_model, tokenizer):
    text = "Quiet crowds wander and gather."
    tw = analyse(text)
    options = content_words(tw)
    out = lm_synonyms(text, 1, random.Random(0), tiny_model, tokenizer, max_candidates=1)
    firsts = {i: match_case(forms[0], tw.words[i].text) for i, forms in options.items()}
    assert len(firsts) == 4 and out == replace_words(text, tw.words, firsts)
    with pytest.raises(ParameterError, match="max_candidates must be a positive integer"):
        lm_synonyms("Fishermen gather.", 1, random.Random(0), tiny_model, tokenizer, max_candidates=0)


def test_paraphrase_rewrites_only_the_picked_sentences_and_leaves_torch_rng_alone(tiny_model, tokenizer):
    text = "One small step. Another quiet walk. A third sentence here. The last one ends."
    _, spans = sentences(analyse(text))
    picked = random.Random(9).sample(spans, 2)
    state = torch.random.get_rng_state()
    out = paraphrase(text, 0.5, random.Random(9), tiny_model, tokenizer)
    assert torch.equal(state, torch.random.get_rng_state())
    assert out == paraphrase(text, 0.5, random.Random(9), tiny_model, tokenizer)
    for span in spans:
        if span not in picked:
            assert text[slice(*span)] in out
    first = min(picked)[0]
    assert out[:first] == text[:first]


def test_paraphrase_batch_rewrites_the_picked_sentences_of_every_text(tiny_model, tokenizer):
    texts = ["One small step. Another quiet walk.", "A third sentence here. The last one ends. Really the end."]
    rng, spans = random.Random(3), [sentences(analyse(t))[1] for t in texts]
    picked = [rng.sample(s, half_up(0.5 * len(s))) for s in spans]  # the draws paraphrase_batch makes
    out = paraphrase_batch(texts, 0.5, random.Random(3), tiny_model, tokenizer, batch=1)
    assert len(out) == 2
    for text, new, all_spans, chosen in zip(texts, out, spans, picked):
        assert all(text[slice(*span)] in new for span in all_spans if span not in chosen)
    with pytest.raises(ParameterError, match="texts must be a list of strings"):
        paraphrase_batch(texts[0], 0.5, random.Random(3), tiny_model, tokenizer)


# -- the real model (slow) ----------------------------------------------------------------------

@pytest.mark.slow
def test_the_real_model_paraphrases_the_picked_sentence(real_model):
    text = "The fishermen gather along the river banks every morning. They prepare their small boats with care."
    out = apply("paraphrase", text, 0.5, random.Random(0), model=real_model.model, tokenizer=real_model.tokenizer)
    _, spans = sentences(analyse(text))
    kept = [text[a:b] for a, b in spans if text[a:b] in out.text]
    assert len(kept) == 1 and out.text != text and len(words_of(out.text)) >= 12
