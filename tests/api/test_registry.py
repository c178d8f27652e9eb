"""The registry: schema and durability settings, tenants and tokens, sealed keys, record numbering."""

import base64
import json
import multiprocessing
import sqlite3

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provmark.api.crypto import MasterKey, MasterKeyError
from provmark.api.db import open_database
from provmark.api.errors import ConflictError, KeyExhaustedError, NotFoundError
from provmark.api.registry import Registry
from provmark.api.stores import StoreUnavailableError
from provmark.errors import ParameterError
from tests.api import registry_writer
from tests.api.conftest import MASTER_KEY, stored_bytes


def test_a_file_registry_uses_wal_and_full_synchronous_writes(tmp_path):
    db = open_database(tmp_path / "registry.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    db.close()


def test_migrations_apply_once_and_reopening_keeps_the_data(db_target, registries):
    first = Registry.open(db_target, MASTER_KEY)
    registries.append(first)
    first.create_tenant("acme")
    again = Registry.open(db_target, MASTER_KEY)
    registries.append(again)
    assert again.schema_version() == first.schema_version() == 4
    assert [t.name for t in again.tenants()] == ["acme"]


def test_tokens_are_stored_only_as_their_sha256(db_target, registries, request):
    registry = Registry.open(db_target, MASTER_KEY)
    registries.append(registry)
    tenant, token = registry.create_tenant("acme")
    assert token.startswith("pmk_") and len(token) == 47
    assert registry.tenant_for_token(token) == tenant
    assert registry.tenant_for_token(token + "x") is None
    registry.close()
    assert token.encode() not in stored_bytes(db_target, request)


@pytest.mark.parametrize("name", ["", "a b", "-lead", "x" * 65, "é"])
def test_tenant_names_are_refused_unless_simple(fresh_db, name):
    with pytest.raises(ParameterError, match="tenant name must be"):
        fresh_db.create_tenant(name)


def test_tenant_names_are_unique(fresh_db):
    fresh_db.create_tenant("acme")
    with pytest.raises(ConflictError, match="a tenant named 'acme' exists"):
        fresh_db.create_tenant("acme")


def test_key_secrets_are_sealed_at_rest_and_nothing_of_the_master_key_is_stored(db_target, registries, request):
    registry = Registry.open(db_target, MASTER_KEY)
    registries.append(registry)
    tenant, _ = registry.create_tenant("acme")
    info = registry.create_key(tenant.id, "kgw")
    secret = registry.watermark_key(info.key_id).secret
    registry.close()
    raw = stored_bytes(db_target, request)
    assert secret not in raw and secret.hex().encode() not in raw
    master = bytes(range(32))  # conftest's MASTER_KEY
    assert master not in raw and master.hex().encode() not in raw and base64.b64encode(master) not in raw
    assert MASTER_KEY.check_value.encode() in raw  # only its public fingerprint
    reopened = Registry.open(db_target, MASTER_KEY)
    registries.append(reopened)
    assert reopened.watermark_key(info.key_id).secret == secret


def test_a_different_master_key_is_refused_at_open(db_target, registries):
    registries.append(Registry.open(db_target, MASTER_KEY))
    with pytest.raises(MasterKeyError, match="is not the one the registry's keys were sealed with"):
        Registry.open(db_target, MasterKey(bytes(32)))


def test_a_sealed_secret_moved_to_another_key_row_does_not_open(fresh_db, acme):
    a = fresh_db.create_key(acme.id, "kgw")
    b = fresh_db.create_key(acme.id, "kgw")
    sealed = fresh_db.store.query("SELECT secret FROM keys WHERE id = ?", [a.key_id])[0][0]
    fresh_db.store.execute("UPDATE keys SET secret = ? WHERE id = ?", [sealed, b.key_id])
    with pytest.raises(MasterKeyError, match=f"cannot decrypt the secret of {b.key_id}@"):
        fresh_db.watermark_key(b.key_id)


def test_key_creation_without_a_master_key_is_refused(db_target, registries):
    registry = Registry.open(db_target)
    registries.append(registry)
    tenant, _ = registry.create_tenant("acme")
    with pytest.raises(MasterKeyError, match="no master key"):
        registry.create_key(tenant.id, "kgw")


def test_multi_bit_records_are_numbered_at_random_within_the_capacity_until_exhausted(fresh_db, acme):
    info = fresh_db.create_key(acme.id, "mpac", {"bits": 4})
    records = [fresh_db.new_record(info.key_id, tenant_id=acme.id, model="m") for _ in range(16)]
    assert sorted(r.number for r in records) == list(range(16))
    assert [r.number for r in records] != list(range(16))  # drawn at random (1 in 16! to fail)
    assert all(r.payload == r.number and r.id == f"{info.key_id}.{r.number}" for r in records)
    with pytest.raises(KeyExhaustedError, match="has issued all 16 of its payloads; rotate it") as raised:
        fresh_db.new_record(info.key_id, tenant_id=acme.id, model="m")
    assert raised.value.field == "key_id" and raised.value.status == 409


def test_majormark_capacity_excludes_its_forbidden_codewords(fresh_db, acme):
    info = fresh_db.create_key(acme.id, "majormark", {"bits": 3})
    numbers = {fresh_db.new_record(info.key_id, tenant_id=acme.id, model=None).number for _ in range(6)}
    assert info.capacity == 6 and numbers == set(range(6))
    with pytest.raises(KeyExhaustedError):
        fresh_db.new_record(info.key_id, tenant_id=acme.id, model=None)


def test_zero_bit_records_count_up_and_carry_no_payload(fresh_db, acme):
    info = fresh_db.create_key(acme.id, "kgw")
    records = [fresh_db.new_record(info.key_id, tenant_id=acme.id, model=None) for _ in range(3)]
    assert [r.number for r in records] == [1, 2, 3]
    assert all(r.payload is None and r.payload_hex is None for r in records)
    assert info.capacity is None


def test_rotation_retires_the_key_and_its_successor_takes_over(fresh_db, acme):
    old = fresh_db.create_key(acme.id, "mpac", {"bits": 8}, public_verify=True)
    fresh_db.new_record(old.key_id, tenant_id=acme.id, model=None)
    new = fresh_db.rotate_key(old.key_id, tenant_id=acme.id)
    retired = fresh_db.key(old.key_id)
    assert (retired.status, retired.replaced_by, retired.records) == ("retired", new.key_id, 1)
    assert (new.status, new.scheme, new.params, new.public_verify) == ("active", "mpac", old.params, True)
    assert fresh_db.watermark_key(new.key_id).secret != fresh_db.watermark_key(old.key_id).secret
    with pytest.raises(ConflictError, match=f"key {old.key_id} is retired; use its successor {new.key_id}"):
        fresh_db.new_record(old.key_id, tenant_id=acme.id, model=None)
    with pytest.raises(ConflictError, match="already retired"):
        fresh_db.rotate_key(old.key_id)


def test_another_tenants_key_or_record_reads_as_missing(fresh_db, acme, globex):
    info = fresh_db.create_key(acme.id, "kgw")
    record = fresh_db.new_record(info.key_id, tenant_id=acme.id, model=None)
    with pytest.raises(NotFoundError):
        fresh_db.key(info.key_id, tenant_id=globex.id)
    with pytest.raises(NotFoundError):
        fresh_db.record(record.id, tenant_id=globex.id)
    with pytest.raises(NotFoundError):
        fresh_db.new_record(info.key_id, tenant_id=globex.id, model=None)
    assert fresh_db.keys(globex.id) == [] and fresh_db.records(tenant_id=globex.id) == []


def test_a_failed_insert_leaves_nothing_behind(fresh_db, acme):
    info = fresh_db.create_key(acme.id, "kgw")
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        with fresh_db.store.write():
            fresh_db.store.insert("records", {"id": "x", "tenant_id": acme.id, "key_id": info.key_id, "number": 1,
                                              "scheme": "kgw", "params": "{}", "prf_version": "prf-v1",
                                              "metadata": "{}", "created_at": "now"})
            fresh_db.store.insert("records", {"id": "x", "tenant_id": acme.id, "key_id": info.key_id, "number": 2,
                                              "scheme": "kgw", "params": "{}", "prf_version": "prf-v1",
                                              "metadata": "{}", "created_at": "now"})
    assert fresh_db.records() == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",))),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metadata=st.dictionaries(st.text(st.characters(exclude_categories=("Cs",)), max_size=12), json_values, max_size=6),
       # PostgreSQL's TEXT holds no NUL; the model name is the server's own, never a client's.
       model=st.none() | st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30),
       digest=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64))
def test_record_fields_round_trip(fresh_db, metadata, model, digest):
    if not fresh_db.tenants():
        tenant, _ = fresh_db.create_tenant("acme")
        fresh_db.create_key(tenant.id, "mpac", {"bits": 32})
    key = fresh_db.keys()[0]
    stored = fresh_db.new_record(key.key_id, tenant_id=None, model=model, metadata=metadata, text_sha256=digest)
    again = fresh_db.record(stored.id)
    assert again == stored
    assert (again.metadata, again.model, again.text_sha256) == (json.loads(json.dumps(metadata)), model, digest)
    assert again.params == key.params and again.scheme == "mpac" and again.prf_version == "prf-v1"


def test_key_refs_list_the_same_keys_as_keys_scoped_the_same_way(fresh_db, acme, globex):
    mine = [fresh_db.create_key(acme.id, "kgw"), fresh_db.create_key(acme.id, "kgw", public_verify=True)]
    theirs = fresh_db.create_key(globex.id, "kgw", public_verify=True)
    fresh_db.rotate_key(mine[0].key_id, tenant_id=acme.id)
    for scope in ({"tenant_id": acme.id}, {"tenant_id": globex.id}, {"public_only": True}, {}):
        assert [(r.key_id, r.tenant_id) for r in fresh_db.key_refs(**scope)] == [
            (k.key_id, k.tenant_id) for k in fresh_db.keys(**scope)]
    assert theirs.key_id not in {r.key_id for r in fresh_db.key_refs(acme.id)}


def test_processes_writing_at_once_get_distinct_record_ids_and_every_acknowledged_write_is_stored(db_target, registries):
    # `provmark serve --workers N` runs N processes on one registry file, and API nodes on several
    # machines share one PostgreSQL: each allocates record numbers, creates tenants and rotates keys
    # in its own connection, so only the registry's write lock keeps them apart.
    registry = Registry.open(db_target, MASTER_KEY)
    registries.append(registry)
    tenant, _ = registry.create_tenant("acme")
    key_ids = [registry.create_key(tenant.id, "kgw").key_id, registry.create_key(tenant.id, "mpac", {"bits": 7, "radix": 2}).key_id]
    small = registry.create_key(tenant.id, "mpac", {"bits": 4, "radix": 2}).key_id  # 16 payloads for 90 attempts
    rotated = registry.create_key(tenant.id, "kgw").key_id
    context = multiprocessing.get_context("spawn")
    start, results, rounds = context.Barrier(3), context.Queue(), 30
    workers = [context.Process(target=registry_writer.write,
                               args=(db_target, bytes(range(32)), key_ids, tenant.id, rounds, start, results),
                               kwargs={"small_key_id": small, "rotate_key_id": rotated})
               for _ in range(3)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert [error for out in outcomes for error in out["errors"]] == []
    acknowledged = [record_id for out in outcomes for record_id in out["records"]]
    assert len(acknowledged) == len(set(acknowledged)) == 3 * rounds * len(key_ids) + 16
    assert sorted(r.id for r in registry.records(limit=1000)) == sorted(acknowledged)
    assert sorted(r.number for r in registry.records(key_id=key_ids[0], limit=1000)) == list(range(1, 3 * rounds + 1))
    assert sorted(r.number for r in registry.records(key_id=small, limit=1000)) == list(range(16))
    assert sum(out["exhausted"] for out in outcomes) == 3 * rounds - 16
    created = [name for out in outcomes for name in out["created"]]
    assert sorted(created) == sorted(f"w{i}" for i in range(rounds))  # each name once, the others refused
    assert all(len(out["refused"]) + len(out["created"]) == rounds for out in outcomes)
    (successor,) = [key_id for out in outcomes for key_id in out["rotated"]]  # one rotation won, two were refused
    assert registry.key(rotated).replaced_by == successor and registry.key(successor).status == "active"


def test_a_postgresql_registry_reports_an_outage_and_reconnects_when_the_server_is_back(postgres_server, registries):
    registry = Registry.open(postgres_server.new_database(), MASTER_KEY)
    registries.append(registry)
    registry.create_tenant("acme")
    postgres_server.stop()  # every pooled connection breaks (a clean stop: the test server runs without fsync)
    try:
        with pytest.raises(StoreUnavailableError, match="unavailable"):
            registry.tenants()
        with pytest.raises(StoreUnavailableError):
            registry.create_tenant("globex")
    finally:
        postgres_server.start()
    registry.create_tenant("globex")
    assert [t.name for t in registry.tenants()] == ["acme", "globex"]
