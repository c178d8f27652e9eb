"""The synonym scheme: words and offsets, eligibility and its stability, keyed bits, detection,
calibration, config, refusals; round trips through the real models are marked slow."""

import json
import math
import random
import re
from pathlib import Path

import pytest

from provmark.detector import create_detector
from provmark.errors import InvalidTextError, ParameterError
from provmark.front import detect_text
from provmark.watermark import lexicon
from provmark.watermark.keys import create_key
from provmark.watermark.synonym import SynonymConfig, candidate_forms
from provmark.watermark.words import (
    analyse,
    form_is_eligible,
    is_carrier,
    match_case,
    replace_words,
    scored_words,
    sentences,
    substitute_is_eligible,
    word_bit,
)

SECRET = bytes(range(32))
KEY = create_key("synonym", secret=SECRET)
PARAGRAPH = (
    "The river runs quietly through the old town, and in the early morning the fishermen gather along its banks to "
    "prepare their boats. Most of them have worked on the water for many years, and they know every bend and every "
    "shallow place where the current changes. The children of the town often watch them from the bridge, hoping to "
    "see a large catch brought to shore."
)
VOCABULARY = sorted(w for w in set(re.findall(r"[a-z]+", PARAGRAPH * 3 + """ house garden quick slow bright dark
    happy sad walk run speak write large small strong weak begin finish choose build carry rapid gentle ancient modern
    village city mountain valley forest meadow storm weather journey travel answer question""")))


def _eligible_words(text):
    tw = analyse(text)
    return [w.text for w, e in zip(tw.words, tw.eligible) if e]


# -- words and offsets -------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    PARAGRAPH,
    "  Leading space,\ttabs\tand\r\nCRLF lines… “curly quotes” don’t break — em dashes—too.\n\n",
    "Ünïcödé wörds, 3.14 numbers, snake_case, e-mail: a.b@example.org and https://x.org/a?b=c#d!",
    "",
])
def test_putting_the_words_back_gives_the_text_byte_for_byte(text):
    tw = analyse(text)
    assert replace_words(text, tw.words, {i: w.text for i, w in enumerate(tw.words)}) == text
    assert all(text[w.start : w.end] == w.text for w in tw.words)


def test_replacing_words_changes_only_their_characters():
    text = "Hello,  big\tworld!\n(Small) things..."
    tw = analyse(text)
    out = replace_words(text, tw.words, {1: "huge", 4: "objects"})
    assert out == "Hello,  huge\tworld!\n(Small) objects..."


def test_sentences_span_from_first_word_to_before_the_next():
    text = "One small step. Then (another) one!\n\nNew paragraph here"
    sentence_of, spans = sentences(analyse(text))
    assert [text[a:b] for a, b in spans] == ["One small step.", "Then (another) one!", "New paragraph here"]
    assert sentence_of == [0, 0, 0, 1, 1, 1, 2, 2, 2]


# -- eligibility -------------------------------------------------------------------------------

def test_content_words_are_eligible_and_function_words_numbers_and_names_are_not():
    text = "Yesterday Maria bought 3 large cars and 12 old books in London because they were cheap."
    tw = analyse(text)
    eligible = dict(zip((w.text for w in tw.words), tw.eligible))
    assert eligible["bought"] and eligible["large"] and eligible["cars"] and eligible["books"] and eligible["cheap"]
    for word in ("Maria", "London", "3", "12", "and", "in", "because", "they", "were"):
        assert not eligible[word], word


def test_code_links_quotations_and_attached_words_are_never_eligible():
    text = ('Run `quick fix` now. See https://example.com/large/house and www.big-house.org today.\n'
            '```\nlarge house here\n```\n'
            'She said "large house" and “small garden” then wrote to big.house@mail.com about a well-known and/or '
            'large-scale plan.')
    assert _eligible_words(text) == ["Run", "See", "today", "said", "wrote", "plan"]


def test_a_sentence_start_is_eligible_unless_the_word_is_a_name_elsewhere():
    assert _eligible_words("Rapid growth followed.") == ["Rapid", "growth", "followed"]
    assert _eligible_words("Rapid growth followed. We met Mr Rapid.") == ["growth", "followed", "met"]
    assert "Large" in _eligible_words("Small towns. Large towns!")
    assert "LARGE" not in _eligible_words("Small towns. LARGE towns!")


def test_the_eligibility_rule_is_the_same_before_and_after_any_eligible_substitution():
    # Every eligible word of the paragraph swapped for every candidate that passes the rules at
    # its position: no word's eligibility changes (module doc of watermark.words).
    tw = analyse(PARAGRAPH)
    swaps = 0
    for i, w in enumerate(tw.words):
        if not tw.eligible[i]:
            continue
        for form in candidate_forms(w.text.lower())[:5]:
            form = match_case(form, w.text)
            if not form_is_eligible(form, tw.sentence_start[i], tw.names):
                continue
            after = analyse(replace_words(PARAGRAPH, tw.words, {i: form}))
            assert after.eligible == tw.eligible and len(after.words) == len(tw.words), (w.text, form)
            swaps += 1
    assert swaps > 50


def _corpus_texts(words):
    from benchmarks.synonym import prefix_words

    path = Path(__file__).parent.parent / "benchmarks" / "results" / "synonym_dev_corpus.jsonl"
    return [prefix_words(json.loads(line)["text"], words) for line in path.read_text().splitlines() if line.strip()]


def test_version_2_scores_the_eligible_carriers_only():
    tw = analyse(PARAGRAPH)
    scored = scored_words(tw, 2)
    assert scored_words(tw, 1) == tw.eligible
    assert all(e for e, s in zip(tw.eligible, scored) if s) and 10 < sum(scored) < sum(tw.eligible)
    carriers = {w.text for w, s in zip(tw.words, scored) if s}
    assert {"quietly", "gather", "prepare", "large"} <= carriers and not {"town", "boats", "shore"} & carriers
    result = create_detector(create_key("synonym", {"version": 2}, secret=SECRET)).detect(PARAGRAPH)
    assert [PARAGRAPH[a:b] for a, b, _ in result.word_bits] == [w.text for w, s in zip(tw.words, scored) if s]


@pytest.mark.parametrize("version", [1, 2])
def test_scored_words_are_unchanged_by_every_substitution_the_embedder_may_make_over_a_corpus(version):
    # The 18 development texts (first 120 words): each scored-word rule is invariant under every
    # single substitution of an eligible word by a candidate the embedder may use there, and
    # under all of them made at once (the first allowed candidate of every eligible word).
    swaps = 0
    for text in _corpus_texts(120):
        tw = analyse(text)
        scored = scored_words(tw, version)
        everything = {}
        for i, w in enumerate(tw.words):
            if not tw.eligible[i]:
                continue
            allowed = [match_case(f, w.text) for f in candidate_forms(w.text.lower())]
            allowed = [f for f in allowed if substitute_is_eligible(f, w.text, tw.sentence_start[i], tw.names, version)][:3]
            for form in allowed:
                after = analyse(replace_words(text, tw.words, {i: form}))
                assert (after.eligible, scored_words(after, version)) == (tw.eligible, scored), (w.text, form)
                swaps += 1
            if allowed:
                everything[i] = allowed[0]
        after = analyse(replace_words(text, tw.words, everything))
        assert (after.eligible, scored_words(after, version)) == (tw.eligible, scored)
    assert swaps > 1000


def test_a_carrier_is_only_replaced_by_a_carrier_in_version_2():
    assert is_carrier("large") and is_carrier("big") and not is_carrier("shore") and not is_carrier("banks")
    assert substitute_is_eligible("big", "large", False, frozenset(), 2)
    assert not substitute_is_eligible("shore", "large", False, frozenset(), 2)
    assert not substitute_is_eligible("large", "shore", False, frozenset(), 2)
    assert substitute_is_eligible("shore", "banks", False, frozenset(), 2)
    assert substitute_is_eligible("shore", "large", False, frozenset(), 1)


def test_the_embedder_takes_synonyms_from_the_parts_of_speech_a_word_is_usually_used_in():
    from provmark.watermark.synonym import usual_parts_of_speech

    assert usual_parts_of_speech("part") == "n" and usual_parts_of_speech("running") == "v"
    assert usual_parts_of_speech("command") == "nv"
    assert "separate" in candidate_forms("part") and "separate" not in candidate_forms("part", "n")
    assert set(candidate_forms("part", "n")) < set(candidate_forms("part"))


def test_candidates_are_inflected_like_the_word_and_are_not_the_same_stem():
    assert "sprinting" in candidate_forms("running") or "racing" in candidate_forms("running")
    assert "larger" in candidate_forms("bigger")
    assert all(not c.startswith("year") for c in candidate_forms("years"))
    assert candidate_forms("the") == ()


# -- keyed bits --------------------------------------------------------------------------------

def test_word_bit_compatibility_vector():
    # word-bit-v1 under the "word-bit" sub-key of secret bytes(range(32)); never change these.
    subkey = KEY.subkey("word-bit").to_bytes(8, "big")
    assert KEY.subkey("word-bit") == 17018348905156672939
    cases = [(("",), "river"), (("the",), "river"), (("The",), "RIVER"), (("ab",), "c"), (("a",), "bc"),
             (("old", "quiet"), "town"), (("", ""), "Café")]
    assert [word_bit(subkey, c, w) for c, w in cases] == [1, 0, 0, 1, 1, 0, 0]
    assert [word_bit(bytes(8), c, w) for c, w in cases] == [0, 1, 1, 1, 0, 1, 0]


def test_the_separator_keeps_word_boundaries_apart():
    subkey = KEY.subkey("word-bit").to_bytes(8, "big")
    rng = random.Random(1)
    pairs = ["".join(rng.choice("abcdefgh") for _ in range(8)) for _ in range(200)]
    differ = sum(word_bit(subkey, [p[:3]], p[3:]) != word_bit(subkey, [p[:4]], p[4:]) for p in pairs)
    assert 60 < differ < 140  # unrelated fair coins, not the same hash of the joined string


def test_bits_are_fair_coins_without_the_key():
    subkey = create_key("synonym", secret=bytes([7]) * 32).subkey("word-bit").to_bytes(8, "big")
    bits = [word_bit(subkey, [a], b) for a in VOCABULARY for b in VOCABULARY]
    share = sum(bits) / len(bits)
    assert share == pytest.approx(0.5, abs=4 * math.sqrt(0.25 / len(bits)))


# -- detection ---------------------------------------------------------------------------------

def _random_texts(count, words, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCABULARY) for _ in range(words)) + "." for _ in range(count)]


def test_false_positive_rate_on_unwatermarked_texts_is_at_most_alpha():
    # 10 keys x 300 texts of 100 words drawn from a small vocabulary (many repeated pairs).
    texts = _random_texts(300, 100, seed=3)
    p_values = []
    for k in range(10):
        detector = create_detector(create_key("synonym", secret=bytes([k + 1]) * 32))
        p_values += [r.p_value for r in detector.detect_batch(texts)]
    for alpha in (0.05, 0.01):
        rate = sum(p <= alpha for p in p_values) / len(p_values)
        assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / len(p_values)), (alpha, rate)


def test_a_text_whose_eligible_words_all_carry_bit_one_gets_the_exact_tail():
    # Keep only words whose bit after the previous kept word is 1: p = 2**-n exactly.
    detector = create_detector(KEY)
    subkey = KEY.subkey("word-bit").to_bytes(8, "big")
    rng = random.Random(5)
    words, previous = [], "so"
    while len(words) < 40:
        word = rng.choice(VOCABULARY)
        if form_is_eligible(word, False, frozenset()) and word not in words and word_bit(subkey, [previous], word):
            words.append(word)
            previous = word
    result = detector.detect("so " + " ".join(words))
    n = result.num_scored_tokens
    assert n == 40 and result.is_watermarked
    assert result.log10_p_value == pytest.approx(-40 * math.log10(2), rel=1e-9)
    assert [b for _, _, b in result.word_bits] == [1] * 40


def test_each_context_word_pair_is_counted_once():
    detector = create_detector(KEY)
    once = detector.detect("large storm. ")
    assert once.num_scored_tokens == 2
    assert detector.detect("large storm. " * 30).num_scored_tokens == 3  # adds ("storm", "large") once


def test_word_bits_report_each_scored_word_with_its_span():
    result = create_detector(KEY).detect(PARAGRAPH)
    assert len(result.word_bits) == result.num_scored_tokens
    spans = [(s, e) for s, e, _ in result.word_bits]
    assert spans == sorted(spans) and all(PARAGRAPH[s:e].isalpha() for s, e in spans)
    assert json.loads(result.to_json())["word_bits"][0] == list(result.word_bits[0])


def test_empty_or_wordless_text_is_not_watermarked_with_p_one():
    for text in ("", "the and of 123 ..."):
        result = create_detector(KEY).detect(text)
        assert (result.p_value, result.num_scored_tokens, result.is_watermarked) == (1.0, 0, False)


def test_detect_text_needs_no_tokenizer_and_counts_eligible_words():
    assert detect_text(KEY, PARAGRAPH).num_scored_tokens > 20
    with pytest.raises(InvalidTextError, match="text too short to score: 2 eligible words, need at least 10"):
        detect_text(KEY, "large storm", min_tokens=10)


def test_the_detector_reads_text_not_token_ids():
    with pytest.raises(InvalidTextError, match="synonym detection reads text"):
        create_detector(KEY).detect([1, 2, 3])


# -- config, registry, refusals ------------------------------------------------------------------

@pytest.mark.parametrize("params,message", [
    ({"similarity_threshold": 1.0}, "similarity_threshold must be a number in (0, 1), got 1.0; 0.9 is the default"),
    ({"max_candidates": 0}, "max_candidates must be an integer in [1, 64], got 0; 12 is the default"),
    ({"lm_lookahead": 33}, "lm_lookahead must be an integer in [0, 32], got 33; 4 is the default"),
    ({"max_fit_drop": 0}, "max_fit_drop must be a number in (0, 50], got 0; 6.0 is the default"),
    ({"context_width": 0}, "context_width must be an integer in [1, 16], got 0; 2 is the default"),
    ({"version": 3}, "version must be one of 1, 2, got 3; 2 is the recommended"),
])
def test_config_refuses_values_out_of_range(params, message):
    with pytest.raises(ParameterError, match=re.escape(message)):
        SynonymConfig(**params)


GENERATION_REFUSAL = ("synonym watermarks finished text, not generation: use provmark.watermark.synonym.embed_text "
                      "(provmark embed --key KEY --text FILE)")


def test_the_generation_hook_refuses_a_synonym_key():
    from provmark.watermark.hook import WatermarkLogitsProcessor, generate

    with pytest.raises(ParameterError, match=re.escape(GENERATION_REFUSAL)):
        WatermarkLogitsProcessor(KEY)
    with pytest.raises(ParameterError, match=re.escape(GENERATION_REFUSAL)):
        generate(object(), object(), ["hi"], KEY)


def test_a_missing_wordnet_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(lexicon.WORDNET_ENV, str(tmp_path / "absent"))
    with pytest.raises(lexicon.WordNetMissingError, match=re.escape(f"WordNet 3.0 not found in {tmp_path / 'absent'}")) as info:
        lexicon.wordnet()
    assert "run `make wordnet`" in str(info.value) and lexicon.WORDNET_ENV in str(info.value)


def test_install_writes_the_45_lexicographer_file_names(tmp_path):
    target = lexicon.install_wordnet(lexicon.wordnet_dir(), tmp_path / "wordnet")
    lines = (target / "lexnames").read_text().splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.all\t3" and lines[44] == "44\tadj.ppl\t3"
    assert lines[18] == "18\tnoun.person\t1" and lines[43] == "43\tverb.weather\t2"


# -- the substitution search ------------------------------------------------------------------

def _bare_embedder(key):
    from types import SimpleNamespace

    from provmark.watermark.synonym import SynonymEmbedder

    return SynonymEmbedder(key, model=object(), tokenizer=SimpleNamespace(bos_token_id=1, eos_token_id=2), encoder=object())


@pytest.mark.parametrize("context_width,version", [(1, 1), (1, 2), (2, 1)])
def test_the_substitution_search_finds_the_most_one_bits_that_any_choice_reaches(context_width, version):
    # Every eligible word of a short text gets two or three made-up options; brute force over all
    # choices gives the most 1-bits among scored words, which the beam search must reach with
    # the fewest substitutions among those choices.
    import itertools

    from provmark.watermark.synonym import _Plan

    key = create_key("synonym", {"context_width": context_width, "version": version}, secret=SECRET)
    embedder = _bare_embedder(key)
    text = "The quick river runs past old houses and large quiet gardens near the small town."
    tw = analyse(text)
    scored = scored_words(tw, version)
    rng = random.Random(context_width * 10 + version)
    options = {i: [(f, 0.1 + 0.01 * k) for k, f in enumerate(rng.sample(VOCABULARY, rng.choice([1, 2])))]
               for i, e in enumerate(tw.eligible) if e}
    plan = _Plan(text, tw, scored, [])
    plan.options = options
    result = embedder._choose(plan)
    subkey = KEY.subkey("word-bit").to_bytes(8, "big")

    def ones(forms):
        return sum(word_bit(subkey, tuple(forms[j] if j >= 0 else "" for j in range(i - context_width, i)), forms[i])
                   for i in range(len(forms)) if scored[i])

    indices = sorted(options)
    best = max((ones([dict(zip(indices, choice)).get(i, w.text) for i, w in enumerate(tw.words)]), -sum(c != w for c, w in zip(choice, [tw.words[i].text for i in indices])))
               for choice in itertools.product(*[[tw.words[i].text] + [f for f, _ in options[i]] for i in indices]))
    marked = analyse(result.text)
    assert ones([w.text for w in marked.words]) == best[0] > ones([w.text for w in tw.words])
    assert len(result.substitutions) == -best[1]
    assert all(s.replacement in [f for f, _ in options[s.index]] for s in result.substitutions)


def test_the_development_diagnosis_gives_each_scored_word_the_first_reason_that_holds():
    # Model-free: slots, fits and (slot, candidate) rows made by hand in the shapes the embedder
    # gives them. fishermen has no inflected WordNet synonym; gather and prepare have synonyms
    # but no slot (as when none is one LM token).
    from benchmarks.synonym_dev import REASONS, diagnose
    from provmark.watermark.synonym import _Plan, _Slot

    text = "The river runs quietly through the old town, and the fishermen gather along its banks to prepare their boats."
    tw = analyse(text)
    plan = _Plan(text, tw, scored_words(tw, 2), [])
    at = {w.text: i for i, w in enumerate(tw.words)}
    assert [w.text for w, s in zip(tw.words, plan.scored) if s] == ["runs", "quietly", "old", "fishermen", "gather", "prepare"]
    for word, form in (("runs", "flees"), ("quietly", "softly"), ("old", "former")):
        plan.slots.append(_Slot(at[word], 0, 0, (form,), (0,)))
        plan.fits[at[word]] = (-1.0, [(form, -2.0)])
    rows = [(0, at["runs"], "flees", 1.0, 0.99), (0, at["quietly"], "softly", 2.0, 0.5), (0, at["old"], "former", 10.0, 0.99)]
    rank = [0, 0, 0]
    tight = diagnose([plan], rows, rank, 6.0, 4, 0.92, 2)
    assert [tight[r] for r in REASONS] == [1, 2, 1, 1, 1]
    loose = diagnose([plan], rows, rank, 14.0, 4, 0.4, 2)
    assert [loose[r] for r in REASONS] == [1, 2, 0, 0, 3]


# -- round trips through the real models (slow) ------------------------------------------------

@pytest.fixture(scope="module")
def embedded(real_model):
    from provmark.watermark.synonym import SynonymEmbedder

    embedder = SynonymEmbedder(KEY, model=real_model.model, tokenizer=real_model.tokenizer)
    return embedder.embed(PARAGRAPH)


@pytest.mark.slow
def test_embedding_changes_only_replaced_words_by_their_synonyms(embedded):
    assert embedded.substitutions
    original, marked = analyse(PARAGRAPH), analyse(embedded.text)
    assert marked.eligible == original.eligible and len(marked.words) == len(original.words)
    changed = {s.index: s.replacement for s in embedded.substitutions}
    assert replace_words(PARAGRAPH, original.words, changed) == embedded.text
    for s in embedded.substitutions:
        assert s.original == PARAGRAPH[s.start : s.end] and marked.words[s.index].text == s.replacement
        assert s.replacement.lower() in candidate_forms(s.original.lower())


@pytest.mark.slow
def test_a_batch_embeds_each_text_as_it_would_alone(real_model):
    from provmark.watermark.synonym import SynonymEmbedder

    key = create_key("synonym", {"version": 2}, secret=SECRET)
    embedder = SynonymEmbedder(key, model=real_model.model, tokenizer=real_model.tokenizer)
    texts = [PARAGRAPH, "Small boats gather near the quiet harbour.\n\nThe old fishermen prepare their nets early."]
    batch = embedder.embed_batch(texts)
    alone = [embedder.embed(t) for t in texts]
    assert [b.text for b in batch] == [a.text for a in alone] and batch[0].substitutions


@pytest.mark.slow
def test_embedding_raises_the_share_of_one_bits(embedded):
    detector = create_detector(KEY)
    before, after = detector.detect(PARAGRAPH), detector.detect(embedded.text)
    assert after.num_scored_tokens == before.num_scored_tokens
    ones = lambda r: sum(b for _, _, b in r.word_bits)  # noqa: E731
    assert ones(after) > ones(before) and after.p_value < before.p_value


@pytest.mark.slow
def test_cli_embeds_text_and_detects_it_without_a_model(tmp_path):
    from click.testing import CliRunner

    from provmark.cli import cli
    from provmark.watermark.keys import save_key

    runner = CliRunner()
    key_path = tmp_path / "s.json"
    save_key(KEY, key_path)
    source = tmp_path / "in.txt"
    source.write_text(PARAGRAPH.split(". ")[0] + ".\n")
    embedded = runner.invoke(cli, ["embed", "--key", str(key_path), "--text", str(source), "--json"])
    assert embedded.exit_code == 0, embedded.output
    payload = json.loads(embedded.stdout)
    assert payload["scheme"] == "synonym" and payload["substitutions"] and payload["text"].endswith("boats.\n")
    marked = tmp_path / "out.txt"
    marked.write_text(payload["text"])
    detected = runner.invoke(cli, ["detect", "--key", str(key_path), str(marked)])
    assert detected.exit_code == 0, detected.output
    assert detected.stdout.splitlines()[2].startswith("eligible words scored: ")
