"""Synonym watermark benchmark: detection by length, false positives, similarity, attacks, speed.

Reads the committed corpus (``benchmarks.synonym_corpus``: embedded-model answers and Python
Language Reference prose), cuts every text to its first 400 words and:

- **False positives**: detects every original at 50/100/200/400 words under ``--null-keys``
  random keys (model-free, so thousands of tests are cheap) and under the embedding key.
- **Embedding**: watermarks the first ``--embed`` texts of 400 words or more (alternating the two
  sources) with one fixed key (``--params``, JSON; key version 2 by default), ``--batch`` texts
  per ``embed_batch`` call, timing each call (wall clock and this process's CPU time); records the share of words changed and the sentence-embedding
  similarity of original and watermarked text (all-MiniLM-L6-v2 cosine, the mean over 100-word
  chunks, since MiniLM reads at most 256 word pieces).
- **Detection by length**: the watermarked text's first 50/100/200/400 words, at alpha 1e-3.
- **Attacks** (``provmark.attacks``) on the 400-word watermarked texts: deleting 10% of the words
  at random; replacing 10% of the content words by a random WordNet synonym (no key, no LM:
  another strategy than the embedder's); replacing 10% of the content words by the WordNet
  synonym the embedded LM likes best in the sentence (``lm_synonyms``, the suite's LM synonym
  attack); with ``--paraphrase``, paraphrasing a random third of the sentences with the
  embedded LM (sampled at temperature 0.7; slow).
- **Throughput**: words per second of embedding and of detection, on this CPU
  (``--threads`` torch threads).

    python -m benchmarks.synonym --corpus benchmarks/results/synonym_corpus.jsonl --embed 40 \\
        --out benchmarks/results/synonym.csv --summary benchmarks/results/synonym_summary.txt
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from provmark.attacks import delete_words, lm_synonyms, paraphrase_batch, wordnet_synonyms
from provmark.detector import create_detector
from provmark.watermark.keys import create_key
from provmark.watermark.models import load_model, load_sentence_encoder
from provmark.watermark.synonym import SynonymEmbedder
from provmark.watermark.words import WORD_PATTERN, analyse

LENGTHS = (50, 100, 200, 400)
ALPHA = 1e-3


def prefix_words(text: str, n: int) -> str:
    """``text`` up to the end of its n-th word (all of it when shorter)."""
    ends = [m.end() for m in WORD_PATTERN.finditer(text)]
    return text[: ends[min(n, len(ends)) - 1]] if ends else text


def similarity(encoder, a: str, b: str, chunk: int = 100) -> float:
    """Mean MiniLM cosine over aligned chunks of ``chunk`` words (a and b have the same words
    count, since substitution replaces one word by one word)."""
    wa, wb = list(WORD_PATTERN.finditer(a)), list(WORD_PATTERN.finditer(b))
    pieces_a, pieces_b = [], []
    for start in range(0, len(wa), chunk):
        end = min(start + chunk, len(wa)) - 1
        pieces_a.append(a[wa[start].start() : wa[end].end()])
        pieces_b.append(b[wb[start].start() : wb[min(end, len(wb) - 1)].end()])
    ea, eb = encoder.embed(pieces_a), encoder.embed(pieces_b)
    return float((ea * eb).sum(dim=1).mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path("benchmarks/results/synonym_corpus.jsonl"))
    parser.add_argument("--embed", type=int, default=40, help="texts to watermark (alternating sources)")
    parser.add_argument("--batch", type=int, default=4, help="texts per embed_batch call")
    parser.add_argument("--params", type=json.loads, default={"version": 2},
                        help='the key\'s parameters, JSON (default {"version": 2})')
    parser.add_argument("--paraphrase", action="store_true", help="also run the (slow) LM paraphrase attack")
    parser.add_argument("--null-keys", type=int, default=100, help="random keys for the false-positive rate")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop watermarking new texts after this long (the summary says how many were done)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="CSV, one row per watermarked text")
    parser.add_argument("--summary", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    rows = [json.loads(line) for line in args.corpus.read_text().splitlines() if line.strip()]
    for row in rows:
        row["text"] = prefix_words(row["text"], max(LENGTHS))
    lines = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    key = create_key("synonym", args.params, secret=bytes(range(32)))
    detector = create_detector(key, alpha=ALPHA)
    detector.detect("Warm up WordNet before timing anything.")
    sources = sorted({r["source"] for r in rows})
    def counts(items) -> str:
        return ", ".join(f"{s} {sum(r['source'] == s for r in items)}" for s in sources)

    say(f"corpus: {len(rows)} texts ({counts(rows)}), "
        f"cut to {max(LENGTHS)} words; key {key.key_id} {json.dumps(key.config.to_params())}, alpha {ALPHA:g}, "
        f"torch threads {args.threads}")

    # False positives: originals under many keys (and the embedding key).
    null = {n: [0, 0] for n in LENGTHS}
    prefixes = {n: [analyse(prefix_words(r["text"], n)) for r in rows if len(WORD_PATTERN.findall(r["text"])) >= n]
                for n in LENGTHS}
    for k in range(args.null_keys):
        null_key = create_key("synonym", args.params, secret=random.Random(1000 + k).randbytes(32))
        null_detector = create_detector(null_key, alpha=ALPHA)
        for n in LENGTHS:
            null[n][0] += sum(r.is_watermarked for r in null_detector.detect_batch(prefixes[n]))
            null[n][1] += len(prefixes[n])
    own = sum(detector.detect(row["text"]).is_watermarked for row in rows)
    say(f"false positives of the originals under {args.null_keys} random keys: "
        + ", ".join(f"{n} words {fp}/{total} = {fp / max(total, 1):.2e}" for n, (fp, total) in null.items())
        + f"; under the embedding key at 400 words: {own}/{len(rows)}")

    # Embedding.
    loaded, encoder = load_model(), load_sentence_encoder()
    embedder = SynonymEmbedder(key, model=loaded.model, tokenizer=loaded.tokenizer, encoder=encoder)
    embedder.embed("Warm up the small engine quickly before the long journey.")
    # Texts with all 400 words, so that every length bucket holds the same texts.
    by_source = {s: [r for r in rows if r["source"] == s and len(WORD_PATTERN.findall(r["text"])) >= max(LENGTHS)]
                 for s in sources}
    order = [r for group in zip(*by_source.values()) for r in group][: args.embed]
    out_rows, marked, embed_time, embed_cpu, embed_words = [], [], 0.0, 0.0, 0
    began = time.perf_counter()
    for first in range(0, len(order), args.batch):
        if args.max_minutes is not None and time.perf_counter() - began > 60 * args.max_minutes:
            say(f"time budget of {args.max_minutes:g} minutes reached: watermarked {first} of {len(order)} texts")
            break
        chunk = order[first : first + args.batch]
        start, cpu = time.perf_counter(), time.process_time()
        results = embedder.embed_batch([row["text"] for row in chunk])
        elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu
        embed_time += elapsed
        embed_cpu += cpu_elapsed
        embed_words += sum(r.num_words for r in results)
        for row, result in zip(chunk, results):
            marked.append(result.text)
            record = {"source": row["source"], "id": row["id"], "words": result.num_words, "eligible": result.num_eligible,
                      "substituted": len(result.substitutions),
                      "share_changed": round(len(result.substitutions) / result.num_words, 4),
                      "similarity": round(similarity(encoder, row["text"], result.text), 4),
                      "embed_s": round(elapsed / len(chunk), 2)}
            for n in LENGTHS:
                r = detector.detect(prefix_words(result.text, n))
                record[f"log10p_{n}"] = round(r.log10_p_value, 3)
                record[f"scored_{n}"] = r.num_scored_tokens
            out_rows.append(record)
            print(f"[{len(out_rows)}/{len(order)}] {row['id']}: {record['substituted']} of {record['words']} words changed, "
                  f"similarity {record['similarity']}, log10 p at 400 words {record['log10p_400']}", flush=True)
        print(f"batch of {len(chunk)}: {elapsed:.0f} s wall, {cpu_elapsed:.0f} s CPU", flush=True)

    # Detection speed on the watermarked texts (WordNet already loaded).
    start = time.perf_counter()
    for text in marked:
        detector.detect(text)
    detect_time = time.perf_counter() - start

    # Attacks.
    attacked = {
        "delete10": [delete_words(t, 0.10, rng) for t in marked],
        "synonym10": [wordnet_synonyms(t, 0.10, rng) for t in marked],
        "lm_synonym10": [lm_synonyms(t, 0.10, rng, loaded.model, loaded.tokenizer) for t in marked],
    }
    if args.paraphrase:
        attacked["paraphrase33"] = paraphrase_batch(marked, 1 / 3, rng, loaded.model, loaded.tokenizer)
    for name, texts in attacked.items():
        for record, text in zip(out_rows, texts):
            record[f"{name}_log10p"] = round(detector.detect(text).log10_p_value, 3)

    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(out_rows[0]))
        writer.writeheader()
        writer.writerows(out_rows)

    threshold = math.log10(ALPHA)
    say(f"watermarked: {len(out_rows)} texts ({counts(out_rows)})")
    say(f"{'':14}" + "".join(f"{n:>12}" for n in LENGTHS))
    for group in (*sources, "all"):
        chosen = [r for r in out_rows if group in ("all", r["source"])]
        say(f"{'det ' + group:14}" + "".join(f"{sum(r[f'log10p_{n}'] <= threshold for r in chosen) / len(chosen):>12.2f}" for n in LENGTHS))
    say(f"{'eligible (med)':14}" + "".join(f"{statistics.median(r[f'scored_{n}'] for r in out_rows):>12.0f}" for n in LENGTHS))
    say(f"median similarity {statistics.median(r['similarity'] for r in out_rows):.4f} "
        f"(min {min(r['similarity'] for r in out_rows):.4f}); share of words changed: median "
        f"{statistics.median(r['share_changed'] for r in out_rows):.3f}, mean {statistics.mean(r['share_changed'] for r in out_rows):.3f}")
    for name in attacked:
        rate = sum(r[f"{name}_log10p"] <= threshold for r in out_rows) / len(out_rows)
        say(f"attack {name:13} detection at 400 words: {rate:.2f} (median log10 p {statistics.median(r[f'{name}_log10p'] for r in out_rows):.2f})")
    say(f"throughput: embed {embed_words / embed_time:.1f} words/s wall, {embed_words / embed_cpu:.1f} words per CPU second "
        f"({args.batch} texts per call); detect {embed_words / detect_time:.0f} words/s "
        f"({embed_words} words; torch threads {args.threads}, shared 2-core CPU, load average {os.getloadavg()[0]:.1f})")
    if args.summary:
        args.summary.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
