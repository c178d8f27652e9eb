"""Load test on loopback: POST /v1/verify with 500-token watermarked texts against a live
``provmark serve --workers N`` (--workers, default 2: one per core of the 2-core machine), at
several concurrency levels, per scheme. Bounded: each level stops after --requests requests or
--seconds seconds, whichever comes first. The output's first line names the worker count.

Texts come from the API itself: /v1/generate with the embedded model under each key, cut to
exactly --tokens tokens. Each verify names one key (``key_ids``), so a row measures one scheme;
every answer must be 200 and say the text is watermarked, anything else counts as an error.
The clients are wrk (Debian's ``wrk``; its C event loop leaves the shared cores to the server),
2 threads, keep-alive connections, closed loop.

    python -m benchmarks.api_load --out benchmarks/results/api_load.txt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

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


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("WRK_TOKEN")
local f = io.open(os.getenv("WRK_BODY"), "rb"); wrk.body = f:read("*a"); f:close()
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) limit = tonumber(os.getenv("WRK_LIMIT")); answered = 0; bad = 0 end
function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 or not body:find('"watermarked":true', 1, true) then bad = bad + 1 end
  if answered >= limit then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local bad_total = 0
  for _, t in ipairs(threads) do bad_total = bad_total + t:get("bad") end
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "micros": %d, "p50": %d, "p99": %d, "bad": %d, "socket_errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), bad_total,
    e.connect + e.read + e.write + e.timeout))
end
"""


def run_level(url, token, body, clients: int, requests: int, seconds: float, folder: Path) -> dict:
    """One closed-loop level with wrk: ``clients`` connections on 2 threads for ``seconds`` seconds,
    each thread stopping early at its share of ``requests`` answers (a safety bound: wrk then still
    reports the whole duration, so a capped row's throughput is marked and understated). An error
    is a socket error, a status other than 200, or an answer that does not say the text is
    watermarked."""
    script, payload = folder / "verify.lua", folder / "body.json"
    script.write_text(WRK_SCRIPT)
    payload.write_text(json.dumps(body))
    threads = min(2, clients)
    env = {**os.environ, "WRK_TOKEN": token, "WRK_BODY": str(payload), "WRK_LIMIT": str(-(-requests // threads))}
    run = subprocess.run(["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{seconds:g}s", "--timeout", "30s",
                          "-s", str(script), url + "/v1/verify"], env=env, capture_output=True, text=True, check=True)
    result = json.loads(run.stdout.split("RESULT ", 1)[1].splitlines()[0])
    wall = result["micros"] / 1e6
    return {"clients": clients, "requests": result["requests"], "seconds": wall, "capped": result["requests"] >= requests,
            "throughput": result["requests"] / wall, "p50": result["p50"] / 1000, "p99": result["p99"] / 1000,
            "errors": result["bad"] + result["socket_errors"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--clients", default="10,50")
    parser.add_argument("--requests", type=int, default=20000, help="Requests per level at most (a safety bound).")
    parser.add_argument("--seconds", type=float, default=30.0, help="Seconds per level.")
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="provmark serve --workers (server processes).")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    schemes = args.schemes.split(",")
    header = f"provmark serve --workers {args.workers} (server processes), {args.tokens}-token texts, wrk closed loop"
    print(header, flush=True)
    server = ServerFixture(keys=[SCHEMES[s] for s in schemes],
                           serve_args=["--rate-limit", "0", "--workers", str(args.workers)])
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
                for _ in range(3):  # warm-up, not measured
                    httpx.post(server.url + "/v1/verify", headers=server.headers, json=body, timeout=60).raise_for_status()
                row = run_level(server.url, server.token, body, clients, args.requests, args.seconds, server.folder)
                rows.append({"scheme": scheme, **row})
                print(f"{scheme:11s} {clients:3d} clients: {row['requests']:5d} requests in {row['seconds']:5.1f} s, "
                      f"{row['throughput']:6.1f} req/s, p50 {row['p50']:6.1f} ms, p99 {row['p99']:6.1f} ms, "
                      f"errors {row['errors']}{' (capped)' if row['capped'] else ''}", flush=True)
    lines = [header, "scheme       clients  requests  seconds  req/s   p50 ms   p99 ms  errors"]
    lines += [f"{r['scheme']:11s}  {r['clients']:7d}  {r['requests']:8d}  {r['seconds']:7.1f}  {r['throughput']:5.1f}  "
              f"{r['p50']:7.1f}  {r['p99']:7.1f}  {r['errors']:6d}{'  capped' if r['capped'] else ''}" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
