"""CPU cost of one POST /v1/verify in process, and its ratio to another commit's.

The app is driven through its ASGI interface in process (no sockets, no uvicorn): each request
is the load test's (benchmarks/api_load.py) 500-token text naming one key, and the cost is the
process's CPU time (every thread, the tokenizer's included) per request. With ``--baseline REF``
the same measurement runs on ``git archive REF`` of this repository too, in alternating child
processes over one registry, so both sides see the same machine load; the ratio of the medians
is what to compare on a shared machine, not the absolute times.

Texts come from a 1-layer random Llama over SmolLM2's vocabulary (``api_server.tiny_model_dir``):
generation takes seconds, and detection's cost depends on the token count, not on the prose.

    OMP_NUM_THREADS=1 python -m benchmarks.api_cpu --baseline main
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMES = {
    "kgw": {},
    "mpac": {"bits": 32, "radix": 4},
    "majormark+": {"bits": 32},
}
MASTER_KEY = bytes(range(32))


def prepare(folder: Path, tokens: int) -> dict:
    """A registry in ``folder`` with tenant ``bench``, one key per scheme and each key's
    ``tokens``-token watermarked text; returns what a child needs to drive the app."""
    from benchmarks.api_server import tiny_model_dir
    from provmark.api.crypto import MasterKey
    from provmark.api.provenance import Provenance
    from provmark.watermark.models import Models
    from provmark.api.registry import Registry

    registry = Registry.open(folder / "registry.db", MasterKey(MASTER_KEY))
    tenant, token = registry.create_tenant("bench")
    models = Models(tiny_model_dir(folder / "tiny-llama"))
    provenance = Provenance(registry, models)
    tokenizer = models.tokenizer()
    setup = {"db": str(folder / "registry.db"), "token": token, "keys": {}, "texts": {}}
    for scheme, params in SCHEMES.items():
        key_id = registry.create_key(tenant.id, scheme, params).key_id
        generation, _ = provenance.generate(tenant_id=tenant.id, key_id=key_id, prompt="Once upon a time",
                                            max_new_tokens=tokens + 100, seed=0, chat=False)
        ids = tokenizer(generation.text, add_special_tokens=False)["input_ids"][:tokens]
        setup["keys"][scheme], setup["texts"][scheme] = key_id, tokenizer.decode(ids)
    registry.close()
    return setup


def measure(setup: dict, requests: int) -> dict[str, float]:
    """CPU milliseconds per verify request for each scheme, through the ASGI app of the
    ``provmark`` on ``sys.path``; every answer must be 200 and watermarked."""
    from provmark.api.app import create_app
    from provmark.api.crypto import MasterKey
    from provmark.watermark.models import Models
    from provmark.api.registry import Registry

    registry = Registry.open(setup["db"], MasterKey(MASTER_KEY))
    app = create_app(registry, models=Models(), rate=0)
    headers = [(b"host", b"bench"), (b"content-type", b"application/json"),
               (b"authorization", f"Bearer {setup['token']}".encode())]

    async def post(body: bytes) -> tuple[int, bytes]:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": "/v1/verify", "raw_path": b"/v1/verify", "query_string": b"", "root_path": "",
                 "headers": [*headers, (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000)}
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        status, chunks = 0, []

        async def receive():
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            else:
                chunks.append(message.get("body", b""))

        await app(scope, receive, send)
        return status, b"".join(chunks)

    async def run() -> dict[str, float]:
        costs = {}
        for scheme, key_id in setup["keys"].items():
            body = json.dumps({"text": setup["texts"][scheme], "key_ids": [key_id]}).encode()
            for _ in range(3):  # warm-up: tokenizer, detector, caches
                status, answer = await post(body)
                if status != 200 or json.loads(answer)["watermarked"] is not True:
                    raise RuntimeError(f"{scheme}: verify answered {status}: {answer[:300]!r}")
            began = time.process_time()
            for _ in range(requests):
                await post(body)
            costs[scheme] = (time.process_time() - began) / requests * 1e3
        return costs

    try:
        return asyncio.run(run())
    finally:
        registry.close()


def child(tree: Path, setup_file: Path, requests: int) -> dict[str, float]:
    """``measure`` in a fresh process importing provmark from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    run = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(setup_file),
                          "--requests", str(requests)], env=env, cwd=tree, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"measurement under {tree} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="A git ref to compare with (e.g. main).")
    parser.add_argument("--rounds", type=int, default=5, help="Alternating measurements per side.")
    parser.add_argument("--requests", type=int, default=200, help="Requests per scheme per measurement.")
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(json.loads(args.child.read_text()), args.requests)))
        return 0
    os.environ.setdefault("PROVMARK_MASTER_KEY", base64.b64encode(MASTER_KEY).decode())
    with tempfile.TemporaryDirectory(prefix="provmark-api-cpu-") as folder:
        folder = Path(folder)
        setup_file = folder / "setup.json"
        setup_file.write_text(json.dumps(prepare(folder, args.tokens)))
        sides = {"current": ROOT}
        if args.baseline:
            baseline = folder / "baseline"
            baseline.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline],
                                     capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive.stdout, check=True)
            sides = {"baseline": baseline, **sides}
        costs = {side: [] for side in sides}
        for round_ in range(args.rounds):
            for side, tree in sides.items():
                costs[side].append(child(tree, setup_file, args.requests))
                spent = "  ".join(f"{s} {c:.2f} ms" for s, c in costs[side][-1].items())
                print(f"round {round_ + 1} {side:8s} {spent}", flush=True)
    print(f"\nCPU ms per POST /v1/verify ({args.tokens} tokens, one key), median of {args.rounds} rounds "
          f"of {args.requests} requests:")
    for scheme in SCHEMES:
        medians = {side: statistics.median(run[scheme] for run in costs[side]) for side in sides}
        line = f"  {scheme:11s} " + "  ".join(f"{side} {m:6.2f}" for side, m in medians.items())
        if args.baseline:
            line += f"  baseline/current {medians['baseline'] / medians['current']:.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
