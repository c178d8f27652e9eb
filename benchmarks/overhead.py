"""Per-step cost of provmark's KGW processor against transformers' ``WatermarkLogitsProcessor``.

Both processors see the same simulated decoding run (a prompt of 32 tokens growing by one random
token per step) at gamma 0.25, delta 2 and the same context width, on the CPU. The methods are
interleaved step by step, so machine noise hits both alike; the figure is the median per-step
time and the ratio transformers / provmark (above 1: provmark is faster).

    python -m benchmarks.overhead [--steps 30] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from transformers.generation.logits_process import WatermarkLogitsProcessor as HFWatermarkLogitsProcessor

from provmark.watermark.hook import WatermarkLogitsProcessor
from provmark.watermark.keys import create_key


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(batch: int, vocab: int, steps: int, context_width: int) -> tuple[float, float]:
    """Median seconds per step of (provmark, transformers) over one simulated decoding run."""
    gen = torch.Generator().manual_seed(batch * vocab)
    key = create_key("kgw", {"gamma": 0.25, "delta": 2.0, "context_width": context_width}, secret=bytes(32))
    ours = WatermarkLogitsProcessor(key)
    theirs = HFWatermarkLogitsProcessor(vocab_size=vocab, device="cpu", greenlist_ratio=0.25, bias=2.0,
                                        hashing_key=15485863, seeding_scheme="lefthash", context_width=context_width)
    ids = torch.randint(0, vocab, (batch, 32), generator=gen)
    scores = torch.randn(batch, vocab, generator=gen)
    ours.begin(ids)  # as generate() does: the steps then read nothing back
    ours(ids, scores), theirs(ids, scores)  # warm-up (allocations, caches)
    ours_t, theirs_t = [], []
    for _ in range(steps):
        ids = torch.cat([ids, torch.randint(0, vocab, (batch, 1), generator=gen)], dim=1)
        ours_t.append(_time(lambda: ours(ids, scores)))
        theirs_t.append(_time(lambda: theirs(ids, scores)))
    return statistics.median(ours_t), statistics.median(theirs_t)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--context-width", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU, {torch.get_num_threads()} threads, KGW gamma 0.25 delta 2 h {args.context_width}, "
          f"median of {args.steps} steps")
    print(f"{'vocab':>7} {'batch':>5} {'provmark ms':>12} {'transformers ms':>16} {'ratio hf/ours':>14}")
    for vocab in (49152, 128256):
        for batch in (1, 8, 32):
            ours, theirs = measure(batch, vocab, args.steps, args.context_width)
            print(f"{vocab:>7} {batch:>5} {ours * 1e3:12.3f} {theirs * 1e3:16.3f} {theirs / ours:14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
