"""``POST /v1/verify`` latency at R issued records per key, through the real server, for one or more
code trees side by side (say main's checkout and a branch's), with each phase's CPU cost.

For each code tree (``--code LABEL=DIR``; DIR goes first on PYTHONPATH of every process it runs):

1. a setup process (this file run as a script, importing only that tree's ``provmark``) makes a
   registry in a temporary folder: tenant ``bench``, one key per scheme (mpac r4 b32, majormark
   b32, majormark+ b32) with the secrets the texts were generated under, and R records per key
   (bulk-inserted in one transaction, numbers uniform and distinct, the texts' payloads among
   them). It then measures the CPU (``time.process_time``) of one text under one key, phase by
   phase, in that process: reading the key's issued numbers, the scored pairs and per-pair
   evidence (the PRF work), the presence test, the count tables and the record test, and the
   whole key as verify runs it (warm: each text once before, so no first-use cost is counted;
   the first detection of each text is reported apart as "cold"); then a whole verification
   (``Provenance.verify``, one text, all keys: registry look-ups, tokenising and detection, no HTTP);
2. ``provmark serve`` over that registry, default workers, with ``SERVE_ARGS``: no rate limit, and
   the heavy lane admitting every client's request (the benchmark's clients share one API token;
   a 200-token text under a majormark+ key is a heavy verification by ``limits.work_bound``, and
   ten distinct clients would each be admitted one, so ``--max-heavy-per-client`` and
   ``--heavy-queue`` are raised to the client count); every text is verified
   once (the first request of each is reported apart: it pays first-use costs such as a simulated
   null), then ``--rounds`` rounds of every text at each client count (``--clients``), each
   request a single text verified with all the tenant's keys; p50/p99 per client count.

The texts: ``--texts`` per scheme, ``--tokens`` tokens each, generated once with the embedded
model (T 1.0) under payloads drawn at random, and cached in ``--text-cache`` so every code tree
verifies the same texts.

    nice -n 10 python -m benchmarks.verify_latency --code main=/work/main --code fast22=. \\
        --out benchmarks/results/verify_latency.txt
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SCHEMES = {  # label -> (scheme, params)
    "mpac r4 b32": ("mpac", {"bits": 32, "radix": 4}),
    "majormark b32": ("majormark", {"bits": 32}),
    "majormark+ b32": ("majormark+", {"bits": 32}),
}
ALPHA = 1e-3
SERVE_ARGS = ["--rate-limit", "0", "--max-heavy-per-client", "10", "--heavy-queue", "10"]


# -- texts (the driver, this worktree's code) -------------------------------------------------------

def make_texts(count: int, tokens: int, seed: int) -> dict:
    """label -> {scheme, params, secret, payloads, texts, token_ids}, generated with the embedded model."""
    import hashlib

    from provmark.evaluation.prompts import generate_batched, load_prompts
    from provmark.front import Watermark
    from provmark.watermark.keys import create_key
    from provmark.watermark.models import Models

    models = Models()
    prompts = load_prompts()[:count]
    out = {}
    for label, (scheme, params) in SCHEMES.items():
        secret = hashlib.sha256(f"provmark-verify-latency/{seed}/{label}".encode()).digest()
        key = create_key(scheme, params, secret=secret)
        rng = random.Random(secret)
        payloads = [rng.randrange(min(key.config.capacity, 1 << 63)) for _ in prompts]
        generations = generate_batched(Watermark(key, models).embed, prompts, payloads, tokens=tokens, seed=seed,
                                       batch=count)
        out[label] = {"scheme": scheme, "params": params, "secret": secret.hex(), "payloads": payloads,
                      "texts": [g.text for g in generations]}
        print(f"texts: {label} done", file=sys.stderr, flush=True)
    return out


# -- setup and phases (a subprocess on the code tree under test) -----------------------------------

def _cpu(fn, repeat: int = 3) -> tuple[float, object]:
    """(median CPU seconds of ``repeat`` calls, the last result)."""
    times, result = [], None
    for _ in range(repeat):
        start = time.process_time()
        result = fn()
        times.append(time.process_time() - start)
    return statistics.median(times), result


def setup(texts: dict, folder: str, records: int, master_key_b64: str, seed: int) -> dict:
    """Registry, tenant, keys, R records per key; then the phase costs (module docstring)."""
    import base64

    from provmark.api.crypto import MasterKey
    from provmark.api.registry import Registry
    from provmark.front import Watermark
    from provmark.watermark.keys import create_key
    from provmark.watermark.models import Models

    db = str(Path(folder) / "registry.db")
    registry = Registry.open(db, MasterKey(base64.b64decode(master_key_b64)))
    tenant, token = registry.create_tenant("bench")
    rng = random.Random(seed)
    key_ids, started = {}, time.perf_counter()
    for label, spec in texts.items():
        key = create_key(spec["scheme"], spec["params"], secret=bytes.fromhex(spec["secret"]))
        with registry.store.write():
            registry._insert_key(tenant.id, key, False)  # the texts' secrets: a benchmark's import, not an API
        key_ids[label] = key.key_id
        info = registry.key(key.key_id)
        numbers = set(spec["payloads"])
        while len(numbers) < records:
            numbers.add(rng.randrange(min(info.capacity, 1 << 63)))
        with registry.store.write():  # one transaction: a bulk fill, not a code path of the service
            for number in sorted(numbers, key=lambda _: rng.random()):
                registry.store.insert("records", {
                    "id": f"{key.key_id}.{number}", "tenant_id": tenant.id, "key_id": key.key_id, "number": number,
                    "scheme": key.scheme, "params": json.dumps(info.params), "prf_version": key.prf_version,
                    "model": "bulk", "metadata": "{}", "created_at": "2026-12-07T00:00:00+00:00", "text_sha256": None})
    fill_s = time.perf_counter() - started

    models = Models()
    tokenizer = models.tokenizer()
    phases = {}
    for label, spec in texts.items():
        watermark = Watermark(registry.watermark_key(key_ids[label]), models)
        detector = watermark.detector(ALPHA)
        rows = {}
        cached = hasattr(registry, "issued_numbers")
        rows["numbers: SELECT all (record_numbers)"], numbers = _cpu(lambda: registry.record_numbers(key_ids[label]))
        if cached:
            rows["numbers: cache, first load"], _ = _cpu(lambda: registry.issued_numbers(key_ids[label]), repeat=1)
            rows["numbers: cache, refresh (nothing new)"], numbers = _cpu(lambda: registry.issued_numbers(key_ids[label]))
        cold = []
        per_text = {}
        for text in spec["texts"]:
            ids = [tokenizer(text, add_special_tokens=False)["input_ids"]]
            first, _ = _cpu(lambda: watermark.detect([text], alpha=ALPHA, token_ids=ids), repeat=1)
            cold.append(first)
            found = {
                "pairs + per-pair evidence (PRF)": _cpu(lambda: detector._score_tokens(
                    *(lambda p: (p[:, :-1], p[:, -1]))(detector.scored_pairs(ids)[0])))[0],
                "presence test (detect, incl. pairs)": _cpu(lambda: watermark.detect([text], alpha=ALPHA, token_ids=ids))[0],
                "count tables (record_tables, incl. pairs)": _cpu(lambda: detector.record_tables(ids))[0],
                "record test (attribute, incl. pairs + tables)": _cpu(
                    lambda: watermark.attribute([text], numbers, alpha=ALPHA, token_ids=ids))[0],
            }
            if hasattr(watermark, "detect_and_attribute"):
                found["whole key as verify runs it (detect_and_attribute)"] = _cpu(
                    lambda: watermark.detect_and_attribute([text], numbers, alpha=ALPHA, token_ids=ids))[0]
            else:
                found["whole key as verify runs it (detect + attribute)"] = _cpu(lambda: (
                    watermark.detect([text], alpha=ALPHA, token_ids=ids),
                    watermark.attribute([text], numbers, alpha=ALPHA, token_ids=ids)))[0]
            for name, value in found.items():
                per_text.setdefault(name, []).append(value)
        rows.update({name: statistics.median(values) for name, values in per_text.items()})
        rows["first detection of a text (cold, median; max)"] = (statistics.median(cold), max(cold))
        phases[label] = rows
    from provmark.api.provenance import Provenance

    provenance, refs = Provenance(registry, models), registry.key_refs(tenant.id)
    flat = [text for spec in texts.values() for text in spec["texts"]]
    for text in flat:  # warm: each key's issued numbers loaded, each text's first use paid
        provenance.verify([text], refs, tenant_id=tenant.id)
    whole = [_cpu(lambda: provenance.verify([text], refs, tenant_id=tenant.id))[0] for text in flat]
    registry.close()
    import provmark

    return {"db": db, "token": token, "key_ids": key_ids, "fill_s": fill_s, "phases": phases,
            "verify_cpu": (statistics.median(whole), max(whole)), "provmark": provmark.__file__}


# -- the server (the driver) ------------------------------------------------------------------------

def _code_env(code: str) -> dict:
    """The environment that makes a process import ``provmark`` from ``code``: first on PYTHONPATH,
    and PYTHONSAFEPATH, so that neither the working folder (``python -m``) nor the script's folder
    comes before it."""
    return {"PYTHONPATH": code, "PYTHONSAFEPATH": "1"}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(code: str, state: dict, texts: list[str], clients: list[int], rounds: int, log: Path) -> list[str]:
    import httpx

    from benchmarks.api_server import ServerFixture, free_port

    server = object.__new__(ServerFixture)  # over the registry setup made, not a fresh one
    server.folder, server.db = Path(state["db"]).parent, state["db"]
    server.env = {**os.environ, **_code_env(code), "PROVMARK_MASTER_KEY": state["master_key"]}
    server.token, server.key_ids = state["token"], list(state["key_ids"].values())
    server.port = free_port()
    server.url = f"http://127.0.0.1:{server.port}"
    server.serve_args, server.process = list(SERVE_ARGS), None
    lines = []
    with server:
        server.start(log=log)

        def verify(client, text) -> float:
            started = time.perf_counter()
            response = client.post(server.url + "/v1/verify", json={"text": text}, headers=server.headers, timeout=300)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            answers.append(response.json())
            return elapsed

        answers = []
        with httpx.Client() as client:
            health = client.get(server.url + "/healthz").json()
            lines.append(f"  server's registry schema version {health['schema_version']} (which code serves)")
            first = [verify(client, text) for text in texts]
        summary = [_answer(body) for body in answers]
        named = sum(any(record is not None for _, _, record, _, _ in row) for row in summary)
        lines.append(f"  first verify of each text (cold): median {1000 * statistics.median(first):.0f} ms, "
                     f"max {1000 * max(first):.0f} ms over {len(first)} texts; {named}/{len(texts)} named a record")
        for count in clients:
            def run(offset):
                with httpx.Client() as client:
                    return [verify(client, texts[(offset + i) % len(texts)]) for i in range(rounds * len(texts))]

            with ThreadPoolExecutor(count) as pool:
                started = time.perf_counter()
                latencies = [x for batch in pool.map(run, range(count)) for x in batch]
                wall = time.perf_counter() - started
            lines.append(f"  {count:>2} client(s): p50 {1000 * statistics.median(latencies):.0f} ms, "
                         f"p99 {1000 * _percentile(latencies, 0.99):.0f} ms, {len(latencies) / wall:.1f} requests/s "
                         f"over {len(latencies)} requests")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines, summary


def _answer(body: dict) -> list[tuple]:
    """What verify said of one text, per key: (scheme, match, record number, record-level and presence log10 p)."""
    return sorted((r["scheme"], r["match"], None if r["record"] is None else r["record"]["number"],
                   None if r.get("record_test") is None else round(r["record_test"]["corrected_log10_p_value"], 9),
                   round(r["log10_p_value"], 9)) for r in body["results"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", action="append", required=True, help="LABEL=DIR of a code tree (repeatable)")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--texts", type=int, default=4, help="texts per scheme")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every text, per client")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-cache", type=Path, default=Path("benchmarks/results/verify_latency_texts.json"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import base64
    import secrets
    import tempfile

    if args.text_cache.exists():
        texts = json.loads(args.text_cache.read_text())
    else:
        texts = make_texts(args.texts, args.tokens, args.seed)
        args.text_cache.write_text(json.dumps(texts))
    texts = {label: {**spec, "texts": spec["texts"][: args.texts], "payloads": spec["payloads"][: args.texts]}
             for label, spec in texts.items()}
    flat = [t for spec in texts.values() for t in spec["texts"]]
    lines = [f"command: python -m benchmarks.verify_latency {' '.join(argv or sys.argv[1:])}",
             f"{len(SCHEMES)} keys ({', '.join(SCHEMES)}), R = {args.records} records each, {args.texts} texts x "
             f"{args.tokens} tokens per scheme (embedded model, T 1.0); each request verifies one text with all "
             f"{len(SCHEMES)} keys; provmark serve {' '.join(SERVE_ARGS)}; {os.cpu_count()} CPU cores, shared "
             "with other work",
             f"load {os.getloadavg()[0]:.1f} at start"]
    answers = {}
    for spec in args.code:
        label, _, code = spec.partition("=")
        code = str(Path(code).resolve())
        folder = tempfile.mkdtemp(prefix="provmark-verify-latency-")
        master = base64.b64encode(secrets.token_bytes(32)).decode()
        request = {"texts": texts, "folder": folder, "records": args.records, "master_key": master, "seed": args.seed}
        (Path(folder) / "setup.json").write_text(json.dumps(request))
        env = {**os.environ, **_code_env(code), "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--setup", str(Path(folder) / "setup.json")],
                              env=env, check=True, capture_output=True, text=True)
        state = {**json.loads(done.stdout.splitlines()[-1]), "master_key": master}
        lines += ["", f"## {label} ({code}), filled in {state['fill_s']:.0f} s", "",
                  "CPU per request phase, one text under one key (ms, median over the texts; warm):"]
        for key_label, rows in state["phases"].items():
            lines.append(f"  {key_label}:")
            for name, value in rows.items():
                shown = (f"{1000 * value[0]:.1f} (max {1000 * value[1]:.1f})" if isinstance(value, list)
                         else f"{1000 * value:.1f}")
                lines.append(f"    {name}: {shown}")
        lines.append(f"whole verification in-process (Provenance.verify, one text, all keys, warm): CPU median "
                     f"{1000 * state['verify_cpu'][0]:.1f} ms, max {1000 * state['verify_cpu'][1]:.1f} ms "
                     f"(provmark from {state['provmark']})")
        print("\n".join(lines), file=sys.stderr, flush=True)
        lines.append("verify through provmark serve:")
        measured, answers[label] = measure(code, state, flat, args.clients, args.rounds,
                                           args.out.with_suffix(f".{label}.serve.log"))
        lines += measured
        args.out.write_text("\n".join(lines) + "\n")
    if len(answers) > 1:
        first, *others = answers
        same = all(answers[other] == answers[first] for other in others)
        lines += ["", f"verify answers (per key: match, record, record-level and presence log10 p to 1e-9) of every "
                      f"text {'identical' if same else 'DIFFER'} across {', '.join(answers)}"]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--setup":  # the setup process, on the code tree under test
        request = json.loads(Path(sys.argv[2]).read_text())
        print(json.dumps(setup(request["texts"], request["folder"], request["records"], request["master_key"],
                               request["seed"])))
    else:
        sys.exit(main())
