"""KGW round trip on the embedded model: watermarked vs plain generations of the same prompts.

Each prompt is generated twice in one batch each (temperature 1.0, pure sampling, exactly
--tokens new tokens), once with a fresh KGW key (gamma 0.25, delta 2 by default) and once
without; every text is decoded to a string, re-tokenised and detected, as a user would.

    python -m benchmarks.roundtrip [--tokens 200] [--seed 0] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

from provmark.detector import create_detector
from provmark.watermark.hook import generate
from provmark.watermark.keys import create_key
from provmark.watermark.models import load_model

PROMPTS = Path(__file__).parent / "prompts" / "roundtrip.txt"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--gamma", type=float, default=0.25)
    parser.add_argument("--delta", type=float, default=2.0)
    parser.add_argument("--context-width", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=None, help="also write one row per text")
    args = parser.parse_args(argv)

    prompts = [line.strip() for line in PROMPTS.read_text().splitlines() if line.strip()]
    key = create_key("kgw", {"gamma": args.gamma, "delta": args.delta, "context_width": args.context_width})
    loaded = load_model()
    settings = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "temperature": 1.0}
    marked = generate(loaded.model, loaded.tokenizer, prompts, key, seed=args.seed, progress=True, **settings)
    plain = generate(loaded.model, loaded.tokenizer, prompts, None, seed=args.seed, progress=True, **settings)

    detector = create_detector(key, alpha=1e-3)
    rows = []
    for kind, generations in (("watermarked", marked), ("plain", plain)):
        ids = [loaded.tokenizer(g.text, add_special_tokens=False)["input_ids"] for g in generations]
        for prompt, result in zip(prompts, detector.detect_batch(ids)):
            rows.append({"kind": kind, "prompt": prompt, "num_scored_tokens": result.num_scored_tokens,
                         "z": round(result.score, 3), "log10_p": round(result.log10_p_value, 3),
                         "detected_at_1e-3": result.is_watermarked})

    print(f"KGW gamma {args.gamma} delta {args.delta} h {args.context_width}, {len(prompts)} prompts x {args.tokens} new tokens, T=1.0")
    print(f"{'kind':12} {'min -log10p':>12} {'median -log10p':>15} {'max -log10p':>12} {'p<1e-6':>7} {'det@1e-3':>9}")
    for kind in ("watermarked", "plain"):
        scores = [-r["log10_p"] for r in rows if r["kind"] == kind]
        below = sum(s > 6 for s in scores)
        detected = sum(r["detected_at_1e-3"] for r in rows if r["kind"] == kind)
        print(f"{kind:12} {min(scores):12.2f} {statistics.median(scores):15.2f} {max(scores):12.2f} "
              f"{below:>4}/{len(scores)} {detected:>5}/{len(scores)}")
    if args.csv:
        with args.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
