"""Explanations: which tokens carried evidence, rendered for a terminal and as an HTML page."""

import json
from html.parser import HTMLParser

import click
import pytest
import torch
from click.testing import CliRunner

from provmark.cli import cli
from provmark.detector import create_detector
from provmark.detector.explain import explain
from provmark.detector.render import render_html, render_terminal
from provmark.front import explain_text
from provmark.kernels.shard_bias import preferred_mask
from provmark.watermark.hook import generate
from provmark.watermark.keys import create_key, save_key
from provmark.watermark.proxy import Proxy
from provmark.watermark.schemes import watermarker_class

SECRET = bytes(range(32))
SHARD_SCHEMES = {
    "kgw": ({}, None),
    "mpac": ({"bits": 8, "radix": 4}, 0xA7),
    "majormark": ({"bits": 8}, 0x5A),
    "majormark+": ({"bits": 8}, 0x5B),
    "vanilla": ({"bits": 8, "segment_bits": 8}, 0xC3),
}


def _marked(tiny_model, tokenizer, scheme, params, payload, proxy=None):
    key = create_key(scheme, {**params, "delta": 4.0}, secret=SECRET)
    (gen,) = generate(tiny_model, tokenizer, ["a b"], key, None if payload is None else [payload], chat=False, seed=1,
                      max_new_tokens=120, min_new_tokens=120, proxy=proxy)
    return key, list(gen.token_ids)


@pytest.mark.parametrize("scheme", sorted(SHARD_SCHEMES))
def test_hits_are_exactly_the_ids_the_embedder_preferred(tiny_model, tokenizer, scheme):
    params, payload = SHARD_SCHEMES[scheme]
    key, ids = _marked(tiny_model, tokenizer, scheme, params, payload)
    explanation = explain(create_detector(key), ids)
    assert explanation.result.payload == payload and explanation.result.is_watermarked
    watermarker = watermarker_class(scheme)(key)
    h = key.config.context_width
    scored = [t for t in explanation.tokens if t.hit is not None]
    assert len(scored) == explanation.result.num_scored_tokens > 50
    for token in scored:
        context = torch.tensor([ids[token.index - h : token.index]])
        step = watermarker.step_params(context, None if payload is None else [payload])
        mask = preferred_mask(step.keys, step.salts, context, step.shard_counts, step.preferred, tokenizer.vocab_size + 17,
                              position_keys=step.position_keys, pool_keys=step.pool_keys, pool_bits=step.pool_bits)
        assert token.hit == bool(mask[0, ids[token.index]]), token
    # the watermark shows: far more hits than text without the key would have
    assert explanation.num_hits > explanation.expected_hits + 0.2 * len(scored)


def test_unscored_tokens_are_the_first_h_and_the_repeated_contexts():
    key = create_key("kgw", secret=SECRET)  # context width 2
    ids = [5, 6, 7, 5, 6, 8, 9, 5, 6]  # token 5 repeats the context (5, 6) of token 2
    explanation = explain(create_detector(key), ids)
    assert [t.hit is None for t in explanation.tokens] == [True, True, False, False, False, True, False, False, False]
    assert all(t.expected == 0.25 for t in explanation.tokens if t.hit is not None)


def test_kgw_hits_are_the_green_count_behind_the_p_value():
    key = create_key("kgw", secret=SECRET)
    ids = [(31 * i * i + 7 * i) % 4093 for i in range(300)]
    explanation = explain(create_detector(key), ids)
    result = explanation.result
    n, gamma = result.num_scored_tokens, 0.25
    greens = round(result.score * (n * gamma * (1 - gamma)) ** 0.5 + gamma * n)
    assert explanation.num_hits == greens
    assert explanation.expected_hits == pytest.approx(gamma * n)


def test_balance_hits_follow_the_decoded_partition(tiny_model, tokenizer):
    proxy = Proxy(tiny_model, tokenizer)
    key, ids = _marked(tiny_model, tokenizer, "balance", {"bits": 8, "segment_bits": 8, "head": 64}, 0x3C, proxy)
    explanation = explain(create_detector(key, proxy=proxy), ids)
    scored = [t for t in explanation.tokens if t.hit is not None]
    assert explanation.result.payload == 0x3C and len(scored) == explanation.result.num_scored_tokens
    assert all(0.0 <= t.expected <= 1.0 for t in scored)
    assert explanation.num_hits > explanation.expected_hits + 0.2 * len(scored)


def test_a_sequence_too_short_to_score_has_no_evidence():
    explanation = explain(create_detector(create_key("mpac", secret=SECRET)), [4, 5])
    assert [t.hit for t in explanation.tokens] == [None, None]
    assert explanation.result.p_value == 1.0 and explanation.num_hits == 0


class _Page(HTMLParser):
    """Collects the token spans, the text container's characters and the decoded bits."""

    def __init__(self):
        super().__init__()
        self.depth, self.text, self.tokens, self.bits, self.verdict, self._in_verdict = 0, [], [], [], None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id") == "text":
            self.depth = 1
        elif self.depth:
            self.depth += 1
        if tag == "span" and "tok" in attrs.get("class", "").split():
            self.tokens.append(attrs)
        if "data-bit" in attrs:
            self.bits.append(float(attrs["data-confidence"]))
        self._in_verdict = attrs.get("id") == "verdict"

    def handle_endtag(self, tag):
        if self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.text.append(data)
        if self._in_verdict:
            self.verdict, self._in_verdict = data, False


def test_html_page_holds_every_token_the_exact_text_and_the_bits(tokenizer):
    key = create_key("mpac", {"bits": 8, "radix": 4}, secret=SECRET)
    text = "Tides rise & fall <twice> a day, because the Moon's pull — and the Sun's — shifts the oceans.\n\nTwice!"
    explanation = explain_text(key, text, tokenizer)
    page = _Page()
    page.feed(render_html(explanation))
    assert "".join(page.text) == text
    assert len(page.tokens) == len(explanation.tokens)
    assert sum(t.get("data-hit") == "1" for t in page.tokens) == explanation.num_hits
    assert sum("unscored" in t["class"] for t in page.tokens) == sum(t.hit is None for t in explanation.tokens)
    assert page.bits == pytest.approx(list(explanation.result.bit_confidences), abs=1e-6)
    assert page.verdict == ("watermarked" if explanation.result.is_watermarked else "not watermarked")


def test_a_synonym_key_explains_every_word_and_its_hits_are_the_one_bits():
    from provmark.detector.synonym import SynonymDetector
    from provmark.watermark.words import WORD_PATTERN

    key = create_key("synonym", secret=SECRET)
    text = ("The quiet river runs through the old town, and the fishermen gather early to prepare their boats. "
            "The quiet river runs through the old town again.")
    explanation = explain_text(key, text, None)
    assert explanation.unit == "word" and explanation.text == text
    assert [text[t.start:t.end] for t in explanation.tokens] == WORD_PATTERN.findall(text)
    assert all(t.token_id is None for t in explanation.tokens)
    (result,) = SynonymDetector(key).detect_batch([text])
    scored = [(t.start, t.end, int(t.hit)) for t in explanation.tokens if t.hit is not None]
    assert scored == list(result.word_bits) and len(scored) == result.num_scored_tokens > 5
    assert explanation.result.log10_p_value == result.log10_p_value
    assert explanation.expected_hits == len(scored) / 2
    # the repeated sentence's words are unscored: the same (context, word) draws again
    assert all(t.hit is None for t in explanation.tokens if t.start > text.index("again") - 40)
    page = _Page()
    page.feed(render_html(explanation))
    assert "".join(page.text) == text
    assert len(page.tokens) == len(explanation.tokens) and all("data-token-id" not in t for t in page.tokens)
    assert sum(t.get("data-hit") == "1" for t in page.tokens) == explanation.num_hits
    assert explanation.to_dict()["unit"] == "word"


def test_terminal_rendering_is_the_text_then_the_summary(tokenizer):
    key = create_key("kgw", secret=SECRET)
    text = "A quiet harbour at dawn, gulls circling over the fishing boats."
    explanation = explain_text(key, text, tokenizer)
    plain = click.unstyle(render_terminal(explanation))
    assert plain.startswith(text + "\n\n")
    assert f"hits: {explanation.num_hits} (expected without the key: {explanation.expected_hits:.1f})" in plain


def test_cli_explain_prints_token_evidence_as_json_and_writes_the_page(tokenizer, tmp_path):
    key_path = tmp_path / "k.json"
    save_key(create_key("kgw", secret=SECRET), key_path)
    text_path = tmp_path / "t.txt"
    text_path.write_text("The lighthouse keeper climbed the stairs every evening to light the lamp for passing ships.")
    page = tmp_path / "page.html"
    result = CliRunner().invoke(cli, ["detect", "--key", str(key_path), str(text_path), "--explain", "--json",
                                      "--html", str(page)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["num_hits"] == sum(t["hit"] is True for t in data["tokens"])
    assert data["result"]["num_scored_tokens"] == sum(t["hit"] is not None for t in data["tokens"])
    parsed = _Page()
    parsed.feed(page.read_text())
    assert "".join(parsed.text) == text_path.read_text()


def test_cli_refuses_explain_with_locate(tokenizer, tmp_path):
    key_path = tmp_path / "k.json"
    save_key(create_key("vanilla", secret=SECRET), key_path)
    text_path = tmp_path / "t.txt"
    text_path.write_text("Some text to look at.")
    result = CliRunner().invoke(cli, ["detect", "--key", str(key_path), str(text_path), "--locate", "--explain"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: --locate cannot be combined with --explain or --html"
