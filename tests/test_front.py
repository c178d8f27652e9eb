"""The front door and the one scheme registry: a scheme registered from here, a toy zero-bit scheme
that no front end knows of, reaches ``keys create``, ``embed``, ``detect``, the API and the
evaluation runner without any of them being edited; the API's schemas follow the config
dataclasses and ``DetectionResult``."""

import dataclasses
import json
import math
import typing
from dataclasses import dataclass

import click
import pytest
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient

from provmark.api import schemas
from provmark.api.app import create_app
from provmark.api.registry import Registry
from provmark.cli import cli
from provmark.detector.base import Evidence, PairDetector
from provmark.detector.result import DetectionResult
from provmark.detector.stats import binomial_log_sf
from provmark.errors import InvalidTextError, ParameterError
from provmark.evaluation import SchemeSpec, Suite, run_suite
from provmark.front import EmbedInputError, Watermark, check_embed_inputs, locate_schemes
from provmark.watermark.base import SchemeConfig, StepParams, Watermarker
from provmark.watermark.keys import create_key, load_key
from provmark.watermark.models import Models
from provmark.watermark.params import attribute_docs, scheme_params
from provmark.watermark.schemes import SCHEMES, Scheme, get_scheme, register, unregister
from tests.api.conftest import MASTER_KEY, WordModels, plain_text, watermarked_text


@dataclass(frozen=True, kw_only=True)
class ToyConfig(SchemeConfig):
    """A toy zero-bit scheme: a keyed coin prefers one of ``coin_shards`` shards per context."""

    scheme = "toy"
    context_width: int = 1
    """Tokens of context that seed the coin."""
    delta: float = 3.0
    """Bias added to the preferred shard."""
    coin_shards: int = 2
    """Shards the coin picks among (the preferred share is 1 / coin_shards)."""

    def __post_init__(self):
        if not 2 <= self.coin_shards <= 8:
            raise ParameterError(f"coin_shards must be in [2, 8], got {self.coin_shards!r}")


class ToyWatermarker(Watermarker):
    def step_params(self, contexts, payloads):
        batch, device = contexts.shape[0], contexts.device

        def full(value):
            return torch.full((batch,), value, dtype=torch.int64, device=device)

        return StepParams(keys=self.key_words(batch, device), salts=full(0), shard_counts=full(self.config.coin_shards),
                          preferred=full(1), deltas=torch.full((batch,), float(self.config.delta), device=device))


class ToyDetector(PairDetector):
    def _score_tokens(self, contexts, tokens):
        salts = torch.zeros(tokens.shape[0], dtype=torch.int64)
        return self.shards(contexts, tokens, salts, self.key.config.coin_shards) == 0

    def _aggregate_scores(self, token_scores, seq_index, num_sequences):
        share = 1 / self.key.config.coin_shards
        trials = torch.bincount(seq_index, minlength=num_sequences).tolist()
        hits = torch.bincount(seq_index, weights=token_scores.double(), minlength=num_sequences).round().long().tolist()
        return [Evidence((h - share * n) / math.sqrt(n * share * (1 - share)), binomial_log_sf(h, n, share))
                if n else Evidence(0.0, 0.0) for h, n in zip(hits, trials)]


@pytest.fixture
def toy():
    scheme = register(Scheme(name="toy", config=ToyConfig, watermarker=ToyWatermarker, detector=ToyDetector))
    yield scheme
    unregister("toy")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model, tokenizer):
    """The tiny random Llama and the embedded tokenizer saved as a local model folder (``--model``)."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _ok(result):
    assert result.exit_code == 0, result.output
    return result.stdout


def test_a_toy_scheme_registered_here_reaches_keys_create_embed_and_detect(toy, tmp_path, model_dir):
    runner = CliRunner()
    key_path = tmp_path / "toy.json"
    assert _ok(runner.invoke(cli, ["keys", "create", "--scheme", "toy", "--coin-shards", "4", "--out", str(key_path)]))
    key = load_key(key_path)
    assert key.config == ToyConfig(coin_shards=4)
    assert "--coin-shards" in _ok(runner.invoke(cli, ["keys", "create", "-h"]))

    embedded = json.loads(_ok(runner.invoke(cli, ["embed", "--key", str(key_path), "--prompt", "Tell me about tides.",
                                                  "--max-new-tokens", "120", "--seed", "1", "--json",
                                                  "--model", str(model_dir)])))
    text_path = tmp_path / "text.txt"
    text_path.write_text(embedded["text"])
    found = json.loads(_ok(runner.invoke(cli, ["detect", "--key", str(key_path), str(text_path), "--json",
                                               "--model", str(model_dir)])))
    assert found["scheme"] == "toy" and found["is_watermarked"] and found["p_value"] < 1e-6

    other = tmp_path / "other.json"
    _ok(runner.invoke(cli, ["keys", "create", "--scheme", "toy", "--coin-shards", "4", "--out", str(other)]))
    unrelated = json.loads(_ok(runner.invoke(cli, ["detect", "--key", str(other), str(text_path), "--json",
                                                   "--model", str(model_dir)])))
    assert not unrelated["is_watermarked"]


def test_a_toy_scheme_registered_here_reaches_the_api(toy):
    registry = Registry.open(":memory:", MASTER_KEY)
    tenant, token = registry.create_tenant("acme")
    client = TestClient(create_app(registry, models=WordModels()))
    auth = {"Authorization": f"Bearer {token}"}
    created = client.post("/v1/keys", json={"scheme": "toy", "params": {"delta": 4.0}}, headers=auth)
    assert created.status_code == 201, created.text
    assert created.json()["params"] == {"context_width": 1, "delta": 4.0, "coin_shards": 2}
    assert "toy" in client.get("/openapi.json").json()["components"]["schemas"]["KeyCreate"]["properties"]["scheme"]["enum"]
    key = registry.watermark_key(created.json()["key_id"])
    marked = client.post("/v1/verify", json={"text": watermarked_text(key)}, headers=auth).json()
    assert marked["watermarked"] and marked["results"][0]["scheme"] == "toy"
    assert not client.post("/v1/verify", json={"text": plain_text()}, headers=auth).json()["watermarked"]
    registry.close()


def test_a_toy_scheme_registered_here_reaches_the_evaluation_runner(toy, tiny_model, tokenizer):
    suite = Suite("toy", (SchemeSpec("toy", "toy", {"delta": 4.0}), SchemeSpec("kgw", "kgw", {"delta": 4.0})),
                  ("delete",), prompts=2, tokens=60, batch=2, strengths={"delete": (0.1,)})
    evaluation = run_suite(suite, tiny_model, tokenizer, seed=0, prompts=["Tell me about tides.", "Name a colour."])
    rows = [r for r in evaluation.rows if r["scheme"] == "toy" and r["kind"] == "watermarked"]
    assert len(rows) == 4 and all(r["detected_0.01"] for r in rows if r["attack"] == "none")


def test_no_scheme_is_decided_outside_the_registry():
    for name, scheme in SCHEMES.items():
        assert scheme.generation_time == (scheme.watermarker is not None)
        assert scheme.detector_class.supports_locate == scheme.supports_locate
    assert [n for n, s in SCHEMES.items() if s.uses_proxy] == ["balance"]
    assert [n for n, s in SCHEMES.items() if not s.generation_time] == ["synonym"]
    assert locate_schemes() == "balance and vanilla"


def test_a_scheme_needs_exactly_one_way_to_embed_and_a_new_name(toy):
    with pytest.raises(ParameterError, match="exactly one"):
        Scheme(name="toy2", config=ToyConfig, detector=ToyDetector)
    with pytest.raises(ParameterError, match="registered already"):
        register(Scheme(name="toy", config=ToyConfig, watermarker=ToyWatermarker, detector=ToyDetector))


@pytest.mark.parametrize("inputs,reason", [
    ({"prompts": ["hi"], "texts": ["x"]}, "wants_prompt"),
    ({}, "no_prompt"),
    ({"prompts": ["hi"], "payloads": [1]}, "no_payload"),
])
def test_embed_inputs_of_the_wrong_kind_are_refused_with_a_reason(inputs, reason):
    with pytest.raises(EmbedInputError) as caught:
        check_embed_inputs(get_scheme("kgw"), **inputs)
    assert caught.value.reason == reason


def test_embed_inputs_are_checked_once_for_every_kind_of_scheme():
    with pytest.raises(EmbedInputError) as caught:
        check_embed_inputs(get_scheme("synonym"), prompts=["hi"])
    assert caught.value.reason == "wants_text"
    with pytest.raises(EmbedInputError) as caught:
        check_embed_inputs(get_scheme("mpac"), prompts=["hi"])
    assert caught.value.reason == "needs_payload"
    with pytest.raises(InvalidTextError, match="prompt is empty"):
        check_embed_inputs(get_scheme("kgw"), prompts=[" \n"])
    with pytest.raises(ParameterError, match="2 payloads for 1 inputs"):
        check_embed_inputs(get_scheme("mpac"), prompts=["hi"], payloads=[1, 2])


def test_detect_refuses_empty_and_unscorable_text_and_locate_where_unsupported():
    watermark = Watermark(create_key("synonym"), Models())
    with pytest.raises(InvalidTextError, match="text is empty"):
        watermark.detect(["  "], min_tokens=1)
    with pytest.raises(InvalidTextError, match="0 eligible words, need at least 1"):
        watermark.detect(["a an the"], min_tokens=0)
    assert watermark.detect(["a an the"])[0].num_scored_tokens == 0  # min_tokens None: p = 1, no error
    with pytest.raises(ParameterError, match="locate works with balance and vanilla keys, not synonym"):
        watermark.detect(["some words here"], locate=True)


def test_a_proxy_is_refused_by_a_scheme_that_uses_none():
    with pytest.raises(ParameterError, match="kgw uses no proxy model"):
        Watermark(create_key("kgw"), Models(), proxy=object())


def test_every_scheme_parameter_reaches_the_cli_and_the_api_from_its_config():
    declared = {f.name for scheme in SCHEMES.values() for f in dataclasses.fields(scheme.config)}
    assert set(scheme_params()) == declared
    assert set(schemas.KeyParams.model_fields) == declared
    create = cli.commands["keys"].commands["create"]
    context = click.Context(create, help_option_names=["-h", "--help"])
    options = {opt for p in create.get_params(context) for opt in p.opts}
    assert {"--lm-lookahead", "--max-fit-drop", "--proxy-context"} <= options
    assert {p.option for p in scheme_params().values()} <= options
    assert scheme_params()["max_fit_drop"].help.startswith("synonym: Most the fit")


def test_the_api_verification_result_carries_every_detection_result_field():
    result_fields = [f.name for f in dataclasses.fields(DetectionResult)]
    out_fields = list(schemas.KeyVerificationOut.model_fields)
    assert out_fields[: len(result_fields)] == result_fields
    docs = attribute_docs(DetectionResult)
    assert schemas.KeyVerificationOut.model_fields["word_bits"].description == docs["word_bits"]
    hints = typing.get_type_hints(DetectionResult)
    assert all(f in hints for f in result_fields)
