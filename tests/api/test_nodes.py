"""Several API nodes: two `provmark serve` processes, each a server of its own (own port, own process
group), on one PostgreSQL registry behave as one service."""

import httpx
import pytest

from benchmarks.api_server import ServerFixture, tiny_model_dir

pytestmark = pytest.mark.slow  # two servers start (tokenizer load each)


def test_a_record_registered_through_one_node_is_verified_and_read_through_the_other(postgres_server, tmp_path):
    url = postgres_server.new_database()
    model = str(tiny_model_dir(tmp_path / "tiny"))  # generation in milliseconds; the tokenizer is SmolLM2's
    first = ServerFixture(keys=[["--scheme", "kgw"]], db=url, folder=str(tmp_path), serve_args=["--model", model])
    second = first.another_node()
    try:
        first.start(log=tmp_path / "first.log")
        second.start(log=tmp_path / "second.log")
        assert first.port != second.port
        generated = httpx.post(first.url + "/v1/generate", headers=first.headers, timeout=120, json={
            "key_id": first.key_ids[0], "prompt": "Tell me about tides.", "max_new_tokens": 40, "seed": 3,
            "metadata": {"user": "u1"}}).json()
        record = generated["record"]
        verified = httpx.post(second.url + "/v1/verify", headers=second.headers, timeout=120,
                              json={"text": generated["text"], "min_tokens": 1}).json()
        (result,) = verified["results"]
        assert (result["match"], result["record"]) == ("text", record)
        assert httpx.get(f"{second.url}/v1/records/{record['id']}", headers=second.headers).json() == record

        made = httpx.post(second.url + "/v1/keys", headers=second.headers, json={"scheme": "mpac",
                                                                                  "params": {"bits": 4}}).json()
        rotated = httpx.post(f"{first.url}/v1/keys/{made['key_id']}/rotate", headers=first.headers).json()
        listed = {k["key_id"]: k for k in httpx.get(second.url + "/v1/keys", headers=second.headers).json()["keys"]}
        assert listed[made["key_id"]]["replaced_by"] == rotated["key_id"] and listed[rotated["key_id"]]["status"] == "active"
        again = httpx.post(f"{second.url}/v1/keys/{made['key_id']}/rotate", headers=second.headers)
        assert again.status_code == 409 and again.json()["errors"][0]["field"] == "key_id"
    finally:
        first.kill()
        second.kill()
