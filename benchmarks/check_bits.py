"""Self-checking payloads: open-set decoding with check bits against the plain decode of the same
codewords, on watermarked texts, and the rate of wrong payloads that pass the check.

Texts: ``benchmarks.record_texts`` with the check-bit labels (embedded model, T 1.0, 32-bit
codewords, 8 check bits). Per text the plain decode is what a key without check bits reads from the
same codeword (the same secret with check_bits 0: exact when it equals the payload's codeword),
and the checked decode is the key's own (``detector.check``): the payload, none, or a wrong one.
Simulation: random token sequences (no watermark: every payload found is wrong) through
``detect_batch`` for c in 4, 8, 12, 16, against the bound search_size(c) * 2**-c, and the share of
random codeword values whose checksum matches (2**-c).

    nice -n 10 python -m benchmarks.record_texts --prompts 30 --seed 2 --batch 15 \\
        --labels mpac-r4-c8 majormark-c8 majormark+-c8 --out benchmarks/results/check_texts.json
    nice -n 10 python -m benchmarks.check_bits --texts benchmarks/results/check_texts.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from provmark.detector import create_detector
from provmark.detector.check import search_size
from provmark.watermark.check import codeword_values, payloads_of_values
from provmark.watermark.keys import create_key


def texts(path: str) -> None:
    data = json.load(open(path, encoding="utf-8"))
    print(f"{'texts':16} {'count':>5} {'plain exact':>11} {'checked exact':>13} {'none':>6} {'wrong':>6} {'detected':>8}")
    for label, entry in data["texts"].items():
        secret = bytes.fromhex(entry["secret"])
        key = create_key(entry["scheme"], entry["params"], secret=secret)
        plain = create_detector(create_key(entry["scheme"], {**entry["params"], "check_bits": 0}, secret=secret))
        truth = codeword_values(key, entry["payloads"]).tolist()
        decoded = [r.payload for r in plain.detect_batch(entry["token_ids"])]
        results = create_detector(key).detect_batch(entry["token_ids"])
        n = len(results)
        exact = sum(r.payload == p for r, p in zip(results, entry["payloads"])) / n
        none = sum(r.payload is None for r in results) / n
        wrong = sum(r.payload not in (None, p) for r, p in zip(results, entry["payloads"])) / n
        detected = sum(r.p_value <= 1e-3 for r in results) / n
        print(f"{label:16} {n:5d} {sum(d == t for d, t in zip(decoded, truth)) / n:11.3f} {exact:13.3f} "
              f"{none:6.3f} {wrong:6.3f} {detected:8.3f}", flush=True)


def simulation(count: int) -> None:
    print(f"\n{'scheme':11} {'c':>3} {'tries':>5} {'texts':>6} {'wrong payload':>13} {'bound K/2**c':>12} "
          f"{'random value passes':>19} {'2**-c':>9} {'s':>6}")
    rng = np.random.default_rng(12)
    sequences = rng.integers(0, 49152, (count, 200)).tolist()
    for scheme in ("mpac", "majormark", "majormark+"):
        for bits in (4, 8, 12, 16):
            key = create_key(scheme, {"bits": 32, "check_bits": bits}, secret=bytes([bits]) * 32)
            start = time.perf_counter()
            results = create_detector(key).detect_batch(sequences)
            seconds = time.perf_counter() - start
            wrong = sum(r.payload is not None for r in results) / count
            values = rng.integers(0, key.config.codeword_capacity, 1_000_000, dtype=np.uint64)
            passes = payloads_of_values(key, values)[1].mean()
            print(f"{scheme:11} {bits:3d} {search_size(bits):5d} {count:6d} {wrong:13.5f} "
                  f"{search_size(bits) / 2**bits:12.5f} {passes:19.6f} {2.0**-bits:9.6f} {seconds:6.1f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", help="JSON of benchmarks.record_texts with check-bit labels")
    parser.add_argument("--sequences", type=int, default=10_000, help="random sequences per simulated key")
    args = parser.parse_args(argv)
    if args.texts:
        texts(args.texts)
    if args.sequences:
        simulation(args.sequences)


if __name__ == "__main__":
    main()
