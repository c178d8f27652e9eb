"""Registry and API fixtures in sqlite-utils' manner, over both backends: every test that takes
``fresh_db`` or ``db_target`` runs once on SQLite and once on PostgreSQL (a fresh database on the
session's real server, tests/postgres.py). ``fresh_db`` is an empty registry (SQLite: in memory),
``db_target`` a place to open one (an SQLite file under tmp_path, or a PostgreSQL URL), and every
registry is closed after its test. Plus a word-level tokenizer and a watermarked-text maker, so
verification runs without loading a model."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from provmark.api.app import create_app
from provmark.api.crypto import MasterKey
from provmark.watermark.models import Models
from provmark.api.registry import Registry
from tests.sampled import plain_ids, watermarked_ids

MASTER_KEY = MasterKey(bytes(range(32)))
VOCAB = 4096


class WordTokenizer:
    """Text "w12 w7 w3001" <-> ids [12, 7, 3001]; anything else is id 0."""

    def __call__(self, texts, add_special_tokens=False):
        single = isinstance(texts, str)
        rows = [[int(w[1:]) if w[:1] == "w" and w[1:].isdigit() and int(w[1:]) < VOCAB else 0 for w in t.split()]
                for t in ([texts] if single else texts)]
        return {"input_ids": rows[0] if single else rows}


class WordModels(Models):
    """Serves the word tokenizer; loading model weights is a test failure."""

    def tokenizer(self):
        return WordTokenizer()

    def loaded(self):
        raise AssertionError("this test must not load a model")


def watermarked_text(key, payload=None, *, tokens=300, seed=0) -> str:
    """Text sampled from uniform logits through the key's processor (so strongly watermarked)."""
    return " ".join(f"w{i}" for i in watermarked_ids(key, payload, tokens=tokens, seed=seed, vocab=VOCAB))


def plain_text(*, tokens=300, seed=1) -> str:
    return " ".join(f"w{i}" for i in plain_ids(tokens=tokens, seed=seed, vocab=VOCAB))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    """The registry backend a test runs on."""
    return request.param


@pytest.fixture
def db_target(backend, request, tmp_path) -> str:
    """Where to open a fresh registry: an SQLite file path, or the URL of a new PostgreSQL database."""
    if backend == "sqlite":
        return str(tmp_path / "registry.db")
    return request.getfixturevalue("postgres_server").new_database()


@pytest.fixture
def db_path(tmp_path) -> Path:
    """An SQLite registry path, for the tests of what only a file registry has (its mode, its lock)."""
    return tmp_path / "registry.db"


def stored_bytes(db_target: str, request) -> bytes:
    """Everything the registry's database holds at rest: the SQLite file's bytes, or every row of
    every PostgreSQL table."""
    if db_target.startswith("postgresql://"):
        return request.getfixturevalue("postgres_server").dump(db_target)
    return open(db_target, "rb").read()


@pytest.fixture
def registries():
    opened = []
    yield opened
    for registry in opened:
        registry.close()


@pytest.fixture
def fresh_db(backend, request, registries) -> Registry:
    """An empty registry with the test master key: in memory (SQLite) or a new PostgreSQL database."""
    target = None if backend == "sqlite" else request.getfixturevalue("db_target")
    registry = Registry.open(target, MASTER_KEY)
    registries.append(registry)
    return registry


@pytest.fixture
def make_client(fresh_db):
    """``make_client(**create_app_kwargs)``: a TestClient over ``fresh_db`` (word tokenizer, no model)."""

    def make(registry=None, **kwargs):
        kwargs.setdefault("models", WordModels())
        kwargs.setdefault("rate", 0)
        return TestClient(create_app(registry or fresh_db, **kwargs))

    return make


@pytest.fixture
def client(make_client):
    return make_client()


class Tenant:
    """A tenant and its Authorization header."""

    def __init__(self, registry, name):
        self.tenant, self.token = registry.create_tenant(name)
        self.id = self.tenant.id
        self.headers = {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def acme(fresh_db):
    return Tenant(fresh_db, "acme")


@pytest.fixture
def globex(fresh_db):
    return Tenant(fresh_db, "globex")


def assert_error(response, status: int, field: str | None):
    """The one error shape (api.errors), with the status and the field of the first problem."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"ok", "status", "error", "errors"}, body
    assert body["ok"] is False and body["status"] == status
    assert isinstance(body["error"], str) and body["error"]
    assert body["errors"] and all(set(e) == {"field", "message", "type"} for e in body["errors"]), body
    assert body["errors"][0]["field"] == field, body
    return body
