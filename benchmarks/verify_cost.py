"""Verification cost per scored token, per scheme: the measurement behind the rate limiter's work
weights (``api.limits.SCHEME_WORK_WEIGHTS``).

Runs ``Provenance.verify`` in-process (in-memory registry, the embedded model's tokenizer and, for
balance, its proxy LM) on an unwatermarked natural text (``noisy_neighbour.corpus_text``) under one key of each scheme, at the serve caps
(``WorkLimits``), and prints milliseconds per scored token (word, synonym) and the ratio to kgw's.
A multi-bit key has issued ``--records`` records, so the record test runs as it does in service.
One thread, medians of ``--repeats`` runs after a warm-up.

    OMP_NUM_THREADS=1 python -m benchmarks.verify_cost --out benchmarks/results/verify_cost.txt
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.noisy_neighbour import corpus_text
from provmark.api.crypto import MasterKey
from provmark.api.limits import WorkLimits
from provmark.api.provenance import Provenance
from provmark.api.registry import Registry
from provmark.watermark.models import Models

SCHEMES = ("kgw", "mpac", "majormark", "majormark+", "vanilla", "balance", "synonym")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=3_000, help="Words of the text (kgw-like schemes score all).")
    parser.add_argument("--records", type=int, default=100, help="Records issued under each multi-bit key.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    registry = Registry.open(None, MasterKey(bytes(range(32))))
    tenant, _ = registry.create_tenant("bench")
    provenance = Provenance(registry, Models())
    limits = WorkLimits()
    body = corpus_text(args.words)
    rows, per_token = [], {}
    for scheme in SCHEMES:
        info = registry.create_key(tenant.id, scheme, {})
        (ref,) = [k for k in registry.key_refs(tenant.id) if k.key_id == info.key_id]
        if provenance.watermark(info.key_id).scheme.supports_payload:
            for _ in range(args.records):
                registry.new_record(info.key_id, tenant_id=tenant.id, model="bench")
        provenance.verify([body], [ref], tenant_id=tenant.id, min_tokens=1, limits=limits)  # warm-up: WordNet, the proxy
        times = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            provenance.verify([body], [ref], tenant_id=tenant.id, min_tokens=1, limits=limits)
            times.append(time.perf_counter() - began)
        seconds = statistics.median(times)
        tokens = provenance.models.tokenizer()(body, add_special_tokens=False)["input_ids"]
        n = Provenance._plan(ref, [body], [tokens], limits)[2][0]  # tokens (words) scored under the caps
        per_token[scheme] = seconds / n
        rows.append((scheme, n, seconds))
    lines = [f"Provenance.verify, one {args.words}-word unwatermarked natural text, one key, serve's caps, 1 thread, "
             f"median of {args.repeats}; multi-bit keys with {args.records} records issued",
             f"{'scheme':<11} {'scored':>7} {'ms/request':>11} {'us/token':>9} {'x kgw':>8}"]
    for scheme, n, seconds in rows:
        lines.append(f"{scheme:<11} {n:>7} {seconds * 1e3:>11.1f} {per_token[scheme] * 1e6:>9.2f} "
                     f"{per_token[scheme] / per_token['kgw']:>8.1f}")
    out = "\n".join(lines) + "\n"
    print(out)
    if args.out:
        args.out.write_text(out)


if __name__ == "__main__":
    sys.exit(main())
