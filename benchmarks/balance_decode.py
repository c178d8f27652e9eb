"""Balance-Marking decode time per text on CPU: provmark's decoder against a per-window decoder
written the way the official code works (research/balance_marking.md §3).

The per-window decoder applies provmark's rule (so both must decode the same payload, which
this script checks) with the official code's structure: one proxy forward pass per scored
position (windows batched 16 at a time, each the text before the position), then for each of
the K pool partitions a sort of the head's words to find the cut, then the pool index of every
one of the 2**b messages at every position and a gather into a (positions x 2**b) count.
provmark's decoder runs the proxy once over the whole text, finds all K cuts from one sort, and
counts every message with one Walsh-Hadamard transform.

    python -m benchmarks.balance_decode --texts 3 --tokens 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from provmark.detector import create_detector
from provmark.kernels.balanced_split import head_of, partition_starts
from provmark.kernels.prf import MASK32, context_seeds, fastrange, token_words
from provmark.watermark.balance import order_seeds_of, pool_indices, pool_words
from provmark.watermark.hook import generate
from provmark.watermark.keys import create_key
from provmark.watermark.models import load_model
from provmark.watermark.proxy import Proxy

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how vaccines train the immune system.",
           "Describe a busy market on a Saturday morning.", "Give advice to someone learning to program.",
           "Tell me about the history of the bicycle."]


@torch.no_grad()
def per_window_decode(detector, model, token_ids: list[int]) -> int:
    """The payload (one segment) decoded position by position, as the official code does."""
    config = detector.config
    (pairs,) = detector.pairs([token_ids])  # which pairs are scored; availability is recomputed below
    pool, n = config.pool_size, pairs.tokens.shape[0]
    starts = partition_starts(torch.arange(pool), pool)
    available = torch.zeros((n, pool), dtype=torch.bool)
    for batch_start in range(0, n, 16):
        where = pairs.positions[batch_start : batch_start + 16].tolist()
        width = max(where)
        ids = torch.zeros((len(where), width), dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for row, position in enumerate(where):
            ids[row, width - position :] = torch.tensor(token_ids[:position])
            mask[row, width - position :] = 1
        positions_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions_ids).logits[:, -1].float()
        for row in range(len(where)):
            i = batch_start + row
            mass, head = head_of(torch.softmax(logits[row : row + 1], dim=-1), config.head)
            context, token = pairs.contexts[i : i + 1], int(pairs.tokens[i])
            order_seed = order_seeds_of(detector._order_key, context)
            for j in range(pool):
                coin_seed = context_seeds(detector._shard_key, torch.tensor([j]), context)
                rotated = (token_words(order_seed[:, None], head) - starts[j]) & MASK32
                order = torch.argsort(rotated, dim=1)
                cut = mass.gather(1, order).cumsum(dim=1) >= mass.sum() / 2
                side = dict(zip(head[0, order[0]].tolist(), cut[0].tolist()))
                coin = bool(fastrange(token_words(coin_seed, torch.tensor([token])), 2) == 1)
                available[i, j] = side.get(token, coin)
    messages = torch.arange(1 << config.segment_bits)
    offsets, rows = pool_words(detector._pool_key, pairs.contexts, torch.zeros(n, dtype=torch.int64), config)
    counts = torch.zeros(1 << config.segment_bits, dtype=torch.int64)
    for i in range(n):
        index = pool_indices(offsets[i].expand(messages.shape[0]), rows[i].expand(messages.shape[0], -1), messages)
        counts += available[i, index].to(torch.int64)
    return int(torch.argmax(counts))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--delta", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model()
    key = create_key("balance", {"bits": 20, "delta": args.delta}, secret=b"balance-decode-benchmark".ljust(32, b"."))
    payloads = [0x5A5A5 + 977 * i for i in range(args.texts)]
    prompts = (PROMPTS * args.texts)[: args.texts]
    texts = generate(loaded.model, loaded.tokenizer, prompts, key, payloads, seed=1,
                     max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    detector = create_detector(key, proxy=Proxy(loaded.model, loaded.tokenizer))
    fast, slow = [], []
    for text, payload in zip(texts, payloads):
        ids = list(text.token_ids)
        started = time.perf_counter()
        ours = detector.detect(ids).payload
        fast.append(time.perf_counter() - started)
        started = time.perf_counter()
        theirs = per_window_decode(detector, loaded.model, ids)
        slow.append(time.perf_counter() - started)
        if ours != theirs:
            print(f"MISMATCH: provmark decoded {ours:#x}, per-window {theirs:#x}", file=sys.stderr)
            return 1
        print(f"{len(ids)} tokens: payload {'ok' if ours == payload else 'WRONG'} ({ours:#07x}); "
              f"provmark {fast[-1]:.3f} s, per-window {slow[-1]:.2f} s", file=sys.stderr)
    print(f"threads {args.threads}, {args.texts} texts of {args.tokens} tokens, b=20, K={key.config.pool_size}, "
          f"head={key.config.head}")
    print(f"provmark decoder:   median {statistics.median(fast):.3f} s per text")
    print(f"per-window decoder: median {statistics.median(slow):.2f} s per text")
    print(f"ratio: {statistics.median(slow) / statistics.median(fast):.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
