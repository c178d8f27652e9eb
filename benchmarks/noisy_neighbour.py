"""Noisy neighbour: tenant B's verify latency alone, then while anonymous clients (tenant A's
public synonym and balance keys) send the heaviest verifications the limits allow.

B verifies a short text with its kgw key, one request at a time. A runs ``--noisy`` client threads,
each sending 30,000-word natural texts (``corpus_text``; past both caps, ``serve --max-text-words`` and ``--max-proxy-tokens``)
to A's public keys without a token, alternating synonym and balance, back to back. Phases:

- ``polite``: A waits out each 429/503's Retry-After, so every heavy verification the limits admit
  runs (the issue's "heaviest requests the limits allow");
- ``flood``: A ignores Retry-After and resends at once (the first benchmark's load);
- ``floor``: A sends the same bodies with an oversized Authorization header, which the server
  refuses before reading them: the cost of A's traffic alone on these cores, which no admission
  policy removes (the floor under the other two).

Goal (issue 16): B's p99 under load at most 2x its p99 alone.

    python -m benchmarks.noisy_neighbour --out benchmarks/results/noisy_neighbour.txt
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

from benchmarks.api_server import ServerFixture

CORPUS = Path(__file__).parent / "results" / "synonym_corpus.jsonl"
WORDS = ("the river ran quickly past an old stone mill while children watched the bright water fall over "
         "smooth rocks and birds sang in tall green trees near a quiet village road").split()


def text(words: int, seed: int) -> str:
    return " ".join(WORDS[(i * 7 + seed) % len(WORDS)] for i in range(words))


def corpus_text(words: int, seed: int = 0) -> str:
    """``words`` words of natural text: the synonym benchmark's corpus (``results/synonym_corpus.jsonl``,
    120 human and model texts, about 45,000 words) joined from text ``seed`` on, round and round. A
    repetitive text would flatter the synonym detector, whose per-word analysis is cached."""
    rows = [json.loads(line)["text"] for line in CORPUS.read_text().splitlines() if line.strip()]
    pool = " ".join(rows[seed % len(rows):] + rows[: seed % len(rows)]).split()
    return " ".join(pool[i % len(pool)] for i in range(words))


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


def load(url: str, keys: list[str], phase: str, seed: int, stop: threading.Event, counts: dict) -> None:
    """One of A's clients: heavy verifications, alternating ``keys``, until ``stop`` (see the phases)."""
    headers = {"Authorization": "Bearer " + "x" * 2048} if phase == "floor" else {}
    body = corpus_text(30_000, seed)
    with httpx.Client(timeout=300) as client:
        for turn in range(10**9):
            if stop.is_set():
                return
            heavy = {"text": body, "key_ids": [keys[turn % len(keys)]], "min_tokens": 1}
            response = client.post(url + "/v1/verify", json=heavy, headers=headers)
            status = str(response.status_code)
            counts[status] = counts.get(status, 0) + 1
            if phase == "polite" and response.status_code in (429, 503):
                stop.wait(float(response.headers.get("Retry-After", 1)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60, help="B's requests per phase.")
    parser.add_argument("--noisy", type=int, default=4, help="A's client threads.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--phases", default="polite,flood,floor")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    server = ServerFixture(keys=[["--scheme", "kgw"]], serve_args=["--workers", str(args.workers)])
    server.cli("tenants", "create", "--db", str(server.db), "noisy")  # tenant A
    a_keys = [server.cli("keys", "create", "--db", str(server.db), "--tenant", "noisy", "--scheme", scheme,
                         "--public").split()[3] for scheme in ("synonym", "balance")]
    lines = [f"provmark serve --workers {args.workers} (default limits), B: kgw, 200-word text, {args.requests} "
             f"sequential verifies; A: {args.noisy} anonymous clients, 30,000-word texts to public synonym and "
             "balance keys, alternating"]
    with server:
        server.start(log=server.folder / "server.log")
        b_body = {"text": text(200, 1), "key_ids": [server.key_ids[0]]}
        measure(server.url, server.headers, b_body, 5)  # warm-up
        alone = summary(measure(server.url, server.headers, b_body, args.requests))
        lines.append(f"B alone:          p50 {alone[0]:7.1f} ms  p99 {alone[1]:7.1f} ms")
        for phase in args.phases.split(","):
            stop, counts = threading.Event(), {}
            threads = [threading.Thread(target=load, args=(server.url, a_keys, phase, i, stop, counts), daemon=True)
                       for i in range(args.noisy)]
            for t in threads:
                t.start()
            time.sleep(2)
            p50, p99 = summary(measure(server.url, server.headers, b_body, args.requests))
            stop.set()
            for t in threads:
                t.join(timeout=300)
            answered = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            lines.append(f"B under {phase + ':':<9} p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  (p99 ratio "
                         f"{p99 / alone[1]:.2f}, goal <= 2); A's requests answered: {answered}")
            time.sleep(3)  # A's heavy work still running drains
    out = "\n".join(lines) + "\n"
    print(out)
    if args.out:
        args.out.write_text(out)


if __name__ == "__main__":
    sys.exit(main())
