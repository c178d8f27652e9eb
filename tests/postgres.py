"""A throwaway PostgreSQL server for tests and benchmarks: Debian's binaries, ``initdb`` and ``pg_ctl``
into a scratch directory, listening on a free loopback port, removed afterwards.

PostgreSQL refuses to run as root, so as root (CI) every server command runs as the ``postgres``
system user that Debian's package creates (``runuser -u postgres``), in a directory that user owns.
``make postgres`` installs the package when its binaries are missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

OPT_OUT_ENV = "PROVMARK_NO_POSTGRES"
"""Set to 1 to skip the PostgreSQL half of the registry and API tests (say so in the test summary)."""


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries, or the server would not start."""


def opted_out() -> bool:
    return os.environ.get(OPT_OUT_ENV, "") not in ("", "0")


def find_bindir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: on the PATH, else Debian's newest
    /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise PostgresUnavailable(
            "no PostgreSQL binaries (initdb, pg_ctl): run `make postgres` (installs Debian's postgresql), "
            f"or set {OPT_OUT_ENV}=1 to skip the PostgreSQL tests")
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a scratch directory. ``start`` and ``stop`` may be called again (the
    crash benchmark kills and restarts it); ``remove`` stops it and deletes the directory.

    Args:
        durable: keep fsync on (crash tests); off by default, which is safe for tests whose data
            dies with the server anyway, and several times faster.
    """

    def __init__(self, *, durable: bool = False):
        self.bindir = find_bindir()
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="provmark-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._user = None
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and no `postgres` user to run the server as: "
                                          "install Debian's postgresql package (`make postgres`)") from None
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self._databases = 0
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync",
                  "--no-instructions")

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bindir / tool), *args]
        if self._user is not None:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if check and result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresUnavailable(f"{tool} failed ({result.returncode}): {result.stderr.strip()}\n{log}")
        return result

    def start(self) -> None:
        options = [f"-c port={self.port}", "-c listen_addresses=127.0.0.1", f"-c unix_socket_directories={self.root}",
                   "-c max_connections=300"]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", " ".join(options))

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", check=False)

    def kill(self) -> None:
        """``kill -9`` the postmaster (a crash: no shutdown checkpoint), then wait for its children to go."""
        pid_file = self.data / "postmaster.pid"
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            busy = subprocess.run(["pgrep", "-u", "postgres" if self._user else str(os.getuid()), "-f",
                                   str(self.data)], capture_output=True).stdout.strip()
            if not busy:
                return
            time.sleep(0.1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database on the server; its URL."""
        import psycopg

        self._databases += 1
        name = f"t{os.getpid()}_{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def dump(self, url: str) -> bytes:
        """Every row of every table in the database at ``url``, as bytes (what a stolen database holds)."""
        import psycopg

        out = []
        with psycopg.connect(url, autocommit=True) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename").fetchall()]
            for table in tables:
                for row in conn.execute(f'SELECT * FROM "{table}"').fetchall():
                    for value in row:
                        out.append(bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode())
        return b"\n".join(out)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
