"""provmark scan throughput: the same corpus through ``--engine local`` and ``--engine ray`` in one run,
texts per second for each (detection only, from ``ScanSummary.seconds``; Ray's start-up is
included in its figure since a scan pays it) and whether the two output tables are identical.

The corpus: --texts texts of --tokens tokens of SmolLM2's vocabulary; every --marked-every'th (10th)
is watermarked under an 8-bit MPAC key (payload = its index mod 256), the rest are uniform random
tokens. Sampling the watermarked rows costs about 1.5 s a step for 128 rows on a CPU, so a 20,000-text
corpus marks every 100th.

    nice -n 10 python -m benchmarks.scan_speed --texts 20000 --tokens 100 --marked-every 100 --out benchmarks/results/scan_speed.txt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from provmark.scan import ScanOptions, read_corpus, scan_corpus
from provmark.watermark.hook import WatermarkLogitsProcessor
from provmark.watermark.keys import create_key
from provmark.watermark.models import load_tokenizer

VOCAB = 49152


def corpus(path: Path, key, tokenizer, texts: int, tokens: int, every: int = 10, chunk: int = 128) -> None:
    """Write the corpus; the watermarked rows are sampled ``chunk`` at a time (one processor call
    per step for the chunk, each row with its own payload)."""
    generator = torch.Generator().manual_seed(0)
    marked = list(range(0, texts, every))
    rows = {}
    for start in range(0, len(marked), chunk):
        indices = marked[start:start + chunk]
        processor = WatermarkLogitsProcessor(key, [index % 256 for index in indices])
        ids = torch.randint(VOCAB, (len(indices), key.config.context_width), generator=generator)
        for _ in range(tokens):
            scores = processor(ids, torch.zeros(len(indices), VOCAB))
            ids = torch.cat([ids, torch.multinomial(torch.softmax(scores, -1), 1, generator=generator)], 1)
        rows.update(zip(indices, ids[:, key.config.context_width:].tolist()))
    with open(path, "w") as handle:
        for index in range(texts):
            row = rows[index] if index in rows else torch.randint(VOCAB, (tokens,), generator=generator).tolist()
            handle.write(json.dumps({"id": f"t{index}", "text": tokenizer.decode(row)}) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=20000)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--marked-every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="provmark-scan-"))
    key = create_key("mpac", {"bits": 8, "delta": 2.0})
    began = time.perf_counter()
    corpus(folder / "corpus.jsonl", key, load_tokenizer(), args.texts, args.tokens, args.marked_every)
    lines = [f"corpus: {args.texts} texts x {args.tokens} tokens (every {args.marked_every}th watermarked, mpac 8 bits), "
             f"made in {time.perf_counter() - began:.0f} s; {args.workers} workers, batches of {args.batch_size}, "
             f"{os.cpu_count()} CPU cores"]
    table = read_corpus(folder / "corpus.jsonl")
    outputs = {}
    for engine in ("local", "ray"):
        out = folder / f"{engine}.parquet"
        wall = time.perf_counter()
        summary = scan_corpus(table, out, [key], ScanOptions(engine=engine, workers=args.workers,
                                                             batch_size=args.batch_size, min_tokens=10, progress=False))
        wall = time.perf_counter() - wall
        outputs[engine] = pq.read_table(out)
        lines.append(f"--engine {engine}: {summary.texts / summary.seconds:.0f} texts/s ({summary.seconds:.1f} s "
                     f"detecting, {wall:.1f} s with reading the parts and writing the table); "
                     f"{summary.watermarked} watermarked")
        print(lines[-1], flush=True)
    same = outputs["local"].equals(outputs["ray"])
    lines.append(f"identical tables from both engines: {same}")
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
