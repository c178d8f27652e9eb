"""Load test on loopback: POST /v1/verify with 500-token watermarked texts against a live
``provmark serve``, at several concurrency levels, per scheme. Bounded: each level stops after
--requests requests or --seconds seconds, whichever comes first.

Texts come from the API itself: /v1/generate with the embedded model under each key, cut to
exactly --tokens tokens. Each verify names one key (``key_ids``), so a row measures one scheme;
every answer must be 200 and watermarked, anything else counts as an error.

    python -m benchmarks.api_load --out benchmarks/results/api_load.txt
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.api_server import ServerFixture

SCHEMES = {
    "kgw": ["--scheme", "kgw"],
    "mpac": ["--scheme", "mpac", "--bits", "32", "--radix", "4"],
    "majormark+": ["--scheme", "majormark+", "--bits", "32"],
}
PROMPTS = [
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how tides work, and why there are two high tides a day.",
    "Write a long letter from a sailor to his family describing a storm at sea.",
]


def exact_tokens(texts: list[str], tokens: int) -> str:
    from provmark.watermark.models import load_tokenizer

    tokenizer = load_tokenizer()
    ids = [i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    if len(ids) < tokens:
        raise RuntimeError(f"generated only {len(ids)} tokens")
    return tokenizer.decode(ids[:tokens])


def make_texts(server: ServerFixture, key_id: str, tokens: int) -> str:
    """--tokens tokens of the key's watermarked text (one or more generations joined)."""
    texts = []
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=600) as client:
        for seed, prompt in enumerate(PROMPTS):
            made = client.post("/v1/generate", json={"key_id": key_id, "prompt": prompt, "max_new_tokens": tokens,
                                                     "seed": seed, "temperature": 1.0})
            made.raise_for_status()
            texts.append(made.json()["text"])
            try:
                return exact_tokens(texts, tokens)
            except RuntimeError:
                continue
    return exact_tokens(texts, tokens)


async def run_level(url, headers, body, clients: int, requests: int, seconds: float) -> dict:
    latencies, errors = [], 0
    issued = 0
    deadline = time.perf_counter() + seconds

    async def worker(client):
        nonlocal issued, errors
        while issued < requests and time.perf_counter() < deadline:
            issued += 1
            start = time.perf_counter()
            try:
                response = await client.post("/v1/verify", json=body)
                ok = response.status_code == 200 and response.json()["watermarked"]
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
        for _ in range(3):  # warm-up, not measured
            await client.post("/v1/verify", json=body)
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "seconds": wall, "throughput": len(latencies) / wall,
            "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "errors": errors}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--clients", default="10,50")
    parser.add_argument("--requests", type=int, default=1000, help="Requests per level at most.")
    parser.add_argument("--seconds", type=float, default=30.0, help="Seconds per level at most.")
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    schemes = args.schemes.split(",")
    server = ServerFixture(keys=[SCHEMES[s] for s in schemes], serve_args=["--rate-limit", "0"])
    rows = []
    with server:
        server.start(log=server.folder / "server.log")
        texts = {}
        for scheme, key_id in zip(schemes, server.key_ids):
            began = time.perf_counter()
            texts[scheme] = make_texts(server, key_id, args.tokens)
            print(f"{scheme}: {args.tokens}-token text generated in {time.perf_counter() - began:.0f} s", flush=True)
        # The access log costs the server time too; it stays on, as an operator would run it.
        for scheme, key_id in zip(schemes, server.key_ids):
            body = {"text": texts[scheme], "key_ids": [key_id]}
            for clients in (int(c) for c in args.clients.split(",")):
                row = asyncio.run(run_level(server.url, server.headers, body, clients, args.requests, args.seconds))
                rows.append({"scheme": scheme, **row})
                print(f"{scheme:11s} {clients:3d} clients: {row['requests']:5d} requests in {row['seconds']:5.1f} s, "
                      f"{row['throughput']:6.1f} req/s, p50 {row['p50']:6.1f} ms, p99 {row['p99']:6.1f} ms, "
                      f"errors {row['errors']}", flush=True)
    lines = ["scheme       clients  requests  seconds  req/s   p50 ms   p99 ms  errors"]
    lines += [f"{r['scheme']:11s}  {r['clients']:7d}  {r['requests']:8d}  {r['seconds']:7.1f}  {r['throughput']:5.1f}  "
              f"{r['p50']:7.1f}  {r['p99']:7.1f}  {r['errors']:6d}" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
