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
from pathlib import Path

from sqlite_utils import Database, Migrations

from provmark.errors import ProvmarkError

__all__ = ["MIGRATIONS", "MIGRATION_SET", "REGISTRY_MIGRATIONS", "Migration", "RegistryFileError", "open_database",
           "schema_version"]


class RegistryFileError(ProvmarkError):
    """A registry path that cannot serve: its folder is missing, it is not SQLite, or it is read-only."""

MIGRATION_SET = "provmark-registry"

_TYPES = {"sqlite": {"int": "INTEGER", "blob": "BLOB"}, "postgresql": {"int": "BIGINT", "blob": "BYTEA"}}


@dataclass(frozen=True)
class Migration:
    """One schema change: its name (recorded once applied) and its DDL statements."""

    name: str
    statements: tuple[str, ...]
    per_dialect: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Statements one dialect runs after ``statements``, where the dialects cannot share one spelling
    (("sqlite", (...)), ("postgresql", (...)))."""

    def sql(self, dialect: str) -> list[str]:
        """The statements in ``dialect`` ("sqlite" or "postgresql")."""
        return [statement.format(**_TYPES[dialect]) for statement in (*self.statements, *dict(self.per_dialect).get(dialect, ()))]


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
    # A streamed generation issues its record before the text exists: "generating" until the
    # stream ends, then "complete" (text hash stored) or "incomplete" (the client left mid-stream).
    Migration("m002_record_status", (
        'ALTER TABLE "records" ADD COLUMN "status" TEXT NOT NULL DEFAULT \'complete\'',
    )),
    # The generation setting of a record made by /v1/generate (JSON: prompt, chat, temperature), so
    # that verify's zero-shot attribution scores the text in the context it was generated in.
    Migration("m003_record_context", (
        'ALTER TABLE "records" ADD COLUMN "context" TEXT',
    )),
    # Verify's cache of each key's issued numbers (``api.issued``) reads only what changed since its
    # last look: records carry "seq", increasing in commit order within a key (every write holds the
    # registry's write lock), and a key counts its withdrawn records ("records_removed"), which
    # makes a cache reload. Both are filled by the database itself, so rows inserted by any writer
    # (an older node, a bulk fill) get them too: PostgreSQL from a sequence (which numbers the
    # existing rows as the column is added), SQLite from a trigger (existing rows take their rowid).
    Migration("m004_record_seq", (
        'ALTER TABLE "keys" ADD COLUMN "records_removed" {int} NOT NULL DEFAULT 0',
    ), per_dialect=(
        ("sqlite", (
            'ALTER TABLE "records" ADD COLUMN "seq" INTEGER',
            'UPDATE "records" SET "seq" = rowid',
            'CREATE INDEX "idx_records_key_id_seq" ON "records" ("key_id", "seq")',
            'CREATE TRIGGER "records_seq" AFTER INSERT ON "records" FOR EACH ROW WHEN NEW."seq" IS NULL BEGIN'
            ' UPDATE "records" SET "seq" = (SELECT coalesce(max("seq"), 0) + 1 FROM "records" WHERE "key_id" = NEW."key_id")'
            ' WHERE rowid = NEW.rowid; END',
        )),
        ("postgresql", (
            'ALTER TABLE "records" ADD COLUMN "seq" BIGSERIAL',
            'CREATE INDEX "idx_records_key_id_seq" ON "records" ("key_id", "seq")',
        )),
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


def _create_private(path: Path) -> None:
    """Create the registry file readable by its owner only (0600) unless it exists; never through a
    symlink (O_NOFOLLOW). SQLite gives the -wal and -shm files the database file's mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise RegistryFileError(f"cannot create the registry {path}: {exc.strerror}") from None


def open_database(path: str | os.PathLike | None) -> Database:
    """Open (creating if needed, mode 0600) the registry at ``path``, or an in-memory one for None,
    and bring its schema up to date. The connection may be used from any thread; callers serialise
    access to it (``stores.SQLiteStore`` holds a lock).

    A file registry must be usable now, not at the first write: ``RegistryFileError`` (one line) for a
    missing folder, a file that is not SQLite, and a registry SQLite opens read-only (a probe write,
    rolled back)."""
    if path is not None and os.fspath(path) == ":memory:":  # SQLite's own name for an in-memory database
        path = None
    if path is not None:
        path = Path(path)
        if not path.parent.is_dir():
            raise RegistryFileError(f"cannot open the registry {path}: folder {path.parent} does not exist")
        if path.is_dir():
            raise RegistryFileError(f"cannot open the registry {path}: it is a folder; give a file path")
        _create_private(path)
    try:
        conn = sqlite3.connect(":memory:" if path is None else os.fspath(path), check_same_thread=False, timeout=10.0)
        db = Database(conn)
        if path is not None:
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        MIGRATIONS.apply(db)
        if path is not None:
            _probe_write(db)
    except sqlite3.DatabaseError as exc:
        reason = "it is not an SQLite database" if "not a database" in str(exc) else str(exc)
        if "readonly" in str(exc):
            reason = "it is read-only; provmark writes keys and records to it"
        raise RegistryFileError(f"cannot use the registry {path}: {reason}") from None
    return db


def _probe_write(db: Database) -> None:
    """Write a row and roll it back: SQLite opens a file it may not write read-only without a word."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("INSERT OR REPLACE INTO settings (name, value) VALUES ('write_probe', '1')")
    finally:
        db.conn.rollback()
