"""The question a user asks, end to end through the real server: which record did this text come from?

Starts ``provmark serve`` (its own port and registry, torn down after), creates a tenant and one
key per multi-bit scheme, and generates texts whose payloads are records the registry issued:
the first ``--api-texts`` of each scheme through ``POST /v1/generate``, the rest in batches
through the library (``front.Watermark.embed``) with payloads from ``Registry.new_record``. Each
key's registry is then filled to R records (bulk-inserted through the registry layer, numbers
drawn like the registry draws them: uniform and distinct), and every text is verified through
``POST /v1/verify`` with all the tenant's keys, unattacked and after word deletion 10%, LM
synonyms 10% and copy-paste into an unwatermarked host three times its length (the marked text
a quarter of the result). Human paragraphs and unwatermarked generations measure false
attribution. Each cell reports right record, wrong record and unattributed, and verify latency
p50/p99 at each R.

``--own-key`` verifies each watermarked text with its own scheme's key only (``key_ids``), which asks
the identification question per key and keeps the run affordable: a balance key's detection costs
about a second a request (its proxy LM), which verifying every text with every key would pay for
every text. Negatives are always verified with every key, so false attribution covers all of them.

    nice -n 10 python -m benchmarks.provenance --texts 50 --tokens 200 --records 10 1000 100000 --own-key \\
        --out benchmarks/results/provenance.txt
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from benchmarks.api_server import ServerFixture
from provmark.api.crypto import load_master_key
from provmark.api.registry import Registry
from provmark.attacks import apply
from provmark.attacks.base import words_of
from provmark.evaluation.human import human_texts
from provmark.evaluation.prompts import generate_batched, load_prompts
from provmark.front import Watermark
from provmark.watermark.hook import generate
from provmark.watermark.models import Models

SCHEMES = {  # label -> keys create arguments
    "mpac r4 b32": ["--scheme", "mpac", "--bits", "32", "--radix", "4"],
    "majormark b32": ["--scheme", "majormark", "--bits", "32"],
    "majormark+ b32": ["--scheme", "majormark+", "--bits", "32"],
    "vanilla b20": ["--scheme", "vanilla", "--bits", "20"],
    "balance b20": ["--scheme", "balance", "--bits", "20", "--proxy-context", "window"],
}
CONDITIONS = ("none", "delete 0.1", "lm_synonyms 0.1", "copy_paste 0.25")


def _fill(registry: Registry, key_id: str, tenant_id: str, total: int, rng: random.Random) -> None:
    """Bulk-insert records under ``key_id`` until it holds ``total`` (distinct uniform numbers)."""
    key = registry.key(key_id)
    taken = set(registry.record_numbers(key_id))
    rows = []
    while len(taken) + len(rows) < total:
        number = rng.randrange(key.capacity)
        if number not in taken:
            taken.add(number)
            rows.append({"id": f"{key_id}.{number}", "tenant_id": tenant_id, "key_id": key_id, "number": number,
                         "scheme": key.scheme, "params": json.dumps(key.params), "prf_version": key.prf_version,
                         "model": "bulk", "metadata": "{}", "created_at": "2026-11-30T00:00:00+00:00",
                         "text_sha256": None})
    with registry.store.write():  # one transaction: the benchmark's fill, not a code path of the service
        for row in rows:
            registry.store.insert("records", row)


def _attacked(condition: str, text: str, host: str, rng: random.Random, model, tokenizer) -> str:
    if condition == "none":
        return text
    name, strength = condition.split()
    return apply(name, text, float(strength), rng, model=model, tokenizer=tokenizer,
                 host=host if name == "copy_paste" else None).text


def _verify(client: httpx.Client, server: ServerFixture, text: str, key_id: str | None = None) -> tuple[dict, float]:
    """The verification of ``text`` with ``key_id`` alone, or with every key of the tenant when None."""
    request = {"text": text} if key_id is None else {"text": text, "key_ids": [key_id]}
    started = time.perf_counter()
    response = client.post(server.url + "/v1/verify", json=request, headers=server.headers, timeout=300)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return response.json(), elapsed


def _outcome(body: dict, key_id: str, record_id: str | None) -> str:
    """right / wrong / unattributed / missed for a watermarked text; false / none for a negative."""
    named = [r["record"]["id"] for r in body["results"] if r["record"] is not None]
    if record_id is None:
        return "false" if named else "none"
    if record_id in named and len(named) == 1:
        return "right"
    if named:
        return "wrong"
    mine = next(r for r in body["results"] if r["key_id"] == key_id)
    watermarked = mine["is_watermarked"] or (mine["record_test"] or {}).get("is_match", False)
    return "unattributed" if watermarked else "missed"


def _exclusive(body: dict, key_id: str) -> bool:
    """Whether the text's own key named its record exclusively: by exact text, or by a record test
    that excluded every other record (``detector.records``, "Exclusion"); a scheme without an
    exclusion test never counts (its match is never exclusive)."""
    mine = next((r for r in body["results"] if r["key_id"] == key_id), None)
    if mine is None or mine["record"] is None:
        return False
    return mine["match"] == "text" or bool((mine["record_test"] or {}).get("is_exclusive"))


def _load(server: ServerFixture, texts: list[tuple[str, str | None]], clients: int) -> str:
    """p50/p99 of /v1/verify with ``clients`` concurrent clients, each verifying every (text, key) once."""
    def run(offset):
        with httpx.Client() as client:
            return [_verify(client, server, *texts[(offset + i) % len(texts)])[1] for i in range(len(texts))]

    with ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        latencies = sorted(x for batch in pool.map(run, range(clients)) for x in batch)
        wall = time.perf_counter() - started
    p99 = latencies[int(0.99 * len(latencies))]
    return (f"p50 {1000 * statistics.median(latencies):.0f} ms, p99 {1000 * p99:.0f} ms, "
            f"{len(latencies) / wall:.1f} requests/s over {len(latencies)} requests")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=50, help="texts per scheme")
    parser.add_argument("--api-texts", type=int, default=10, help="of which generated through POST /v1/generate")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--records", type=int, nargs="+", default=[10, 1000, 100_000])
    parser.add_argument("--negatives", type=int, default=20, help="human texts and unwatermarked generations, each")
    parser.add_argument("--schemes", nargs="*", default=list(SCHEMES))
    parser.add_argument("--own-key", action="store_true",
                        help="verify each watermarked text with its scheme's key only (negatives: every key)")
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients of the last load phase")
    parser.add_argument("--load-schemes", nargs="*", default=None,
                        help="schemes whose unattacked texts the load phase verifies (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    models = Models()
    loaded = models.loaded()
    prompts = (load_prompts() * (1 + args.texts // len(load_prompts())))[: args.texts]
    lines = [f"command: python -m benchmarks.provenance {' '.join(argv or sys.argv[1:])}"]
    started = time.perf_counter()

    with ServerFixture(keys=[SCHEMES[s] for s in args.schemes], serve_args=["--rate-limit", "0"]) as server:
        os.environ["PROVMARK_MASTER_KEY"] = server.env["PROVMARK_MASTER_KEY"]
        registry = Registry.open(server.db, load_master_key(None))
        tenant = registry.tenant("bench")
        server.start(log=args.out.with_suffix(".serve.log"))
        client = httpx.Client()
        texts: dict[str, list[tuple[str, str]]] = {}  # label -> (record id, text)
        for label, key_id in zip(args.schemes, server.key_ids):
            made = []
            for prompt in prompts[: args.api_texts]:
                response = client.post(server.url + "/v1/generate", headers=server.headers, timeout=600, json={
                    "key_id": key_id, "prompt": prompt, "max_new_tokens": args.tokens, "seed": rng.randrange(2**31)})
                response.raise_for_status()
                made.append((response.json()["record"]["id"], response.json()["text"]))
            rest = prompts[args.api_texts:]
            if rest:
                records = [registry.new_record(key_id, tenant_id=tenant.id, model=models.name) for _ in rest]
                watermark = Watermark(registry.watermark_key(key_id), models)
                generations = generate_batched(watermark.embed, rest, [r.payload for r in records], tokens=args.tokens,
                                               seed=args.seed, batch=10)
                made += [(r.id, g.text) for r, g in zip(records, generations)]
            texts[label] = made
            print(f"{label}: {len(made)} texts ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        plain = [g.text for g in generate_batched(lambda **kw: generate(loaded.model, loaded.tokenizer, key=None, **kw),
                                                  load_prompts()[: args.negatives], tokens=args.tokens,
                                                  seed=args.seed + 1, batch=10)]
        def host(text: str, index: int) -> str:
            """Other unwatermarked texts joined until they are three times as long as ``text``, in
            the words the copy-paste attack counts."""
            parts, k = [], 0
            while len(words_of(" ".join(parts))) < 3 * len(words_of(text)) + 10:
                k += 1
                parts.append(plain[(index + k) % len(plain)])
            return " ".join(parts)

        human = human_texts(args.negatives, min_words=args.tokens)
        attacked = {label: {c: [_attacked(c, t, host(t, i), random.Random(f"{label}/{c}/{i}"),
                                          loaded.model, loaded.tokenizer) for i, (_, t) in enumerate(made)]
                            for c in CONDITIONS} for label, made in texts.items()}
        print(f"attacked ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

        lines.append(f"{len(args.schemes)} keys, {args.texts} texts x {args.tokens} tokens per scheme "
                     f"({args.api_texts} through POST /v1/generate), SmolLM2-135M-Instruct, T 1.0; "
                     + ("verify with the text's own key at alpha 1e-3 (negatives: all keys, alpha 1e-3 over them)"
                        if args.own_key else f"verify with all {len(args.schemes)} keys at alpha 1e-3"))
        header = "| scheme | R | condition | right | wrong | unattributed | missed | exclusive right | exclusive wrong |"
        for total in args.records:
            for key_id in server.key_ids:
                _fill(registry, key_id, tenant.id, total, rng)
            lines += ["", f"## R = {total} records per key", "", header, "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
            latencies = []
            for label, key_id in zip(args.schemes, server.key_ids):
                for condition in CONDITIONS:
                    counts = dict.fromkeys(("right", "wrong", "unattributed", "missed", "exclusive right",
                                            "exclusive wrong"), 0)
                    for (record_id, _), text in zip(texts[label], attacked[label][condition]):
                        body, elapsed = _verify(client, server, text, key_id if args.own_key else None)
                        latencies.append(elapsed)
                        outcome = _outcome(body, key_id, record_id)
                        counts[outcome] += 1
                        if outcome in ("right", "wrong") and _exclusive(body, key_id):
                            counts[f"exclusive {outcome}"] += 1
                    n = len(texts[label])
                    lines.append(f"| {label} | {total} | {condition} | " +
                                 " | ".join(f"{counts[k] / n:.2f}" for k in counts) + " |")
            false = {"human": 0, "unwatermarked": 0}
            for kind, negatives in (("human", human), ("unwatermarked", plain)):
                for text in negatives:
                    body, elapsed = _verify(client, server, text)
                    latencies.append(elapsed)
                    false[kind] += _outcome(body, "", None) == "false"
            lines.append("")
            lines.append(f"false attribution: human {false['human']}/{len(human)}, unwatermarked generations "
                         f"{false['unwatermarked']}/{len(plain)}")
            latencies.sort()
            lines.append(f"verify latency (1 client, {'own key' if args.own_key else 'all keys'}; negatives all keys): p50 {1000 * statistics.median(latencies):.0f} ms, "
                         f"p99 {1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]:.0f} ms "
                         f"over {len(latencies)} requests")
            print("\n".join(lines[-12:]), file=sys.stderr, flush=True)
            args.out.write_text("\n".join(lines) + "\n")
        loaded_schemes = args.schemes if args.load_schemes is None else args.load_schemes
        marked = [(t, key_id if args.own_key else None) for label, key_id in zip(args.schemes, server.key_ids)
                  if label in loaded_schemes for t in attacked[label]["none"]]
        load = _load(server, marked, args.clients)
        lines.append(f"\nverify at {args.clients} clients, R = {args.records[-1]}, texts of {', '.join(loaded_schemes)}"
                     f" ({'own key' if args.own_key else 'all keys'}): {load}")
        registry.close()
    lines.append(f"\nwall time {time.perf_counter() - started:.0f} s")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
