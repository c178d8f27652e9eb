"""Multi-bit evaluation harness: accuracy, quality and decode speed of every multi-bit scheme.

Each cell (scheme variant, bits, delta, temperature) gets its own key and a random valid payload
per prompt. Every text is generated once at --tokens new tokens (EOS suppressed, so all have the
same length) in batches, then decoded at each prefix length. Metrics per text and prefix:

- bit accuracy and exact match of the decoded codeword against the embedded one;
- perplexity of the prefix under the unwatermarked model (given the templated prompt);
- top-5 hit rate: share of the prefix's tokens that were among the unwatermarked model's five
  most likely next tokens;
- decode seconds for the cell's texts at that prefix, and the message-level log10 p-value.

Writes one CSV row per (cell, text, prefix), prints a summary table, and with --plots writes
accuracy-vs-tokens, accuracy-vs-perplexity and exact-match-vs-perplexity (delta swept) PNGs. Unwatermarked generations (scheme "none")
give the reference perplexity and top-5 rate.

    python -m benchmarks.multibit --prompts 20 --tokens 300 --out benchmarks/results/multibit.csv --plots benchmarks/results/grid

Balance-Marking and Vanilla-Marking decode with the embedded model as proxy; their segments are
the whole payload up to 24 bits (two halves above).
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import itertools
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from provmark.detector import create_detector
from provmark.evaluation.prompts import generate_batched, load_prompts
from provmark.evaluation.quality import bit_accuracy, quality
from provmark.watermark.hook import generate
from provmark.watermark.keys import create_key
from provmark.watermark.models import load_model
from provmark.watermark.proxy import Proxy
from provmark.watermark.schemes import get_scheme

VARIANTS = {  # label -> (scheme, fixed parameters)
    "mpac-r2": ("mpac", {"radix": 2, "gamma": 0.25}),
    "mpac-r4": ("mpac", {"radix": 4, "gamma": 0.25}),
    "majormark": ("majormark", {}),
    "majormark+": ("majormark+", {"block_size": 4}),
    "balance": ("balance", {}),
    "vanilla": ("vanilla", {}),
}
FIELDS = ["label", "scheme", "bits", "delta", "temperature", "prompt_index", "prefix_tokens", "bit_accuracy",
          "exact_match", "perplexity", "top5_hit_rate", "log10_p_value", "decode_seconds", "cell_tokens"]


@dataclass(frozen=True)
class Cell:
    label: str
    bits: int
    delta: float
    temperature: float


def run_cell(model, tokenizer, prompts, cell: Cell, *, tokens, prefixes, seed, batch):
    """CSV rows of one cell (all prompts, all prefixes)."""
    secret = hashlib.sha256(f"provmark-bench/{seed}/{cell}".encode()).digest()
    if cell.label == "none":
        key, payloads = None, None
    else:
        scheme, params = VARIANTS[cell.label]
        if scheme in ("balance", "vanilla"):  # segments of at most 24 bits: halves above that
            params = {**params, "segment_bits": cell.bits if cell.bits <= 24 else cell.bits // 2}
        key = create_key(scheme, {**params, "bits": cell.bits, "delta": cell.delta}, secret=secret)
        rng = random.Random(secret)
        payloads = [rng.randrange(key.config.capacity) for _ in prompts]
    generations = generate_batched(functools.partial(generate, model, tokenizer, key=key), prompts, payloads,
                                   tokens=tokens, seed=seed, batch=batch, temperature=cell.temperature)
    completions = [list(g.token_ids) for g in generations]
    scores = quality(model, tokenizer, prompts, completions, prefixes, batch)
    rows = []
    for prefix in prefixes:
        base = {"label": cell.label, "bits": cell.bits, "delta": cell.delta, "temperature": cell.temperature,
                "prefix_tokens": prefix, "cell_tokens": sum(min(prefix, len(c)) for c in completions)}
        results, seconds = [None] * len(prompts), 0.0
        if key is not None:
            proxy = Proxy(model, tokenizer) if get_scheme(key.scheme).uses_proxy else None
            detector = create_detector(key, proxy=proxy)
            started = time.perf_counter()
            results = detector.detect_batch([c[:prefix] for c in completions])
            seconds = time.perf_counter() - started
        for index, result in enumerate(results):
            ppl, top5 = scores[index].get(prefix, (math.nan, math.nan))
            row = {**base, "scheme": "none" if key is None else key.scheme, "prompt_index": index,
                   "perplexity": round(ppl, 4), "top5_hit_rate": round(top5, 4), "decode_seconds": round(seconds, 6)}
            if result is None:
                row.update(bit_accuracy="", exact_match="", log10_p_value="")
            else:
                row.update(bit_accuracy=round(bit_accuracy(key.config, payloads[index], result.payload), 4),
                           exact_match=int(result.payload == payloads[index]),
                           log10_p_value=round(result.log10_p_value, 3))
            rows.append(row)
    return rows


def summarise(rows):
    """Mean metrics per (label, bits, delta, temperature, prefix)."""
    groups = {}
    for row in rows:
        groups.setdefault((row["label"], row["bits"], row["delta"], row["temperature"], row["prefix_tokens"]), []).append(row)
    table = []
    for (label, bits, delta, temperature, prefix), members in sorted(groups.items(), key=lambda kv: kv[0]):
        def mean(field):
            values = [float(m[field]) for m in members if m[field] != ""]
            return statistics.fmean(values) if values else math.nan
        speed = members[0]["cell_tokens"] / members[0]["decode_seconds"] if members[0]["decode_seconds"] else math.nan
        table.append({"label": label, "bits": bits, "delta": delta, "temperature": temperature, "prefix": prefix,
                      "n": len(members), "bit_accuracy": mean("bit_accuracy"), "exact_match": mean("exact_match"),
                      "perplexity": mean("perplexity"), "top5": mean("top5_hit_rate"), "decode_tokens_per_s": speed})
    return table


def plot(table, folder: Path, headline_bits: int, headline_delta: float, headline_temperature: float):
    """accuracy_vs_tokens.png (headline bits/delta/temperature) and accuracy_vs_perplexity.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in sorted({t["label"] for t in table if t["label"] != "none"}):
        points = sorted((t["prefix"], t["bit_accuracy"]) for t in table if t["label"] == label and t["bits"] == headline_bits
                        and t["delta"] == headline_delta and t["temperature"] == headline_temperature)
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set(xlabel="tokens", ylabel="bit accuracy", title=f"b={headline_bits}, delta={headline_delta}, T={headline_temperature}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "accuracy_vs_tokens.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    longest = max(t["prefix"] for t in table)
    for label in sorted({t["label"] for t in table}):
        points = [(t["perplexity"], t["bit_accuracy"]) for t in table if t["label"] == label and t["prefix"] == longest]
        if label == "none":
            for ppl, _ in points:
                ax.axvline(ppl, color="grey", linestyle="--", linewidth=1)
        elif points:
            ax.scatter(*zip(*points), label=label)
    ax.set(xlabel="perplexity (unwatermarked model)", ylabel="bit accuracy", title=f"{longest} tokens, every cell")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "accuracy_vs_perplexity.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in sorted({t["label"] for t in table}):
        for prefix in sorted({t["prefix"] for t in table}):
            points = sorted((t["delta"], t["perplexity"], t["exact_match"]) for t in table if t["label"] == label
                            and t["prefix"] == prefix and t["bits"] == headline_bits and t["temperature"] == headline_temperature)
            if label == "none":
                continue
            if points:
                ax.plot([p[1] for p in points], [p[2] for p in points], marker="o", label=f"{label}, {prefix} tokens")
    for t in table:
        if t["label"] == "none" and t["prefix"] == longest and t["temperature"] == headline_temperature:
            ax.axvline(t["perplexity"], color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel="perplexity (unwatermarked model)", ylabel="exact-match rate",
           title=f"b={headline_bits}, T={headline_temperature}, delta swept")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "exact_match_vs_perplexity.png", dpi=120)
    plt.close(fig)


def _floats(text):
    return [float(x) for x in text.split(",")]


def _ints(text):
    return [int(x) for x in text.split(",")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--bits", type=_ints, default=[8, 16, 32])
    parser.add_argument("--deltas", type=_floats, default=[1.0, 2.0, 3.0])
    parser.add_argument("--temperatures", type=_floats, default=[0.7, 1.0])
    parser.add_argument("--prompts", type=int, default=20, help="how many prompts of provmark/evaluation/prompts.txt (at least 20 per cell)")
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--prefixes", type=_ints, default=[50, 100, 200, 300])
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--plots", type=Path, default=None, help="folder for the PNG plots")
    args = parser.parse_args(argv)
    labels = args.variants.split(",")
    unknown = [label for label in labels if label not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    prompts = load_prompts()[: args.prompts]
    prefixes = sorted(p for p in args.prefixes if p <= args.tokens)
    loaded = load_model()
    cells = [Cell("none", 0, 0.0, t) for t in args.temperatures]
    cells += [Cell(*c) for c in itertools.product(labels, args.bits, args.deltas, args.temperatures)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for number, cell in enumerate(cells, 1):
            started = time.perf_counter()
            cell_rows = run_cell(loaded.model, loaded.tokenizer, prompts, cell, tokens=args.tokens, prefixes=prefixes,
                                 seed=args.seed, batch=args.batch)
            writer.writerows(cell_rows)
            handle.flush()
            rows += cell_rows
            print(f"[{number}/{len(cells)}] {cell} done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    table = summarise(rows)
    print(f"{'label':11} {'bits':>4} {'delta':>5} {'T':>4} {'tokens':>6} {'n':>3} {'bit acc':>8} {'exact':>6} "
          f"{'ppl':>7} {'top5':>5} {'decode tok/s':>12}")
    for t in table:
        print(f"{t['label']:11} {t['bits']:>4} {t['delta']:>5} {t['temperature']:>4} {t['prefix']:>6} {t['n']:>3} "
              f"{t['bit_accuracy']:8.3f} {t['exact_match']:6.2f} {t['perplexity']:7.2f} {t['top5']:5.3f} "
              f"{t['decode_tokens_per_s']:12.0f}")
    if args.plots:
        plot(table, args.plots, max(args.bits), 2.0 if 2.0 in args.deltas else args.deltas[0], max(args.temperatures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
