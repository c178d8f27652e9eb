"""Verify's cache of each key's issued numbers (``api.issued``): what it holds after writes from
this registry and from another one on the same database (another process or API node), read
incrementally, on both backends."""

import json

import numpy as np

from provmark.api.provenance import Provenance
from provmark.api.registry import Registry
from tests.api.conftest import MASTER_KEY, WordModels, watermarked_text


def _open_two(db_target, registries):
    serving, other = Registry.open(db_target, MASTER_KEY), Registry.open(db_target, MASTER_KEY)
    registries += [serving, other]
    tenant, _ = serving.create_tenant("acme")
    return serving, other, tenant


def _bulk_insert(registry, key, tenant_id, numbers):
    """Rows written straight into the table, as a bulk fill (benchmarks/provenance.py) or an older
    node would: the database itself gives them their ``seq``."""
    with registry.store.write():
        for number in numbers:
            registry.store.insert("records", {
                "id": f"{key.key_id}.{number}", "tenant_id": tenant_id, "key_id": key.key_id, "number": number,
                "scheme": key.scheme, "params": json.dumps(key.params), "prf_version": key.prf_version, "model": "bulk",
                "metadata": "{}", "created_at": "2026-12-07T00:00:00+00:00", "text_sha256": None})


def test_the_cache_follows_every_writer_and_reads_only_what_changed(db_target, registries):
    serving, other, tenant = _open_two(db_target, registries)
    key = serving.create_key(tenant.id, "mpac", {"bits": 32, "radix": 4})
    rows_read = []
    query = serving.store.query

    def counting(sql, args=()):
        rows = query(sql, args)
        if "FROM records" in sql:
            rows_read.append(len(rows))
        return rows

    serving.store.query = counting

    def expected():
        return np.array(sorted(other.record_numbers(key.key_id)), dtype=np.uint64)

    assert serving.issued_numbers(key.key_id).size == 0
    mine = [serving.new_record(key.key_id, tenant_id=tenant.id, model="m") for _ in range(5)]
    theirs = [other.new_record(key.key_id, tenant_id=tenant.id, model="m") for _ in range(3)]
    _bulk_insert(other, key, tenant.id, [11, 7, 1 << 40])
    rows_read.clear()
    assert np.array_equal(serving.issued_numbers(key.key_id), expected())
    assert rows_read == [8 + 3]  # only the records written since the last look (the first held none)
    rows_read.clear()
    assert np.array_equal(serving.issued_numbers(key.key_id), expected())
    assert rows_read == [0]  # nothing new: no record row read
    other.set_record_incomplete(theirs[0].id)  # a status change keeps the record a candidate
    assert np.array_equal(serving.issued_numbers(key.key_id), expected())
    other.delete_record(mine[1].id)  # withdrawn by another node: the cache reads the key afresh
    other.delete_record(theirs[2].id)
    rows_read.clear()
    numbers = serving.issued_numbers(key.key_id)
    assert np.array_equal(numbers, expected()) and mine[1].number not in numbers.tolist()
    assert rows_read == [9]
    other.new_record(key.key_id, tenant_id=tenant.id, model="m")
    _bulk_insert(other, key, tenant.id, [mine[1].number])  # a withdrawn number issued again
    assert np.array_equal(serving.issued_numbers(key.key_id), expected())
    assert not serving.issued_numbers(key.key_id).flags.writeable  # shared between requests: read-only
    assert serving.issued_numbers("k_missing").size == 0


def test_a_record_issued_by_another_registry_is_a_candidate_on_the_next_verify(db_target, registries):
    serving, other, tenant = _open_two(db_target, registries)
    info = serving.create_key(tenant.id, "mpac", {"bits": 32, "radix": 4})
    key = serving.watermark_key(info.key_id)
    refs = serving.key_refs(tenant.id)
    provenance = Provenance(serving, WordModels())
    first = serving.new_record(info.key_id, tenant_id=tenant.id, model="m")
    (before,) = provenance.verify([watermarked_text(key, first.payload, seed=3)], refs, tenant_id=tenant.id)
    assert before.results[0].match == "record" and before.results[0].record.id == first.id
    assert before.results[0].record_test.num_candidates == 1

    late = other.new_record(info.key_id, tenant_id=tenant.id, model="m")
    (found,) = provenance.verify([watermarked_text(key, late.payload, seed=4)], refs, tenant_id=tenant.id)
    result = found.results[0]
    assert result.record_test.num_candidates == 2
    assert (result.match, result.record.id) == ("record", late.id)

    other.delete_record(late.id)  # withdrawn elsewhere: no longer a candidate
    (gone,) = provenance.verify([watermarked_text(key, late.payload, seed=4)], refs, tenant_id=tenant.id)
    test = gone.results[0].record_test
    # the one candidate left is the first record (which the text may still match: a text marked with
    # another payload shares about a quarter of its digits, and the record test's null is unmarked text)
    assert (test.num_candidates, test.payload) == (1, first.payload)
    assert gone.results[0].record is None or gone.results[0].record.id == first.id


def test_a_text_hash_is_looked_up_in_its_index_and_names_the_earliest_record(db_target, registries):
    serving, other, tenant = _open_two(db_target, registries)
    key = serving.create_key(tenant.id, "mpac", {"bits": 32, "radix": 4})
    made = [serving.new_record(key.key_id, tenant_id=tenant.id, model="m", text_sha256="ab" * 32) for _ in range(3)]
    serving.new_record(key.key_id, tenant_id=tenant.id, model="m", text_sha256="cd" * 32)
    assert serving.record_by_text(key.key_id, "ab" * 32).id == min(made, key=lambda r: r.number).id
    assert serving.record_by_text(key.key_id, "ef" * 32) is None
    if serving.store.dialect != "sqlite":
        return
    seen = []
    query = serving.store.query
    serving.store.query = lambda sql, args=(): seen.append((sql, args)) or query(sql, args)
    serving.record_by_text(key.key_id, "ab" * 32)
    (sql, args), = seen
    plan = " ".join(row[3] for row in query("EXPLAIN QUERY PLAN " + sql, args))
    # not the (key_id, number) index, which reads every record of the key (460 ms at 100,000)
    assert "idx_records_key_id_text_sha256" in plan, plan
