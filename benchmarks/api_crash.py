"""Crash test: kill -9 ``provmark serve`` in the middle of a burst of record registrations,
restart it, and check that every registration it acknowledged survived and that SQLite's
``PRAGMA integrity_check`` says ok. Repeated for --rounds rounds on the same database.

Registrations are POST /v1/generate calls (each issues a record, then stores its text hash;
the 201 is the acknowledgement) from --clients concurrent clients, on a tiny random Llama
(``--model``) so a registration costs milliseconds and the kill lands among many in flight.
The kill comes at a random moment between --min-delay and --max-delay seconds into the burst and
takes the server with its --workers worker processes (default 2, so two processes write to the
registry at once when it lands).

    python -m benchmarks.api_crash --out benchmarks/results/api_crash.txt
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.api_server import ServerFixture, tiny_model_dir


async def burst(nodes: list[ServerFixture], key_id: str, clients: int, kill_after: float,
                kill) -> tuple[list[dict], int]:
    """Registrations through every node (clients spread over them) until ``kill`` runs at
    ``kill_after`` seconds; returns the acknowledged records and the requests that got no 201 (in
    flight at the kill, or refused after it). ``api_crash_nodes`` uses it with two nodes."""
    acknowledged, unanswered = [], 0
    stop = asyncio.Event()

    async def worker(client, index):
        nonlocal unanswered
        n = 0
        while not stop.is_set():
            n += 1
            try:
                response = await client.post("/v1/generate", json={
                    "key_id": key_id, "prompt": f"client {index} request {n}", "max_new_tokens": 2,
                    "metadata": {"client": index, "n": n}})
            except httpx.HTTPError:
                unanswered += 1
                return
            if response.status_code == 201:
                acknowledged.append(response.json()["record"])
            else:
                unanswered += 1
                return

    async def killer():
        await asyncio.sleep(kill_after)
        await asyncio.to_thread(kill)
        stop.set()

    sessions = [httpx.AsyncClient(base_url=node.url, headers=node.headers, timeout=30) for node in nodes]
    try:
        await asyncio.gather(killer(), *(worker(sessions[i % len(nodes)], i) for i in range(clients)))
    finally:
        for session in sessions:
            await session.aclose()
    return acknowledged, unanswered


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--min-delay", type=float, default=3.0)
    parser.add_argument("--max-delay", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="provmark serve --workers (server processes).")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="provmark-crash-"))
    model = tiny_model_dir(folder / "tiny-llama")
    server = ServerFixture(folder=str(folder), keys=[["--scheme", "mpac", "--bits", "32"]],
                           serve_args=["--rate-limit", "0", "--model", str(model), "--workers", str(args.workers)])
    lines, all_acknowledged, failures = [f"provmark serve --workers {args.workers}"], [], 0
    with server:
        for round_ in range(1, args.rounds + 1):
            server.start(log=folder / "server.log")
            kill_after = rng.uniform(args.min_delay, args.max_delay)
            began = time.perf_counter()
            acknowledged, unanswered = asyncio.run(burst([server], server.key_ids[0], args.clients, kill_after,
                                                         server.kill))
            all_acknowledged += acknowledged
            # Restart on the same database and look every acknowledged record up through the API.
            server.start(log=folder / "server.log")
            with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
                missing = [r["id"] for r in all_acknowledged if client.get(f"/v1/records/{r['id']}").status_code != 200]
                changed = [r["id"] for r in all_acknowledged
                           if r["id"] not in missing and client.get(f"/v1/records/{r['id']}").json() != r]
            server.kill()
            with sqlite3.connect(f"file:{server.db}?mode=ro", uri=True) as conn:
                integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
                stored = conn.execute("SELECT count(*) FROM records").fetchone()[0]
                without_text = conn.execute("SELECT count(*) FROM records WHERE text_sha256 IS NULL").fetchone()[0]
            ok = not missing and not changed and integrity == "ok"
            failures += not ok
            took = time.perf_counter() - began
            line = (f"round {round_}: SIGKILL after {kill_after:.1f} s ({took:.1f} s with the read-back), "
                    f"{len(acknowledged)} acknowledged this round, {unanswered} unanswered at the kill; "
                    f"after restart {len(all_acknowledged) - len(missing)}/{len(all_acknowledged)} acknowledged "
                    f"records present and unchanged ({len(changed)} changed), {stored} records stored "
                    f"({without_text} without text hash: issued, never acknowledged), integrity_check {integrity}")
            print(line, flush=True)
            lines.append(line)
    lines.append(f"{'PASS' if failures == 0 else 'FAIL'}: {args.rounds} rounds, {len(all_acknowledged)} acknowledged "
                 f"registrations, {failures} rounds with a lost or changed record or a failed integrity check")
    text = "\n".join(lines) + "\n"
    print(lines[-1])
    if args.out:
        args.out.write_text(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
