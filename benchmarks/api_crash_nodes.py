"""Crash test across API nodes: two ``provmark serve`` servers (own ports, own process groups) on one
PostgreSQL, registration bursts through both, and in the middle of each burst a ``kill -9``: of
one node (odd rounds, alternating which) or of the PostgreSQL server itself (even rounds). The
killed part is restarted, and every acknowledged record must be present and unchanged, read back
through the node that was not killed, with no record id or payload number issued twice.

The same registrations as ``api_crash`` (POST /v1/generate on a tiny random Llama, so each costs
milliseconds): the 201 is the acknowledgement. The PostgreSQL server keeps fsync on (durable,
unlike the test suite's), so a commit is on disk before the API acknowledges it.

    python -m benchmarks.api_crash_nodes --out benchmarks/results/api_crash_nodes.txt
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg

from benchmarks.api_crash import burst
from benchmarks.api_server import ServerFixture, tiny_model_dir
from tests.postgres import PostgresServer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--min-delay", type=float, default=3.0)
    parser.add_argument("--max-delay", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="provmark serve --workers on each node.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="provmark-crash-nodes-"))
    model = tiny_model_dir(folder / "tiny-llama")
    postgres = PostgresServer(durable=True)
    postgres.start()
    url = postgres.new_database()
    first = ServerFixture(folder=str(folder), db=url, keys=[["--scheme", "mpac", "--bits", "32"]],
                          serve_args=["--rate-limit", "0", "--model", str(model), "--workers", str(args.workers)])
    nodes = [first, first.another_node()]
    lines = [f"two provmark serve nodes (--workers {args.workers} each) on one PostgreSQL "
             f"({postgres.bindir.parent.name}, fsync on)"]
    all_acknowledged, failures = [], 0
    try:
        for node in nodes:
            node.start(log=folder / f"node{node.port}.log")
        for round_ in range(1, args.rounds + 1):
            kill_after = rng.uniform(args.min_delay, args.max_delay)
            if round_ % 2:
                victim = nodes[(round_ // 2) % 2]
                what, kill = f"node :{victim.port}", victim.kill
            else:
                victim, what, kill = None, "PostgreSQL", postgres.kill
            began = time.perf_counter()
            acknowledged, unanswered = asyncio.run(burst(nodes, first.key_ids[0], args.clients, kill_after, kill))
            all_acknowledged += acknowledged
            if victim is None:
                postgres.start()
            else:
                victim.start(log=folder / f"node{victim.port}.log")
            reader = next(node for node in nodes if node is not victim)
            with httpx.Client(base_url=reader.url, headers=reader.headers, timeout=30) as client:
                deadline = time.monotonic() + 60  # the survivor's pool reconnects after a database restart
                while client.get("/v1/keys").status_code != 200 and time.monotonic() < deadline:
                    time.sleep(0.5)
                found = {r["id"]: client.get(f"/v1/records/{r['id']}") for r in all_acknowledged}
            missing = [i for i, response in found.items() if response.status_code != 200]
            changed = [r["id"] for r in all_acknowledged if r["id"] not in missing and found[r["id"]].json() != r]
            ids = [r["id"] for r in all_acknowledged]
            with psycopg.connect(url) as conn:
                stored = conn.execute("SELECT count(*) FROM records").fetchone()[0]
                without_text = conn.execute("SELECT count(*) FROM records WHERE text_sha256 IS NULL").fetchone()[0]
                doubled = conn.execute("SELECT count(*) FROM (SELECT key_id, number FROM records GROUP BY key_id, number"
                                       " HAVING count(*) > 1) AS d").fetchone()[0]
            duplicated = len(ids) - len(set(ids)) + doubled
            ok = not missing and not changed and not duplicated
            failures += not ok
            line = (f"round {round_}: kill -9 of {what} after {kill_after:.1f} s "
                    f"({time.perf_counter() - began:.1f} s with restart and read-back), {len(acknowledged)} "
                    f"acknowledged this round, {unanswered} unanswered; read back through node :{reader.port}: "
                    f"{len(all_acknowledged) - len(missing)}/{len(all_acknowledged)} acknowledged records present "
                    f"and unchanged ({len(changed)} changed), {duplicated} duplicated, {stored} records stored "
                    f"({without_text} without text hash: issued, never acknowledged)")
            print(line, flush=True)
            lines.append(line)
    finally:
        for node in nodes:
            node.kill()
        postgres.remove()
    lines.append(f"{'PASS' if failures == 0 else 'FAIL'}: {args.rounds} rounds, {len(all_acknowledged)} acknowledged "
                 f"registrations, {failures} rounds with a lost, changed or duplicated record")
    print(lines[-1])
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
