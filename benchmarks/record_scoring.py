"""Record scoring cost and accuracy (``provmark.detector.records``).

Timing: for one 200-token text per scheme, the count table's build (the PRF work, once per text
and key) and the scoring of 1e3, 1e4 and 1e5 random candidate payloads (a uint64 array; "list"
adds the conversion of a Python list of ints), best of --repeat runs, in milliseconds of this
process's CPU time (``time.process_time``: on a shared machine wall time mostly measures the
neighbours).

With --texts (the JSON of ``benchmarks.record_texts``): each watermarked text's true payload
hidden among --candidates random ones; how often it wins, and its corrected log10 p-value.

    nice -n 10 python -m benchmarks.record_scoring
    nice -n 10 python -m benchmarks.record_scoring --texts benchmarks/results/record_texts.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from benchmarks.calibration import SyntheticProxy, zipf_sequences
from provmark.detector import create_detector
from provmark.detector.records import candidate_payloads, match_records_batch
from provmark.watermark.keys import create_key

SCHEMES = {  # label -> (scheme, parameters)
    "mpac-r4-b32": ("mpac", {"bits": 32, "radix": 4}),
    "majormark-b32": ("majormark", {"bits": 32}),
    "majormark+-b32": ("majormark+", {"bits": 32}),
    "vanilla-b20": ("vanilla", {"bits": 20}),
    "balance-b20": ("balance", {"bits": 20, "head": 64}),
}
SIZES = (1_000, 10_000, 100_000)


def random_payloads(capacity: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """uint64 (count,) uniform payloads in [0, capacity) (capacity at most 2**63 here)."""
    return rng.integers(0, capacity, count, dtype=np.uint64)


def best_ms(function, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return 1e3 * min(times)


def timing(repeat: int) -> None:
    ids = zipf_sequences(1, 200, 2048, seed=1)[0]
    rng = np.random.default_rng(0)
    print(f"{'scheme':16} {'table ms':>9} " + " ".join(f"{f'{m:,} ms':>11}" for m in SIZES) + f" {'1e5 list ms':>12}")
    for label, (scheme, params) in SCHEMES.items():
        key = create_key(scheme, params, secret=bytes(range(32)))
        detector = create_detector(key, proxy=SyntheticProxy(seed=0) if scheme == "balance" else None)
        table_ms = best_ms(lambda: detector.record_tables([ids]), repeat)
        (table,) = detector.record_tables([ids])
        row = []
        for size in SIZES:
            payloads = random_payloads(key.config.capacity, size, rng)
            row.append(best_ms(lambda: table.score(candidate_payloads(payloads, key.config.capacity)), repeat))
        as_list = random_payloads(key.config.capacity, SIZES[-1], rng).tolist()
        list_ms = best_ms(lambda: table.score(candidate_payloads(as_list, key.config.capacity)), repeat)
        print(f"{label:16} {table_ms:9.1f} " + " ".join(f"{ms:11.1f}" for ms in row) + f" {list_ms:12.1f}", flush=True)


def accuracy(path: str, count: int, alpha: float) -> None:
    data = json.load(open(path, encoding="utf-8"))
    rng = np.random.default_rng(1)
    print(f"{'scheme':12} {'texts':>5} {'right':>6} {'wrong':>6} {'unattr.':>8} {'median corr. log10 p':>21} "
          f"{'median runner-up log10 p':>25} {'open-set exact':>15}")
    for label, entry in data["texts"].items():
        key = create_key(entry["scheme"], entry["params"], secret=bytes.fromhex(entry["secret"]))
        detector = create_detector(key, alpha=alpha)
        payloads = entry["payloads"]
        others = random_payloads(key.config.capacity, count, rng)
        candidates = np.concatenate([others, np.array(payloads, dtype=np.uint64)])
        matches = match_records_batch(detector, entry["token_ids"], candidates)
        decoded = [r.payload for r in detector.detect_batch(entry["token_ids"])]
        right = sum(m.is_match and m.payload == p for m, p in zip(matches, payloads))
        wrong = sum(m.is_match and m.payload != p for m, p in zip(matches, payloads))
        print(f"{label:12} {len(payloads):5d} {right:6d} {wrong:6d} {len(payloads) - right - wrong:8d} "
              f"{statistics.median(m.corrected_log10_p_value for m in matches):21.2f} "
              f"{statistics.median(m.runner_up_log10_p_value for m in matches):25.2f} "
              f"{sum(d == p for d, p in zip(decoded, payloads)):15d}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--texts", help="JSON of benchmarks.record_texts: score its texts instead of timing")
    parser.add_argument("--candidates", type=int, default=100_000, help="random candidates besides the true payload")
    parser.add_argument("--alpha", type=float, default=1e-3)
    args = parser.parse_args(argv)
    if args.texts:
        accuracy(args.texts, args.candidates, args.alpha)
    else:
        timing(args.repeat)


if __name__ == "__main__":
    main()
