"""The registry's schema, as versioned migrations that both backends apply, and the SQLite database's
connection settings.

**Migrations.** ``REGISTRY_MIGRATIONS`` is the one list of schema changes, in order: each is plain SQL
DDL written once, with ``{int}`` and ``{blob}`` standing for the two column types the dialects spell
differently (SQLite's INTEGER and BLOB, PostgreSQL's BIGINT, which holds the full 63-bit record
numbers, and BYTEA). SQLite applies them through sqlite-utils' ``Migrations`` (``MIGRATIONS``, the set
"provmark-registry" in ``_sqlite_migrations``, as registries made before PostgreSQL existed recorded
them); PostgreSQL through ``stores.PostgresStore``, which records the same names in
``provmark_migrations``. Append a new migration for each change, never edit an applied one; both
backends then report the same ``schema_version``.

**SQLite durability.** WAL journal with ``synchronous=FULL``, so a transaction is on disk (the WAL is
fsynced) before its COMMIT returns and before the API acknowledges the write; NORMAL would be
consistent after a crash but could lose the last commits on power loss, which a provenance
registry cannot afford (an acknowledged record id may already be embedded in published text).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass

from sqlite_utils import Database, Migrations

__all__ = ["MIGRATIONS", "MIGRATION_SET", "REGISTRY_MIGRATIONS", "Migration", "open_database", "schema_version"]

MIGRATION_SET = "provmark-registry"

_TYPES = {"sqlite": {"int": "INTEGER", "blob": "BLOB"}, "postgresql": {"int": "BIGINT", "blob": "BYTEA"}}


@dataclass(frozen=True)
class Migration:
    """One schema change: its name (recorded once applied) and its DDL statements."""

    name: str
    statements: tuple[str, ...]

    def sql(self, dialect: str) -> list[str]:
        """The statements in ``dialect`` ("sqlite" or "postgresql")."""
        return [statement.format(**_TYPES[dialect]) for statement in self.statements]


REGISTRY_MIGRATIONS: tuple[Migration, ...] = (
    Migration("m001_registry", (
        'CREATE TABLE "settings" ("name" TEXT PRIMARY KEY, "value" TEXT)',
        'CREATE TABLE "tenants" ("id" TEXT PRIMARY KEY, "name" TEXT NOT NULL, "created_at" TEXT NOT NULL)',
        'CREATE UNIQUE INDEX "idx_tenants_name" ON "tenants" ("name")',
        'CREATE TABLE "tokens" ("digest" TEXT PRIMARY KEY, "tenant_id" TEXT NOT NULL REFERENCES "tenants"("id"),'
        ' "created_at" TEXT NOT NULL)',
        'CREATE TABLE "keys" ("id" TEXT PRIMARY KEY, "tenant_id" TEXT NOT NULL REFERENCES "tenants"("id"),'
        ' "scheme" TEXT NOT NULL, "params" TEXT NOT NULL, "prf_version" TEXT NOT NULL, "secret" {blob} NOT NULL,'
        ' "status" TEXT NOT NULL DEFAULT \'active\', "public_verify" {int} NOT NULL DEFAULT 0,'
        ' "created_at" TEXT NOT NULL, "retired_at" TEXT, "replaced_by" TEXT)',
        'CREATE INDEX "idx_keys_tenant_id" ON "keys" ("tenant_id")',
        'CREATE TABLE "records" ("id" TEXT PRIMARY KEY, "tenant_id" TEXT NOT NULL REFERENCES "tenants"("id"),'
        ' "key_id" TEXT NOT NULL REFERENCES "keys"("id"), "number" {int} NOT NULL, "scheme" TEXT NOT NULL,'
        ' "params" TEXT NOT NULL, "prf_version" TEXT NOT NULL, "model" TEXT, "metadata" TEXT NOT NULL,'
        ' "created_at" TEXT NOT NULL, "text_sha256" TEXT)',
        'CREATE UNIQUE INDEX "idx_records_key_id_number" ON "records" ("key_id", "number")',
        'CREATE INDEX "idx_records_key_id_text_sha256" ON "records" ("key_id", "text_sha256")',
        'CREATE INDEX "idx_records_tenant_id_created_at" ON "records" ("tenant_id", "created_at")',
    )),
)

MIGRATIONS = Migrations(MIGRATION_SET)
"""``REGISTRY_MIGRATIONS`` as sqlite-utils migrations (the SQLite backend)."""


def _register(migration: Migration) -> None:
    def apply(db: Database) -> None:
        for statement in migration.sql("sqlite"):
            db.execute(statement)

    MIGRATIONS(name=migration.name)(apply)


for _migration in REGISTRY_MIGRATIONS:
    _register(_migration)


def schema_version(db: Database) -> int:
    """How many registry migrations the SQLite database has applied."""
    return len(MIGRATIONS.applied(db))


def open_database(path: str | os.PathLike | None) -> Database:
    """Open (creating if needed) the SQLite registry at ``path``, or an in-memory one for None, and
    bring its schema up to date. The connection may be used from any thread; callers serialise
    access to it (``stores.SQLiteStore`` holds a lock)."""
    conn = sqlite3.connect(":memory:" if path is None else os.fspath(path), check_same_thread=False, timeout=10.0)
    db = Database(conn)
    if path is not None:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    MIGRATIONS.apply(db)
    return db
