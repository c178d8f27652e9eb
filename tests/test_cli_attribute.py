"""``provmark attribute``: zero-shot attribution from the command line (tiny random models, so
the verdicts themselves are not the point; the output shapes, the candidates and the errors are)."""

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import LlamaConfig, LlamaForCausalLM

from provmark.cli import cli
from provmark.detector.zero_shot import load_human_texts


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tokenizer):
    """Two tiny random Llamas over SmolLM2's vocabulary, saved with its tokenizer."""
    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, pad_token_id=2, bos_token_id=1,
                             eos_token_id=2, max_position_embeddings=1024)
        folder = tmp_path_factory.mktemp(f"tiny{seed}")
        LlamaForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        dirs.append(str(folder))
    return dirs


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(load_human_texts(1)[0][:800], encoding="utf-8")
    return str(path)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROVMARK_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_attribute_json_reports_every_candidate_and_picks_the_largest_p_value(model_dirs, text_file):
    result = CliRunner().invoke(cli, ["attribute", text_file, "--model", model_dirs[0], "--model", model_dirs[1],
                                      "--no-human", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [c["model"] for c in data["candidates"]] == model_dirs
    winner = next(c for c in data["candidates"] if c["model"] == data["winner"])
    assert winner["p_value_model"] == max(c["p_value_model"] for c in data["candidates"])
    assert data["consistent"] == winner["consistent_with_model"]
    assert len(data["log_likelihood_per_char"]) == 2
    for candidate in data["candidates"]:
        assert candidate["sampling"] == {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
        assert not candidate["prompt_scored"] and candidate["num_tokens"] > 100
        assert candidate["p_value_human"] is None and candidate["not_human"] is None


def test_attribute_not_human_test_ranks_against_cached_references(model_dirs, text_file, private_cache):
    args = ["attribute", text_file, "--model", model_dirs[0], "--human-references", "20", "--json"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    (candidate,) = json.loads(first.output)["candidates"]
    assert candidate["num_human_references"] == 20 and 1 / 21 <= candidate["p_value_human"] <= 1
    assert candidate["not_human"] == (candidate["p_value_human"] <= 0.01)
    (cached,) = (private_cache / "zero_shot").glob("human-*.npz")
    cached.touch()
    again = CliRunner().invoke(cli, args)  # from the cache: the same p-values
    assert json.loads(again.output) == json.loads(first.output)


def test_attribute_text_output_names_the_verdicts_and_the_prompt(model_dirs, text_file):
    result = CliRunner().invoke(cli, ["attribute", text_file, "--model", model_dirs[0], "--prompt", "Tell me about APT.",
                                      "--temperature", "0.7", "--top-k", "50", "--no-human"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(("consistent with " + model_dirs[0], "not written by " + model_dirs[0]))
    assert "(alpha 0.01, p " in lines[0]
    assert len(lines) == 2 and lines[1].startswith(model_dirs[0] + ": z ")
    assert lines[1].endswith("(scored after the prompt)")


@pytest.mark.parametrize("content, message", [
    (b"", "Error: text is empty; give the text to check"),
    (b"Hi there", "Error: text too short to score: 2 tokens, need at least 10"),
    (b"\xff\xfe", "Error: input is not UTF-8 text (byte 0xff at offset 0)"),
])
def test_attribute_refuses_bad_text_with_one_error_line(model_dirs, tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    result = CliRunner().invoke(cli, ["attribute", str(path), "--model", model_dirs[0], "--no-human"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [message]


def test_attribute_refuses_bad_alpha_and_missing_model(model_dirs, text_file, tmp_path):
    result = CliRunner().invoke(cli, ["attribute", text_file, "--model", model_dirs[0], "--alpha", "2", "--no-human"])
    assert result.exit_code == 1 and result.output.strip() == "Error: alpha must lie in (0, 1), got 2.0"
    result = CliRunner().invoke(cli, ["attribute", text_file, "--model", str(tmp_path / "none"), "--no-human"])
    assert result.exit_code == 1 and result.output.strip().startswith("Error: model folder not found")
