"""The OpenAI-compatible endpoints driven by the real ``openai`` client against ``provmark serve`` on
loopback (a 1-layer random Llama with SmolLM2's tokenizer, so generation takes seconds), and the
generation queue's limit in process."""

import threading
import time

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from benchmarks.api_server import ServerFixture, tiny_model_dir
from provmark.api.batching import GenerationQueue
from provmark.api.openai_compat import openai_router
from provmark.api.provenance import text_sha256
from provmark.watermark.models import Models
from provmark.watermark.streaming import BatchDecoder
from tests.api.conftest import assert_error

MESSAGES = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Tell me about tides."}]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    # Keys in creation order: kgw, then mpac, the newest active generation key and so the default.
    fixture = ServerFixture(keys=[["--scheme", "kgw"], ["--scheme", "mpac", "--bits", "16"]],
                            serve_args=["--model", str(tiny_dir), "--rate-limit", "0"],
                            folder=str(tmp_path_factory.mktemp("server")))
    fixture.start(log=fixture.folder / "serve.log")
    yield fixture
    fixture.kill()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.token, max_retries=0)


def _record(server, record_id):
    response = httpx.get(f"{server.url}/v1/records/{record_id}", headers=server.headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _verified_record(server, text) -> tuple[str, str]:
    """(record id, match) that /v1/verify names for ``text``."""
    response = httpx.post(f"{server.url}/v1/verify", json={"text": text}, headers=server.headers, timeout=60)
    assert response.status_code == 200, response.text
    found = [(r["record"]["id"], r["match"]) for r in response.json()["results"] if r["record"]]
    assert len(found) == 1, response.json()
    return found[0]


def test_a_chat_completion_is_a_new_record_that_its_text_verifies_to(server, client):
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, max_tokens=24,
                                                           user="u42", seed=7)
    completion = raw.parse()
    (choice,) = completion.choices
    record_id = choice.model_extra["provmark_record"]
    assert raw.headers["X-Provmark-Record"] == record_id
    assert record_id.startswith(server.key_ids[1] + ".")  # the default key: the newest generation key
    assert completion.object == "chat.completion" and choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length") and completion.usage.completion_tokens <= 24
    record = _record(server, record_id)
    assert record["status"] == "complete" and record["text_sha256"] == text_sha256(choice.message.content)
    assert record["metadata"] == {"endpoint": "chat.completions", "user": "u42"}
    assert _verified_record(server, choice.message.content) == (record_id, "text")


def test_a_streamed_chat_completion_names_its_record_first_and_stores_the_hash_at_the_end(server, client):
    stream = client.chat.completions.create(model=server.key_ids[0], messages=MESSAGES, max_completion_tokens=24,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    first = chunks[0].choices[0]
    record_id = first.model_extra["provmark_record"]
    assert record_id.startswith(server.key_ids[0] + ".") and first.delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1  # sent as sampled, not in one piece
    text = "".join(pieces)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"]) and chunks[-1].usage.completion_tokens <= 24
    record = _record(server, record_id)
    assert record["status"] == "complete" and record["text_sha256"] == text_sha256(text)
    assert _verified_record(server, text) == (record_id, "text")


def test_n_choices_are_one_record_each(server, client):
    raw = client.chat.completions.with_raw_response.create(model="any", messages=MESSAGES, max_tokens=24, n=2)
    completion = raw.parse()
    ids = [c.model_extra["provmark_record"] for c in completion.choices]
    assert [c.index for c in completion.choices] == [0, 1] and len(set(ids)) == 2
    assert raw.headers["X-Provmark-Record"] == ",".join(ids)
    for choice, record_id in zip(completion.choices, ids):
        assert _verified_record(server, choice.message.content) == (record_id, "text")


def test_a_legacy_completion_streams_text_chunks_and_verifies(server, client):
    chunks = list(client.completions.create(model="any", prompt="The tide comes in", max_tokens=24, stream=True))
    record_id = chunks[0].choices[0].model_extra["provmark_record"]
    text = "".join(c.choices[0].text for c in chunks)
    assert chunks[0].object == "text_completion" and _verified_record(server, text) == (record_id, "text")


def test_models_lists_the_serving_model_and_the_callers_generation_keys(server, client, tiny_dir):
    assert [m.id for m in client.models.list()] == [str(tiny_dir), *server.key_ids]


@pytest.mark.parametrize("kwargs,status,field", [
    ({"logit_bias": {"1": 5}}, 422, "logit_bias"),
    ({"temperature": 3}, 422, "temperature"),
    ({"n": 9}, 422, "n"),
    ({"model": "k_0000000000000000"}, 404, "model"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, 422, "messages.0.role"),
])
def test_a_bad_request_is_refused_with_the_apis_error_shape(server, client, kwargs, status, field):
    request = {"model": "any", "messages": MESSAGES, "max_tokens": 8, **kwargs}
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**request)
    assert_error(caught.value.response, status, field)


def test_a_wrong_token_is_refused(server):
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model="any", messages=MESSAGES, max_tokens=8)
    assert_error(caught.value.response, 401, "authorization")


def test_a_client_that_leaves_mid_stream_leaves_an_incomplete_record(server, client):
    stream = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=1024, stream=True)
    chunks = iter(stream)
    record_id = next(chunks).choices[0].model_extra["provmark_record"]
    assert _record(server, record_id)["status"] == "generating"
    next(chunks)  # some text has been sent
    stream.close()
    deadline = time.monotonic() + 60
    while (record := _record(server, record_id))["status"] == "generating" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert record["status"] == "incomplete" and record["text_sha256"] is None


@pytest.mark.one_backend
def test_a_full_generation_queue_answers_503_with_retry_after(fresh_db, acme, tiny_dir):
    models = Models(str(tiny_dir))
    queue = GenerationQueue(models, fresh_db, max_batch_rows=1, max_queued_rows=1, gather_s=0)

    async def tenant():
        return acme.tenant

    app = FastAPI()
    app.include_router(openai_router(fresh_db, models, tenant, queue=queue))
    client = TestClient(app)
    body = {"model": "any", "messages": MESSAGES, "max_tokens": 4}
    fresh_db.create_key(acme.id, "mpac", {"bits": 8})
    answers = []

    def post():
        answers.append(client.post("/v1/chat/completions", json=body))

    with models.generate_lock:  # the worker takes the first request and waits for the lock
        first = threading.Thread(target=post)
        first.start()
        _wait(lambda: queue._worker is not None and queue.waiting_rows == 0)
        second = threading.Thread(target=post)
        second.start()
        _wait(lambda: queue.waiting_rows == 1)
        refused = client.post("/v1/chat/completions", json=body)
    first.join(60)
    second.join(60)
    assert refused.headers["Retry-After"] == "1"
    assert_error(refused, 503, None)
    assert [a.status_code for a in answers] == [200, 200]
    assert len(fresh_db.records(tenant_id=acme.id)) == 2  # the refused request issued no record


@pytest.mark.one_backend
def test_requests_that_arrive_while_a_batch_runs_join_it(fresh_db, acme, tiny_dir, monkeypatch):
    models = Models(str(tiny_dir))
    queue = GenerationQueue(models, fresh_db, gather_s=0)
    rows_per_step = []
    step = BatchDecoder.step
    monkeypatch.setattr(BatchDecoder, "step", lambda self: (rows_per_step.append(len(self.active)), step(self))[1])

    async def tenant():
        return acme.tenant

    app = FastAPI()
    app.include_router(openai_router(fresh_db, models, tenant, queue=queue))
    client = TestClient(app)
    fresh_db.create_key(acme.id, "mpac", {"bits": 8})
    answers = []

    def post(n, max_tokens):
        answers.append(client.post("/v1/chat/completions",
                                   json={"model": "any", "messages": MESSAGES, "max_tokens": max_tokens, "n": n}))

    threads = [threading.Thread(target=post, args=args) for args in ((1, 6), (2, 3), (1, 3))]
    with models.generate_lock:  # the first request's batch waits for the lock; the others queue behind it
        threads[0].start()
        _wait(lambda: queue._worker is not None and queue.waiting_rows == 0)
        for thread in threads[1:]:
            thread.start()
        # Queued, not only reserved: a request reserves its rows before it issues its records.
        _wait(lambda: sum(len(job.rows) for job in list(queue._jobs)) == 3)
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    # All four rows decode from the first step on, and rows only ever leave: the three short ones
    # after their third step ([4, 4, 4, 1, 1, 1]), or earlier when the random model samples a stop id.
    assert rows_per_step[0] == 4 and rows_per_step == sorted(rows_per_step, reverse=True)
    assert len(rows_per_step) <= 6
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert sorted(len(a.json()["choices"]) for a in answers) == [1, 1, 2]


def _wait(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
