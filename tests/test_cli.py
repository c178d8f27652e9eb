"""The command line through click's CliRunner: exit codes, output and one-line errors."""

import json
import math

import pytest
from click.testing import CliRunner

from provmark.cli import cli
from provmark.watermark.keys import create_key, load_key, save_key


@pytest.fixture
def runner():
    return CliRunner()


def _fixed_key(path, scheme, params=None):
    """A key file with a fixed secret: the real-model round trips below must not depend on a fresh
    random key each run (a random key made them pass or fail by chance)."""
    save_key(create_key(scheme, params or {}, secret=bytes(range(32))), path)
    return path


@pytest.fixture
def key_path(tmp_path):
    return _fixed_key(tmp_path / "key.json", "kgw")


def _error_line(result):
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_keys_create_writes_a_loadable_key_and_says_where(runner, tmp_path):
    path = tmp_path / "k.json"
    result = runner.invoke(cli, ["keys", "create", "--scheme", "kgw", "--gamma", "0.5", "--delta", "3", "--out", str(path)])
    key = load_key(path)
    assert result.exit_code == 0
    assert result.output == f"created kgw key {key.key_id} in {path}\n"
    assert (key.config.gamma, key.config.delta, key.config.context_width) == (0.5, 3.0, 2)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--scheme", "nope"], "Error: unknown scheme 'nope'; known schemes: balance, kgw, majormark, majormark+, mpac, synonym, vanilla"),
        (["--scheme", "kgw", "--gamma", "2"], "Error: gamma must be a number in (0, 1), got 2.0; 0.25 is the paper's default"),
        (["--scheme", "kgw", "--context-width", "0"], "Error: context_width must be an integer in [1, 16], got 0; 2 is the default"),
    ],
)
def test_keys_create_refuses_bad_schemes_and_parameters(runner, tmp_path, args, message):
    result = runner.invoke(cli, ["keys", "create", *args, "--out", str(tmp_path / "k.json")])
    assert _error_line(result) == message
    assert result.exit_code == 1


def test_keys_create_does_not_overwrite_without_force(runner, key_path):
    result = runner.invoke(cli, ["keys", "create", "--scheme", "kgw", "--out", str(key_path)])
    assert "exists; choose another path or pass --force" in _error_line(result)
    assert runner.invoke(cli, ["keys", "create", "--scheme", "kgw", "--out", str(key_path), "--force"]).exit_code == 0


def test_detect_refuses_a_missing_key_file(runner, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("some text here")
    result = runner.invoke(cli, ["detect", "--key", str(tmp_path / "absent.json"), str(text)])
    assert _error_line(result) == f"Error: key file not found: {tmp_path / 'absent.json'}"


def test_detect_refuses_a_malformed_key_file(runner, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "provmark-key/1", "scheme": "kgw"}')
    text = tmp_path / "t.txt"
    text.write_text("some text here")
    result = runner.invoke(cli, ["detect", "--key", str(bad), str(text)])
    assert _error_line(result) == f"Error: {bad}: key file lacks field(s): params, prf_version, secret"


@pytest.mark.parametrize("content", [b"", b"   \n\t  \n"])
def test_detect_refuses_empty_text(runner, key_path, content):
    result = runner.invoke(cli, ["detect", "--key", str(key_path), "-"], input=content)
    assert _error_line(result) == "Error: text is empty; give the text to check"


def test_detect_refuses_bytes_that_are_not_utf8(runner, key_path):
    result = runner.invoke(cli, ["detect", "--key", str(key_path), "-"], input=b"caf\xe9 au lait")
    assert _error_line(result) == "Error: input is not UTF-8 text (byte 0xe9 at offset 3)"


def test_embed_refuses_an_empty_prompt(runner, key_path):
    result = runner.invoke(cli, ["embed", "--key", str(key_path), "--prompt", "  "])
    assert _error_line(result) == "Error: prompt is empty; give some text to continue"


@pytest.mark.parametrize("command", [[], ["keys"], ["keys", "create"], ["embed"], ["detect"]])
def test_every_command_has_help_with_h(runner, command):
    result = runner.invoke(cli, [*command, "-h"])
    assert result.exit_code == 0 and "Usage:" in result.output


@pytest.mark.slow
def test_detect_refuses_text_too_short_to_score(runner, key_path, tokenizer):
    result = runner.invoke(cli, ["detect", "--key", str(key_path), "-"], input="Hello there.")
    assert _error_line(result).startswith("Error: text too short to score:")


@pytest.mark.slow
def test_embed_then_detect_with_the_embedded_model(runner, key_path, tmp_path, real_model):
    result = runner.invoke(cli, ["embed", "--key", str(key_path), "--prompt", "Describe a thunderstorm over the sea.",
                                 "--max-new-tokens", "200", "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["key_id"] == load_key(key_path).key_id and payload["settings"]["seed"] == 3
    text = tmp_path / "out.txt"
    text.write_text(payload["text"])
    detected = runner.invoke(cli, ["detect", "--key", str(key_path), str(text), "--json"])
    assert detected.exit_code == 0, detected.output
    result = json.loads(detected.stdout)
    assert result["is_watermarked"] and result["p_value"] < 1e-3 and result["num_scored_tokens"] >= 50
    human = runner.invoke(cli, ["detect", "--key", str(key_path), str(text)])
    assert human.stdout.splitlines()[0] == "watermarked (alpha 0.001)"


def test_keys_create_makes_mpac_keys_with_bits_and_radix(runner, tmp_path):
    path = tmp_path / "m.json"
    result = runner.invoke(cli, ["keys", "create", "--scheme", "mpac", "--bits", "16", "--radix", "4", "--out", str(path)])
    assert result.exit_code == 0, result.output
    key = load_key(path)
    assert (key.scheme, key.config.bits, key.config.radix) == ("mpac", 16, 4)


def test_keys_create_refuses_options_the_scheme_lacks(runner, tmp_path):
    result = runner.invoke(cli, ["keys", "create", "--scheme", "kgw", "--bits", "8", "--out", str(tmp_path / "k.json")])
    assert _error_line(result) == "Error: unknown parameter(s) for kgw: bits; valid: context_width, delta, gamma"


def test_embed_checks_the_payload_against_the_key(runner, key_path, tmp_path):
    mkey = tmp_path / "m.json"
    runner.invoke(cli, ["keys", "create", "--scheme", "mpac", "--bits", "8", "--out", str(mkey)])
    missing = runner.invoke(cli, ["embed", "--key", str(mkey), "--prompt", "hi"])
    assert _error_line(missing) == "Error: mpac keys carry a payload: give --payload (decimal or 0x-hex)"
    too_big = runner.invoke(cli, ["embed", "--key", str(mkey), "--prompt", "hi", "--payload", "0x100"])
    assert _error_line(too_big) == "Error: payload '0x100' does not fit the key's capacity: payloads are integers in [0, 256) (8.00 bits)"
    zero_bit = runner.invoke(cli, ["embed", "--key", str(key_path), "--prompt", "hi", "--payload", "3"])
    assert _error_line(zero_bit) == "Error: kgw is a zero-bit scheme and carries no payload; drop --payload"


@pytest.mark.slow
def test_mpac_embed_then_detect_reports_the_payload(runner, tmp_path, real_model):
    mkey = tmp_path / "m.json"
    _fixed_key(mkey, "mpac", {"bits": 8, "radix": 4, "delta": 3.0})
    embedded = runner.invoke(cli, ["embed", "--key", str(mkey), "--prompt", "Write a long story about a dragon.",
                                   "--payload", "0xA7", "--max-new-tokens", "200", "--seed", "2", "--json"])
    assert embedded.exit_code == 0, embedded.output
    assert json.loads(embedded.stdout)["payload_hex"] == "0xa7"
    text = tmp_path / "m.txt"
    text.write_text(json.loads(embedded.stdout)["text"])
    detected = json.loads(runner.invoke(cli, ["detect", "--key", str(mkey), str(text), "--json"]).stdout)
    assert detected["is_watermarked"] and detected["payload_hex"] == "0xa7"
    assert len(detected["bit_confidences"]) == 8
    human = runner.invoke(cli, ["detect", "--key", str(mkey), str(text)])
    assert human.stdout.splitlines()[3].startswith("payload: 0xa7  lowest bit confidence: ")


def test_keys_create_makes_synonym_keys(runner, tmp_path):
    path = tmp_path / "s.json"
    result = runner.invoke(cli, ["keys", "create", "--scheme", "synonym", "--similarity-threshold", "0.95",
                                 "--max-candidates", "8", "--out", str(path)])
    key = load_key(path)
    assert result.output == f"created synonym key {key.key_id} in {path}\n"
    assert (key.config.similarity_threshold, key.config.max_candidates, key.config.context_width) == (0.95, 8, 1)


def test_embed_with_a_synonym_key_needs_text_and_generation_keys_refuse_it(runner, key_path, tmp_path):
    skey = _fixed_key(tmp_path / "s.json", "synonym")
    text = tmp_path / "t.txt"
    text.write_text("Some finished text.")
    assert _error_line(runner.invoke(cli, ["embed", "--key", str(skey), "--prompt", "hi"])) == \
        "Error: synonym keys watermark finished text: give --text FILE instead of --prompt"
    assert _error_line(runner.invoke(cli, ["embed", "--key", str(skey), "--text", str(text), "--payload", "3"])) == \
        "Error: synonym is a zero-bit scheme and carries no payload; drop --payload"
    assert _error_line(runner.invoke(cli, ["embed", "--key", str(skey), "--text", "-"], input=b"  \n")) == \
        "Error: text is empty; give the text to watermark"
    assert _error_line(runner.invoke(cli, ["embed", "--key", str(key_path), "--text", str(text)])) == \
        "Error: --text works with synonym keys; kgw watermarks while generating: give --prompt"
    assert _error_line(runner.invoke(cli, ["embed", "--key", str(key_path)])) == "Error: give --prompt, the text to continue"


def test_detect_with_a_synonym_key_loads_no_model_and_refuses_locate(runner, tmp_path):
    skey = _fixed_key(tmp_path / "s.json", "synonym")
    text = tmp_path / "t.txt"
    text.write_text("The quiet river runs through the old town, and the fishermen gather early to prepare boats.")
    result = runner.invoke(cli, ["detect", "--key", str(skey), str(text), "--min-tokens", "3", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["scheme"] == "synonym" and data["num_scored_tokens"] == len(data["word_bits"]) >= 3
    assert _error_line(runner.invoke(cli, ["detect", "--key", str(skey), str(text), "--locate"])) == \
        "Error: --locate works with balance and vanilla keys, not synonym"
    page = tmp_path / "why.html"
    explained = runner.invoke(cli, ["detect", "--key", str(skey), str(text), "--min-tokens", "3", "--explain",
                                    "--html", str(page)])
    assert explained.exit_code == 0, explained.output
    assert explained.stdout.startswith(text.read_text() + "\n\n")
    assert f"words scored: {data['num_scored_tokens']}  hits: {sum(b for _, _, b in data['word_bits'])} " in \
        explained.stdout
    assert "words scored" in page.read_text()
    assert _error_line(runner.invoke(cli, ["detect", "--key", str(skey), "-"], input=b"the and of")) == \
        "Error: text too short to score: 0 eligible words, need at least 10"


def test_keys_create_reports_the_payload_capacity_of_majormark_plus(runner, tmp_path):
    path = tmp_path / "mm.json"
    result = runner.invoke(cli, ["keys", "create", "--scheme", "majormark+", "--bits", "8", "--block-size", "4", "--out", str(path)])
    key = load_key(path)
    assert result.output == f"created majormark+ key {key.key_id} in {path} (payloads 0 to 195, 7.61 bits)\n"
    assert (key.config.bits, key.config.block_size) == (8, 4)


def test_detect_with_candidates_names_the_payload_the_text_carries(runner, tmp_path, tiny_model, tokenizer):
    from provmark.front import Watermark
    from provmark.watermark.models import Models

    key = create_key("mpac", {"bits": 16, "radix": 4, "delta": 4.0})
    save_key(key, tmp_path / "m.json")
    (generation,) = Watermark(key, Models.of(tiny_model, tokenizer)).embed(
        prompts=["Tell me about tides."], payloads=[0xBEEF], seed=0, max_new_tokens=200)
    (tmp_path / "text.txt").write_text(generation.text)
    (tmp_path / "issued.txt").write_text("# issued payloads\n12\n0xBEEF\n\n0x1234\n7\n")
    args = ["detect", "--key", str(tmp_path / "m.json"), str(tmp_path / "text.txt")]
    found = runner.invoke(cli, [*args, "--candidates", str(tmp_path / "issued.txt"), "--json"])
    assert found.exit_code == 0, found.output
    record_test = json.loads(found.stdout)["record_test"]
    assert record_test["payload"] == 0xBEEF and record_test["is_match"] and record_test["num_candidates"] == 4
    assert record_test["corrected_log10_p_value"] == pytest.approx(record_test["log10_p_value"] + math.log10(4))
    (tmp_path / "others.txt").write_text("12\n0x1234\n")
    missed = runner.invoke(cli, [*args, "--candidates", str(tmp_path / "others.txt")])
    assert missed.exit_code == 0 and "matches none of the candidates" in missed.stdout
    (tmp_path / "bad.txt").write_text("0x10000\n")
    assert _error_line(runner.invoke(cli, [*args, "--candidates", str(tmp_path / "bad.txt")])).startswith(
        "Error: payload '0x10000' does not fit the key's capacity")
