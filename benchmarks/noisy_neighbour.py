"""Noisy neighbour: tenant B's verify latency alone, then while anonymous clients (tenant A's
public synonym key) send the heaviest verifications the limits allow.

B verifies a short text with its kgw key, one request at a time; A runs ``--noisy`` client threads,
each sending texts far past the synonym word cap (``serve --max-text-words``) to A's public key
without a token, back to back, whatever the answer (429s included). Goal (issue 16): B's p99 under
load at most 2x its p99 alone. Balance keys are left out: their proxy would load the real model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

from benchmarks.api_server import ServerFixture

WORDS = ("the river ran quickly past an old stone mill while children watched the bright water fall over "
         "smooth rocks and birds sang in tall green trees near a quiet village road").split()


def text(words: int, seed: int) -> str:
    return " ".join(WORDS[(i * 7 + seed) % len(WORDS)] for i in range(words))


def measure(url: str, headers: dict, body: dict, count: int) -> list[float]:
    times = []
    with httpx.Client(timeout=120) as client:
        for _ in range(count):
            began = time.perf_counter()
            response = client.post(url + "/v1/verify", headers=headers, json=body)
            times.append((time.perf_counter() - began) * 1000)
            response.raise_for_status()
            time.sleep(0.15)  # B stays inside its own rate limit (20 requests/s)
    return times


def summary(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="B's requests per phase.")
    parser.add_argument("--noisy", type=int, default=4, help="A's client threads.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    server = ServerFixture(keys=[["--scheme", "kgw"]], serve_args=["--workers", str(args.workers)])
    noisy_key = server.cli("tenants", "create", "--db", str(server.db), "noisy")  # tenant A
    a_key = server.cli("keys", "create", "--db", str(server.db), "--tenant", "noisy", "--scheme", "synonym",
                       "--public").split()[3]
    del noisy_key
    lines = [f"provmark serve --workers {args.workers} (default limits), B: kgw, 200-word text, {args.requests} "
             f"sequential verifies; A: {args.noisy} anonymous clients, 30,000-word texts to a public synonym key"]
    with server:
        server.start(log=server.folder / "server.log")
        b_body = {"text": text(200, 1), "key_ids": [server.key_ids[0]]}
        measure(server.url, server.headers, b_body, 5)  # warm-up
        alone = measure(server.url, server.headers, b_body, args.requests)
        stop = threading.Event()
        counts = {"sent": 0, "ok": 0, "429": 0, "other": 0}

        def noisy(seed):
            with httpx.Client(timeout=120) as client:
                heavy = {"text": text(30_000, seed), "key_ids": [a_key], "min_tokens": 1}
                while not stop.is_set():
                    status = client.post(server.url + "/v1/verify", json=heavy).status_code
                    counts["sent"] += 1
                    counts["ok" if status == 200 else "429" if status == 429 else "other"] += 1

        threads = [threading.Thread(target=noisy, args=(i,), daemon=True) for i in range(args.noisy)]
        for t in threads:
            t.start()
        time.sleep(2)
        loaded = measure(server.url, server.headers, b_body, args.requests)
        stop.set()
        for t in threads:
            t.join(timeout=120)
    (a50, a99), (l50, l99) = summary(alone), summary(loaded)
    lines += [f"B alone:   p50 {a50:7.1f} ms  p99 {a99:7.1f} ms",
              f"B loaded:  p50 {l50:7.1f} ms  p99 {l99:7.1f} ms  (p99 ratio {l99 / a99:.2f}, goal <= 2)",
              f"A's requests: {counts['sent']} sent, {counts['ok']} answered 200, {counts['429']} 429, "
              f"{counts['other']} other"]
    out = "\n".join(lines) + "\n"
    print(out)
    if args.out:
        args.out.write_text(out)


if __name__ == "__main__":
    sys.exit(main())
