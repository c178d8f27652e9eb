"""MajorMark and MajorMark+ presence: the decoder's union bound (``detect``) against the
payload-free tests (``presence_batch``), on watermarked texts and on unwatermarked ones.

Watermarked: the texts of ``benchmarks.record_texts`` (embedded model, 20 prompts x 200 tokens,
b 32). Unwatermarked: Zipf token sequences of 200 tokens (natural-text repetition) under 10 keys.
Prints, per scheme, the rate at which each test reaches alpha 1e-2 and 1e-3 and its median
p-value (on unwatermarked text most p-values of both tests are clamped at 1).

    nice -n 10 python -m benchmarks.presence --texts benchmarks/results/record_texts.json --negatives 10000
"""

from __future__ import annotations

import argparse
import json
import statistics

from benchmarks.calibration import zipf_sequences
from provmark.detector import create_detector
from provmark.watermark.keys import create_key

ALPHAS = (1e-2, 1e-3)


def rates(label: str, union: list[float], presence: list[float]) -> None:
    """One line per test: rate at each alpha and the median p-value."""
    for name, values in (("union bound", union), ("presence", presence)):
        shares = " ".join(f"{sum(v <= a for v in values) / len(values):8.4f}" for a in ALPHAS)
        median = statistics.median(values)
        print(f"{label:28} {name:12} {len(values):6d} {shares} {median:12.3g}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", help="JSON of benchmarks.record_texts")
    parser.add_argument("--negatives", type=int, default=10_000, help="unwatermarked sequences per scheme (0: none)")
    args = parser.parse_args(argv)
    print(f"{'texts':28} {'test':12} {'count':>6} " + " ".join(f"{f'<={a:g}':>8}" for a in ALPHAS) + f" {'median p':>12}")
    if args.texts:
        data = json.load(open(args.texts, encoding="utf-8"))
        for label, entry in data["texts"].items():
            if entry["scheme"] not in ("majormark", "majormark+"):
                continue
            key = create_key(entry["scheme"], entry["params"], secret=bytes.fromhex(entry["secret"]))
            detector = create_detector(key)
            union = [r.p_value for r in detector.detect_batch(entry["token_ids"])]
            results = detector.presence_batch(entry["token_ids"])
            presence = [r.p_value for r in results]
            rates(f"{label} watermarked", union, presence)
            tokens = sum(len(t) for t in entry["token_ids"]) // len(entry["token_ids"])
            print(f"{'':28} p per text (union bound / the new test alone / presence), {tokens} tokens each:")
            print(" ".join(f"{u:.1e}/{10 ** r.test_log10_p_value:.1e}/{r.p_value:.1e}" for u, r in zip(union, results)), flush=True)
    for scheme in ("majormark", "majormark+") if args.negatives else ():
        sequences = zipf_sequences(args.negatives, 200, 49152, seed=77)
        union, presence = [], []
        for k in range(10):
            key = create_key(scheme, {"bits": 32}, secret=bytes([k + 101]) * 32)
            detector = create_detector(key)
            part = sequences[k * len(sequences) // 10 : (k + 1) * len(sequences) // 10]
            union += [r.p_value for r in detector.detect_batch(part)]
            presence += [r.p_value for r in detector.presence_batch(part)]
        rates(f"{scheme} unwatermarked (Zipf)", union, presence)


if __name__ == "__main__":
    main()
