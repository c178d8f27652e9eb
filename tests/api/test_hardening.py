"""Hardening of the API (issue 16): degenerate parameters are refused, one broken key never fails
a verification, and no route answers 500 for input a client controls."""

from __future__ import annotations

import json
import logging

import pytest

from tests.api.conftest import assert_error, plain_text, watermarked_text


def _key(client, tenant, scheme="mpac", public=False, **params):
    response = client.post("/v1/keys", json={"scheme": scheme, "params": params, "public_verify": public},
                           headers=tenant.headers)
    assert response.status_code == 201, response.text
    return response.json()


# -- 1. parameters ------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme,gamma", [("kgw", 1e-320), ("kgw", 1e-10), ("kgw", 0.9999999999), ("mpac", 1e-320),
                                          ("mpac", 1e-10)])
def test_degenerate_gammas_are_a_422_naming_gamma(client, acme, scheme, gamma):
    body = assert_error(client.post("/v1/keys", json={"scheme": scheme, "params": {"gamma": gamma}},
                                    headers=acme.headers), 422, "params")
    assert "gamma must" in body["error"]


# -- 2. isolation in verify ---------------------------------------------------------------------

def _degenerate(registry, key_id, **params):
    """Store parameters this version refuses on an existing key (and its records), as a row written
    before the bound existed would hold them."""
    ((params_json,),) = registry.store.query("SELECT params FROM keys WHERE id = ?", [key_id])
    stored = json.dumps({**json.loads(params_json), **params})
    registry.store.execute("UPDATE keys SET params = ? WHERE id = ?", [stored, key_id])
    registry.store.execute("UPDATE records SET params = ? WHERE key_id = ?", [stored, key_id])


@pytest.fixture
def broken(client, fresh_db, acme, globex):
    """acme has a public kgw key degraded to gamma 1e-320 (with one record); globex a public mpac key
    and a text watermarked with one of its records."""
    bad = _key(client, acme, "kgw", public=True)
    bad_record = fresh_db.new_record(bad["key_id"], tenant_id=acme.id, model=None)
    _degenerate(fresh_db, bad["key_id"], gamma=1e-320)
    good = _key(client, globex, "mpac", public=True, bits=16)
    record = fresh_db.new_record(good["key_id"], tenant_id=globex.id, model=None)
    text = watermarked_text(fresh_db.watermark_key(good["key_id"]), record.payload)
    return {"bad": bad["key_id"], "bad_record": bad_record.id, "good": good["key_id"], "record": record.id, "text": text}


def test_a_degenerate_key_becomes_its_own_error_entry_and_the_others_results_stand(client, broken, caplog):
    with caplog.at_level(logging.ERROR, logger="provmark.api.provenance"):
        response = client.post("/v1/verify", json={"text": broken["text"]})
    assert response.status_code == 200, response.text
    by_key = {r["key_id"]: r for r in response.json()["results"]}
    good, bad = by_key[broken["good"]], by_key[broken["bad"]]
    assert good["is_watermarked"] and good["record"]["id"] == broken["record"] and good["error"] is None
    assert bad["error"].startswith(f"key {broken['bad']} cannot be used") and "gamma must" in bad["error"]
    assert (bad["p_value"], bad["num_scored_tokens"], bad["is_watermarked"], bad["scheme"]) == (1.0, 0, False, "kgw")
    assert any(broken["bad"] in r.getMessage() for r in caplog.records)


def test_an_exception_inside_one_keys_detection_is_that_keys_error_entry(client, fresh_db, acme, monkeypatch, caplog):
    from provmark.detector.kgw import KGWDetector

    kgw = _key(client, acme, "kgw")
    mpac = _key(client, acme, "mpac", bits=16)
    record = fresh_db.new_record(mpac["key_id"], tenant_id=acme.id, model=None)
    text = watermarked_text(fresh_db.watermark_key(mpac["key_id"]), record.payload)

    def explode(self, sequences, **kwargs):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(KGWDetector, "detect_batch", explode)
    with caplog.at_level(logging.ERROR, logger="provmark.api.provenance"):
        response = client.post("/v1/verify/batch", json={"texts": [text, plain_text()]}, headers=acme.headers)
    assert response.status_code == 200, response.text
    first = {r["key_id"]: r for r in response.json()["items"][0]["results"]}
    assert first[mpac["key_id"]]["record"]["id"] == record.id
    assert first[kgw["key_id"]]["error"] == f"detection with key {kgw['key_id']} failed (internal error, logged)"
    assert "division" not in response.text  # the server's detail stays in its log
    logged = [r for r in caplog.records if kgw["key_id"] in r.getMessage()]
    assert logged and logged[0].exc_info[0] is ZeroDivisionError


def test_every_route_answers_without_a_5xx_while_a_degenerate_key_is_registered(client, broken, acme, globex):
    anonymous = {}
    calls = [
        ("get", "/healthz", anonymous, None),
        ("get", "/v1/keys", acme.headers, None),
        ("patch", f"/v1/keys/{broken['bad']}", acme.headers, {"public_verify": True}),
        ("post", f"/v1/keys/{broken['bad']}/rotate", acme.headers, None),
        ("post", "/v1/generate", acme.headers, {"key_id": broken["bad"], "prompt": "hello"}),
        ("post", "/v1/embed", acme.headers, {"key_id": broken["bad"], "text": "hello there"}),
        ("post", "/v1/verify", anonymous, {"text": broken["text"]}),
        ("post", "/v1/verify", acme.headers, {"text": broken["text"]}),
        ("post", "/v1/verify", acme.headers, {"text": broken["text"], "key_ids": [broken["bad"]]}),
        ("post", "/v1/verify", globex.headers, {"text": broken["text"]}),
        ("post", "/v1/verify/batch", anonymous, {"texts": [broken["text"], plain_text()]}),
        ("get", f"/v1/records/{broken['bad_record']}", acme.headers, None),
        ("get", f"/v1/records/{broken['record']}", globex.headers, None),
    ]
    statuses = {}
    for method, path, headers, body in calls:
        response = client.request(method, path, headers=headers, json=body)
        statuses[(method, path, json.dumps(body))] = response.status_code
        assert response.status_code < 500, (method, path, response.text)
        if response.status_code >= 400:
            assert_error(response, response.status_code, response.json()["errors"][0]["field"])
    rotate = client.post(f"/v1/keys/{broken['bad']}/rotate", headers=acme.headers)
    assert_error(rotate, 409, "key_id")
    generate = client.post("/v1/generate", headers=acme.headers, json={"key_id": broken["bad"], "prompt": "hello"})
    assert_error(generate, 409, "key_id")
    assert client.get(f"/v1/records/{broken['bad_record']}", headers=acme.headers).json()["payload"] is None


# -- 3. files ---------------------------------------------------------------------------------

from click.testing import CliRunner  # noqa: E402

from provmark.api.crypto import MASTER_KEY_ENV  # noqa: E402
from provmark.api.db import RegistryFileError, open_database  # noqa: E402
from provmark.api.registry import Registry  # noqa: E402
from provmark.cli import cli  # noqa: E402
from tests.api.conftest import MASTER_KEY  # noqa: E402


@pytest.fixture
def runner(monkeypatch):
    import base64

    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(bytes(range(32))).decode())
    return CliRunner()


def _one_error_line(result) -> str:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ")
    return line


def test_the_registry_file_is_created_readable_by_its_owner_only(db_path, registries):
    registries.append(Registry.open(db_path, MASTER_KEY))
    assert db_path.stat().st_mode & 0o777 == 0o600


def _read_only_connect(monkeypatch):
    """SQLite opens a file it may not write read-only without a word; root may write any file, so the
    test opens it the way SQLite opens such a file (mode=ro)."""
    import sqlite3

    real = sqlite3.connect

    def connect(database, **kwargs):
        return real(f"file:{database}?mode=ro", uri=True, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)


@pytest.mark.parametrize("case,message", [
    ("missing folder", "folder .* does not exist"),
    ("not sqlite", "it is not an SQLite database"),
    ("read-only", "it is read-only"),
    ("folder", "it is a folder"),
])
@pytest.mark.parametrize("command", [["tenants", "create", "acme"], ["keys", "list", "--tenant", "acme"],
                                     ["records", "list", "--tenant", "acme"], ["serve"]])
def test_every_db_command_and_serve_refuse_an_unusable_registry_with_one_error_line(
        runner, tmp_path, registries, monkeypatch, case, message, command):
    import re

    path = tmp_path / "registry.db"
    if case == "missing folder":
        path = tmp_path / "nowhere" / "registry.db"
    elif case == "not sqlite":
        path.write_text("name,value\n" * 100)
    elif case == "folder":
        path.mkdir()
    else:
        registries.append(Registry.open(path, MASTER_KEY))
        _read_only_connect(monkeypatch)
    line = _one_error_line(runner.invoke(cli, [*command[:2], "--db", str(path), *command[2:]]))
    assert re.search(message, line), line
    with pytest.raises(RegistryFileError, match=message):
        open_database(path)


def test_a_registry_write_that_fails_at_run_time_is_a_503_in_the_error_shape(make_client, db_path, registries, acme):
    import sqlite3

    registry = Registry.open(db_path, MASTER_KEY)
    registries.append(registry)
    _, token = registry.create_tenant("initech")
    client = make_client(registry)
    registry.store.db.execute("PRAGMA busy_timeout = 50")
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the busy timeout
    try:
        response = client.post("/v1/keys", json={"scheme": "kgw"}, headers={"Authorization": f"Bearer {token}"})
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    body = assert_error(response, 503, None)
    assert body["errors"][0]["type"] == "unavailable" and "registry" in body["error"]


# -- 4. client addresses and the rate limiter -------------------------------------------------

def _anonymous_codes(client, count, forwarded=True):
    codes = []
    for i in range(count):
        headers = {"X-Forwarded-For": f"203.0.113.{i % 250}"} if forwarded else {}
        codes.append(client.get("/v1/keys", headers=headers).status_code)
    return codes


def test_x_forwarded_for_is_ignored_unless_the_proxy_is_trusted(make_client):
    spoofed = _anonymous_codes(make_client(rate=0.001, burst=3), 6)
    assert spoofed == [401, 401, 401, 429, 429, 429]  # one address, one bucket, whatever the header says
    trusted = _anonymous_codes(make_client(rate=0.001, burst=3, trusted_proxies="testclient"), 6)
    assert trusted == [401] * 6  # the proxy names six clients: six buckets


@pytest.mark.parametrize("request_args", [
    {"method": "post", "url": "/v1/verify", "content": b"{not json", "headers": {"content-type": "application/json"}},
    {"method": "post", "url": "/v1/verify", "content": b"x" * 5000},
    {"method": "get", "url": "/healthz"},
    {"method": "get", "url": "/nowhere"},
])
def test_the_rate_limiter_charges_malformed_oversized_and_health_requests_too(make_client, request_args):
    client = make_client(rate=0.001, burst=2, max_body_bytes=4096)
    codes = [client.request(**request_args).status_code for _ in range(3)]
    assert codes[2] == 429 and codes[0] != 429, codes
    assert_error(client.request(**request_args), 429, None)


def test_serve_passes_trusted_proxies_to_its_workers(runner, db_path, monkeypatch, tokenizer, registries):
    import uvicorn

    from provmark.api.app import SERVE_SETTINGS_ENV, ServeSettings

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    monkeypatch.setenv(SERVE_SETTINGS_ENV, "")
    result = runner.invoke(cli, ["serve", "--db", str(db_path), "--trusted-proxies", "10.0.0.1,10.1.0.0/16"])
    assert result.exit_code == 0, result.output
    assert calls[0]["proxy_headers"] is False  # uvicorn's own default trusts 127.0.0.1
    assert ServeSettings.from_environment().trusted_proxies == "10.0.0.1,10.1.0.0/16"


# -- 5. bounded work --------------------------------------------------------------------------

from provmark.api.limits import TOKENS_PER_REQUEST, RateLimiter, WorkLimits, work_bound, work_weight  # noqa: E402
from tests.api.conftest import WordModels  # noqa: E402


class ProxyWordModels(WordModels):
    """The word tokenizer, and a model-free proxy for Balance-Marking (``benchmarks.calibration``)."""

    def proxy(self):
        from benchmarks.calibration import SyntheticProxy

        return SyntheticProxy(vocab=4096)


def test_a_balance_key_scores_at_most_its_cap_and_says_so(make_client, fresh_db, acme):
    client = make_client(models=ProxyWordModels(), work_limits=WorkLimits(proxy_tokens=64))
    balance = _key(client, acme, "balance", bits=8, segment_bits=8, head=16)
    kgw = _key(client, acme, "kgw")
    response = client.post("/v1/verify", json={"text": plain_text(tokens=300)}, headers=acme.headers)
    assert response.status_code == 200, response.text
    by_key = {r["key_id"]: r for r in response.json()["results"]}
    assert by_key[balance["key_id"]]["capped_at"] == 64 and by_key[balance["key_id"]]["num_scored_tokens"] <= 64
    assert by_key[kgw["key_id"]]["capped_at"] is None and by_key[kgw["key_id"]]["num_scored_tokens"] > 250


def test_a_synonym_key_scores_at_most_its_word_cap_and_says_so(make_client, acme):
    client = make_client(work_limits=WorkLimits(text_words=40))
    synonym = _key(client, acme, "synonym")
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 30)
    response = client.post("/v1/verify", json={"text": text, "min_tokens": 1}, headers=acme.headers)
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["key_id"] == synonym["key_id"] and result["capped_at"] == 40
    assert 0 < result["num_scored_tokens"] <= 40 and max(end for _, end, _ in result["word_bits"]) <= len(
        " ".join(["the quick brown fox jumps over the lazy dog"] * 5))


def test_a_verification_over_the_token_budget_is_refused_before_detection(make_client, acme, monkeypatch):
    from provmark.front import Watermark

    client = make_client(work_limits=WorkLimits(max_tokens_scored=500))
    _key(client, acme, "kgw")
    _key(client, acme, "mpac", bits=16)
    monkeypatch.setattr(Watermark, "detect", lambda *a, **k: pytest.fail("detection ran"))
    body = assert_error(client.post("/v1/verify", json={"text": plain_text(tokens=300)}, headers=acme.headers),
                        422, "text")
    assert "would score 600 tokens" in body["error"] and "limit is 500" in body["error"]


@pytest.mark.one_backend
def test_the_rate_limiter_charges_verifications_by_tokens_scored_weighted_by_scheme(make_client, acme):
    client = make_client(rate=1e-9, burst=8)
    _key(client, acme, "kgw")
    _key(client, acme, "mpac", bits=16)
    assert (TOKENS_PER_REQUEST, work_weight("kgw"), work_weight("mpac")) == (2000, 1.0, 1.7)
    heavy = {"text": plain_text(tokens=3000)}
    # two key creations took 2 of the 8; the verification takes 1 + (3,000 + 1.7 x 3,000) / 2,000 = 5.05
    response = client.post("/v1/verify", json=heavy, headers=acme.headers)
    assert response.status_code == 200, response.text
    refused = client.post("/v1/verify", json={"text": plain_text(tokens=20)}, headers=acme.headers)
    assert_error(refused, 429, None)


def test_work_past_the_burst_passes_on_a_full_bucket_and_is_repaid_before_the_next_request():
    clock = iter([0.0, 0.0, 0.0, 10.0, 20.0, 21.0]).__next__  # the first read is the limiter's creation
    limiter = RateLimiter(rate=1, burst=10, clock=clock)
    assert limiter.acquire("a", 30) == 0.0  # 30 requests' work on a full bucket of 10: it owes 20
    assert limiter.acquire("b") == 0.0  # another client does not pay for it
    assert limiter.acquire("a") == pytest.approx(11.0)  # at 10 s the bucket holds -10; one request needs 1
    assert limiter.acquire("a") == pytest.approx(1.0)  # at 20 s: 0
    assert limiter.acquire("a") == 0.0  # at 21 s


def test_a_request_that_paid_its_entry_still_passes_its_heavy_work_on_an_otherwise_full_bucket():
    clock = iter([0.0, 0.0, 0.0, 0.0]).__next__
    limiter = RateLimiter(rate=1, burst=10, clock=clock)
    assert limiter.acquire("a") == 0.0  # the middleware's one request
    assert limiter.acquire("a", 30, prepaid=1) == 0.0  # 9 left, 9 + the 1 prepaid make the full bucket
    assert limiter.acquire("a") == pytest.approx(22.0)  # -21 in the bucket


def test_the_work_bound_reads_lengths_only_and_keeps_the_caps():
    limits = WorkLimits(proxy_tokens=256, text_words=4000)
    assert work_bound([1100], ["kgw"], limits) == 1100
    assert work_bound([200_000], ["synonym"], limits) == 4000 * work_weight("synonym")
    assert work_bound([100], ["synonym"], limits) == 50 * work_weight("synonym")  # two words take 3 characters
    assert work_bound([10_000, 10], ["balance"], limits) == (256 + 10) * work_weight("balance")
    assert work_bound([1100], ["no-such-scheme"], limits) == 0


def test_serve_passes_the_shutdown_timeout_to_uvicorn_and_the_heavy_lane_limits_to_its_workers(
        runner, db_path, monkeypatch, tokenizer, registries):
    import uvicorn

    from provmark.api.app import SERVE_SETTINGS_ENV, ServeSettings

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    monkeypatch.setenv(SERVE_SETTINGS_ENV, "")
    result = runner.invoke(cli, ["serve", "--db", str(db_path), "--shutdown-timeout", "2.5",
                                 "--max-heavy-per-client", "3", "--heavy-queue", "0", "--max-attribution-tokens", "512"])
    assert result.exit_code == 0, result.output
    assert calls[0]["timeout_graceful_shutdown"] == 2.5
    limits = WorkLimits(**ServeSettings.from_environment().work_limits)
    assert (limits.heavy_per_client, limits.heavy_queue, limits.attribution_tokens) == (3, 0, 512)


def _long_synonym_text(words=3000):
    return " ".join(["the quick brown fox jumps over the lazy dog"] * (words // 9))


def test_a_light_verification_runs_in_the_shared_threads_and_a_long_synonym_text_in_the_heavy_lane(
        make_client, acme, monkeypatch):
    from provmark.api import admission

    client = make_client()
    kgw, synonym = _key(client, acme, "kgw"), _key(client, acme, "synonym")
    lanes = []
    real = admission.Admission.run

    async def spy(self, fn, *, heavy, client, cancel):
        lanes.append(heavy)
        return await real(self, fn, heavy=heavy, client=client, cancel=cancel)

    monkeypatch.setattr(admission.Admission, "run", spy)
    light = client.post("/v1/verify", json={"text": plain_text(tokens=200), "key_ids": [kgw["key_id"]]},
                        headers=acme.headers)
    heavy = client.post("/v1/verify", json={"text": _long_synonym_text(), "key_ids": [synonym["key_id"]],
                                            "min_tokens": 1}, headers=acme.headers)
    assert light.status_code == 200 and heavy.status_code == 200, (light.text, heavy.text)
    assert lanes == [False, True]


@pytest.mark.one_backend
def test_a_client_past_its_heavy_verifications_in_flight_gets_a_429_and_a_full_queue_a_503(make_client, acme, globex):
    import threading

    from provmark.front import Watermark

    client = make_client(work_limits=WorkLimits(heavy_per_client=1, heavy_queue=0))
    acme_key, globex_key = _key(client, acme, "synonym"), _key(client, globex, "synonym")
    started, release = threading.Event(), threading.Event()
    real = Watermark.detect

    def slow(self, *args, **kwargs):
        started.set()
        release.wait(30)
        return real(self, *args, **kwargs)

    body = {"text": _long_synonym_text(), "min_tokens": 1}
    first = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Watermark, "detect", slow)
        running = threading.Thread(target=lambda: first.setdefault("r", client.post(
            "/v1/verify", json={**body, "key_ids": [acme_key["key_id"]]}, headers=acme.headers)))
        running.start()
        assert started.wait(30)
        mine = client.post("/v1/verify", json={**body, "key_ids": [acme_key["key_id"]]}, headers=acme.headers)
        other = client.post("/v1/verify", json={**body, "key_ids": [globex_key["key_id"]]}, headers=globex.headers)
        light = client.post("/v1/verify", json={"text": "w1 " * 50, "key_ids": [acme_key["key_id"]], "min_tokens": 1},
                            headers=acme.headers)
        release.set()
        running.join(30)
    assert first["r"].status_code == 200, first["r"].text
    assert "heavy verification(s) of this client in flight" in assert_error(mine, 429, None)["error"]
    assert "heavy verifications running or queued" in assert_error(other, 503, None)["error"]
    assert int(mine.headers["Retry-After"]) >= 1 and int(other.headers["Retry-After"]) >= 1
    assert light.status_code == 200, light.text  # light work does not queue behind the heavy lane


def test_a_prefix_is_tokenised_exactly_as_the_start_of_the_whole_text():
    import random

    from provmark.api.provenance import _token_prefix
    from provmark.watermark.models import load_tokenizer

    tokenizer = load_tokenizer()
    pieces = ["the", "  ", "\n", "\n\n", "word", "ing", ",", ".", " 12345", "é", "😀", "\t", "don't", " - ",
              "http://x.y/z?q=1", "a" * 30, "   \n "]
    generator = random.Random(0)
    for _ in range(60):
        text = " ".join(generator.choice(pieces) for _ in range(generator.randint(50, 600)))
        whole = tokenizer(text, add_special_tokens=False)["input_ids"]
        for need in (5, 64, 257):
            prefix = _token_prefix(tokenizer, text, need)
            assert prefix == whole[: len(prefix)] and len(prefix) >= min(need, len(whole))


def test_a_synonym_only_verification_tokenises_only_a_prefix_of_a_long_text(make_client, acme):
    client = make_client()
    _key(client, acme, "synonym")
    text = _long_synonym_text(words=9000)
    response = client.post("/v1/verify", json={"text": text, "min_tokens": 1}, headers=acme.headers)
    assert response.status_code == 200, response.text
    assert response.json()["num_tokens"] < 100 < len(text.split())  # the min_tokens prefix, not 9,000 tokens


# -- 6. the smaller items ---------------------------------------------------------------------

def test_an_oversized_authorization_header_is_a_401_in_the_json_shape(client):
    response = client.get("/v1/keys", headers={"Authorization": "Bearer " + "x" * 200_000})
    body = assert_error(response, 401, "authorization")
    assert "over 1024 bytes" in body["error"]


@pytest.mark.parametrize("route,field", [("/v1/generate", "prompt"), ("/v1/embed", "text")])
def test_a_prompt_or_text_of_only_whitespace_and_zero_width_characters_is_refused(client, acme, route, field):
    key = _key(client, acme, "kgw" if route == "/v1/generate" else "synonym")
    blank = " \u200b\u200b\t\ufeff\u200d "
    body = {"key_id": key["key_id"], field: blank}
    assert_error(client.post(route, json=body, headers=acme.headers), 422, field)  # before any model loads


def test_the_library_refuses_an_invisible_prompt_too():
    from provmark.errors import InvalidTextError
    from provmark.front import check_embed_inputs
    from provmark.watermark.schemes import get_scheme

    with pytest.raises(InvalidTextError, match="prompt is empty"):
        check_embed_inputs(get_scheme("kgw"), prompts=["\u200b \u2060"])


def test_a_token_in_the_query_string_never_reaches_the_access_log(db_path, registries, monkeypatch, caplog):
    import base64

    from provmark.api.app import SERVE_SETTINGS_ENV, ServeSettings, app_from_environment

    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(bytes(range(32))).decode())
    registries.append(Registry.open(db_path, MASTER_KEY))
    settings = ServeSettings(db_path=str(db_path), master_key_file=None, rate=0, burst=1, max_body_bytes=4096,
                             torch_threads=1, model_path=None, workers=1)
    monkeypatch.setenv(SERVE_SETTINGS_ENV, settings.to_environment()[SERVE_SETTINGS_ENV])
    access = logging.getLogger("uvicorn.access")
    monkeypatch.setattr(access, "filters", [])
    app_from_environment()
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/v1/keys?token=pmk_secret123", "1.1", 401)
    assert "pmk_secret123" not in caplog.text and "/v1/keys?[redacted]" in caplog.text


def test_sqlites_memory_name_still_opens_an_in_memory_registry_and_creates_no_file(tmp_path, monkeypatch, registries):
    monkeypatch.chdir(tmp_path)
    registries.append(Registry.open(":memory:", MASTER_KEY))
    assert list(tmp_path.iterdir()) == []
