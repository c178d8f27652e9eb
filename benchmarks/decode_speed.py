"""Decoder throughput on CPU: provmark's vectorised multi-bit decoders against a per-token loop.

The loop decodes MPAC the way the official code does (research/majormark.md §2.4): for every
token, seed a generator from the previous token, draw the position, build a fresh vocabulary
permutation with ``torch.randperm``, split it into 1/gamma colour lists and look the token up in
each. Both sides see random token sequences of the embedded model's vocabulary size; the loop
runs on fewer tokens (it is slow) and both are reported in tokens per second, each the best of
--repeats runs (the machine is shared: the best run is the one least disturbed).

    python -m benchmarks.decode_speed [--sequences 2000] [--length 200] [--loop-tokens 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import torch

from provmark.detector import create_detector
from provmark.watermark.keys import create_key

VOCAB = 49152


def per_token_loop(tokens: list[int], bits: int = 32, radix: int = 2, gamma: float = 0.25) -> list[int]:
    """MPAC decoding as in the official code: one permutation per token."""
    counts = [[0] * radix for _ in range(bits)]
    for prev, token in zip(tokens, tokens[1:]):
        seed = (15485863 * prev) % (2**64 - 1)
        position = random.Random(seed).randint(0, bits - 1)
        permutation = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(seed))
        for colour, chunk in enumerate(torch.chunk(permutation, round(1 / gamma))[:radix]):
            if bool((chunk == token).any()):
                counts[position][colour] += 1
    return [max(range(radix), key=lambda c: (row[c], c)) for row in counts]


def _best_seconds(run, repeats: int) -> float:
    best = float("inf")
    for _ in range(max(repeats, 1)):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=2000)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--loop-tokens", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    sequences = torch.randint(0, VOCAB, (args.sequences, args.length), generator=gen).tolist()
    total = args.sequences * args.length
    print(f"CPU, {torch.get_num_threads()} threads, {args.sequences} sequences x {args.length} tokens, vocabulary {VOCAB}")
    print(f"{'decoder':28} {'tokens':>9} {'seconds':>8} {'tokens/s':>12}")
    loop_tokens = torch.randint(0, VOCAB, (args.loop_tokens,), generator=gen).tolist()
    loop_rate = args.loop_tokens / _best_seconds(lambda: per_token_loop(loop_tokens), args.repeats)
    print(f"{'mpac per-token loop (official)':28} {args.loop_tokens:>9} {args.loop_tokens / loop_rate:8.2f} {loop_rate:12.0f}")
    for scheme, params in (("mpac", {"radix": 2}), ("mpac", {"radix": 4}), ("majormark", {}), ("majormark+", {})):
        detector = create_detector(create_key(scheme, {"bits": 32, **params}, secret=bytes(32)))
        detector.detect_batch(sequences[:10])  # warm-up: caches, allocations
        seconds = _best_seconds(lambda: detector.detect_batch(sequences), args.repeats)
        name = f"{scheme} {params or ''}".strip()
        print(f"{name:28} {total:>9} {seconds:8.2f} {total / seconds:12.0f}   x{total / seconds / loop_rate:,.0f} vs loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
