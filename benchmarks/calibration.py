"""False-positive rate of the Balance-Marking and Vanilla-Marking presence test on unwatermarked
sequences, at the shipped 20-bit segments (tests/test_balance.py checks 10-bit segments).

Sequences are Zipf-distributed ids (natural-text-like repetition, as in the other calibration
tests). Balance needs a proxy: ``SyntheticProxy`` gives each position a random peaked
distribution that, half the time, puts a random share of its mass on the id that actually
follows, a proxy that predicts the text, which pushes availability above 1/2 and would break a
test that assumed 1/2. The p-value must stay calibrated anyway, because its null law is computed
from the text's own availabilities.

    python -m benchmarks.calibration --sequences 10000
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from provmark.detector import create_detector
from provmark.kernels.balanced_split import head_of
from provmark.watermark.keys import create_key


class SyntheticProxy:
    """A model-free proxy: at each position a random peaked distribution that, half the time,
    puts a random share of its mass on the token that actually follows (a proxy that predicts
    the text, the hard case for a test that assumes availability 1/2)."""

    def __init__(self, vocab=2048, seed=0):
        self.vocab, self.seed = vocab, seed

    def heads(self, sequences, head):
        out = []
        for index, ids in enumerate(sequences):
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            n = max(len(ids) - 1, 0)
            logits = torch.randn((n, self.vocab), generator=gen) * 2.5
            probs = torch.softmax(logits, dim=-1)
            predicted = torch.rand(n, generator=gen) < 0.5
            share = torch.rand(n, generator=gen)
            following = torch.as_tensor(list(ids[1:]), dtype=torch.int64) % self.vocab
            probs = probs * (1 - share * predicted)[:, None]
            probs[torch.arange(n), following] += share * predicted
            out.append(head_of(probs, head))
        return out


def zipf_sequences(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """Unwatermarked id sequences with Zipf (exponent 1.1) frequencies over ``vocab`` ids."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.arange(1, vocab + 1, dtype=torch.float64) ** -1.1
    return torch.multinomial(weights, count * length, replacement=True, generator=gen).view(count, length).tolist()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=10_000)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--schemes", default="vanilla,balance")
    args = parser.parse_args(argv)
    sequences = zipf_sequences(args.sequences, args.length, 2048, seed=1)
    per_key = -(-args.sequences // args.keys)
    for scheme in args.schemes.split(","):
        started = time.perf_counter()
        p_values = []
        for k in range(args.keys):
            key = create_key(scheme, {"bits": 20}, secret=bytes([k + 1]) * 32)
            proxy = SyntheticProxy(seed=k) if scheme == "balance" else None
            chunk = sequences[k * per_key : (k + 1) * per_key]
            if chunk:
                p_values += [r.p_value for r in create_detector(key, proxy=proxy).detect_batch(chunk)]
        rates = "  ".join(f"FPR at {alpha:g}: {sum(p <= alpha for p in p_values) / len(p_values):.4f}"
                          for alpha in (0.1, 0.01, 0.001))
        print(f"{scheme:8} {len(p_values)} sequences of {args.length} ids, 20-bit segment: {rates}  "
              f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
