"""The unwatermarked corpus of the synonym benchmark: two sources of English paragraphs.

- ``lm``: the embedded SmolLM2-135M-Instruct answering the first N prompts of
  ``provmark/evaluation/prompts.txt`` (asked for 400 words; sampled at temperature 0.8, 640 new
  tokens, seed 0).
- ``human``: the prose paragraphs of the Python Language Reference help topics that CPython
  ships offline in ``pydoc_data/topics.py`` (PSF licence): headings and indented code
  blocks dropped, consecutive paragraphs packed into texts of at least 400 words.

The texts are written to one JSON-lines file (``source``, ``id``, ``text``) that is committed, so
the benchmark's input does not depend on the Python version or on sampling.

    python -m benchmarks.synonym_corpus --out benchmarks/results/synonym_corpus.jsonl [--lm 60] [--human 60]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from provmark.evaluation.human import human_texts

MIN_WORDS = 400


def lm_texts(limit: int, batch: int, offset: int = 0) -> list[str]:
    """Plain (unwatermarked) answers of the embedded model to ``limit`` prompts from number
    ``offset`` on (the benchmark takes the first ones; the development set of
    ``benchmarks.synonym_dev`` the ones after them)."""
    from provmark.evaluation.prompts import load_prompts
    from provmark.watermark.hook import generate
    from provmark.watermark.models import load_model

    prompts = load_prompts()[offset : offset + limit]
    loaded = load_model()
    out = []
    for start in range(0, len(prompts), batch):
        asked = [f"{p} Write about 400 words." for p in prompts[start : start + batch]]
        generations = generate(loaded.model, loaded.tokenizer, asked, None, seed=offset + start, progress=True,
                               max_new_tokens=640, temperature=0.8)
        out += [g.text.strip() for g in generations]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lm", type=int, default=60, help="texts from the embedded model")
    parser.add_argument("--human", type=int, default=60, help="texts from pydoc_data")
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args(argv)
    rows = [{"source": "human", "id": f"pydoc-{i}", "text": t} for i, t in enumerate(human_texts(args.human, MIN_WORDS))]
    rows += [{"source": "lm", "id": f"smollm2-{i}", "text": t} for i, t in enumerate(lm_texts(args.lm, args.batch))]
    with args.out.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} texts to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
