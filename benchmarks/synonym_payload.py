"""Synonym payload benchmark: a multi-bit synonym key on texts of about 400 words.

Reads the committed corpus (``benchmarks.synonym_corpus``), takes the texts of at least
``--words`` words (alternating the two sources while both last), cuts each to its first ``--words`` words and
watermarks it with one fixed key (``--params``, JSON, with ``payload_bits``) carrying a random
payload (seeded). For every watermarked text it records:

- the open-set decode (``detector.synonym``): whether the decoded payload equals the embedded one
  (exact match), how many bits differ, and the payload-free presence p-value;
- the record test (``detector.records.match_records``) against ``--records`` random distinct
  issued payloads plus the true one (in random order): whether the best candidate is the true
  record (right record), whether its Bonferroni-corrected p-value is at most alpha (a match), and
  whether every other record is excluded (exclusive, ``detector.records``, "Exclusion");
- the same record test on the original (unwatermarked) text: a match there is a false attribution.

Texts are embedded ``--batch`` at a time until ``--texts`` are done or ``--budget`` seconds of
this process's CPU time have passed; each text's row is appended to ``--out`` (CSV) as it is done,
and the summary is rewritten after every batch.

    nice -n 10 python -m benchmarks.synonym_payload --texts 120 --budget 1200 \\
        --out benchmarks/results/synonym_payload.csv --summary benchmarks/results/synonym_payload.txt
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import random
import statistics
import time
from pathlib import Path

import torch

from provmark.detector import create_detector
from provmark.detector.records import match_records
from provmark.watermark.keys import create_key
from provmark.watermark.models import load_model, load_sentence_encoder
from provmark.watermark.synonym import SynonymEmbedder
from provmark.watermark.words import WORD_PATTERN

ALPHA = 1e-3
PARAMS = {"version": 2, "similarity_threshold": 0.95, "max_candidates": 16, "max_fit_drop": 14.0, "payload_bits": 16}
FIELDS = ["id", "source", "words", "scored", "substitutions", "payload", "decoded", "exact", "bit_errors",
          "log10_p_presence", "record_best", "right_record", "record_match", "record_exclusive", "record_corrected_log10_p",
          "runner_up_log10_p", "original_record_match", "original_log10_p_presence", "embed_cpu_s"]


def prefix_words(text: str, n: int) -> str:
    """``text`` up to the end of its n-th word (all of it when shorter)."""
    ends = [m.end() for m in WORD_PATTERN.finditer(text)]
    return text[: ends[min(n, len(ends)) - 1]] if ends else text


def summary(rows: list[dict], key, args, cpu: float) -> str:
    """The summary text of the rows done so far."""
    n = len(rows)
    if not n:
        return "no texts done\n"

    def share(name, group=rows):
        return f"{sum(r[name] for r in group)}/{len(group)} = {sum(r[name] for r in group) / len(group):.2f}"

    lines = [f"key {key.key_id} {json.dumps(key.config.to_params())}; payload {key.config.payload_bits} bits; "
             f"{n} texts of {args.words} words; R = {args.records} random issued records plus the true one; "
             f"alpha {ALPHA:g}; seed {args.seed}; torch threads {torch.get_num_threads()}"]
    for source in sorted({r["source"] for r in rows}) + ["all"]:
        group = [r for r in rows if source in ("all", r["source"])]
        lines.append(f"{source:6s} texts {len(group):3d}: exact payload {share('exact', group)}; right record "
                     f"{share('right_record', group)}; attributed (right record, corrected p <= alpha) "
                     f"{sum(r['right_record'] and r['record_match'] for r in group)}/{len(group)}; "
                     f"presence p <= alpha {sum(r['log10_p_presence'] <= -3 for r in group)}/{len(group)}")
    wrong = [r for r in rows if r["record_match"] and not r["right_record"]]
    lines.append(f"wrong record attributed (corrected p <= alpha, not the true record): {len(wrong)}/{n}"
                 + (f" ({', '.join(r['id'] for r in wrong)})" if wrong else ""))
    exclusive = [r for r in rows if r["record_exclusive"]]
    lines.append(f"exclusive attributions (every other record excluded): {len(exclusive)}/{n}, of them wrong "
                 f"{sum(not r['right_record'] for r in exclusive)}")
    lines.append(f"bit errors per text: median {statistics.median(r['bit_errors'] for r in rows):g}, "
                 f"mean {statistics.mean(r['bit_errors'] for r in rows):.2f}, max {max(r['bit_errors'] for r in rows)}")
    lines.append(f"scored words: median {statistics.median(r['scored'] for r in rows):g}; substitutions: median "
                 f"{statistics.median(r['substitutions'] for r in rows):g}")
    lines.append(f"record test corrected log10 p: median {statistics.median(r['record_corrected_log10_p'] for r in rows):.2f}; "
                 f"runner-up log10 p (uncorrected): median {statistics.median(r['runner_up_log10_p'] for r in rows):.2f}")
    lines.append(f"originals (not watermarked): record match {sum(r['original_record_match'] for r in rows)}/{n}, "
                 f"presence p <= alpha {sum(r['original_log10_p_presence'] <= -3 for r in rows)}/{n}")
    words = sum(r["words"] for r in rows)
    lines.append(f"embedding: {words} words in {cpu:.0f} CPU s ({words / cpu:.1f} words per CPU second)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path("benchmarks/results/synonym_corpus.jsonl"))
    parser.add_argument("--texts", type=int, default=120, help="most texts to watermark")
    parser.add_argument("--budget", type=float, default=1200.0, help="stop starting batches after this much CPU time (s)")
    parser.add_argument("--words", type=int, default=400, help="words per text")
    parser.add_argument("--records", type=int, default=1000, help="random issued records besides the true one")
    parser.add_argument("--batch", type=int, default=4, help="texts per embed_batch call")
    parser.add_argument("--params", type=json.loads, default=PARAMS, help=f"the key's parameters, JSON (default {PARAMS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/synonym_payload.csv"))
    parser.add_argument("--summary", type=Path, default=Path("benchmarks/results/synonym_payload.txt"))
    parser.add_argument("--from-csv", action="store_true",
                        help="rewrite --summary from the rows already in --out (embedding CPU time summed from its "
                             "rounded per-text column) and stop")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    key = create_key("synonym", args.params, secret=rng.randbytes(32))
    bits = key.config.payload_bits
    if not bits:
        parser.error("--params must give payload_bits > 0")
    if args.from_csv:
        with args.out.open() as handle:
            rows = [{k: v if k in ("id", "source") else float(v) if "." in v else int(v) for k, v in r.items()}
                    for r in csv.DictReader(handle)]
        args.summary.write_text(summary(rows, key, args, sum(r["embed_cpu_s"] for r in rows)))
        print(args.summary.read_text(), end="")
        return 0
    rows = [json.loads(line) for line in args.corpus.read_text().splitlines() if line.strip()]
    sources = sorted({r["source"] for r in rows})
    by_source = [[r for r in rows if r["source"] == s and len(WORD_PATTERN.findall(r["text"])) >= args.words]
                 for s in sources]
    order = [r for group in itertools.zip_longest(*by_source) for r in group if r is not None][: args.texts]
    loaded = load_model()
    embedder = SynonymEmbedder(key, model=loaded.model, tokenizer=loaded.tokenizer, encoder=load_sentence_encoder())
    detector = create_detector(key, alpha=ALPHA)
    done: list[dict] = []
    cpu = 0.0
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for start in range(0, len(order), args.batch):
            if cpu >= args.budget:
                break
            chunk = order[start : start + args.batch]
            texts = [prefix_words(r["text"], args.words) for r in chunk]
            payloads = [rng.randrange(1 << bits) for _ in chunk]
            began = time.process_time()
            embedded = embedder.embed_batch(texts, payloads)
            spent = time.process_time() - began
            cpu += spent
            for row, text, payload, result in zip(chunk, texts, payloads, embedded):
                others = rng.sample(range(1 << bits), args.records + 1)
                candidates = [c for c in others if c != payload][: args.records] + [payload]
                rng.shuffle(candidates)
                decoded = detector.detect(result.text)
                match = match_records(detector, result.text, candidates)
                original = match_records(detector, text, candidates)
                record = {
                    "id": row["id"], "source": row["source"], "words": result.num_words, "scored": decoded.num_scored_tokens,
                    "substitutions": len(result.substitutions), "payload": payload, "decoded": decoded.payload,
                    "exact": int(decoded.payload == payload), "bit_errors": bin(payload ^ (decoded.payload or 0)).count("1"),
                    "log10_p_presence": round(decoded.log10_p_value, 3), "record_best": match.payload,
                    "right_record": int(match.payload == payload), "record_match": int(match.is_match),
                    "record_exclusive": int(match.is_exclusive),
                    "record_corrected_log10_p": round(match.corrected_log10_p_value, 3),
                    "runner_up_log10_p": round(match.runner_up_log10_p_value, 3),
                    "original_record_match": int(original.is_match),
                    "original_log10_p_presence": round(detector.detect(text).log10_p_value, 3),
                    "embed_cpu_s": round(spent / len(chunk), 2),
                }
                writer.writerow(record)
                done.append(record)
            handle.flush()
            args.summary.write_text(summary(done, key, args, cpu))
            print(f"{len(done)} texts, {cpu:.0f} CPU s", flush=True)
    print(summary(done, key, args, cpu), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
