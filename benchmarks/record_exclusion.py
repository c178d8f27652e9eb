"""Wrong records and the exclusion test (``provmark.detector.records``, "Exclusion"), offline.

The stored watermarked texts of ``benchmarks.record_texts`` (200 tokens, embedded model, T 1.0;
several JSON files may be given, their texts pooled by label) are scored, unattacked and after
word deletion, against their true payload hidden among --candidates random issued ones. For each
scheme and condition: the texts whose best candidate the record test names (corrected p-value at
most alpha), rightly or wrongly; of those, the exclusive ones (every other candidate excluded),
rightly or wrongly; and the texts it misses.

    nice -n 10 python -m benchmarks.record_exclusion --texts benchmarks/results/record_texts.json \\
        benchmarks/results/presence_texts.json benchmarks/results/check_texts.json
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np

from benchmarks.record_scoring import random_payloads
from provmark.attacks.edits import delete_words
from provmark.detector import create_detector
from provmark.detector.records import match_records_batch
from provmark.watermark.keys import create_key
from provmark.watermark.models import load_tokenizer


def _pooled(paths: list[str]) -> dict[str, list[tuple[dict, int, list[int]]]]:
    """label -> [(entry, payload, token ids)] over every file."""
    pooled: dict[str, list] = {}
    for path in paths:
        for label, entry in json.load(open(path, encoding="utf-8"))["texts"].items():
            for payload, ids in zip(entry["payloads"], entry["token_ids"]):
                pooled.setdefault(label, []).append((entry, payload, ids))
    return pooled


def _attacked(tokenizer, ids: list[int], rate: float, seed: int) -> list[int]:
    if rate == 0:
        return ids
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return tokenizer.encode(delete_words(text, rate, random.Random(seed)), add_special_tokens=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", nargs="+", required=True)
    parser.add_argument("--candidates", type=int, default=100_000, help="random candidates besides the true payload")
    parser.add_argument("--deletions", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    parser.add_argument("--alpha", type=float, default=1e-3)
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer()
    print(f"{args.candidates} random candidates + the true payload, alpha {args.alpha:g}")
    print("| label | deletion | texts | named right | named wrong | exclusive right | exclusive wrong "
          "| missed | ms/text |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, items in _pooled(args.texts).items():
        rng = np.random.default_rng(1)
        for rate in args.deletions:
            counts = dict.fromkeys(["right", "wrong", "exclusive right", "exclusive wrong", "missed"], 0)
            spent = 0.0
            for n, (entry, payload, ids) in enumerate(items):
                key = create_key(entry["scheme"], entry["params"], secret=bytes.fromhex(entry["secret"]))
                detector = create_detector(key, alpha=args.alpha)
                others = random_payloads(key.config.capacity, args.candidates, rng)
                candidates = np.concatenate([others, np.array([payload], dtype=np.uint64)])
                text_ids = _attacked(tokenizer, ids, rate, seed=n)
                start = time.process_time()
                (match,) = match_records_batch(detector, [text_ids], candidates)
                spent += time.process_time() - start
                counts["right"] += match.is_match and match.payload == payload
                counts["wrong"] += match.is_match and match.payload != payload
                counts["exclusive right"] += match.is_exclusive and match.payload == payload
                counts["exclusive wrong"] += match.is_exclusive and match.payload != payload
                counts["missed"] += not match.is_match
            total = len(items)
            print(f"| {label} | {rate:g} | {total} | " + " | ".join(f"{v / total:.3f}" for v in counts.values())
                  + f" | {1000 * spent / total:.0f} |", flush=True)


if __name__ == "__main__":
    main()
