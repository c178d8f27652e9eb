"""Watermarked texts for the record-scoring and presence benchmarks: 20 prompts x 200 tokens per
scheme with the embedded model (T 1.0), each with a random valid payload, written as JSON
(key parameters, secret, payloads, token ids) so the benchmarks score the same texts again
(``benchmarks.presence``, ``benchmarks.record_scoring --texts``).

    nice -n 10 python -m benchmarks.record_texts --out benchmarks/results/record_texts.json
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import random
import time

from provmark.evaluation.prompts import generate_batched, load_prompts
from provmark.watermark.hook import generate
from provmark.watermark.keys import create_key
from provmark.watermark.models import load_model

SCHEMES = {  # label -> (scheme, parameters)
    "majormark+": ("majormark+", {"bits": 32}),
    "majormark": ("majormark", {"bits": 32}),
    "mpac-r4": ("mpac", {"bits": 32, "radix": 4}),
    "vanilla": ("vanilla", {"bits": 20}),
    "mpac-r4-c8": ("mpac", {"bits": 32, "radix": 4, "check_bits": 8}),  # benchmarks.check_bits
    "majormark-c8": ("majormark", {"bits": 32, "check_bits": 8}),
    "majormark+-c8": ("majormark+", {"bits": 32, "check_bits": 8}),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--labels", nargs="*", default=list(SCHEMES))
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    loaded = load_model()
    model, tokenizer = loaded.model, loaded.tokenizer
    prompts = load_prompts(args.prompts)
    out = {"prompts": args.prompts, "tokens": args.tokens, "seed": args.seed, "texts": {}}
    for label in args.labels:
        scheme, params = SCHEMES[label]
        secret = hashlib.sha256(f"provmark-records/{args.seed}/{label}".encode()).digest()
        key = create_key(scheme, params, secret=secret)
        rng = random.Random(secret)
        payloads = [rng.randrange(key.config.capacity) for _ in prompts]
        start, token_ids = time.perf_counter(), []
        for first in range(0, len(prompts), args.batch):  # generate_batched's seeding, one batch at a time
            rows = slice(first, first + args.batch)
            generations = generate_batched(functools.partial(generate, model, tokenizer, key=key), prompts[rows],
                                           payloads[rows], tokens=args.tokens, seed=args.seed + first, batch=args.batch)
            token_ids += [list(g.token_ids) for g in generations]
            print(f"{label}: {len(token_ids)} texts in {time.perf_counter() - start:.0f} s", flush=True)
            out["texts"][label] = {"scheme": scheme, "params": params, "secret": secret.hex(),
                                   "payloads": payloads[: len(token_ids)], "token_ids": token_ids}
            with open(args.out, "w", encoding="utf-8") as handle:  # after every batch: a partial run is usable
                json.dump(out, handle)


if __name__ == "__main__":
    main()
