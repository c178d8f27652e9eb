"""Tuning the synonym embedder on a development set of its own (not the benchmark corpus).

The development set (``--corpus``, built with ``--build``) holds the embedded model's answers to
the prompts after the benchmark's first 60 (prompts 60-71, seeded like the benchmark's) and
the ``pydoc_data`` texts after the benchmark's 60 (texts 60-65). Every text is cut to
``--words`` words.

The expensive part of embedding (the LM's slot scores and the MiniLM similarities of every
slot's ``max(--candidates)`` fittest candidates within ``max(--fit-drops)`` nats) is computed
once; every (fit drop, candidate count, similarity threshold) then only reruns the substitution
search, the detection at alpha 1e-3 (on the first 100 words and on all of them) and the text
similarity of the benchmark (``benchmarks.synonym.similarity``). The curve (detection against
median similarity) goes to ``--out`` (CSV) and ``--plot`` (PNG).

**Diagnosis** (``--diagnose DROP,COUNT,THRESHOLD``, printed): why each scored word of the
development set has, or lacks, a substitute the search may use: no synonym in the lexicon that
keeps the rules (``words.substitute_is_eligible``), none in one LM token at a clean slot, all
more than the fit drop below the original word, none of the fittest ``COUNT`` similar enough.

    python -m benchmarks.synonym_dev --build --corpus benchmarks/results/synonym_dev_corpus.jsonl
    python -m benchmarks.synonym_dev --corpus benchmarks/results/synonym_dev_corpus.jsonl \\
        --diagnose 6,4,0.92 14,16,0.95 \\
        --out benchmarks/results/synonym_dev_curve.csv --plot benchmarks/results/synonym_dev_curve.png
"""

from __future__ import annotations

import argparse
import csv
import itertools
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
from provmark.watermark.synonym import SynonymEmbedder, candidate_forms, substitution_cost, usual_parts_of_speech
from provmark.watermark.words import match_case, substitute_is_eligible

THRESHOLDS = (0.90, 0.92, 0.94, 0.95, 0.96, 0.98)
CANDIDATES = (4, 16)
FIT_DROPS = (6.0, 10.0, 14.0)
REASONS = ("no lexicon synonym", "no one-token synonym", "all below the fit drop", "none similar enough",
           "has a substitute")
ALPHA = 1e-3


def build(path: Path) -> None:
    """Write the development set: 12 model answers (prompts 60-71) and 6 pydoc texts (60-65)."""
    from benchmarks.synonym_corpus import MIN_WORDS, lm_texts
    from provmark.evaluation.human import human_texts

    rows = [{"source": "human", "id": f"pydoc-{i}", "text": t}
            for i, t in enumerate(human_texts(66, MIN_WORDS)) if i >= 60]
    rows += [{"source": "lm", "id": f"smollm2-{60 + i}", "text": t} for i, t in enumerate(lm_texts(12, 12, offset=60))]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def diagnose(plans, scored, rank, fit_drop: float, count: int, threshold: float, version: int) -> dict[str, int]:
    """How many scored words fall under each of ``REASONS`` with these embedder settings (the
    first reason that holds, in that order), from the plans and ``_similarities`` rows of the
    embedder (computed with a fit drop and candidate count at least these)."""
    usable = {(p, index) for (p, index, _, drop, sim), r in zip(scored, rank)
              if drop <= fit_drop and r < count and sim >= threshold}
    fitting = {(p, index) for (p, index, _, drop, _), r in zip(scored, rank) if drop <= fit_drop}
    tally = dict.fromkeys(REASONS, 0)
    for p, plan in enumerate(plans):
        slots = {slot.index for slot in plan.slots if slot.index in plan.fits}
        for i, w in enumerate(plan.tw.words):
            if not plan.scored[i]:
                continue
            lower = w.text.lower()
            if (p, i) in usable:
                reason = REASONS[4]
            elif (p, i) in fitting:
                reason = REASONS[3]
            elif i in slots:
                reason = REASONS[2]
            elif any(substitute_is_eligible(match_case(f, w.text), w.text, plan.tw.sentence_start[i], plan.tw.names, version)
                     for f in candidate_forms(lower, usual_parts_of_speech(lower))):
                reason = REASONS[1]
            else:
                reason = REASONS[0]
            tally[reason] += 1
    return tally


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path("benchmarks/results/synonym_dev_corpus.jsonl"))
    parser.add_argument("--build", action="store_true", help="write the development set to --corpus and stop")
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--version", type=int, default=2, help="the key's detection rule")
    parser.add_argument("--fit-drops", type=float, nargs="+", default=FIT_DROPS)
    parser.add_argument("--diagnose", nargs="*", default=[],
                        help="DROP,COUNT,THRESHOLD settings whose reasons per scored word to print")
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
                                 "max_fit_drop": max(args.fit_drops)}, secret=bytes(range(32)))
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
    for setting in args.diagnose:
        drop, count, threshold = setting.split(",")
        tally = diagnose(plans, scored, rank, float(drop), int(count), float(threshold), args.version)
        total = sum(tally.values())
        print(f"scored words at fit drop {drop}, {count} candidates, similarity {threshold}: {total}; "
              + ", ".join(f"{reason} {tally[reason] / total:.3f}" for reason in REASONS), flush=True)
    rows = []
    for fit_drop, count, threshold in itertools.product(args.fit_drops, args.candidates, args.thresholds):
        for plan in plans:
            plan.options = {}
        # Each slot's candidates come fittest first, so those within the drop are a prefix.
        for (p, index, form, drop, sim), r in zip(scored, rank):
            if drop <= fit_drop and r < count and sim >= threshold:
                plans[p].options.setdefault(index, []).append((form, substitution_cost(drop, sim)))
        marked = [embedder._choose(plan) for plan in plans]
        sims = [similarity(encoder, t, m.text) for t, m in zip(texts, marked)]
        row = {"max_fit_drop": fit_drop, "max_candidates": count, "similarity_threshold": threshold,
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
            for fit_drop, count in itertools.product(args.fit_drops, args.candidates):
                chosen = [r for r in rows if (r["max_fit_drop"], r["max_candidates"]) == (fit_drop, count)]
                ax.plot([r["median_similarity"] for r in chosen], [r[f"detected_{n}"] for r in chosen], marker="o",
                        label=f"max_fit_drop {fit_drop:g}, max_candidates {count}")
                for r in chosen:
                    ax.annotate(f"{r['similarity_threshold']:.2f}", (r["median_similarity"], r[f"detected_{n}"]),
                                fontsize=6, xytext=(2, 2), textcoords="offset points")
            ax.set_xlabel("median MiniLM similarity (original vs watermarked)")
            ax.set_ylabel(f"detected at alpha {ALPHA:g}")
            ax.set_title(f"{n} words, {len(texts)} dev texts, key v{args.version}",
                         fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
