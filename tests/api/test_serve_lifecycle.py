"""Issue 16, bounded work against a real ``provmark serve``: detection stops when the client
disconnects, and SIGTERM ends the server within ``--shutdown-timeout`` plus one text under one key.

Each test starts a server (one process) whose tenant has ten synonym keys and verifies one long
natural text with all of them: at ``--max-text-words 20000`` each key takes on the order of a second
(``benchmarks/results/verify_cost.txt``), so the whole verification takes ten or more. The server's
log line ``verify cancelled (<reason>) after k of n keys`` says where detection stopped.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import httpx
import pytest

from benchmarks.api_server import ServerFixture
from benchmarks.noisy_neighbour import corpus_text

KEYS = 10
WORDS = 20_000
pytestmark = pytest.mark.slow  # a server process, and seconds of detection


def _server(tmp_path, *serve_args) -> ServerFixture:
    server = ServerFixture(folder=str(tmp_path), keys=[],
                           serve_args=["--rate-limit", "0", "--max-text-words", str(WORDS), *serve_args])
    server.start(log=tmp_path / "server.log")
    for _ in range(KEYS):
        httpx.post(server.url + "/v1/keys", headers=server.headers, json={"scheme": "synonym"}).raise_for_status()
    return server


def _raw_verify(server: ServerFixture) -> socket.socket:
    """Send a verification of the long text with every key over a raw socket (so the test can hang up)."""
    body = httpx.Request("POST", server.url + "/v1/verify", headers=server.headers,
                         json={"text": corpus_text(WORDS), "min_tokens": 1})
    head = "".join(f"{k}: {v}\r\n" for k, v in body.headers.items())
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(f"POST /v1/verify HTTP/1.1\r\n{head}\r\n".encode() + body.read())
    return sock


def _cancelled(log, reason: str, timeout: float) -> tuple[int, int]:
    """(k, n) of the server's ``verify cancelled (reason) after k of n keys`` line, waiting for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(rf"verify cancelled \({re.escape(reason)}\) after (\d+) of (\d+) keys", log.read_text())
        if found:
            return int(found[1]), int(found[2])
        time.sleep(0.1)
    raise AssertionError(f"no 'verify cancelled ({reason})' line in the server log:\n{log.read_text()[-3000:]}")


def test_detection_stops_when_the_client_disconnects(tmp_path):
    server = _server(tmp_path)
    with server:
        sock = _raw_verify(server)
        time.sleep(1.0)  # the request is read and detection has begun (or is about to: then it stops at key 0)
        began = time.monotonic()
        sock.close()
        done, keys = _cancelled(tmp_path / "server.log", "the client disconnected", timeout=60)
        stopped_after = time.monotonic() - began
        # the server still answers, and never answered the abandoned request
        assert httpx.get(server.url + "/healthz").status_code == 200
    assert keys == KEYS and done < KEYS, (done, keys)
    assert '"POST /v1/verify HTTP/1.1" 200' not in (tmp_path / "server.log").read_text()
    print(f"stopped after {done} of {keys} keys, {stopped_after:.1f} s after the hang-up")


def test_sigterm_ends_the_server_within_the_shutdown_timeout_while_a_heavy_verification_runs(tmp_path):
    server = _server(tmp_path, "--shutdown-timeout", "1")
    with server:
        sock = _raw_verify(server)
        time.sleep(1.0)
        began = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)  # the server alone, as `kill PID` does
        server.process.wait(timeout=60)
        took = time.monotonic() - began
        try:
            os.killpg(server.process.pid, 0)
            time.sleep(3)  # the heavy lane's process ends after its text (the server's exit told it to)
            os.killpg(server.process.pid, 0)
            leftover = True
        except ProcessLookupError:
            leftover = False
        sock.close()
    done, keys = _cancelled(tmp_path / "server.log", "the server is shutting down", timeout=5)
    assert '"POST /v1/verify HTTP/1.1" 503' in (tmp_path / "server.log").read_text()
    # the whole verification takes ten keys' worth; the bound is the timeout plus one text under one key
    assert done < KEYS and took < 1 + 6, (done, took)
    assert not leftover, "a process of the server's group outlived it"
    print(f"exited {took:.1f} s after SIGTERM, detection stopped after {done} of {keys} keys")
