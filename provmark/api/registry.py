"""The provenance registry: tenants, API tokens, keys (secrets sealed at rest) and records.

**Record ids.** A record is numbered within its key, and its id is ``<key_id>.<number>``. For a
multi-bit key the number *is* the payload embedded in the text, so decoding a text with the key
names the record. Numbers are drawn at random in [0, capacity) (capped at 2**63, SQLite's
integer range) rather than counted up: with sequential numbers a single flipped payload bit
usually lands on another issued record and the text is pinned on the wrong record; with random
numbers a damaged payload almost always matches no record (a key with N records out of
capacity C misattributes a random wrong payload with probability N/C), and verify reports the
nearest records instead. A zero-bit key (kgw) carries no payload: its records are numbered 1, 2,
3, ... and found again by key and text hash.

**Exhaustion.** When every number of a multi-bit key is taken, ``new_record`` raises
``KeyExhaustedError`` (HTTP 409): rotate the key (``rotate_key``), which issues a fresh key with the
same scheme and parameters and retires the old one; the retired key still verifies its records.
Rotate well before that: the misattribution odds above grow with the fill.

**Storage and concurrency.** The registry lives in a ``stores.Store``: an SQLite file (the embedded
default) or a PostgreSQL database that several API nodes share (``Registry.open`` chooses by the
target). Every write is one ``Store.write`` transaction, which holds the registry's write lock (SQLite's
``BEGIN IMMEDIATE``, a PostgreSQL advisory lock) from before its first read, so a record number, a
tenant name or a key's rotation is checked and taken under the same lock, across processes and
across nodes. Reads take no write lock.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from provmark.api.auth import digests_match, new_token, token_digest
from provmark.api.crypto import MasterKey, MasterKeyError
from provmark.api.errors import ConflictError, KeyExhaustedError, NotFoundError
from provmark.api.issued import IssuedNumbers
from provmark.api.stores import Store, open_store
from provmark.errors import ParameterError, ProvmarkError
from provmark.watermark.keys import KEY_FILE_FORMAT, WatermarkKey, create_key, key_from_dict
from provmark.watermark.payload import payload_hex
from provmark.watermark.schemes import config_for

__all__ = ["KeyInfo", "KeyRef", "Record", "Registry", "Tenant"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_NUMBER = 1 << 63  # SQLite's and PostgreSQL's (BIGINT) integers are signed 64-bit
_RANDOM_TRIES = 16


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _stored_config(scheme: str, params: dict):
    """The config of a stored key or record, or None when this version refuses its parameters (a
    row written before a bound was added, or by hand): listing and reading such rows must still
    work, and verification reports the key as unusable instead of failing (``Provenance.verify``)."""
    try:
        return config_for(scheme, params)
    except (ProvmarkError, TypeError):
        return None


def _capacity(scheme: str, params: dict) -> int | None:
    config = _stored_config(scheme, params)
    return config.capacity if config is not None and config.supports_payload else None


@dataclass(frozen=True, kw_only=True)
class Tenant:
    id: str
    name: str
    created_at: str


@dataclass(frozen=True, kw_only=True)
class KeyRef:
    """A registry key by id and owner (what verification reads of it)."""

    key_id: str
    tenant_id: str
    scheme: str = ""
    """The key's scheme (what a verification reports for a key it could not use)."""
    prf_version: str = ""


@dataclass(frozen=True, kw_only=True)
class KeyInfo:
    """A registry key as its tenant sees it: everything but the secret."""

    key_id: str
    tenant_id: str
    scheme: str
    params: dict
    prf_version: str
    status: str
    """"active" (generates and verifies) or "retired" (verifies only; see ``replaced_by``)."""
    public_verify: bool
    """Whether callers without a token may verify texts against this key."""
    created_at: str
    retired_at: str | None
    replaced_by: str | None
    capacity: int | None
    """Distinct payloads the key carries (None for a zero-bit key)."""
    records: int
    """Records issued under the key so far."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class Record:
    """A provenance record: what generated a text, under which key and payload, and when."""

    id: str
    tenant_id: str
    tenant: str
    """Name of the tenant that issued it."""
    key_id: str
    number: int
    scheme: str
    params: dict
    prf_version: str
    payload: int | None
    """What the text carries (the number), for multi-bit keys; None for zero-bit keys."""
    payload_hex: str | None
    model: str | None
    metadata: dict
    created_at: str
    text_sha256: str | None
    """``provenance.text_sha256`` of the text, when the registry knows it."""
    status: str = "complete"
    """"complete"; "generating" while a streamed generation runs; "incomplete" when its client left
    mid-stream (the text carries the payload, but the registry never saw all of it: no text hash)."""
    context: dict | None = None
    """The generation setting, for records made by ``/v1/generate``: ``prompt``, ``chat`` (None:
    the model's chat template when it has one) and ``temperature``; None otherwise. Verify's
    zero-shot attribution scores the text after this prompt."""

    def to_dict(self, *, public: bool = False) -> dict:
        """JSON-ready dict; ``public`` drops the caller-supplied metadata and generation context
        (verify through a public key)."""
        data = asdict(self)
        if public:
            data["metadata"] = data["context"] = None
        return data


class Registry:
    """Tenants, tokens, keys and records in one ``Store`` (see the module docstring).

    ``tenant_id`` arguments scope a lookup to one tenant: another tenant's key or record is
    reported exactly as a missing one. ``None`` (the operator's command line) sees everything.
    """

    def __init__(self, store: Store, master_key: MasterKey | None = None):
        self.store = store
        self.master_key = master_key
        self._secrets: dict[str, WatermarkKey] = {}
        self._issued = IssuedNumbers(store)
        if master_key is not None:
            self._check_master_key(master_key)

    @classmethod
    def open(cls, target, master_key: MasterKey | None = None) -> Registry:
        """The registry at ``target``: an SQLite file path (None: in memory) or a ``postgresql://`` URL,
        its schema migrated."""
        return cls(open_store(target), master_key)

    def close(self) -> None:
        self.store.close()

    def schema_version(self) -> int:
        """How many registry migrations the database has applied."""
        return self.store.schema_version()

    def _check_master_key(self, master_key: MasterKey) -> None:
        with self.store.write():
            rows = self.store.query("SELECT value FROM settings WHERE name = 'master_key_check'")
            if not rows:
                self.store.insert("settings", {"name": "master_key_check", "value": master_key.check_value})
            elif rows[0][0] != master_key.check_value:
                raise MasterKeyError(
                    f"this master key (check value {master_key.check_value}) is not the one the registry's keys "
                    f"were sealed with (check value {rows[0][0]})"
                )

    def _master(self) -> MasterKey:
        if self.master_key is None:
            raise MasterKeyError("no master key: set PROVMARK_MASTER_KEY or pass --master-key-file")
        return self.master_key

    # -- tenants and tokens -------------------------------------------------------------------

    def create_tenant(self, name: str) -> tuple[Tenant, str]:
        """A new tenant and its first API token (returned once; only its SHA-256 is stored)."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ParameterError(f"tenant name must be 1 to 64 letters, digits, '.', '_' or '-', got {name!r}")
        tenant = Tenant(id="t_" + secrets.token_hex(8), name=name, created_at=_now())
        token = new_token()
        with self.store.write():
            if self.store.query("SELECT 1 FROM tenants WHERE name = ?", [name]):
                raise ConflictError(f"a tenant named {name!r} exists", field="name")
            self.store.insert("tenants", asdict(tenant))
            self.store.insert("tokens", {"digest": token_digest(token), "tenant_id": tenant.id, "created_at": _now()})
        return tenant, token

    def tenants(self) -> list[Tenant]:
        rows = self.store.query("SELECT id, name, created_at FROM tenants ORDER BY name")
        return [Tenant(id=r[0], name=r[1], created_at=r[2]) for r in rows]

    def tenant(self, name: str) -> Tenant:
        rows = self.store.query("SELECT id, name, created_at FROM tenants WHERE name = ?", [name])
        if not rows:
            raise NotFoundError(f"no tenant named {name!r}", field="tenant")
        return Tenant(id=rows[0][0], name=rows[0][1], created_at=rows[0][2])

    def tenant_for_token(self, token: str) -> Tenant | None:
        """The tenant a token belongs to, or None. The lookup is by SHA-256 (see ``api.auth``)."""
        digest = token_digest(token)
        row = _first(self.store.query(
            "SELECT tenants.id, tenants.name, tenants.created_at, tokens.digest FROM tokens"
            " JOIN tenants ON tenants.id = tokens.tenant_id WHERE tokens.digest = ?",
            [digest],
        ))
        if row is None or not digests_match(row[3], digest):
            return None
        return Tenant(id=row[0], name=row[1], created_at=row[2])

    # -- keys ---------------------------------------------------------------------------------

    _KEY_COLUMNS = (
        "keys.id, keys.tenant_id, keys.scheme, keys.params, keys.prf_version, keys.status, keys.public_verify,"
        " keys.created_at, keys.retired_at, keys.replaced_by,"
        " (SELECT count(*) FROM records WHERE records.key_id = keys.id)"
    )

    @staticmethod
    def _key_info(row) -> KeyInfo:
        params = json.loads(row[3])
        return KeyInfo(
            key_id=row[0], tenant_id=row[1], scheme=row[2], params=params, prf_version=row[4], status=row[5],
            public_verify=bool(row[6]), created_at=row[7], retired_at=row[8], replaced_by=row[9],
            capacity=_capacity(row[2], params), records=row[10],
        )

    def _insert_key(self, tenant_id: str, key: WatermarkKey, public_verify: bool) -> None:
        sealed = self._master().seal(key.secret, f"{key.key_id}@{tenant_id}")
        self.store.insert(
            "keys",
            {
                "id": key.key_id, "tenant_id": tenant_id, "scheme": key.scheme,
                "params": json.dumps(key.config.to_params()), "prf_version": key.prf_version, "secret": sealed,
                "status": "active", "public_verify": int(public_verify), "created_at": _now(),
            }
        )

    def create_key(self, tenant_id: str, scheme: str, params: dict | None = None, *, public_verify: bool = False) -> KeyInfo:
        """A fresh key (new 32-byte secret) for the tenant, its secret sealed under the master key."""
        key = create_key(scheme, params)
        with self.store.write():
            self._insert_key(tenant_id, key, public_verify)
        return self.key(key.key_id, tenant_id=tenant_id)

    def keys(self, tenant_id: str | None = None, *, public_only: bool = False) -> list[KeyInfo]:
        """Keys of one tenant (None: all), oldest first; ``public_only`` keeps the publicly verifiable ones."""
        where, args = _key_filter(tenant_id, public_only)
        rows = self.store.query(f"SELECT {self._KEY_COLUMNS} FROM keys{where} ORDER BY keys.created_at, keys.id", args)
        return [self._key_info(row) for row in rows]

    def key_refs(self, tenant_id: str | None = None, *, public_only: bool = False) -> list[KeyRef]:
        """The keys ``keys`` lists, as ids and owners only: what verification needs on every request,
        without counting each key's records (an index scan as long as the key's record list)."""
        where, args = _key_filter(tenant_id, public_only)
        rows = self.store.query(f"SELECT id, tenant_id, scheme, prf_version FROM keys{where} ORDER BY created_at, id",
                                args)
        return [KeyRef(key_id=row[0], tenant_id=row[1], scheme=row[2], prf_version=row[3]) for row in rows]

    def key(self, key_id: str, *, tenant_id: str | None = None) -> KeyInfo:
        """One key; ``NotFoundError`` (field ``key_id``) when it is absent or another tenant's."""
        row = _first(self.store.query(f"SELECT {self._KEY_COLUMNS} FROM keys WHERE keys.id = ?", [key_id]))
        if row is None or (tenant_id is not None and row[1] != tenant_id):
            raise NotFoundError(f"no key {key_id!r}", field="key_id")
        return self._key_info(row)

    def watermark_key(self, key_id: str) -> WatermarkKey:
        """The key with its secret opened (cached per process: a key's secret never changes)."""
        cached = self._secrets.get(key_id)
        if cached is not None:
            return cached
        row = _first(self.store.query(
            "SELECT tenant_id, scheme, params, prf_version, secret, created_at FROM keys WHERE id = ?", [key_id]
        ))
        if row is None:
            raise NotFoundError(f"no key {key_id!r}", field="key_id")
        secret = self._master().open(bytes(row[4]), f"{key_id}@{row[0]}")
        key = key_from_dict(
            {"format": KEY_FILE_FORMAT, "key_id": key_id, "scheme": row[1], "params": json.loads(row[2]),
             "prf_version": row[3], "created_at": row[5], "secret": secret.hex()}
        )
        self._secrets[key_id] = key
        return key

    def rotate_key(self, key_id: str, *, tenant_id: str | None = None) -> KeyInfo:
        """Retire an active key and issue its successor (same scheme, parameters and public flag)."""
        old = self.key(key_id, tenant_id=tenant_id)
        if old.status != "active":
            raise ConflictError(f"key {key_id} is already retired (replaced by {old.replaced_by})", field="key_id")
        try:
            new = create_key(old.scheme, old.params)
        except ProvmarkError as exc:  # a stored key this version refuses: its successor would be refused too
            raise ConflictError(f"key {key_id} cannot be rotated: {exc}; create a new key", field="key_id") from None
        with self.store.write():
            self._insert_key(old.tenant_id, new, old.public_verify)
            updated = self.store.execute(
                "UPDATE keys SET status = 'retired', retired_at = ?, replaced_by = ? WHERE id = ? AND status = 'active'",
                [_now(), new.key_id, key_id],
            )
            if updated != 1:  # a concurrent rotation won
                raise ConflictError(f"key {key_id} is already retired", field="key_id")
        return self.key(new.key_id)

    def set_public_verify(self, key_id: str, public_verify: bool, *, tenant_id: str | None = None) -> KeyInfo:
        """Open a key to verification without a token, or close it again."""
        self.key(key_id, tenant_id=tenant_id)
        with self.store.write():
            self.store.execute("UPDATE keys SET public_verify = ? WHERE id = ?", [int(public_verify), key_id])
        return self.key(key_id)

    # -- records ------------------------------------------------------------------------------

    _RECORD_COLUMNS = (
        "records.id, tenants.name, records.key_id, records.number, records.scheme, records.params,"
        " records.prf_version, records.model, records.metadata, records.created_at, records.text_sha256,"
        " records.tenant_id, records.status, records.context"
    )
    _RECORD_FROM = " FROM records JOIN tenants ON tenants.id = records.tenant_id"

    @staticmethod
    def _record(row) -> Record:
        params = json.loads(row[5])
        config = _stored_config(row[4], params)
        payload = row[3] if config is not None and config.supports_payload else None
        return Record(
            id=row[0], tenant_id=row[11], tenant=row[1], key_id=row[2], number=row[3], scheme=row[4], params=params, prf_version=row[6],
            payload=payload, payload_hex=None if payload is None else payload_hex(payload, config.bits),
            model=row[7], metadata=json.loads(row[8]), created_at=row[9], text_sha256=row[10], status=row[12],
            context=None if row[13] is None else json.loads(row[13]),
        )

    def _free_number(self, key: KeyInfo) -> int:
        def taken(number):
            return self.store.query("SELECT 1 FROM records WHERE key_id = ? AND number = ?", [key.key_id, number])

        if key.capacity is None:
            return self.store.query("SELECT coalesce(max(number), 0) + 1 FROM records WHERE key_id = ?", [key.key_id])[0][0]
        limit = min(key.capacity, _MAX_NUMBER)
        for _ in range(_RANDOM_TRIES):
            number = secrets.randbelow(limit)
            if not taken(number):
                return number
        # Dense key: the smallest free number, if any.
        if not taken(0):
            return 0
        # r.number < limit - 1, not r.number + 1 < limit: the sum overflows PostgreSQL's BIGINT at 2**63 - 1.
        row = _first(self.store.query(
            "SELECT r.number + 1 FROM records r WHERE r.key_id = ? AND r.number < ? AND NOT EXISTS"
            " (SELECT 1 FROM records s WHERE s.key_id = ? AND s.number - 1 = r.number) ORDER BY r.number LIMIT 1",
            [key.key_id, limit - 1, key.key_id],
        ))
        if row is None:
            raise KeyExhaustedError(
                f"key {key.key_id} has issued all {limit} of its payloads; rotate it "
                "(POST /v1/keys/{key_id}/rotate or `provmark keys rotate`) and use its successor",
                field="key_id",
            )
        return row[0]

    def new_record(
        self, key_id: str, *, tenant_id: str | None, model: str | None, metadata: dict[str, Any] | None = None,
        text_sha256: str | None = None, status: str = "complete", context: dict | None = None,
    ) -> Record:
        """Issue a record under an active key: allocate its number (the payload to embed) and store it
        (``status`` "generating" for a generation that finishes later: ``set_record_text``)."""
        with self.store.write():
            key = self.key(key_id, tenant_id=tenant_id)
            if key.status != "active":
                raise ConflictError(f"key {key_id} is retired; use its successor {key.replaced_by}", field="key_id")
            number = self._free_number(key)
            record_id = f"{key_id}.{number}"
            self.store.insert(
                "records",
                {
                    "id": record_id, "tenant_id": key.tenant_id, "key_id": key_id, "number": number,
                    "scheme": key.scheme, "params": json.dumps(key.params), "prf_version": key.prf_version,
                    "model": model, "metadata": json.dumps(metadata or {}), "created_at": _now(),
                    "text_sha256": text_sha256, "status": status,
                    "context": None if context is None else json.dumps(context),
                }
            )
        return self.record(record_id)

    def set_record_text(self, record_id: str, text_sha256: str) -> Record:
        """Store the hash of the text a record's generation produced; the record is then complete."""
        with self.store.write():
            self.store.execute("UPDATE records SET text_sha256 = ?, status = 'complete' WHERE id = ?",
                               [text_sha256, record_id])
        return self.record(record_id)

    def set_record_incomplete(self, record_id: str) -> Record:
        """Mark a record whose generation stopped before its text was whole (no text hash stored)."""
        with self.store.write():
            self.store.execute("UPDATE records SET status = 'incomplete' WHERE id = ?", [record_id])
        return self.record(record_id)

    def delete_record(self, record_id: str) -> None:
        """Withdraw a record whose generation failed (it was never acknowledged)."""
        with self.store.write():
            # counted on the key, so that every process's cache of issued numbers drops it (``api.issued``)
            self.store.execute("UPDATE keys SET records_removed = records_removed + 1"
                               " WHERE id = (SELECT key_id FROM records WHERE id = ?)", [record_id])
            self.store.execute("DELETE FROM records WHERE id = ?", [record_id])

    def _records(self, where: str, args, suffix: str = "") -> list[Record]:
        rows = self.store.query(f"SELECT {self._RECORD_COLUMNS}{self._RECORD_FROM} WHERE {where}{suffix}", args)
        return [self._record(row) for row in rows]

    def record(self, record_id: str, *, tenant_id: str | None = None) -> Record:
        """One record; ``NotFoundError`` (field ``record_id``) when absent or another tenant's."""
        found = self._records("records.id = ?", [record_id])
        if not found or (tenant_id is not None and found[0].tenant_id != tenant_id):
            raise NotFoundError(f"no record {record_id!r}", field="record_id")
        return found[0]

    def records(self, *, tenant_id: str | None = None, key_id: str | None = None, limit: int = 100) -> list[Record]:
        """The most recent records, newest first, optionally of one tenant and/or key."""
        where, args = ["1 = 1"], []
        if tenant_id is not None:
            where.append("records.tenant_id = ?")
            args.append(tenant_id)
        if key_id is not None:
            where.append("records.key_id = ?")
            args.append(key_id)
        return self._records(" AND ".join(where), [*args, limit], " ORDER BY records.created_at DESC, records.id LIMIT ?")

    def record_by_number(self, key_id: str, number: int) -> Record | None:
        if not 0 <= number < _MAX_NUMBER:
            return None
        found = self._records("records.key_id = ? AND records.number = ?", [key_id, number])
        return found[0] if found else None

    def record_by_text(self, key_id: str, text_sha256: str) -> Record | None:
        """The earliest record of the key whose text has this hash.

        The smallest number is chosen here, not by ``ORDER BY number LIMIT 1``: with that clause
        SQLite walks the key's (key_id, number) index and reads every record of the key (460 ms at
        100,000 records, on every verify) instead of looking the hash up in (key_id, text_sha256)."""
        found = self._records("records.key_id = ? AND records.text_sha256 = ?", [key_id, text_sha256])
        return min(found, key=lambda record: record.number, default=None)

    def record_numbers(self, key_id: str) -> list[int]:
        """Every number issued under a key, read from the database."""
        return [row[0] for row in self.store.query("SELECT number FROM records WHERE key_id = ?", [key_id])]

    def issued_numbers(self, key_id: str) -> np.ndarray:
        """uint64 (R,): every number issued under a key, ascending, from this process's cache, which
        reads only the records added (or notices those withdrawn) since its last look
        (``api.issued``): what verify scores on every request."""
        return self._issued.numbers(key_id)

    def records_by_numbers(self, key_id: str, numbers: list[int]) -> list[Record]:
        """The key's records with these numbers, in the order given."""
        if not numbers:
            return []
        marks = ", ".join("?" * len(numbers))
        by_number = {r.number: r for r in self._records(f"records.key_id = ? AND records.number IN ({marks})", [key_id, *numbers])}
        return [by_number[n] for n in numbers if n in by_number]


def _first(rows: list[tuple]) -> tuple | None:
    return rows[0] if rows else None


def _key_filter(tenant_id: str | None, public_only: bool) -> tuple[str, list]:
    """The " WHERE ..." clause (or "") and its arguments that ``Registry.keys`` and ``key_refs`` share."""
    where, args = [], []
    if tenant_id is not None:
        where.append("keys.tenant_id = ?")
        args.append(tenant_id)
    if public_only:
        where.append("keys.public_verify = 1")
    return (" WHERE " + " AND ".join(where) if where else ""), args
