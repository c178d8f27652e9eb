"""/v1/verify's zero-shot attribution block through the real app: off by default, the library's
test (a) when asked, in the prompt's context when given, charged to the work budget, refused
cleanly over the cap or without a model."""

import math

import pytest

from provmark.api.limits import ATTRIBUTION_WORK_WEIGHT, TOKENS_PER_REQUEST, WorkLimits
from provmark.detector.zero_shot import SamplingSettings, ZeroShotScorer, load_human_texts
from provmark.errors import ModelLoadError
from provmark.watermark.hook import generate
from provmark.watermark.models import LoadedModel, Models
from tests.api.conftest import WordModels, assert_error, plain_text

TEXT = ("Tides rise and fall twice a day because the Moon pulls on the oceans, and the Sun adds a smaller pull "
        "of its own, so the highest tides come when both line up at new and full moon.")


class PreloadedModels(Models):
    """Serves a model the test session already loaded."""

    def __init__(self, loaded: LoadedModel):
        super().__init__()
        self.name = loaded.name
        self._loaded, self._tokenizer = loaded, loaded.tokenizer


class UnloadableModels(WordModels):
    """A serving model whose weights cannot be loaded (the tokenizer alone works)."""

    def loaded(self):
        raise ModelLoadError("model folder not found: /nowhere")


def _key(client, tenant, scheme="kgw"):
    response = client.post("/v1/keys", json={"scheme": scheme}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def tiny_client(make_client, tiny_model, tokenizer):
    def make(**kwargs):
        return make_client(models=PreloadedModels(LoadedModel(model=tiny_model, tokenizer=tokenizer, name="tiny-llama")),
                           **kwargs)
    return make


def test_verify_has_no_attribution_block_and_loads_no_model_unless_asked(client, acme):
    _key(client, acme)
    body = client.post("/v1/verify", json={"text": plain_text()}, headers=acme.headers).json()
    assert body["attribution"] is None  # WordModels fails the test if the weights were loaded
    items = client.post("/v1/verify/batch", json={"texts": [plain_text()]}, headers=acme.headers).json()["items"]
    assert items[0]["attribution"] is None


def test_the_attribution_block_is_the_librarys_test_a_of_the_text_scored_alone(tiny_client, acme, tiny_model, tokenizer):
    client = tiny_client()
    _key(client, acme)
    response = client.post("/v1/verify", json={"text": TEXT, "attribution": True}, headers=acme.headers)
    assert response.status_code == 200, response.text
    block = response.json()["attribution"]
    scorer = ZeroShotScorer(tiny_model, tokenizer, name="tiny-llama")
    (expected,) = scorer.test([TEXT], alpha=1e-3, human=False)
    assert block["model"] == "tiny-llama" and block["num_tokens"] == expected.num_tokens
    assert block["z_score"] == pytest.approx(expected.z_score, rel=1e-9)
    assert block["p_value_model"] == pytest.approx(expected.p_value_model, rel=1e-9)
    assert block["consistent_with_model"] == expected.consistent_with_model and block["alpha"] == 1e-3
    assert block["sampling"] == {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
    assert block["prompt_scored"] is False and block["note"].startswith("scored alone")
    assert block["p_value_human"] is None and block["not_human"] is None  # test (b) is not run here


def test_attribution_scores_the_text_after_the_given_prompt_under_the_given_setting(tiny_client, acme, tiny_model,
                                                                                      tokenizer):
    client = tiny_client()
    _key(client, acme)
    options = {"prompt": "Why are there tides?", "temperature": 0.7}
    block = client.post("/v1/verify", json={"text": TEXT, "attribution": options}, headers=acme.headers).json()["attribution"]
    scorer = ZeroShotScorer(tiny_model, tokenizer, sampling=SamplingSettings(temperature=0.7))
    (expected,) = scorer.test([TEXT], ["Why are there tides?"], alpha=1e-3, human=False)
    alone = scorer.test([TEXT], alpha=1e-3, human=False)[0]
    assert block["prompt_scored"] is True and block["note"].startswith("scored after the prompt")
    assert block["z_score"] == pytest.approx(expected.z_score, rel=1e-9) and expected.z_score != alone.z_score
    assert block["sampling"] == {"temperature": 0.7, "top_k": 0, "top_p": 1.0}


def test_a_token_the_setting_could_not_have_sampled_rejects_with_an_infinite_z(tiny_client, acme):
    client = tiny_client()  # the random model's top 50 ids almost never hold the text's next token
    _key(client, acme)
    block = client.post("/v1/verify", json={"text": TEXT, "attribution": {"top_k": 50}},
                        headers=acme.headers).json()["attribution"]
    assert (block["z_score"], block["log10_p_value_model"], block["p_value_model"]) == ("inf", "-inf", 0.0)
    assert block["num_outside_support"] > 0 and not block["consistent_with_model"]


def test_batch_verify_attributes_every_text_and_takes_no_prompt(tiny_client, acme, tiny_model, tokenizer):
    client = tiny_client()
    _key(client, acme)
    texts = [TEXT, "A different short answer about the sea, its waves and the wind that raises them."]
    items = client.post("/v1/verify/batch", json={"texts": texts, "attribution": {"temperature": 1.0}},
                        headers=acme.headers).json()["items"]
    expected = ZeroShotScorer(tiny_model, tokenizer).test(texts, alpha=1e-3, human=False)
    assert [i["attribution"]["z_score"] for i in items] == pytest.approx([e.z_score for e in expected], rel=1e-9)
    assert_error(client.post("/v1/verify/batch", json={"texts": texts, "attribution": {"prompt": "Why?"}},
                             headers=acme.headers), 422, "attribution.prompt")


def test_attribution_tokens_count_against_the_work_budget(tiny_client, acme, tokenizer):
    tokens = len(tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    client = tiny_client(work_limits=WorkLimits(max_tokens_scored=tokens + tokens // 2))
    _key(client, acme)
    assert client.post("/v1/verify", json={"text": TEXT}, headers=acme.headers).status_code == 200
    body = assert_error(client.post("/v1/verify", json={"text": TEXT, "attribution": True}, headers=acme.headers),
                        422, "text")
    assert f"would score {2 * tokens} tokens (1 text(s) x 1 key(s) and the attribution pass)" in body["error"]


@pytest.mark.one_backend
def test_the_rate_limiter_is_charged_for_the_attribution_pass(tiny_client, acme, tokenizer):
    # Work is charged in kgw tokens, one request per TOKENS_PER_REQUEST: plain verifications of a
    # 1,500-token text fit a burst of 10, while the attribution pass (ATTRIBUTION_WORK_WEIGHT a token)
    # passes on the full bucket and leaves it in debt for its whole cost, which the rate repays.
    text = " ".join([TEXT] * 40)
    tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert 1_000 < tokens <= 2_000
    client = tiny_client(rate=1, burst=10)
    _key(client, acme)  # the key's creation took one request from the bucket: a new client starts full
    fresh = tiny_client(rate=1, burst=10)
    assert [fresh.post("/v1/verify", json={"text": text}, headers=acme.headers).status_code
            for _ in range(2)] == [200, 200]
    fresh = tiny_client(rate=1, burst=10)
    assert fresh.post("/v1/verify", json={"text": text, "attribution": True}, headers=acme.headers).status_code == 200
    refused = fresh.post("/v1/verify", json={"text": text}, headers=acme.headers)
    assert_error(refused, 429, None)
    debt = ATTRIBUTION_WORK_WEIGHT * tokens / TOKENS_PER_REQUEST  # requests, repaid at 1 a second
    assert 0.9 * debt <= float(refused.headers["Retry-After"]) <= 1.2 * debt


def test_a_text_over_the_attribution_cap_is_refused_before_any_model_loads(make_client, acme):
    client = make_client(work_limits=WorkLimits(attribution_tokens=100))  # WordModels: loading the model fails the test
    _key(client, acme)
    body = assert_error(client.post("/v1/verify", json={"text": plain_text(tokens=300), "attribution": True},
                                    headers=acme.headers), 422, "text")
    assert "attribution scores at most 100 tokens" in body["error"]
    assert client.post("/v1/verify", json={"text": plain_text(tokens=100), "attribution": False},
                       headers=acme.headers).status_code == 200


def test_attribution_without_a_loadable_model_is_a_503_in_the_error_shape(make_client, acme):
    client = make_client(models=UnloadableModels())
    _key(client, acme)
    body = assert_error(client.post("/v1/verify", json={"text": plain_text(), "attribution": True},
                                    headers=acme.headers), 503, None)
    assert "model folder not found" in body["error"]
    assert client.post("/v1/verify", json={"text": plain_text()}, headers=acme.headers).status_code == 200


@pytest.mark.parametrize("attribution,field", [
    ("yes", "attribution"),
    (1, "attribution"),
    ({"temperature": 0}, "attribution.temperature"),
    ({"top_p": 1.5}, "attribution.top_p"),
    ({"top_k": "5"}, "attribution.top_k"),
    ({"prompt": "  "}, "attribution.prompt"),
    ({"colour": 1}, "attribution.colour"),
])
def test_bad_attribution_options_name_their_field(client, acme, attribution, field):
    _key(client, acme)
    assert_error(client.post("/v1/verify", json={"text": plain_text(), "attribution": attribution},
                             headers=acme.headers), 422, field)


def test_the_openapi_schema_documents_the_attribution_request_and_block(client):
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    request = components["VerifyRequest"]["properties"]["attribution"]
    assert request["default"] is False and "forward pass" in request["description"]
    assert request["anyOf"][0] == {"type": "boolean"} and {"type": "null"} not in request["anyOf"]
    assert {"$ref": "#/components/schemas/TextAttributionOptions"} in request["anyOf"]
    assert "prompt" not in components["AttributionOptions"]["properties"]  # batch: texts scored alone
    block = components["VerifyResponse"]["properties"]["attribution"]
    assert {"$ref": "#/components/schemas/AttributionOut"} in block["anyOf"]
    fields = components["AttributionOut"]["properties"]
    assert {"z_score", "p_value_model", "consistent_with_model", "prompt_scored", "sampling", "note"} <= set(fields)
    assert fields["p_value_model"]["description"]
    for path in ("/v1/verify", "/v1/verify/batch"):
        assert "503" in schema["paths"][path]["post"]["responses"]


@pytest.mark.slow
@pytest.mark.one_backend
def test_an_unwatermarked_answer_is_consistent_with_the_serving_model_and_handbook_prose_is_not(make_client, acme,
                                                                                                real_model):
    # Unwatermarked: a key's bias moves its text away from the model's own distribution (by design).
    client = make_client(models=PreloadedModels(real_model))
    _key(client, acme)
    prompt = "Write a short story about a lighthouse keeper."
    (answer,) = generate(real_model.model, real_model.tokenizer, key=None, prompts=[prompt], seed=3, temperature=0.7,
                         max_new_tokens=150)
    setting = {"temperature": 0.7, "prompt": prompt}
    found = client.post("/v1/verify", json={"text": answer.text, "attribution": setting},
                        headers=acme.headers).json()["attribution"]
    alone = client.post("/v1/verify", json={"text": answer.text, "attribution": {"temperature": 0.7}},
                        headers=acme.headers).json()["attribution"]
    human = client.post("/v1/verify", json={"text": load_human_texts(1)[0][:900], "attribution": {"temperature": 0.7}},
                        headers=acme.headers).json()["attribution"]
    assert found["model"] == "SmolLM2-135M-Instruct" and found["prompt_scored"] and not alone["prompt_scored"]
    assert found["consistent_with_model"] and abs(found["z_score"]) < 3
    assert human["z_score"] > alone["z_score"] + 5
    assert not human["consistent_with_model"] and math.isfinite(human["log10_p_value_model"])


def test_a_text_from_v1_generate_is_scored_after_its_records_prompt_at_its_temperature(tiny_client, acme, tiny_model,
                                                                                        tokenizer):
    client = tiny_client()
    key = _key(client, acme)
    prompt = "Why are there tides?"
    made = client.post("/v1/generate", json={"key_id": key["key_id"], "prompt": prompt, "max_new_tokens": 40,
                                             "temperature": 0.7, "seed": 3}, headers=acme.headers)
    assert made.status_code == 201, made.text
    text, record = made.json()["text"], made.json()["record"]
    body = client.post("/v1/verify", json={"text": text, "attribution": True}, headers=acme.headers).json()
    assert body["results"][0]["record"]["id"] == record["id"]
    block = body["attribution"]
    assert block["prompt_scored"] is True and block["note"].startswith(f"scored after the prompt of record {record['id']}")
    assert block["sampling"] == {"temperature": 0.7, "top_k": 0, "top_p": 1.0}  # the record's, not the request's 1.0
    scorer = ZeroShotScorer(tiny_model, tokenizer, sampling=SamplingSettings(temperature=0.7), name="tiny-llama")
    (expected,) = scorer.test([text], [prompt], alpha=1e-3, human=False, min_tokens=1)
    assert block["z_score"] == pytest.approx(expected.z_score, rel=1e-9)
    # A prompt given in the request wins over the record's.
    given = client.post("/v1/verify", json={"text": text, "attribution": {"prompt": "Something else."}},
                        headers=acme.headers).json()["attribution"]
    assert given["note"].startswith("scored after the prompt given in the request") and given["z_score"] != block["z_score"]
