"""Copy-paste localisation of Balance-Marking (or Vanilla-Marking) on the embedded model.

Balance keys use ``proxy_context="window"`` by default (the proxy reads the 10 ids before each
position, as in the paper): with "text" the detector's proxy reads the host text before the
span, which the generating proxy never saw, and most of the evidence is lost.

Each trial pastes one watermarked text of --span new tokens (its own random 20-bit payload) at a
random word boundary of a different unwatermarked host text of --host tokens, as the paper's
copy-paste attack does (research/balance_marking.md §4), then runs ``VanillaDetector.locate`` on
the re-tokenised whole. The true span is the tokens whose characters come from the pasted text
(the tokenizer's offsets), so merges at the seams are counted honestly.

A trial succeeds when the located span overlaps the true span by at least 80% (intersection over
union, stricter than the intersection over the true span) and the payload decodes exactly with a
p-value (corrected for the windows searched) below alpha; the payload alone being right is
counted too. The first --false-alarm-hosts hosts alone are also searched, to count false alarms
at alpha. Hosts are unwatermarked
generations of the embedded model (EOS suppressed), from prompts other than the watermarked ones.

    python -m benchmarks.copy_paste --trials 50 --delta 3 --out benchmarks/results/copy_paste.csv
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import random
import statistics
import sys
import time
from pathlib import Path

from provmark.detector import create_detector
from provmark.evaluation.prompts import generate_batched, load_prompts
from provmark.watermark.hook import generate
from provmark.watermark.keys import create_key
from provmark.watermark.models import load_model
from provmark.watermark.proxy import Proxy

FIELDS = ["trial", "payload_hex", "decoded_hex", "true_start", "true_end", "found_start", "found_end", "iou",
          "overlap_of_true", "payload_right", "exact", "success", "log10_p_value", "locate_seconds"]


def paste(tokenizer, host: str, inserted: str, rng: random.Random) -> tuple[list[int], tuple[int, int]]:
    """Token ids of ``host`` with ``inserted`` put at a random word boundary, and the token span
    (start, end) whose characters come from ``inserted``."""
    boundaries = [i for i, ch in enumerate(host) if ch == " "] or [len(host)]
    at = rng.choice(boundaries)
    text = host[:at] + " " + inserted.strip() + host[at:]
    lo, hi = at + 1, at + 1 + len(inserted.strip())
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < hi and b > lo]
    return encoded["input_ids"], (inside[0], inside[-1] + 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scheme", choices=["balance", "vanilla"], default="balance")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--span", type=int, default=200, help="new tokens of each watermarked text")
    parser.add_argument("--host", type=int, default=1000, help="tokens of each unwatermarked host text")
    parser.add_argument("--bits", type=int, default=20)
    parser.add_argument("--delta", type=float, default=2.0)
    parser.add_argument("--proxy-context", choices=["window", "text"], default="window", help="balance keys")
    parser.add_argument("--false-alarm-hosts", type=int, default=10, help="hosts searched alone for false alarms")
    parser.add_argument("--alpha", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="CSV of every trial")
    args = parser.parse_args(argv)

    prompts = load_prompts()
    if len(prompts) < 2 * args.trials:
        parser.error(f"need {2 * args.trials} prompts, have {len(prompts)}")
    loaded = load_model()
    model, tokenizer = loaded.model, loaded.tokenizer
    secret = hashlib.sha256(f"provmark-bench/copy-paste/{args.seed}".encode()).digest()
    params = {"bits": args.bits, "segment_bits": args.bits, "delta": args.delta}
    if args.scheme == "balance":
        params["proxy_context"] = args.proxy_context
    key = create_key(args.scheme, params, secret=secret)
    rng = random.Random(secret)
    payloads = [rng.randrange(key.config.capacity) for _ in range(args.trials)]

    started = time.perf_counter()
    marked = generate_batched(functools.partial(generate, model, tokenizer, key=key), prompts[: args.trials], payloads,
                              tokens=args.span, seed=args.seed, batch=args.batch)
    hosts = generate_batched(functools.partial(generate, model, tokenizer, key=None),
                             prompts[args.trials : 2 * args.trials], tokens=args.host,
                             seed=args.seed + 10_000, batch=args.batch)
    print(f"generated {args.trials} watermarked and {args.trials} host texts in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)

    proxy = Proxy(model, tokenizer) if key.scheme == "balance" else None
    detector = create_detector(key, alpha=args.alpha, proxy=proxy)
    rows = []
    for trial, (text, host, payload) in enumerate(zip(marked, hosts, payloads)):
        ids, (true_lo, true_hi) = paste(tokenizer, host.text, text.text, rng)
        started = time.perf_counter()
        result = detector.locate(ids)
        seconds = time.perf_counter() - started
        found_lo, found_hi = result.spans[0] if result.spans else (0, 0)
        common = max(0, min(true_hi, found_hi) - max(true_lo, found_lo))
        union = max(true_hi, found_hi) - min(true_lo, found_lo)
        iou = common / union if union else 0.0
        right = result.payload == payload
        exact = right and result.is_watermarked
        rows.append({"trial": trial, "payload_hex": f"{payload:#x}",
                     "decoded_hex": result.payload_hex or "", "true_start": true_lo, "true_end": true_hi,
                     "found_start": found_lo, "found_end": found_hi, "iou": round(iou, 4),
                     "overlap_of_true": round(common / (true_hi - true_lo), 4), "payload_right": int(right), "exact": int(exact),
                     "success": int(exact and iou >= 0.8), "log10_p_value": round(result.log10_p_value, 3),
                     "locate_seconds": round(seconds, 3)})
        print(f"trial {trial:3d}: true {true_lo}-{true_hi} found {found_lo}-{found_hi} iou {iou:.2f} "
              f"payload {'ok' if exact else 'WRONG'} log10 p {result.log10_p_value:.1f}", file=sys.stderr)
    searched = hosts[: args.false_alarm_hosts]
    false_alarms = sum(detector.locate(tokenizer(h.text, add_special_tokens=False)["input_ids"]).is_watermarked for h in searched)

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    n = len(rows)
    context = f", proxy {args.proxy_context}" if key.scheme == "balance" else ""
    print(f"{key.scheme}{context}, {args.bits} bits, delta {args.delta}: {args.span}-token span pasted into {args.host}-token hosts, "
          f"{n} trials")
    print(f"located (IoU >= 0.8) and decoded: {sum(r['success'] for r in rows)}/{n}")
    print(f"decoded exactly at alpha {args.alpha:g}: {sum(r['exact'] for r in rows)}/{n}   payload right: "
          f"{sum(r['payload_right'] for r in rows)}/{n}   located (IoU >= 0.8): {sum(r['iou'] >= 0.8 for r in rows)}/{n}")
    print(f"median IoU {statistics.median(r['iou'] for r in rows):.3f}   median overlap of the true span "
          f"{statistics.median(r['overlap_of_true'] for r in rows):.3f}")
    print(f"median locate time {statistics.median(r['locate_seconds'] for r in rows):.2f} s per text")
    print(f"hosts alone flagged at alpha {args.alpha:g}: {false_alarms}/{len(searched)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
