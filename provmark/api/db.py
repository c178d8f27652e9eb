"""The registry's SQLite database: connection settings and the versioned schema.

Durability: WAL journal with ``synchronous=FULL``, so a transaction is on disk (the WAL is
fsynced) before its COMMIT returns and before the API acknowledges the write; NORMAL would be
consistent after a crash but could lose the last commits on power loss, which a provenance
registry cannot afford (an acknowledged record id may already be embedded in published text).
The schema changes only through ``MIGRATIONS`` (sqlite-utils' ``Migrations``); append a new
function for each change, never edit an applied one.
"""

from __future__ import annotations

import os
import sqlite3

from sqlite_utils import Database, Migrations

__all__ = ["MIGRATIONS", "open_database", "schema_version"]

MIGRATIONS = Migrations("provmark-registry")


@MIGRATIONS()
def m001_registry(db: Database) -> None:
    db["settings"].create({"name": str, "value": str}, pk="name")
    db["tenants"].create({"id": str, "name": str, "created_at": str}, pk="id", not_null={"name", "created_at"})
    db["tenants"].create_index(["name"], unique=True)
    db["tokens"].create(
        {"digest": str, "tenant_id": str, "created_at": str},
        pk="digest",
        not_null={"tenant_id", "created_at"},
        foreign_keys=[("tenant_id", "tenants", "id")],
    )
    db["keys"].create(
        {
            "id": str,
            "tenant_id": str,
            "scheme": str,
            "params": str,
            "prf_version": str,
            "secret": bytes,
            "status": str,
            "public_verify": int,
            "created_at": str,
            "retired_at": str,
            "replaced_by": str,
        },
        pk="id",
        not_null={"tenant_id", "scheme", "params", "prf_version", "secret", "status", "public_verify", "created_at"},
        defaults={"status": "active", "public_verify": 0},
        foreign_keys=[("tenant_id", "tenants", "id")],
    )
    db["keys"].create_index(["tenant_id"])
    db["records"].create(
        {
            "id": str,
            "tenant_id": str,
            "key_id": str,
            "number": int,
            "scheme": str,
            "params": str,
            "prf_version": str,
            "model": str,
            "metadata": str,
            "created_at": str,
            "text_sha256": str,
        },
        pk="id",
        not_null={"tenant_id", "key_id", "number", "scheme", "params", "prf_version", "metadata", "created_at"},
        foreign_keys=[("tenant_id", "tenants", "id"), ("key_id", "keys", "id")],
    )
    db["records"].create_index(["key_id", "number"], unique=True)
    db["records"].create_index(["key_id", "text_sha256"])
    db["records"].create_index(["tenant_id", "created_at"])


@MIGRATIONS()
def m002_record_status(db: Database) -> None:
    # A streamed generation issues its record before the text exists: "generating" until the
    # stream ends, then "complete" (text hash stored) or "incomplete" (the client left mid-stream).
    db["records"].add_column("status", str, not_null_default="complete")


def schema_version(db: Database) -> int:
    """How many registry migrations the database has applied."""
    return len(MIGRATIONS.applied(db))


def open_database(path: str | os.PathLike | None) -> Database:
    """Open (creating if needed) the registry at ``path``, or an in-memory one for None, and
    bring its schema up to date. The connection may be used from any thread; callers serialise
    access to it (``Registry`` holds a lock)."""
    conn = sqlite3.connect(":memory:" if path is None else os.fspath(path), check_same_thread=False, timeout=10.0)
    db = Database(conn)
    if path is not None:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    MIGRATIONS.apply(db)
    return db
