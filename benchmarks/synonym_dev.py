"""Tuning the synonym embedder on a development set of its own (not the benchmark corpus).

The development set (``--corpus``, built with ``--build``) holds the embedded model's answers to
the prompts after the benchmark's first 60 (prompts 60-71, seeded like the benchmark's) and
the ``pydoc_data`` texts after the benchmark's 60 (texts 60-65). Every text is cut to
``--words`` words.

The expensive part of embedding (the LM's slot scores and the MiniLM similarities of every
slot's ``--max-candidates`` fittest candidates) is computed once; every (similarity threshold,
candidate count) pair then only reruns the substitution search, the detection at alpha 1e-3
(on the first 100 words and on all of them) and the text similarity of the benchmark
(``benchmarks.synonym.similarity``). The curve (detection against median similarity) goes to
``--out`` (CSV) and ``--plot`` (PNG).

    python -m benchmarks.synonym_dev --build --corpus benchmarks/results/synonym_dev_corpus.jsonl
    python -m benchmarks.synonym_dev --corpus benchmarks/results/synonym_dev_corpus.jsonl \\
        --out benchmarks/results/synonym_dev_curve.csv --plot benchmarks/results/synonym_dev_curve.png
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.synonym import prefix_words, similarity
from provmark.detector import create_detector
from provmark.watermark.keys import create_key
from provmark.watermark.models import load_model, load_sentence_encoder
from provmark.watermark.synonym import SynonymEmbedder, substitution_cost

THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98)
CANDIDATES = (1, 2, 4, 8)
ALPHA = 1e-3


def build(path: Path) -> None:
    """Write the development set: 12 model answers (prompts 60-71) and 6 pydoc texts (60-65)."""
    from benchmarks.synonym_corpus import MIN_WORDS, lm_texts
    from provmark.evaluation.human import human_texts

    rows = [{"source": "human", "id": f"pydoc-{i}", "text": t}
            for i, t in enumerate(human_texts(66, MIN_WORDS)) if i >= 60]
    rows += [{"source": "lm", "id": f"smollm2-{60 + i}", "text": t} for i, t in enumerate(lm_texts(12, 12, offset=60))]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path("benchmarks/results/synonym_dev_corpus.jsonl"))
    parser.add_argument("--build", action="store_true", help="write the development set to --corpus and stop")
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--version", type=int, default=2, help="the key's detection rule")
    parser.add_argument("--max-fit-drop", type=float, default=6.0)
    parser.add_argument("--thresholds", type=float, nargs="+", default=THRESHOLDS)
    parser.add_argument("--candidates", type=int, nargs="+", default=CANDIDATES)
    parser.add_argument("--out", type=Path, default=None, help="CSV of the curve")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the curve")
    args = parser.parse_args(argv)
    if args.build:
        build(args.corpus)
        return 0
    torch.set_num_threads(1)
    texts = [prefix_words(json.loads(line)["text"], args.words) for line in args.corpus.read_text().splitlines() if line.strip()]
    key = create_key("synonym", {"version": args.version, "max_candidates": max(args.candidates),
                                 "max_fit_drop": args.max_fit_drop}, secret=bytes(range(32)))
    loaded, encoder = load_model(), load_sentence_encoder()
    embedder = SynonymEmbedder(key, model=loaded.model, tokenizer=loaded.tokenizer, encoder=encoder)
    detector = create_detector(key, alpha=ALPHA)
    began, cpu = time.perf_counter(), time.process_time()
    plans = [embedder._plan(text) for text in texts]
    embedder._score_slots(plans)
    scored = embedder._similarities(plans)
    print(f"{len(texts)} texts of {args.words} words: slots scored in {time.perf_counter() - began:.0f} s "
          f"({time.process_time() - cpu:.0f} s CPU); {len(scored)} (slot, candidate) pairs", flush=True)
    rank, last = [], None
    for p, index, *_ in scored:  # _similarities lists each slot's candidates fittest first
        rank.append(rank[-1] + 1 if (p, index) == last else 0)
        last = (p, index)
    rows = []
    for count in args.candidates:
        for threshold in args.thresholds:
            for plan in plans:
                plan.options = {}
            for (p, index, form, drop, sim), r in zip(scored, rank):
                if r < count and sim >= threshold:
                    plans[p].options.setdefault(index, []).append((form, substitution_cost(drop, sim)))
            marked = [embedder._choose(plan) for plan in plans]
            sims = [similarity(encoder, t, m.text) for t, m in zip(texts, marked)]
            row = {"max_candidates": count, "similarity_threshold": threshold,
                   "share_changed": round(statistics.mean(len(m.substitutions) / m.num_words for m in marked), 4),
                   "median_similarity": round(statistics.median(sims), 4), "min_similarity": round(min(sims), 4)}
            for n in (100, args.words):
                results = [detector.detect(prefix_words(m.text, n)) for m in marked]
                row[f"detected_{n}"] = round(sum(r.is_watermarked for r in results) / len(results), 3)
                row[f"median_log10p_{n}"] = round(statistics.median(r.log10_p_value for r in results), 2)
            rows.append(row)
            print(row, flush=True)
    if args.out:
        with args.out.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, n in zip(axes, (100, args.words)):
            for count in args.candidates:
                chosen = [r for r in rows if r["max_candidates"] == count]
                ax.plot([r["median_similarity"] for r in chosen], [r[f"detected_{n}"] for r in chosen], marker="o",
                        label=f"max_candidates {count}")
                for r in chosen:
                    ax.annotate(f"{r['similarity_threshold']:.2f}", (r["median_similarity"], r[f"detected_{n}"]),
                                fontsize=6, xytext=(2, 2), textcoords="offset points")
            ax.set_xlabel("median MiniLM similarity (original vs watermarked)")
            ax.set_ylabel(f"detected at alpha {ALPHA:g}")
            ax.set_title(f"{n} words, {len(texts)} dev texts, key v{args.version}, max_fit_drop {args.max_fit_drop:g}",
                         fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
