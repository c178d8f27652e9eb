"""Where the registry lives: an SQLite file (the embedded default) or a PostgreSQL server that several
API nodes share. ``Registry`` speaks to either through the small ``Store`` interface below.

``open_store(target)`` chooses by the target: ``None`` is an in-memory SQLite database (tests), a
``postgresql://`` (or ``postgres://``) URL is PostgreSQL, anything else an SQLite file path.

**Writes are serialised on every backend.** A registry write reads and then writes (is this record
number free? this tenant name?), so it must hold the registry's write lock from its first read to
its commit, whatever process or machine it runs on. SQLite's is the database file's lock
(``BEGIN IMMEDIATE``); PostgreSQL's is a transaction-scoped advisory lock
(``pg_advisory_xact_lock``) that every ``write`` takes first, so two API nodes behave as two
processes on one SQLite file do. The unique indexes (record numbers per key, tenant names) stay as
a second line of defence. A write is a few indexed statements, far below the cost of detection,
so one lock costs nothing measurable at the rates one registry serves.

**Reads** take no lock: SQLite reads in WAL mode, PostgreSQL reads one autocommit statement on a
pooled connection; inside a ``write`` they see the transaction's own changes.

SQL is written once, in the dialect both accept, with ``?`` placeholders; ``PostgresStore``
rewrites them to psycopg's ``%s``.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as _dt
import os
import threading
import urllib.parse
from typing import Any, Iterator, Sequence

from provmark.api.db import MIGRATION_SET, REGISTRY_MIGRATIONS, open_database, schema_version
from provmark.errors import ProvmarkError

__all__ = ["DB_ENV", "PostgresStore", "SQLiteStore", "Store", "StoreUnavailableError", "describe_target",
           "is_postgres_url", "open_store"]

DB_ENV = "PROVMARK_DB"
"""Environment variable read for ``--db`` when it is not given."""

_POSTGRES_PREFIXES = ("postgresql://", "postgres://")
# Any constant works as long as every node uses the same one; these are the ASCII bytes of "pmkreg01".
_WRITE_LOCK = 0x706D6B7265673031
_MIGRATION_LOCK = _WRITE_LOCK + 1


class StoreUnavailableError(ProvmarkError):
    """The registry's database cannot be reached (PostgreSQL down or refusing connections)."""


def is_postgres_url(target: Any) -> bool:
    return isinstance(target, str) and target.startswith(_POSTGRES_PREFIXES)


def describe_target(target: Any) -> str:
    """The target for messages and logs: a PostgreSQL URL without its password."""
    if not is_postgres_url(target):
        return os.fspath(target) if target is not None else ":memory:"
    parts = urllib.parse.urlsplit(target)
    if parts.password is None:
        return target
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class Store(abc.ABC):
    """A registry database: statements with ``?`` placeholders, and serialised write transactions."""

    dialect: str
    """"sqlite" or "postgresql"."""

    @abc.abstractmethod
    def query(self, sql: str, args: Sequence = ()) -> list[tuple]:
        """Run one statement and return its rows (inside a ``write`` when one is open on this thread)."""

    @abc.abstractmethod
    def execute(self, sql: str, args: Sequence = ()) -> int:
        """Run one statement and return how many rows it changed."""

    @abc.abstractmethod
    def write(self) -> contextlib.AbstractContextManager:
        """One write transaction holding the registry's write lock from its start (see the module
        docstring); committed when the block ends, rolled back when it raises. Not reentrant."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """How many of ``REGISTRY_MIGRATIONS`` the database has applied."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def insert(self, table: str, row: dict) -> None:
        columns = ", ".join(f'"{name}"' for name in row)
        self.execute(f'INSERT INTO "{table}" ({columns}) VALUES ({", ".join("?" * len(row))})', list(row.values()))


class SQLiteStore(Store):
    """The registry in one SQLite file (or in memory), through sqlite-utils.

    One connection serves the process and a lock serialises it. Several processes may share the
    file: each ``write`` is a ``BEGIN IMMEDIATE`` transaction, which takes SQLite's write lock before
    its first read. A deferred ``BEGIN`` would read first and fail with "database is locked" when
    another process committed in between (WAL cannot upgrade a stale read snapshot, and the busy
    timeout does not apply); with the lock taken up front, writers queue for up to the connection's
    busy timeout instead."""

    dialect = "sqlite"

    def __init__(self, path: str | os.PathLike | None):
        self.db = open_database(path)
        self.lock = threading.RLock()

    def query(self, sql: str, args: Sequence = ()) -> list[tuple]:
        with self.lock:
            return self.db.execute(sql, list(args)).fetchall()

    def execute(self, sql: str, args: Sequence = ()) -> int:
        with self.lock:
            return self.db.execute(sql, list(args)).rowcount

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.db.execute("COMMIT")
            except BaseException:
                self.db.conn.rollback()  # a no-op when the error already ended the transaction
                raise

    def schema_version(self) -> int:
        with self.lock:
            return schema_version(self.db)

    def close(self) -> None:
        self.db.close()


class PostgresStore(Store):
    """The registry in a PostgreSQL database, through psycopg 3 and a ``psycopg_pool`` connection pool.

    Pooled connections run in autocommit (a read is one statement and holds nothing between
    requests); ``write`` borrows one connection for its whole transaction and makes it this
    thread's, so the reads inside the transaction see its writes. A connection that broke (the
    server restarted) is checked and replaced when next borrowed; an error while the server is
    away is ``StoreUnavailableError``.

    Args:
        url: a libpq connection URL, ``postgresql://user:password@host:port/database``.
        max_connections: pool size (each API worker process holds its own pool).
        connect_timeout: seconds to wait for a connection (at open, and for each statement while the
            pool is busy or the server away: then ``StoreUnavailableError``).
    """

    dialect = "postgresql"

    def __init__(self, url: str, *, max_connections: int = 8, connect_timeout: float = 5.0):
        import psycopg
        from psycopg_pool import ConnectionPool, PoolTimeout

        self._errors = (psycopg.OperationalError, PoolTimeout)
        self.url = url
        self._local = threading.local()
        try:  # one direct attempt first: the pool would retry a refused connection until its timeout
            psycopg.connect(url, connect_timeout=max(1, round(connect_timeout))).close()
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"cannot connect to the registry at {describe_target(url)}: "
                                        f"{' '.join(str(exc).split())}") from None
        # reconnect_timeout: the pool retries a lost connection with a doubling delay until this runs out,
        # then the next request connects afresh; the default (5 minutes) would let the delay grow past
        # the outage and keep a node answering 503 long after the server is back.
        self.pool = ConnectionPool(url, min_size=1, max_size=max_connections, kwargs={"autocommit": True},
                                   check=ConnectionPool.check_connection, timeout=connect_timeout,
                                   reconnect_timeout=2.0, open=False, name="provmark-registry")
        try:
            self.pool.open(wait=True, timeout=connect_timeout)
        except self._errors as exc:
            self.pool.close()
            raise StoreUnavailableError(f"cannot connect to the registry at {describe_target(url)}: {exc}") from None
        self._migrate()

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    @contextlib.contextmanager
    def _connection(self):
        current = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        try:
            with self.pool.connection() as conn:
                yield conn
        except self._errors as exc:
            raise StoreUnavailableError(f"registry database {describe_target(self.url)} unavailable: {exc}") from None

    def query(self, sql: str, args: Sequence = ()) -> list[tuple]:
        with self._connection() as conn:
            cursor = conn.execute(self._sql(sql), list(args))
            return cursor.fetchall() if cursor.description is not None else []

    def execute(self, sql: str, args: Sequence = ()) -> int:
        with self._connection() as conn:
            return conn.execute(self._sql(sql), list(args)).rowcount

    @contextlib.contextmanager
    def write(self, lock: int = _WRITE_LOCK) -> Iterator[None]:
        assert getattr(self._local, "conn", None) is None, "registry writes do not nest"
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [lock])
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    def _migrate(self) -> None:
        """Apply the pending ``REGISTRY_MIGRATIONS`` in one transaction, under a lock of their own, so
        nodes starting at once apply each migration exactly once."""
        with self.write(_MIGRATION_LOCK):
            self.execute('CREATE TABLE IF NOT EXISTS "provmark_migrations" ("migration_set" TEXT NOT NULL,'
                         ' "name" TEXT NOT NULL, "applied_at" TEXT NOT NULL, PRIMARY KEY ("migration_set", "name"))')
            applied = {row[0] for row in self.query(
                'SELECT "name" FROM "provmark_migrations" WHERE "migration_set" = ?', [MIGRATION_SET])}
            for migration in REGISTRY_MIGRATIONS:
                if migration.name in applied:
                    continue
                for statement in migration.sql(self.dialect):
                    self.execute(statement)
                self.insert("provmark_migrations", {"migration_set": MIGRATION_SET, "name": migration.name,
                                                    "applied_at": str(_dt.datetime.now(_dt.timezone.utc))})

    def schema_version(self) -> int:
        return self.query('SELECT count(*) FROM "provmark_migrations" WHERE "migration_set" = ?', [MIGRATION_SET])[0][0]

    def close(self) -> None:
        self.pool.close()


def open_store(target: str | os.PathLike | None) -> Store:
    """The registry database at ``target`` (see the module docstring), its schema brought up to date."""
    if is_postgres_url(target):
        return PostgresStore(target)
    return SQLiteStore(target)
