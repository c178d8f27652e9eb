"""The synonym watermark's payload (``payload_bits``): position rule, decoder, record scoring, front ends."""

import itertools
import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from provmark.detector import create_detector
from provmark.detector.records import match_records
from provmark.detector.synonym import SynonymDetector
from provmark.errors import ParameterError
from provmark.front import EmbedInputError, Watermark
from provmark.watermark.keys import create_key, load_key
from provmark.watermark.schemes import get_scheme, stored_config
from provmark.watermark.synonym import SynonymConfig, candidate_forms
from provmark.watermark.words import (
    analyse,
    match_case,
    normalise,
    replace_words,
    scored_words,
    substitute_is_eligible,
    word_bit,
    word_bit_position,
)

SECRET = bytes(range(32))
BENCHMARKED = {"version": 2, "similarity_threshold": 0.95, "max_candidates": 16, "max_fit_drop": 14.0}
PAYLOAD_KEY = create_key("synonym", {**BENCHMARKED, "payload_bits": 16}, secret=SECRET)
SUBKEY = PAYLOAD_KEY.subkey("word-bit").to_bytes(8, "big")
CORPUS = Path(__file__).parent.parent / "benchmarks" / "results"


def _texts(name, words, least=0):
    from benchmarks.synonym import prefix_words
    from provmark.watermark.words import WORD_PATTERN

    rows = [json.loads(line) for line in (CORPUS / name).read_text().splitlines() if line.strip()]
    return [prefix_words(r["text"], words) for r in rows if len(WORD_PATTERN.findall(r["text"])) >= least]


def _bare_embedder(key):
    from types import SimpleNamespace

    from provmark.watermark.synonym import SynonymEmbedder

    return SynonymEmbedder(key, model=object(), tokenizer=SimpleNamespace(bos_token_id=1, eos_token_id=2), encoder=object())


# -- the option ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [-1, 33, 1.5, True, "16", None])
def test_payload_bits_outside_0_to_32_are_refused_with_the_range_and_a_hint(bits):
    message = (f"payload_bits must be an integer in [0, 32], got {bits!r}; 0 (no payload) is the default, 16 suits "
               "texts of about 400 words")
    with pytest.raises(ParameterError, match=re.escape(message)):
        SynonymConfig(payload_bits=bits)


def test_a_zero_bit_key_stores_and_reads_as_before_the_option_existed():
    zero = create_key("synonym", {"version": 2}, secret=SECRET)
    assert zero.config.to_params()["payload_bits"] == 0 and not zero.config.supports_payload
    assert stored_config("synonym", zero.config.to_params()) == zero.config
    before = {k: v for k, v in zero.config.to_params().items() if k != "payload_bits"}  # a key file from before
    assert stored_config("synonym", before) == zero.config
    assert PAYLOAD_KEY.config.to_params()["payload_bits"] == 16 and PAYLOAD_KEY.config.supports_payload
    assert stored_config("synonym", PAYLOAD_KEY.config.to_params()) == PAYLOAD_KEY.config
    assert (PAYLOAD_KEY.config.bits, PAYLOAD_KEY.config.capacity) == (16, 65536)
    assert not get_scheme("synonym").supports_payload  # the scheme is zero-bit unless a key asks


def test_the_bit_of_a_payload_word_is_the_zero_bit_keys_bit():
    rng = random.Random(1)
    for _ in range(200):
        context, word = (rng.choice(["", "old", "river"]),), rng.choice(["town", "quiet", "boats", "Gather"])
        bit, position = word_bit_position(SUBKEY, context, word, 16)
        assert bit == word_bit(SUBKEY, context, word) and 0 <= position < 16
        assert word_bit_position(SUBKEY, context, word, 1) == (bit, 0)


def test_positions_are_uniform_and_independent_of_the_bit_without_the_key():
    # 16,000 distinct (context, word) pairs: chi-square of the (position, bit) cell counts over 32
    # cells, 31 degrees of freedom; 61.1 is its 0.999 quantile.
    counts = np.zeros((16, 2))
    for i in range(16_000):
        bit, position = word_bit_position(SUBKEY, ("w%d" % (i // 100),), "v%d" % i, 16)
        counts[position, bit] += 1
    expected = 16_000 / 32
    assert ((counts - expected) ** 2 / expected).sum() < 61.1


# -- the position rule under the embedder's substitutions ----------------------------------------

@pytest.mark.parametrize("version", [1, 2])
def test_positions_read_back_from_a_substituted_text_are_those_the_embedder_computed_at_its_slots(version):
    # Over the 18 development texts (first 120 words): make every substitution the embedder may
    # make there at once (each eligible word's first allowed candidate), as the embedder's search
    # sees it (its list of word forms), then cut the substituted text again as the detector does:
    # every scored word has the same (bit, position) both ways.
    key = create_key("synonym", {"version": version, "payload_bits": 16}, secret=SECRET)
    detector = create_detector(key)
    subkey = key.subkey("word-bit").to_bytes(8, "big")
    changed = 0
    for text in _texts("synonym_dev_corpus.jsonl", 120):
        tw = analyse(text)
        forms, chosen = [w.text for w in tw.words], {}
        for i, w in enumerate(tw.words):
            if tw.eligible[i]:
                allowed = [match_case(f, w.text) for f in candidate_forms(w.text.lower())]
                allowed = [f for f in allowed if substitute_is_eligible(f, w.text, tw.sentence_start[i], tw.names, version)]
                if allowed:
                    chosen[i] = forms[i] = allowed[0]
        scored = scored_words(tw, version)
        seen, planned = set(), []
        for i in range(len(forms)):
            context = tw.context(i, 1, forms)
            pair = (normalise(context[0]), normalise(forms[i]))
            if scored[i] and pair not in seen:
                seen.add(pair)
                planned.append(word_bit_position(subkey, context, forms[i], 16))
        substituted = replace_words(text, tw.words, chosen)
        read = [(bit, position) for _, _, bit, position in detector.word_bits_and_positions(substituted)]
        assert read == planned
        changed += len(chosen)
    assert changed > 300


def test_the_substitution_search_reaches_the_most_words_agreeing_with_the_payload():
    # Made-up options for every eligible word of a short text; brute force over every choice
    # gives the most scored words whose bit equals the payload bit at their own position.
    from provmark.watermark.synonym import _Plan

    key = create_key("synonym", {"payload_bits": 4}, secret=SECRET)
    subkey = key.subkey("word-bit").to_bytes(8, "big")
    text = "The quick river runs past old houses and large quiet gardens near the small town."
    tw = analyse(text)
    scored = scored_words(tw, 1)
    rng = random.Random(3)
    vocabulary = ["rapid", "gentle", "ancient", "village", "meadow", "storm", "journey", "bright", "strong", "forest"]
    options = {i: [(f, 0.1 + 0.01 * k) for k, f in enumerate(rng.sample(vocabulary, 2))] for i, e in enumerate(tw.eligible) if e}
    plan = _Plan(text, tw, scored, [])
    plan.options = options
    payload = 0b1011
    target = (1, 0, 1, 1)

    def agreeing(forms):
        total = 0
        for i in range(len(forms)):
            if scored[i]:
                bit, position = word_bit_position(subkey, ("" if i == 0 else forms[i - 1],), forms[i], 4)
                total += bit == target[position]
        return total

    result = _bare_embedder(key)._choose(plan, tuple(key.config.codeword_bits(payload)))
    indices = sorted(options)
    best = max(agreeing([dict(zip(indices, choice)).get(i, w.text) for i, w in enumerate(tw.words)])
               for choice in itertools.product(*[[tw.words[i].text] + [f for f, _ in options[i]] for i in indices]))
    marked = [w.text for w in analyse(result.text).words]
    assert agreeing(marked) == best > agreeing([w.text for w in tw.words])


@pytest.mark.parametrize("payloads,message", [
    (None, "this synonym key carries a 16-bit payload: give one payload per text"),
    ([1, 2], "this synonym key carries a 16-bit payload: give one payload per text"),
    ([65536], "payload must be an integer in [0, 65536), got 65536"),
    ([-1], "payload must be an integer in [0, 65536), got -1"),
    (["7"], "payload must be an integer in [0, 65536), got '7'"),
])
def test_the_embedder_refuses_a_missing_or_bad_payload(payloads, message):
    with pytest.raises(ParameterError, match=re.escape(message)):
        _bare_embedder(PAYLOAD_KEY).embed_batch(["Old boats gather near the quiet harbour."], payloads)


def test_a_zero_bit_embedder_refuses_a_payload():
    with pytest.raises(ParameterError, match=re.escape("this synonym key is zero-bit (payload_bits 0)")):
        _bare_embedder(create_key("synonym", secret=SECRET)).embed_batch(["Old boats gather."], [1])


# -- the decoder --------------------------------------------------------------------------------

def test_the_presence_p_value_is_the_exact_tail_of_the_sum_of_per_position_maxima():
    # Brute force over every bit assignment given the words at each position.
    counts = np.array([[2, 1], [0, 3], [1, 1], [0, 0]])
    evidence = SynonymDetector._payload_evidence(counts)
    sizes = counts.sum(axis=1).tolist()
    observed = int(counts.max(axis=1).sum())
    hits = total = 0
    for bits in itertools.product(*[itertools.product((0, 1), repeat=n) for n in sizes]):
        total += 1
        hits += sum(max(sum(b), len(b) - sum(b)) for b in bits) >= observed
    assert math.exp(evidence.log_p) == pytest.approx(hits / total, rel=1e-12, abs=0)
    # Majority bit per position, ties and empty positions read 0: 0, 1, 0, 0.
    assert evidence.payload == 0b0100
    # Confidence: 1 - P(max >= observed | n): n=3, max 2 -> 0; n=3, max 3 -> 1 - 2/8; n=2, max 1 -> 0; no word -> 0.
    assert evidence.bit_confidences == pytest.approx((0.0, 0.75, 0.0, 0.0), abs=1e-15)


def test_the_presence_test_keeps_its_level_on_unwatermarked_texts():
    # 18 development texts x 40 random payload keys at 16 bits: p-values of the payload-free test
    # are super-uniform; at most alpha of them at or below alpha (with binomial slack).
    texts = [analyse(t) for t in _texts("synonym_dev_corpus.jsonl", 400)]
    rng = random.Random(5)
    p_values = []
    for _ in range(40):
        detector = create_detector(create_key("synonym", {"payload_bits": 16}, secret=rng.randbytes(32)))
        p_values += [r.p_value for r in detector.detect_batch(texts)]
    assert sum(p <= 0.05 for p in p_values) <= 0.05 * len(p_values) + 3 * math.sqrt(0.05 * len(p_values))
    assert sum(p <= 0.5 for p in p_values) <= 0.5 * len(p_values) + 3 * math.sqrt(0.25 * len(p_values))


def test_a_zero_bit_key_has_no_records_to_score():
    detector = create_detector(create_key("synonym", secret=SECRET))
    with pytest.raises(ParameterError, match="synonym keys carry no payload: there are no records to score"):
        detector.record_tables(["Old boats gather."])
    with pytest.raises(ParameterError, match="there are no records to score"):
        match_records(detector, "Old boats gather.", [1])


def test_record_tables_and_detection_share_one_reading_of_the_text():
    detector = create_detector(PAYLOAD_KEY)
    text = _texts("synonym_corpus.jsonl", 400)[0]
    (result,), (table,) = detector.detect_with_tables([text])
    assert result == detector.detect(text) and table.num_scored_tokens == result.num_scored_tokens
    assert table.counts.sum() == result.num_scored_tokens and len(result.bit_confidences) == 16
    hits, _ = table.score(np.array([result.payload], dtype=np.uint64))
    assert hits[0] == table.counts.max(axis=1).sum()  # the decoded payload takes each position's majority


def test_explain_marks_a_word_a_hit_when_its_bit_is_the_decoded_payloads_at_its_position():
    text = _texts("synonym_corpus.jsonl", 400)[0]
    explanation = Watermark(PAYLOAD_KEY).explain(text)
    (_, ), (table,) = create_detector(PAYLOAD_KEY).detect_with_tables([text])
    scored = [t for t in explanation.tokens if t.hit is not None]
    assert len(scored) == table.num_scored_tokens and sum(t.hit for t in scored) == table.counts.max(axis=1).sum()


# -- front ends ---------------------------------------------------------------------------------

def test_the_front_door_asks_the_key_not_the_scheme_whether_a_payload_is_due():
    with pytest.raises(EmbedInputError, match="synonym keys carry a payload: give one per input"):
        Watermark(PAYLOAD_KEY).embed(texts=["Old boats gather."])
    with pytest.raises(EmbedInputError, match="synonym is a zero-bit scheme and carries no payload"):
        Watermark(create_key("synonym", secret=SECRET)).embed(texts=["Old boats gather."], payloads=[3])


def test_keys_create_takes_payload_bits_for_a_synonym_key_and_refuses_bad_values(tmp_path):
    from provmark.cli import cli

    runner = CliRunner()
    path = tmp_path / "s.json"
    made = runner.invoke(cli, ["keys", "create", "--scheme", "synonym", "--payload-bits", "16", "--out", str(path)])
    assert made.exit_code == 0, made.output
    assert load_key(path).config.payload_bits == 16 and "(payloads 0 to 65535, 16.00 bits)" in made.output
    bad = runner.invoke(cli, ["keys", "create", "--scheme", "synonym", "--payload-bits", "40", "--out", str(tmp_path / "b.json")])
    assert bad.exit_code == 1 and bad.output.splitlines()[-1] == (
        "Error: payload_bits must be an integer in [0, 32], got 40; 0 (no payload) is the default, 16 suits texts of "
        "about 400 words")
    word = runner.invoke(cli, ["keys", "create", "--scheme", "synonym", "--payload-bits", "many", "--out", str(tmp_path / "c.json")])
    assert word.exit_code == 2 and "'many' is not a valid integer" in word.output


# -- round trips through the real models (slow) ------------------------------------------------

@pytest.fixture(scope="module")
def long_embedded(real_model):
    """A 400-word corpus text watermarked with a 16-bit payload under the benchmarked settings."""
    from provmark.watermark.synonym import SynonymEmbedder

    text = _texts("synonym_corpus.jsonl", 400, least=400)[1]
    embedder = SynonymEmbedder(PAYLOAD_KEY, model=real_model.model, tokenizer=real_model.tokenizer)
    return text, 0xB3A5, embedder.embed(text, 0xB3A5)


@pytest.mark.slow
def test_a_16_bit_payload_embedded_in_400_words_decodes_back(long_embedded):
    text, payload, embedded = long_embedded
    result = create_detector(PAYLOAD_KEY).detect(embedded.text)
    before = create_detector(PAYLOAD_KEY).detect(text)
    assert result.num_scored_tokens > 64  # distinct (context, word) pairs: a substitution may split a repeat
    assert result.payload == payload and result.payload_hex == "0xb3a5"
    assert result.p_value < before.p_value and len(result.bit_confidences) == 16


@pytest.mark.slow
def test_record_scoring_names_the_embedded_record_among_1000_random_candidates(long_embedded):
    text, payload, embedded = long_embedded
    rng = random.Random(11)
    candidates = [c for c in rng.sample(range(1 << 16), 1001) if c != payload][:1000] + [payload]
    rng.shuffle(candidates)
    detector = create_detector(PAYLOAD_KEY)
    match = match_records(detector, embedded.text, candidates)
    assert match.payload == payload and match.is_match and match.num_candidates == 1001
    assert not match_records(detector, text, candidates).is_match
    # An edited copy (first sentence dropped, a sentence added) is still named.
    edited = embedded.text[embedded.text.index(". ") + 2:] + " This sentence was added later."
    assert match_records(detector, edited, candidates).payload == payload
