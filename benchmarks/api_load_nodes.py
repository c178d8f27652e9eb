"""Load across API nodes: POST /v1/verify at several client counts against one ``provmark serve``
node on SQLite, one node on PostgreSQL, and two nodes on that PostgreSQL, in one run on one
machine. Every node runs ``--workers 1``, so two nodes use two server processes where one node
uses one; "sqlite, 1 node, --workers 2" is the same two processes on one SQLite file, for the
side-by-side that separates the backend from the process count.

The text (--tokens tokens of an ``mpac --bits 32 --radix 4`` key's generation) comes from the API
itself, as in ``api_load``; with two nodes the clients are split evenly between them, one wrk per
node running at the same time, and the row reports their summed throughput and the worse of the two
nodes' p50 and p99. An error is a socket error, a status other than 200, or an answer that does not
say the text is watermarked.

    python -m benchmarks.api_load_nodes --out benchmarks/results/api_load_nodes.txt
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.api_load import make_texts, run_level
from benchmarks.api_server import ServerFixture
from tests.postgres import PostgresServer

KEY = ["--scheme", "mpac", "--bits", "32", "--radix", "4"]


def measure(nodes: list[ServerFixture], body: dict, clients: int, requests: int, seconds: float) -> dict:
    """One closed-loop level: ``clients`` connections split evenly over ``nodes``, all at once."""
    rows: list[dict] = [{}] * len(nodes)
    for node in nodes:
        for _ in range(3):  # warm-up, not measured
            httpx.post(node.url + "/v1/verify", headers=node.headers, json=body, timeout=60).raise_for_status()

    def run(index: int, node: ServerFixture) -> None:
        folder = node.folder / f"wrk-{node.port}"
        folder.mkdir(exist_ok=True)
        rows[index] = run_level(node.url, node.token, body, clients // len(nodes), requests // len(nodes), seconds,
                                folder)

    threads = [threading.Thread(target=run, args=(i, node)) for i, node in enumerate(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"clients": clients, "requests": sum(r["requests"] for r in rows),
            "throughput": sum(r["throughput"] for r in rows), "p50": max(r["p50"] for r in rows),
            "p99": max(r["p99"] for r in rows), "errors": sum(r["errors"] for r in rows),
            "capped": any(r["capped"] for r in rows)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,50")
    parser.add_argument("--requests", type=int, default=20000, help="Requests per level at most (a safety bound).")
    parser.add_argument("--seconds", type=float, default=20.0, help="Seconds per level.")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="provmark-load-nodes-"))
    postgres = PostgresServer(durable=True)
    began = time.perf_counter()
    postgres.start()
    header = [f"/v1/verify on {args.tokens}-token mpac b32 r4 texts, wrk closed loop, {args.seconds:g} s per level, "
              f"{os.cpu_count()} CPU cores shared by the servers, PostgreSQL {postgres.bindir.parent.name} "
              f"(fsync on; initdb and start {time.perf_counter() - began:.1f} s) and wrk",
              "setup                                  clients  requests  req/s   p50 ms   p99 ms  errors"]
    print("\n".join(header), flush=True)
    rows = []
    serve = ["--rate-limit", "0", "--workers", "1"]
    (folder / "sqlite").mkdir()
    (folder / "pg").mkdir()
    started: list[ServerFixture] = []
    try:
        setups = [("sqlite", ServerFixture(folder=str(folder / "sqlite"), keys=[KEY], serve_args=serve)),
                  ("postgresql", ServerFixture(folder=str(folder / "pg"), db=postgres.new_database(), keys=[KEY],
                                               serve_args=serve))]
        for backend, first in setups:
            first.start(log=first.folder / "server.log")
            started.append(first)
            try:
                body = {"text": make_texts(first, first.key_ids[0], args.tokens), "key_ids": [first.key_ids[0]]}
                layouts = [(f"{backend}, 1 node, --workers 1", [first])]
                if backend == "postgresql":
                    second = first.another_node()
                    second.start(log=first.folder / "server2.log")
                    started.append(second)
                    layouts.append((f"{backend}, 2 nodes, --workers 1 each", [first, second]))
                for name, nodes in layouts:
                    for clients in levels:
                        row = measure(nodes, body, clients, args.requests, args.seconds)
                        rows.append(f"{name:38s} {clients:7d}  {row['requests']:8d}  {row['throughput']:5.1f}  "
                                    f"{row['p50']:7.1f}  {row['p99']:7.1f}  {row['errors']:6d}"
                                    f"{'  capped' if row['capped'] else ''}")
                        print(rows[-1], flush=True)
                if backend == "sqlite":
                    first.kill()
                    first.serve_args = ["--rate-limit", "0", "--workers", "2"]
                    first.start(log=first.folder / "server-w2.log")
                    for clients in levels:
                        row = measure([first], body, clients, args.requests, args.seconds)
                        rows.append(f"{'sqlite, 1 node, --workers 2':38s} {clients:7d}  {row['requests']:8d}  "
                                    f"{row['throughput']:5.1f}  {row['p50']:7.1f}  {row['p99']:7.1f}  "
                                    f"{row['errors']:6d}{'  capped' if row['capped'] else ''}")
                        print(rows[-1], flush=True)
            finally:
                for node in started:
                    node.kill()
    finally:
        postgres.remove()
    text = "\n".join(header + rows) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
