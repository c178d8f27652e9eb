"""The HTTP API through the real app (TestClient): every endpoint, every error class, one error shape."""

import math

import pytest

from provmark.api.provenance import Provenance, text_sha256
from provmark.front import Watermark
from provmark.watermark.models import LoadedModel, Models
from tests.api.conftest import WordModels, assert_error, plain_text, watermarked_text


def _key(client, tenant, scheme="mpac", **params):
    response = client.post("/v1/keys", json={"scheme": scheme, "params": params}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return response.json()


# -- service ------------------------------------------------------------------------------------

def test_healthz_needs_no_token(client):
    assert client.get("/healthz").json() == {"ok": True, "schema_version": 4, "version": "0.1.0"}


def test_the_openapi_schema_documents_every_route_and_the_error_shape(client):
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/healthz", "/v1/keys", "/v1/keys/{key_id}", "/v1/keys/{key_id}/rotate",
                                    "/v1/generate", "/v1/embed", "/v1/verify", "/v1/verify/batch",
                                    "/v1/records/{record_id}", "/v1/chat/completions", "/v1/completions", "/v1/models"}
    assert "ErrorBody" in schema["components"]["schemas"]
    assert schema["paths"]["/v1/verify"]["post"]["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"}


# -- keys ---------------------------------------------------------------------------------------

def test_keys_are_created_and_listed_without_their_secrets(client, fresh_db, acme):
    created = _key(client, acme, "mpac", bits=16.0, radix=4)  # 16.0 is an integer to JSON Schema
    assert created["scheme"] == "mpac" and created["params"]["bits"] == 16 and created["capacity"] == 2**16
    assert (created["status"], created["public_verify"], created["records"]) == ("active", False, 0)
    listed = client.get("/v1/keys", headers=acme.headers)
    assert listed.json() == {"keys": [created]}
    secret = fresh_db.watermark_key(created["key_id"]).secret.hex()
    assert secret not in listed.text and "secret" not in listed.text


@pytest.mark.parametrize("body,field", [
    ({"scheme": "nope"}, "scheme"),
    ({"params": {}}, "scheme"),
    ({"scheme": "kgw", "params": {"gamma": 2}}, "params"),
    ({"scheme": "kgw", "params": {"bits": 8}}, "params"),
    ({"scheme": "mpac", "params": {"bits": "many"}}, "params.bits"),
    ({"scheme": "kgw", "params": {"gamma": [1]}}, "params.gamma"),
    ({"scheme": "kgw", "params": {"colour": 1}}, "params.colour"),
    ({"scheme": "mpac", "params": {"bits": 8.5}}, "params.bits"),
    ({"scheme": "kgw", "colour": "green"}, "colour"),
    ({"scheme": "kgw", "public_verify": "true"}, "public_verify"),
])
def test_key_creation_names_the_invalid_field(client, acme, body, field):
    assert_error(client.post("/v1/keys", json=body, headers=acme.headers), 422, field)


def test_a_key_is_opened_to_public_verification_and_closed_again(client, acme):
    key = _key(client, acme, "kgw")
    opened = client.patch(f"/v1/keys/{key['key_id']}", json={"public_verify": True}, headers=acme.headers)
    assert opened.status_code == 200 and opened.json()["public_verify"] is True
    closed = client.patch(f"/v1/keys/{key['key_id']}", json={"public_verify": False}, headers=acme.headers)
    assert closed.json()["public_verify"] is False
    assert_error(client.patch(f"/v1/keys/{key['key_id']}", json={}, headers=acme.headers), 422, "public_verify")


def test_rotation_returns_the_successor_and_retires_the_key(client, acme):
    key = _key(client, acme, "mpac", bits=8)
    rotated = client.post(f"/v1/keys/{key['key_id']}/rotate", headers=acme.headers)
    assert rotated.status_code == 201
    successor = rotated.json()
    assert successor["key_id"] != key["key_id"] and successor["params"] == key["params"]
    keys = {k["key_id"]: k for k in client.get("/v1/keys", headers=acme.headers).json()["keys"]}
    assert keys[key["key_id"]]["status"] == "retired" and keys[key["key_id"]]["replaced_by"] == successor["key_id"]
    assert_error(client.post(f"/v1/keys/{key['key_id']}/rotate", headers=acme.headers), 409, "key_id")
    assert_error(client.post("/v1/keys/k_nope/rotate", headers=acme.headers), 404, "key_id")


# -- authentication and limits ------------------------------------------------------------------

@pytest.mark.parametrize("headers,message", [
    ({}, "this endpoint needs an API token: 'Authorization: Bearer <token>'"),
    ({"Authorization": "Basic abc"}, "the Authorization header must be 'Bearer <token>'"),
    ({"Authorization": "Bearer"}, "the Authorization header must be 'Bearer <token>'"),
    ({"Authorization": "Bearer pmk_wrong"}, "unknown API token"),
])
def test_requests_without_a_valid_token_get_401(client, headers, message):
    body = assert_error(client.get("/v1/keys", headers=headers), 401, "authorization")
    assert body["errors"][0]["message"] == message


def test_requests_over_the_rate_limit_get_429_with_retry_after(make_client, acme):
    client = make_client(rate=1, burst=2)
    assert [client.get("/v1/keys", headers=acme.headers).status_code for _ in range(2)] == [200, 200]
    limited = client.get("/v1/keys", headers=acme.headers)
    assert_error(limited, 429, None)
    assert limited.headers["retry-after"] == "1"


def test_rate_limits_are_per_token(make_client, acme, globex):
    client = make_client(rate=1, burst=1)
    assert client.get("/v1/keys", headers=acme.headers).status_code == 200
    assert client.get("/v1/keys", headers=globex.headers).status_code == 200
    assert client.get("/v1/keys", headers=acme.headers).status_code == 429


def test_bodies_over_the_limit_get_413_declared_or_streamed(make_client, acme):
    client = make_client(max_body_bytes=1000)
    big = b'{"text": "' + b"w1 " * 400 + b'"}'
    assert_error(client.post("/v1/verify", content=big, headers={**acme.headers, "content-type": "application/json"}),
                 413, "body")
    streamed = client.post("/v1/verify", content=iter([big[:600], big[600:]]),
                           headers={**acme.headers, "content-type": "application/json"})
    assert_error(streamed, 413, "body")


@pytest.mark.parametrize("content,status,field", [
    (b'{"text": ', 422, "body"),
    (b'[' * 100_000, 400, "body"),
    (b'"just a string"', 422, "body"),
    (b'{"text": "w1 w2", "alpha": NaN}', 422, "alpha"),
])
def test_malformed_bodies_get_a_4xx_naming_the_body(client, acme, content, status, field):
    response = client.post("/v1/verify", content=content, headers={**acme.headers, "content-type": "application/json"})
    assert_error(response, status, field)


def test_unknown_routes_and_methods_share_the_error_shape(client):
    assert_error(client.get("/v2/nothing"), 404, "path")
    refused = client.delete("/v1/keys")
    assert_error(refused, 405, "method")
    assert refused.headers["allow"] == "GET, POST"  # every method of the path, not just the first route's


# -- verify -------------------------------------------------------------------------------------

def test_a_watermarked_text_is_attributed_to_its_record_by_the_record_test(client, fresh_db, acme):
    key = _key(client, acme, "mpac", bits=8, delta=4.0)
    record = fresh_db.new_record(key["key_id"], tenant_id=acme.id, model="m", metadata={"user": "u1"})
    others = [fresh_db.new_record(key["key_id"], tenant_id=acme.id, model="m") for _ in range(20)]
    text = watermarked_text(fresh_db.watermark_key(key["key_id"]), record.payload)
    response = client.post("/v1/verify", json={"text": text}, headers=acme.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    (result,) = body["results"]
    assert body["watermarked"] and body["num_tokens"] == 300 and body["text_sha256"] == text_sha256(text)
    assert result["is_watermarked"] and result["match"] == "record" and result["payload"] == record.payload
    assert result["record"]["id"] == record.id and result["record"]["metadata"] == {"user": "u1"}
    assert len(result["bit_confidences"]) == 8 and result["nearest_records"] == [] and result["note"] is None
    record_test = result["record_test"]
    assert record_test["record_id"] == record.id and record_test["num_candidates"] == 1 + len(others)
    assert record_test["is_match"] and record_test["open_set_agrees"] and record_test["alpha"] == 1e-3 / 2
    assert record_test["corrected_log10_p_value"] == pytest.approx(record_test["log10_p_value"] + math.log10(21))
    assert record_test["runner_up_record_id"] in {o.id for o in others}
    assert record_test["runner_up_log10_p_value"] > record_test["log10_p_value"] + 5


def test_a_zero_bit_record_is_found_by_its_text_hash(client, fresh_db, acme):
    key = _key(client, acme, "kgw", delta=4.0)
    text = watermarked_text(fresh_db.watermark_key(key["key_id"]))
    record = fresh_db.new_record(key["key_id"], tenant_id=acme.id, model="m", text_sha256=text_sha256(text))
    (result,) = client.post("/v1/verify", json={"text": "  " + text.replace(" ", "\n") + "\n"},
                            headers=acme.headers).json()["results"]
    assert result["is_watermarked"] and result["match"] == "text" and result["record"]["id"] == record.id
    assert result["payload"] is None


def test_a_zero_bit_watermark_without_its_record_says_so(client, fresh_db, acme):
    key = _key(client, acme, "kgw", delta=4.0)
    text = watermarked_text(fresh_db.watermark_key(key["key_id"]))
    (result,) = client.post("/v1/verify", json={"text": text}, headers=acme.headers).json()["results"]
    assert result["is_watermarked"] and result["record"] is None and result["match"] is None
    assert result["note"].startswith("watermarked, but no record of this zero-bit key has this exact text")


def test_a_payload_no_record_carries_is_attributed_to_the_issued_record_that_explains_it_best(client, fresh_db, acme):
    key = _key(client, acme, "mpac", bits=4, radix=2, delta=4.0)  # one bit per digit: neighbours differ in one bit
    numbers = {fresh_db.new_record(key["key_id"], tenant_id=acme.id, model=None).number: None for _ in range(16)}
    assert sorted(numbers) == list(range(16))
    fresh_db.delete_record(f"{key['key_id']}.5")  # 0101: neighbours 0100, 0111, 0001, 1101
    text = watermarked_text(fresh_db.watermark_key(key["key_id"]), 5, tokens=400)
    (result,) = client.post("/v1/verify", json={"text": text, "nearest": 6}, headers=acme.headers).json()["results"]
    # The record test's null is text written without the key: a payload the service never issued
    # is explained best by a neighbour, and the answer says the open-set decode disagrees.
    assert result["is_watermarked"] and result["payload"] == 5 and result["match"] == "record"
    assert result["record"]["number"] in {4, 7, 1, 13} and not result["record_test"]["open_set_agrees"]
    assert result["note"].startswith("the open-set decode reads 0x5, not this record's payload")


def test_a_watermarked_text_no_record_explains_is_unattributed_with_the_nearest_records(fresh_db, acme):
    info = fresh_db.create_key(acme.id, "mpac", {"bits": 4, "radix": 2, "delta": 4.0})
    for _ in range(16):
        fresh_db.new_record(info.key_id, tenant_id=acme.id, model=None)
    fresh_db.delete_record(f"{info.key_id}.5")
    key = fresh_db.watermark_key(info.key_id)
    text = watermarked_text(key, 5, tokens=400)
    watermark = Watermark(key, WordModels())
    presence = watermark.detect([text])[0].log10_p_value
    best = watermark.attribute([text], fresh_db.record_numbers(key.key_id))[0].corrected_log10_p_value
    assert presence < best - 4  # the decoded payload explains the text far better than any issued record
    alpha = 2 * 10 ** ((presence + best) / 2)  # verify tests each at alpha / 2: presence rejects, records do not
    (item,) = Provenance(fresh_db, WordModels()).verify([text], fresh_db.key_refs(acme.id), tenant_id=acme.id,
                                                       alpha=alpha, nearest=6)
    (found,) = item.results
    assert item.watermarked and found.result.is_watermarked and not found.record_test.is_match
    assert found.match is None and found.record is None
    assert found.note.startswith("watermarked, but unattributed: the best of the key's 15 records has corrected p")
    nearest = found.nearest
    assert {n.record.number for n in nearest[:4]} == {4, 7, 1, 13}
    assert all(n.bits_differ == 1 for n in nearest[:4]) and all(n.bits_differ == 2 for n in nearest[4:])
    assert [n.bit_distance for n in nearest] == sorted(n.bit_distance for n in nearest)


def test_plain_text_is_not_watermarked_and_matches_nothing(client, acme):
    _key(client, acme, "mpac", bits=8)
    _key(client, acme, "kgw")
    body = client.post("/v1/verify", json={"text": plain_text()}, headers=acme.headers).json()
    assert not body["watermarked"] and len(body["results"]) == 2
    for result in body["results"]:
        assert (result["is_watermarked"], result["record"], result["nearest_records"]) == (False, None, [])


def test_each_key_decides_at_alpha_over_the_number_of_keys(client, acme):
    for _ in range(4):
        _key(client, acme, "kgw")
    body = client.post("/v1/verify", json={"text": plain_text(), "alpha": 0.01}, headers=acme.headers).json()
    assert [r["alpha"] for r in body["results"]] == [0.0025] * 4


def test_verify_can_be_restricted_to_some_keys(client, acme):
    first = _key(client, acme, "kgw")
    _key(client, acme, "kgw")
    body = client.post("/v1/verify", json={"text": plain_text(), "key_ids": [first["key_id"]] * 2},
                       headers=acme.headers).json()
    assert [r["key_id"] for r in body["results"]] == [first["key_id"]]
    missing = client.post("/v1/verify", json={"text": plain_text(), "key_ids": [first["key_id"], "k_nope"]},
                          headers=acme.headers)
    assert_error(missing, 404, "key_ids.1")


@pytest.mark.parametrize("body,field", [
    ({}, "text"),
    ({"text": ""}, "text"),
    ({"text": " \n\t "}, "text"),
    ({"text": "w1 w2 w3"}, "text"),  # 3 tokens, fewer than min_tokens
    ({"text": "w1 " * 20, "min_tokens": 0}, "min_tokens"),
    ({"text": "w1 " * 20, "alpha": 1.5}, "alpha"),
    ({"text": "w1 " * 20, "alpha": 5e-324}, "alpha"),  # alpha / keys would underflow to 0
    ({"text": "w1 " * 20, "nearest": -1}, "nearest"),
    ({"text": "w1 " * 20, "key_ids": "k_1"}, "key_ids"),
    ({"text": "w1 " * 20, "extra": 1}, "extra"),
])
def test_verify_names_the_invalid_field(client, acme, body, field):
    _key(client, acme, "kgw")
    assert_error(client.post("/v1/verify", json=body, headers=acme.headers), 422, field)


def test_batch_verify_answers_each_text_and_names_a_bad_one_by_index(client, fresh_db, acme):
    key = _key(client, acme, "mpac", bits=8, delta=4.0)
    record = fresh_db.new_record(key["key_id"], tenant_id=acme.id, model=None)
    texts = [plain_text(), watermarked_text(fresh_db.watermark_key(key["key_id"]), record.payload)]
    body = client.post("/v1/verify/batch", json={"texts": texts}, headers=acme.headers).json()
    assert [item["watermarked"] for item in body["items"]] == [False, True]
    assert body["items"][1]["results"][0]["record"]["id"] == record.id
    assert_error(client.post("/v1/verify/batch", json={"texts": [texts[0], "w1"]}, headers=acme.headers), 422, "texts.1")
    assert_error(client.post("/v1/verify/batch", json={"texts": []}, headers=acme.headers), 422, "texts")
    assert_error(client.post("/v1/verify/batch", json={"texts": ["w1 " * 20] * 33}, headers=acme.headers), 422, "texts")


def test_anonymous_verify_needs_a_public_key(client):
    assert_error(client.post("/v1/verify", json={"text": plain_text()}), 401, "authorization")


def test_anonymous_verify_uses_the_public_keys_and_hides_record_metadata(client, fresh_db, acme):
    public = fresh_db.create_key(acme.id, "mpac", {"bits": 8, "delta": 4.0}, public_verify=True)
    fresh_db.create_key(acme.id, "kgw")
    record = fresh_db.new_record(public.key_id, tenant_id=acme.id, model="m", metadata={"user": "secret"})
    text = watermarked_text(fresh_db.watermark_key(public.key_id), record.payload)
    (result,) = client.post("/v1/verify", json={"text": text}).json()["results"]
    assert result["key_id"] == public.key_id and result["record"]["id"] == record.id
    assert result["record"]["tenant"] == "acme" and result["record"]["metadata"] is None
    owner = client.post("/v1/verify", json={"text": text}, headers=acme.headers).json()["results"]
    assert [r["record"]["metadata"] for r in owner if r["record"]] == [{"user": "secret"}]


# -- records ------------------------------------------------------------------------------------

def test_a_record_is_read_back_by_id(client, fresh_db, acme):
    key = _key(client, acme, "mpac", bits=8)
    record = fresh_db.new_record(key["key_id"], tenant_id=acme.id, model="m", metadata={"a": [1, 2.5, None]})
    body = client.get(f"/v1/records/{record.id}", headers=acme.headers).json()
    assert body["id"] == record.id and body["metadata"] == {"a": [1, 2.5, None]} and body["tenant"] == "acme"
    assert body["payload"] == record.number and body["payload_hex"] == f"0x{record.number:02x}"
    assert_error(client.get("/v1/records/k_nope.1", headers=acme.headers), 404, "record_id")


# -- generate -----------------------------------------------------------------------------------

class PreloadedModels(Models):
    """Serves a model the test session already loaded."""

    def __init__(self, loaded: LoadedModel):
        super().__init__()
        self.name = loaded.name
        self._loaded, self._tokenizer = loaded, loaded.tokenizer


def test_generate_issues_a_record_that_verify_finds_again(make_client, fresh_db, acme, tiny_model, tokenizer):
    client = make_client(models=PreloadedModels(LoadedModel(model=tiny_model, tokenizer=tokenizer, name="tiny-llama")))
    key = _key(client, acme, "mpac", bits=16)
    response = client.post("/v1/generate", json={"key_id": key["key_id"], "prompt": "Tell me about tides.",
                                                 "max_new_tokens": 30, "seed": 1, "metadata": {"user": "u7"}},
                           headers=acme.headers)
    assert response.status_code == 201, response.text
    body = response.json()
    record = body["record"]
    assert record["key_id"] == key["key_id"] and record["model"] == "tiny-llama" and record["metadata"] == {"user": "u7"}
    assert record["text_sha256"] == text_sha256(body["text"]) and record["payload"] == record["number"]
    assert body["num_tokens"] == 30
    (result,) = client.post("/v1/verify", json={"text": body["text"], "min_tokens": 1},
                            headers=acme.headers).json()["results"]
    assert result["match"] == "text" and result["record"] == record


@pytest.mark.slow
@pytest.mark.one_backend
def test_an_edited_copy_of_generated_text_is_attributed_to_its_record(make_client, acme, real_model):
    client = make_client(models=PreloadedModels(real_model))
    key = _key(client, acme, "mpac", bits=8, radix=4, delta=3.0)
    made = client.post("/v1/generate", json={"key_id": key["key_id"], "prompt": "Write a story about a lighthouse keeper.",
                                             "max_new_tokens": 200, "seed": 7}, headers=acme.headers)
    assert made.status_code == 201, made.text
    record, text = made.json()["record"], made.json()["text"]
    assert record["model"] == "SmolLM2-135M-Instruct"
    edited = text[text.index(". ") + 2:] + " Quoted without its first sentence."
    (result,) = client.post("/v1/verify", json={"text": edited}, headers=acme.headers).json()["results"]
    assert result["is_watermarked"]
    # The record test scores the one issued record directly: a misread digit no longer matters.
    assert result["match"] == "record" and result["record"] == record and result["record_test"]["is_match"]


@pytest.mark.parametrize("body,field", [
    ({"prompt": "hi"}, "key_id"),
    ({"key_id": "k", "prompt": "   "}, "prompt"),
    ({"key_id": "k", "prompt": "hi", "max_new_tokens": 0}, "max_new_tokens"),
    ({"key_id": "k", "prompt": "hi", "max_new_tokens": 10**30}, "max_new_tokens"),
    ({"key_id": "k", "prompt": "hi", "temperature": 0.001}, "temperature"),
    ({"key_id": "k", "prompt": "hi", "max_new_tokens": "5"}, "max_new_tokens"),  # strict: no coercion
    ({"key_id": "k", "prompt": "hi", "seed": -1}, "seed"),
    ({"key_id": "k", "prompt": "hi", "metadata": [1]}, "metadata"),
    ({"key_id": "k", "prompt": "hi", "metadata": {"x": "y" * 20000}}, "metadata"),
])
def test_generate_names_the_invalid_field(client, acme, body, field):
    assert_error(client.post("/v1/generate", json=body, headers=acme.headers), 422, field)


def test_generate_refuses_non_finite_metadata(client, acme):
    key = _key(client, acme, "kgw")
    body = b'{"key_id": "%s", "prompt": "hi", "metadata": {"x": Infinity}}' % key["key_id"].encode()
    assert_error(client.post("/v1/generate", content=body, headers={**acme.headers, "content-type": "application/json"}),
                 422, "metadata")


def test_generate_refuses_unknown_retired_and_exhausted_keys_before_loading_a_model(client, fresh_db, acme):
    assert_error(client.post("/v1/generate", json={"key_id": "k_nope", "prompt": "hi"}, headers=acme.headers),
                 404, "key_id")
    key = _key(client, acme, "mpac", bits=1, radix=2)
    for _ in range(2):
        fresh_db.new_record(key["key_id"], tenant_id=acme.id, model=None)
    exhausted = client.post("/v1/generate", json={"key_id": key["key_id"], "prompt": "hi"}, headers=acme.headers)
    assert assert_error(exhausted, 409, "key_id")["errors"][0]["type"] == "key_exhausted"
    client.post(f"/v1/keys/{key['key_id']}/rotate", headers=acme.headers)
    assert_error(client.post("/v1/generate", json={"key_id": key["key_id"], "prompt": "hi"}, headers=acme.headers),
                 409, "key_id")  # and WordModels.loaded() was never called: it fails the test


# -- embed (finished text, synonym keys) ---------------------------------------------------------

PARAGRAPH = (
    "The old harbour town grew quiet every winter. Fishermen repaired their heavy nets, painted the "
    "small boats and waited for calmer weather. Children walked along the narrow streets to the "
    "school near the church, and the bakery sold warm bread early each morning. Visitors rarely came, "
    "but the few who did often stayed longer than they had planned, charmed by the simple life and "
    "the bright lights of the distant lighthouse. In spring the markets opened again and the town "
    "slowly filled with noise, trade and happy voices."
)


class EncoderModels(PreloadedModels):
    """A preloaded model plus the packaged sentence encoder, loaded once for the module."""

    encoder_loaded = None

    def encoder(self):
        if EncoderModels.encoder_loaded is None:
            from provmark.watermark.models import load_sentence_encoder

            EncoderModels.encoder_loaded = load_sentence_encoder()
        return EncoderModels.encoder_loaded


def test_embed_watermarks_finished_text_under_a_record_that_verify_finds(make_client, acme, tiny_model, tokenizer):
    client = make_client(models=EncoderModels(LoadedModel(model=tiny_model, tokenizer=tokenizer, name="tiny-llama")))
    key = _key(client, acme, "synonym", similarity_threshold=0.8)
    response = client.post("/v1/embed", json={"key_id": key["key_id"], "text": PARAGRAPH, "metadata": {"user": "u1"}},
                           headers=acme.headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["substitutions"], "no word of the paragraph was replaced"
    rebuilt, last = [], 0
    for s in body["substitutions"]:  # the original with each replacement put in is the returned text
        assert PARAGRAPH[s["start"]:s["end"]] == s["original"] != s["replacement"]
        rebuilt += [PARAGRAPH[last:s["start"]], s["replacement"]]
        last = s["end"]
    assert "".join(rebuilt) + PARAGRAPH[last:] == body["text"]
    record = body["record"]
    assert record["key_id"] == key["key_id"] and record["payload"] is None and record["metadata"] == {"user": "u1"}
    assert record["text_sha256"] == text_sha256(body["text"]) and record["model"] == "tiny-llama"
    (result,) = client.post("/v1/verify", json={"text": body["text"], "key_ids": [key["key_id"]]},
                            headers=acme.headers).json()["results"]
    assert result["match"] == "text" and result["record"] == record
    assert result["scheme"] == "synonym" and len(result["word_bits"]) == result["num_scored_tokens"] > 0
    assert all(body["text"][a:b].strip() and bit in (0, 1) for a, b, bit in result["word_bits"])


def test_embed_under_a_synonym_payload_key_embeds_the_record_number_and_verify_runs_the_record_test(
        make_client, acme, tiny_model, tokenizer):
    client = make_client(models=EncoderModels(LoadedModel(model=tiny_model, tokenizer=tokenizer, name="tiny-llama")))
    key = _key(client, acme, "synonym", similarity_threshold=0.8, payload_bits=8)
    response = client.post("/v1/embed", json={"key_id": key["key_id"], "text": PARAGRAPH}, headers=acme.headers)
    assert response.status_code == 201, response.text
    record = response.json()["record"]
    assert record["payload"] == record["number"] and record["payload_hex"] == f"0x{record['number']:02x}"
    (result,) = client.post("/v1/verify", json={"text": response.json()["text"], "key_ids": [key["key_id"]]},
                            headers=acme.headers).json()["results"]
    assert result["match"] == "text" and result["record"] == record
    assert result["record_test"]["num_candidates"] == 1 and result["record_test"]["payload"] == record["payload"]
    assert len(result["bit_confidences"]) == 8 and result["payload_hex"] is not None


@pytest.mark.slow
def test_an_edited_copy_of_text_embedded_under_a_synonym_payload_key_is_attributed_to_its_record(
        make_client, fresh_db, acme, real_model):
    import json as _json
    from pathlib import Path

    from benchmarks.synonym import prefix_words

    client = make_client(models=EncoderModels(real_model))
    key = _key(client, acme, "synonym", version=2, similarity_threshold=0.95, max_candidates=16, max_fit_drop=14.0,
               payload_bits=16)
    for _ in range(300):  # other records of the key, issued before
        fresh_db.new_record(key["key_id"], tenant_id=acme.id, model=None)
    corpus = Path(__file__).parent.parent.parent / "benchmarks" / "results" / "synonym_corpus.jsonl"
    text = prefix_words(_json.loads(corpus.read_text().splitlines()[3])["text"], 400)
    made = client.post("/v1/embed", json={"key_id": key["key_id"], "text": text}, headers=acme.headers)
    assert made.status_code == 201, made.text
    record, marked = made.json()["record"], made.json()["text"]
    edited = marked[marked.index(". ") + 2:] + " Quoted without its first sentence."
    (result,) = client.post("/v1/verify", json={"text": edited, "key_ids": [key["key_id"]]},
                            headers=acme.headers).json()["results"]
    assert result["match"] == "record" and result["record"] == record and result["record_test"]["is_match"]
    assert result["record_test"]["num_candidates"] == 301


def test_generate_and_embed_refuse_a_key_of_the_other_kind_before_loading_a_model(client, acme):
    synonym, mpac = _key(client, acme, "synonym"), _key(client, acme, "mpac", bits=8)
    refused = client.post("/v1/generate", json={"key_id": synonym["key_id"], "prompt": "hi"}, headers=acme.headers)
    assert "/v1/embed" in assert_error(refused, 422, "key_id")["errors"][0]["message"]
    refused = client.post("/v1/embed", json={"key_id": mpac["key_id"], "text": PARAGRAPH}, headers=acme.headers)
    assert "/v1/generate" in assert_error(refused, 422, "key_id")["errors"][0]["message"]
    assert [k["records"] for k in client.get("/v1/keys", headers=acme.headers).json()["keys"]] == [0, 0]


@pytest.mark.parametrize("body,field", [
    ({"text": "Some text."}, "key_id"),
    ({"key_id": "k"}, "text"),
    ({"key_id": "k", "text": " \n "}, "text"),
    ({"key_id": "k", "text": "word " * 5000}, "text"),
    ({"key_id": "k", "text": "Some text.", "metadata": [1]}, "metadata"),
    ({"key_id": "k", "text": "Some text.", "prompt": "hi"}, "prompt"),
])
def test_embed_names_the_invalid_field(client, acme, body, field):
    assert_error(client.post("/v1/embed", json=body, headers=acme.headers), 422, field)


def test_embed_needs_a_token(client):
    assert_error(client.post("/v1/embed", json={"key_id": "k", "text": "Some text."}), 401, "authorization")


# -- tenants never see each other ---------------------------------------------------------------

def test_every_cross_tenant_access_is_refused(client, fresh_db, acme, globex):
    key = _key(client, acme, "mpac", bits=8, delta=4.0)
    record = fresh_db.new_record(key["key_id"], tenant_id=acme.id, model="m", metadata={"user": "a"})
    text = watermarked_text(fresh_db.watermark_key(key["key_id"]), record.payload)
    k = key["key_id"]
    g = globex.headers
    assert client.get("/v1/keys", headers=g).json() == {"keys": []}
    assert_error(client.patch(f"/v1/keys/{k}", json={"public_verify": True}, headers=g), 404, "key_id")
    assert_error(client.post(f"/v1/keys/{k}/rotate", headers=g), 404, "key_id")
    assert_error(client.post("/v1/generate", json={"key_id": k, "prompt": "hi"}, headers=g), 404, "key_id")
    assert_error(client.post("/v1/embed", json={"key_id": k, "text": "Some text."}, headers=g), 404, "key_id")
    assert_error(client.get(f"/v1/records/{record.id}", headers=g), 404, "record_id")
    assert_error(client.post("/v1/verify", json={"text": text, "key_ids": [k]}, headers=g), 404, "key_ids.0")
    assert_error(client.post("/v1/verify/batch", json={"texts": [text], "key_ids": [k]}, headers=g), 404, "key_ids.0")
    assert client.post("/v1/verify", json={"text": text}, headers=g).json()["results"] == []
    assert client.post("/v1/verify/batch", json={"texts": [text]}, headers=g).json()["items"][0]["results"] == []
    # nothing changed for the owner
    mine = client.get("/v1/keys", headers=acme.headers).json()["keys"]
    assert [(m["key_id"], m["status"], m["public_verify"]) for m in mine] == [(k, "active", False)]
    assert client.get(f"/v1/records/{record.id}", headers=acme.headers).status_code == 200


def test_verify_cannot_name_another_tenants_key_even_once_its_detector_is_built(client, acme, globex):
    theirs = _key(client, globex, "kgw")
    assert client.post("/v1/verify", json={"text": plain_text(), "key_ids": [theirs["key_id"]]},
                       headers=globex.headers).status_code == 200  # the detector is now built and cached
    refused = client.post("/v1/verify", json={"text": plain_text(), "key_ids": [theirs["key_id"]]},
                          headers=acme.headers)
    assert_error(refused, 404, "key_ids.0")
    body = client.post("/v1/verify", json={"text": plain_text()}, headers=acme.headers).json()
    assert body["results"] == []
