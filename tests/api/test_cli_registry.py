"""The registry commands (tenants, keys --db, records, serve) through CliRunner."""

import base64
import json
import os

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from provmark.api.app import SERVE_SETTINGS_ENV, ServeSettings, app_from_environment
from provmark.api.crypto import MASTER_KEY_ENV
from provmark.api.registry import Registry
from provmark.cli import cli
from provmark.errors import ProvmarkError
from tests.api.conftest import MASTER_KEY


@pytest.fixture
def runner(monkeypatch):
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(bytes(range(32))).decode())
    return CliRunner()


def _ok(result):
    assert result.exit_code == 0, result.output
    return result.output


def _error(result):
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (line,) = result.output.strip().splitlines()
    return line


@pytest.fixture
def acme_db(runner, db_target):
    _ok(runner.invoke(cli, ["tenants", "create", "--db", str(db_target), "acme"]))
    return db_target


def test_tenants_create_prints_the_token_once_and_it_works(runner, db_target, registries):
    lines = _ok(runner.invoke(cli, ["tenants", "create", "--db", str(db_target), "acme"])).splitlines()
    registry = Registry.open(db_target)
    registries.append(registry)
    tenant = registry.tenant("acme")
    assert lines[0] == f"created tenant acme ({tenant.id}); its API token, shown only now:"
    assert registry.tenant_for_token(lines[1]) == tenant
    assert _error(runner.invoke(cli, ["tenants", "create", "--db", str(db_target), "acme"])) == \
        "Error: a tenant named 'acme' exists"


def test_keys_create_in_the_registry_then_list_and_rotate(runner, acme_db, registries):
    db = str(acme_db)
    out = _ok(runner.invoke(cli, ["keys", "create", "--db", db, "--tenant", "acme", "--scheme", "mpac", "--bits", "8",
                                  "--public"]))
    registry = Registry.open(acme_db, MASTER_KEY)
    registries.append(registry)
    (key,) = registry.keys()
    assert out == f"created mpac key {key.key_id} in {db} for tenant acme (payloads 0 to 255, 8.00 bits)\n"
    assert key.public_verify and key.params["bits"] == 8
    listed = _ok(runner.invoke(cli, ["keys", "list", "--db", db]))
    assert listed == f"{key.key_id}  acme  mpac  active, public  records 0/256  {key.created_at}\n"
    rotated = _ok(runner.invoke(cli, ["keys", "rotate", "--db", db, key.key_id]))
    successor = registry.key(key.key_id).replaced_by
    assert rotated == f"retired {key.key_id}; its successor is {successor} (mpac)\n"
    as_json = json.loads(_ok(runner.invoke(cli, ["keys", "list", "--db", db, "--tenant", "acme", "--json"])))
    assert [(k["key_id"], k["status"]) for k in as_json] == [(key.key_id, "retired"), (successor, "active")]
    assert "secret" not in json.dumps(as_json)


@pytest.mark.parametrize("args,message", [
    (["--scheme", "kgw"], "Error: give --out FILE (a key file) or --db PATH --tenant NAME (a registry key), not both"),
    (["--scheme", "kgw", "--out", "k.json", "--db", "r.db"],
     "Error: give --out FILE (a key file) or --db PATH --tenant NAME (a registry key), not both"),
    (["--scheme", "kgw", "--out", "k.json", "--public"],
     "Error: --tenant and --public apply to registry keys: add --db PATH, or drop them"),
    (["--scheme", "kgw", "--db", "DB"], "Error: a registry key belongs to a tenant: give --tenant NAME"),
    (["--scheme", "kgw", "--db", "DB", "--tenant", "nobody"], "Error: no tenant named 'nobody'"),
    (["--scheme", "kgw", "--db", "DB", "--tenant", "acme", "--force"], "Error: --force applies to key files (--out); drop it"),
])
def test_keys_create_keeps_key_files_and_registry_keys_apart(runner, acme_db, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    args = [str(acme_db) if a == "DB" else a for a in args]
    assert _error(runner.invoke(cli, ["keys", "create", *args])) == message


def test_registry_keys_need_the_master_key(runner, acme_db, monkeypatch):
    monkeypatch.delenv(MASTER_KEY_ENV)
    line = _error(runner.invoke(cli, ["keys", "create", "--db", str(acme_db), "--tenant", "acme", "--scheme", "kgw"]))
    assert line.startswith("Error: no master key: set PROVMARK_MASTER_KEY or pass --master-key-file")


def test_the_master_key_can_come_from_a_file(runner, acme_db, tmp_path, monkeypatch):
    monkeypatch.delenv(MASTER_KEY_ENV)
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(bytes(range(32))).decode())
    _ok(runner.invoke(cli, ["keys", "create", "--db", str(acme_db), "--tenant", "acme", "--scheme", "kgw",
                            "--master-key-file", str(path)]))


def test_records_list_and_show(runner, acme_db, registries):
    registry = Registry.open(acme_db, MASTER_KEY)
    registries.append(registry)
    tenant = registry.tenant("acme")
    key = registry.create_key(tenant.id, "mpac", {"bits": 8})
    record = registry.new_record(key.key_id, tenant_id=tenant.id, model="m", metadata={"user": "u"},
                                 text_sha256="ab" * 32)
    listed = _ok(runner.invoke(cli, ["records", "list", "--db", str(acme_db), "--tenant", "acme"]))
    assert listed == f"{record.id}  acme  {record.created_at}  m  payload {record.payload_hex}  text abababababab\n"
    shown = json.loads(_ok(runner.invoke(cli, ["records", "show", "--db", str(acme_db), record.id])))
    assert shown == record.to_dict()
    as_json = json.loads(_ok(runner.invoke(cli, ["records", "list", "--db", str(acme_db), "--key", key.key_id, "--json"])))
    assert [r["id"] for r in as_json] == [record.id]
    assert _error(runner.invoke(cli, ["records", "show", "--db", str(acme_db), "nope"])) == "Error: no record 'nope'"


def test_the_registry_is_read_from_provmark_db_when_db_is_not_given(runner, db_target, registries, monkeypatch):
    monkeypatch.setenv("PROVMARK_DB", db_target)
    _ok(runner.invoke(cli, ["tenants", "create", "acme"]))
    out = _ok(runner.invoke(cli, ["keys", "create", "--tenant", "acme", "--scheme", "kgw"]))
    assert out.startswith("created kgw key k_") and out.endswith(f" in {db_target} for tenant acme\n")
    registry = Registry.open(db_target)
    registries.append(registry)
    assert [k.scheme for k in registry.keys(registry.tenant("acme").id)] == ["kgw"]


def test_an_unreachable_postgresql_registry_is_one_error_line(runner):
    from tests.postgres import free_port

    url = f"postgresql://nobody@127.0.0.1:{free_port()}/registry"
    line = _error(runner.invoke(cli, ["tenants", "create", "--db", url, "acme"]))
    assert line.startswith(f"Error: cannot connect to the registry at {url}: ")


def test_serve_refuses_to_start_without_a_master_key(runner, db_target, monkeypatch):
    monkeypatch.delenv(MASTER_KEY_ENV)
    assert _error(runner.invoke(cli, ["serve", "--db", str(db_target)])).startswith("Error: no master key")


def _serve(runner, monkeypatch, args):
    """Run `provmark serve` with uvicorn.run and torch.set_num_threads recorded instead of run; the
    settings serve leaves for its workers are dropped after the test."""
    import torch
    import uvicorn

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(("threads", n)))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    monkeypatch.setenv(SERVE_SETTINGS_ENV, "")
    result = runner.invoke(cli, ["serve", *args])
    assert result.exit_code == 0, result.output
    return calls, result.output


def test_serve_runs_the_app_factory_on_the_given_address(runner, db_target, monkeypatch, tokenizer, registries):
    calls, output = _serve(runner, monkeypatch, ["--db", str(db_target), "--host", "127.0.0.1", "--port", "8123",
                                                 "--rate-limit", "5", "--burst", "7", "--max-body-bytes", "4096"])
    ((target, kwargs),) = calls
    assert target == "provmark.api.app:app_from_environment"
    assert kwargs == {"factory": True, "host": "127.0.0.1", "port": 8123, "workers": 1, "log_level": "info",
                      "proxy_headers": False, "h11_max_incomplete_event_size": 256 * 1024,
                      "timeout_graceful_shutdown": 10.0}
    assert output == f"provmark API on http://127.0.0.1:8123 (registry {db_target}, 1 worker process)\n"
    app = app_from_environment()  # what uvicorn calls in each worker
    assert calls[1:] == [("threads", 1)] and app.title == "provmark"
    registries.append(Registry.open(db_target))
    assert registries[-1].schema_version() == 4  # serve migrated the file before any worker opened it


def test_serve_workers_split_the_rate_limit(runner, db_target, monkeypatch, tokenizer, registries):
    calls, output = _serve(runner, monkeypatch, ["--db", str(db_target), "--workers", "2", "--rate-limit", "5",
                                                 "--burst", "7", "--torch-threads", "3"])
    assert calls[0][1]["workers"] == 2 and output.endswith("2 worker processes)\n")
    settings = ServeSettings.from_environment()
    assert (settings.workers, settings.rate, settings.burst, settings.torch_threads) == (2, 5, 7, 3)
    assert os.environ[MASTER_KEY_ENV] not in os.environ[SERVE_SETTINGS_ENV]  # workers read it where serve did
    client = TestClient(app_from_environment())
    registries.append(Registry.open(db_target, MASTER_KEY))
    _, token = registries[-1].create_tenant("acme")
    codes = [client.get("/v1/keys", headers={"Authorization": f"Bearer {token}"}).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]  # this process's share of the burst: 7 // 2
    assert "rate limit of 5 requests/s (burst 7, shared by 2 server processes) exceeded" in client.get(
        "/v1/keys", headers={"Authorization": f"Bearer {token}"}).text


def test_serve_refuses_a_model_it_cannot_load_before_starting_workers(runner, db_target, monkeypatch, tmp_path):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("uvicorn started"))
    result = runner.invoke(cli, ["serve", "--db", str(db_target), "--workers", "2", "--model", str(tmp_path / "none")])
    assert _error(result) == f"Error: model folder not found: {tmp_path / 'none'}"


def test_the_worker_factory_refuses_to_run_outside_serve(monkeypatch):
    monkeypatch.delenv(SERVE_SETTINGS_ENV, raising=False)
    with pytest.raises(ProvmarkError, match=r"\$PROVMARK_SERVE_SETTINGS is not set: app_from_environment builds"):
        app_from_environment()


@pytest.mark.parametrize("command", [["tenants", "create"], ["keys", "list"], ["keys", "rotate"], ["records", "list"],
                                     ["records", "show"], ["serve"]])
def test_registry_commands_have_help_with_h(runner, command):
    result = runner.invoke(cli, [*command, "-h"])
    assert result.exit_code == 0 and "Usage:" in result.output and "Example:" in result.output
