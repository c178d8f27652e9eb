"""MajorMark and MajorMark+ presence by key version: ``detect`` of a version 1 key (the decoder's
union bound) against a version 2 key (twice the smaller of the union bound and the payload-free
test), the same secret and the same texts, watermarked and unwatermarked.

Watermarked: the texts of ``benchmarks.record_texts`` (embedded model, T 1.0, b 32). Unwatermarked:
Zipf token sequences of 200 tokens (natural-text repetition) under 10 keys. Prints, per scheme and
version, the rate at which ``detect`` reaches alpha 1e-2 and 1e-3 and the median p-value, then each
watermarked text's p-value under both versions.

    nice -n 10 python -m benchmarks.record_texts --prompts 40 --seed 1 --batch 20 \\
        --labels majormark+ majormark --out benchmarks/results/presence_texts.json
    nice -n 10 python -m benchmarks.presence --texts benchmarks/results/presence_texts.json --negatives 10000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from benchmarks.calibration import zipf_sequences
from provmark.detector import create_detector
from provmark.watermark.keys import create_key

ALPHAS = (1e-2, 1e-3)
VERSIONS = (1, 2)


def rates(label: str, version: int, values: list[float], seconds: float) -> None:
    """One line: rate at each alpha, the median p-value and the detection time."""
    shares = " ".join(f"{sum(v <= a for v in values) / len(values):8.4f}" for a in ALPHAS)
    print(f"{label:32} {version:7d} {len(values):6d} {shares} {statistics.median(values):12.3g} {seconds:8.1f}", flush=True)


def detect(scheme: str, params: dict, version: int, secret: bytes, sequences: list) -> tuple[list[float], float]:
    detector = create_detector(create_key(scheme, {**params, "version": version}, secret=secret))
    start = time.perf_counter()
    p_values = [r.p_value for r in detector.detect_batch(sequences)]
    return p_values, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", help="JSON of benchmarks.record_texts")
    parser.add_argument("--negatives", type=int, default=10_000, help="unwatermarked sequences per scheme (0: none)")
    args = parser.parse_args(argv)
    print(f"{'texts':32} {'version':>7} {'count':>6} " + " ".join(f"{f'<={a:g}':>8}" for a in ALPHAS)
          + f" {'median p':>12} {'detect s':>8}")
    if args.texts:
        data = json.load(open(args.texts, encoding="utf-8"))
        for label, entry in data["texts"].items():
            if entry["scheme"] not in ("majormark", "majormark+"):
                continue
            secret, found = bytes.fromhex(entry["secret"]), {}
            for version in VERSIONS:
                found[version], seconds = detect(entry["scheme"], entry["params"], version, secret, entry["token_ids"])
                rates(f"{label} watermarked", version, found[version], seconds)
            tokens = sum(len(t) for t in entry["token_ids"]) // len(entry["token_ids"])
            print(f"{'':32} p per text (version 1 / version 2), {tokens} tokens each:")
            print(" ".join(f"{a:.1e}/{b:.1e}" for a, b in zip(found[1], found[2])), flush=True)
    for scheme in ("majormark", "majormark+") if args.negatives else ():
        sequences = zipf_sequences(args.negatives, 200, 49152, seed=77)
        for version in VERSIONS:
            p_values, seconds = [], 0.0
            for k in range(10):
                part = sequences[k * len(sequences) // 10 : (k + 1) * len(sequences) // 10]
                found, took = detect(scheme, {"bits": 32}, version, bytes([k + 101]) * 32, part)
                p_values, seconds = p_values + found, seconds + took
            rates(f"{scheme} unwatermarked (Zipf)", version, p_values, seconds)


if __name__ == "__main__":
    main()
