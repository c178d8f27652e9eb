"""Streaming through the OpenAI-compatible endpoint beside /v1/generate, with the embedded model.

One ``provmark serve`` (one worker process, an mpac key), the same chat prompts sent by 1 and then
4 concurrent clients, each sending ``--requests`` requests one after another:

* ``/v1/chat/completions`` with ``stream: true`` through the ``openai`` client: time to first
  token (request sent -> first text chunk), decode rate per request (tokens after the first /
  time from the first text chunk to the last), and throughput (all tokens / wall time);
* ``/v1/generate`` (no streaming): the first token arrives with the whole text, so its time to first
  token is the request's latency; the same rates.

Every streamed text is then verified through /v1/verify and must name the record its first chunk
announced.

    nice -n 10 python -m benchmarks.openai_stream --out benchmarks/results/openai_stream.txt
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import openai

from benchmarks.api_server import ServerFixture
from provmark.evaluation import load_prompts


def _stream_one(client: openai.OpenAI, prompt: str, max_tokens: int) -> dict:
    start = time.perf_counter()
    first = last = None
    pieces, record, tokens = [], None, 0
    for chunk in client.chat.completions.create(model="default", messages=[{"role": "user", "content": prompt}],
                                                max_tokens=max_tokens, stream=True,
                                                stream_options={"include_usage": True}):
        now = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        record = record or (choice.model_extra or {}).get("provmark_record")
        if choice.delta.content:
            first = first or now
            last = now
            pieces.append(choice.delta.content)
    return {"start": start, "first": first, "end": last, "tokens": tokens, "text": "".join(pieces), "record": record}


def _generate_one(http: httpx.Client, key_id: str, prompt: str, max_tokens: int) -> dict:
    start = time.perf_counter()
    response = http.post("/v1/generate", json={"key_id": key_id, "prompt": prompt, "max_new_tokens": max_tokens,
                                                "chat": True})
    end = time.perf_counter()
    response.raise_for_status()
    body = response.json()
    return {"start": start, "first": end, "end": end, "tokens": body["num_tokens"], "text": body["text"],
            "record": body["record"]["id"]}


def _run(clients: int, requests: int, prompts: list[str], one) -> tuple[list[dict], float]:
    results: list[dict] = []
    lock = threading.Lock()

    def client(index):
        for r in range(requests):
            out = one(prompts[(index * requests + r) % len(prompts)])
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    wall = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - wall


def _summary(label: str, clients: int, results: list[dict], wall: float, streamed: bool) -> str:
    ttft = sorted(r["first"] - r["start"] for r in results)
    if streamed:
        rates = [(r["tokens"] - 1) / (r["end"] - r["first"]) for r in results if r["tokens"] > 1 and r["end"] > r["first"]]
    else:
        rates = [r["tokens"] / (r["end"] - r["start"]) for r in results]
    tokens = sum(r["tokens"] for r in results)
    return (f"{label:<26} {clients:>7} {len(results):>8} {tokens:>6} {statistics.median(ttft):>9.2f} {max(ttft):>8.2f} "
            f"{statistics.median(rates):>11.2f} {tokens / wall:>12.2f} {wall:>7.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    prompts = load_prompts(8)
    lines = []

    def say(line=""):
        print(line, flush=True)
        lines.append(line)

    server = ServerFixture(keys=[["--scheme", "mpac", "--bits", "16"]],
                           serve_args=["--rate-limit", "0", "--torch-threads", str(args.torch_threads)])
    key_id = server.key_ids[0]
    with server, httpx.Client(timeout=1200) as http:
        server.start(log=server.folder / "server.log")
        http.base_url, http.headers = server.url, server.headers
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.token, max_retries=0, timeout=1200)
        _generate_one(http, key_id, prompts[0], 4)  # load the model
        _stream_one(client, prompts[0], 4)
        say(f"provmark serve (1 worker, --torch-threads {args.torch_threads}), embedded SmolLM2-135M-Instruct, "
            f"mpac 16-bit key, {args.max_tokens} new tokens at most, temperature 1, {args.requests} requests per client")
        say(f"{'endpoint':<26} {'clients':>7} {'requests':>8} {'tokens':>6} {'ttft_p50':>9} {'ttft_max':>8} "
            f"{'tok/s/req':>11} {'tok/s_total':>12} {'wall_s':>7}")
        streamed_all = []
        for clients in [int(c) for c in args.concurrency.split(",")]:
            results, wall = _run(clients, args.requests, prompts, lambda p: _stream_one(client, p, args.max_tokens))
            streamed_all += results
            say(_summary("chat/completions stream", clients, results, wall, True))
            results, wall = _run(clients, args.requests, prompts, lambda p: _generate_one(http, key_id, p, args.max_tokens))
            say(_summary("/v1/generate", clients, results, wall, False))
        verified = 0
        for result in streamed_all:
            answer = http.post("/v1/verify", json={"text": result["text"], "min_tokens": 1}).json()
            named = [r["record"]["id"] for r in answer["results"] if r["record"]]
            verified += named == [result["record"]]
        say(f"streamed texts verified to the record their first chunk named: {verified}/{len(streamed_all)}")
    say("ttft: request sent -> first text (for /v1/generate, the whole response); tok/s/req: median per request "
        "(streaming: tokens after the first over first -> last chunk; /v1/generate: tokens over latency); "
        "tok/s_total: all tokens over the wall time of the round")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0 if verified == len(streamed_all) else 1


if __name__ == "__main__":
    sys.exit(main())
