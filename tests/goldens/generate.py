"""Generate, check or stage the PRF v1 golden vectors (tests/goldens/prf_v1.json).

    python -m tests.goldens.generate             # write prf_v1.json (only for a new PRF version)
    python -m tests.goldens.generate --check     # exit 1 if the code no longer reproduces the file
    python -m tests.goldens.generate --candidate # write prf_v1.candidate.json to compare by hand

See README.md beside this file: never regenerate to make a failing test pass.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import torch

from provmark.detector import create_detector
from provmark.kernels.balanced_split import available_ids, head_of, partition_starts
from provmark.kernels.prf import PRF_VERSION, context_seeds, fastrange, mix32, split_key, token_words
from provmark.kernels.shard_bias import preferred_mask
from provmark.watermark.keys import create_key, derive_subkey

SCHEMA_VERSION = 1
HERE = Path(__file__).parent
GOLDEN = HERE / "prf_v1.json"

# Keys chosen to exercise both 32-bit words: small, at 2**32, above 2**63 and all ones.
KEYS = [0, 42, 2**32, 2**32 + 1, 2**63 + 12345, 2**64 - 1]
MIX_INPUTS = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF]
CONTEXTS = [[], [0], [1], [49151], [17, 4242], [3, 1, 4, 1, 5]]
SALTS = [0, 1, 0xFFFFFFFF]
TOKENS = [0, 1, 2, 3, 1000, 49151, 128255, 2**31 - 1]
KGW_CASES = [{}, {"gamma": 0.5, "delta": 1.0, "context_width": 1}, {"gamma": 0.3, "context_width": 3}]
MPAC_CASES = [{"bits": 8, "radix": 2}, {"bits": 16, "radix": 4, "gamma": 0.25, "delta": 3.0, "context_width": 1},
              {"bits": 8, "radix": 2, "check_bits": 2}]
MAJORMARK_CASES = [{"bits": 8, "version": 1}, {"bits": 12, "delta": 3.0, "context_width": 1, "version": 1}, {"bits": 8},
                   {"bits": 8, "check_bits": 2}]
MAJORMARK_PLUS_CASES = [{"bits": 8, "version": 1}, {"bits": 12, "block_size": 3, "delta": 3.0, "context_width": 1, "version": 1},
                        {"bits": 8}, {"bits": 8, "check_bits": 2}]
VANILLA_CASES = [{"bits": 8, "segment_bits": 8, "pool_size": 16}, {"bits": 12, "segment_bits": 6, "pool_size": 8, "context_width": 2}]
BALANCE_CASES = [{"bits": 8, "segment_bits": 8, "pool_size": 16, "head": 4}, {"bits": 10, "segment_bits": 10, "head": 256}]
SPLIT_CASES = [  # (order seed, coin seed, pool index, pool size, head) over GOLDEN_VOCAB ids
    (0, 0, 0, 64, 0), (12345, 678, 5, 64, 8), (0xFFFFFFFF, 0xDEADBEEF, 63, 64, 40), (42, 43, 1, 2, 3),
]
GOLDEN_VOCAB = 40
SYNONYM_CASES = [{}, {"context_width": 2, "similarity_threshold": 0.95}, {"version": 2}, {"version": 2, "payload_bits": 8}]
SYNONYM_TEXT = ("Rapid growth followed. The quick brown fox jumps over the lazy dog, and the quick brown fox jumps "
                "again! Maria said \"large house\" near https://example.com while the old well-known river runs "
                "quietly through the town.\n\nChildren watched the boats.")
SCHEME_TOKENS = [17, 4242, 9, 49151, 0, 1, 2, 3, 9, 49151, 0, 1, 128255, 77, 77, 77, 5, 6, 7, 8]
SHARD_CASES = [  # (key, salt, context, shard count, preferred mask, vocab size)
    (42, 0, [7], 4, 0b1, 37),
    (2**63 + 12345, 3, [5, 6], 32, 0xF0F0F0F0, 53),
    (2**64 - 1, 0xFFFFFFFF, [1, 2, 3], 64, (1 << 64) - 1 - 1, 41),
]


def _tensor(values):
    return torch.tensor(values, dtype=torch.int64)


def _scheme_case(scheme: str, params: dict) -> dict:
    """One scheme end to end on SCHEME_TOKENS: the scored pairs, each pair's evidence as the
    detector scores it (KGW: green 0/1; MPAC: position * S + shard), payload and p-value."""
    key = create_key(scheme, params, secret=bytes(range(32)))
    detector = create_detector(key)
    pairs, _ = detector.scored_pairs([SCHEME_TOKENS])
    token_scores = detector._score_tokens(pairs[:, :-1], pairs[:, -1]).long()
    result = detector.detect(SCHEME_TOKENS)
    return {"secret": key.secret.hex(), "params": key.config.to_params(), "key_id": key.key_id, "tokens": SCHEME_TOKENS,
            "scored": pairs.tolist(), "token_scores": token_scores.tolist(), "num_scored_tokens": result.num_scored_tokens,
            "payload": result.payload, "log10_p_value": result.log10_p_value.hex()}


def _synonym_case(params: dict) -> dict:
    """The synonym detector end to end on SYNONYM_TEXT: each scored word's span and keyed bit."""
    key = create_key("synonym", params, secret=bytes(range(32)))
    detector = create_detector(key)
    result = detector.detect(SYNONYM_TEXT)
    case = {"secret": key.secret.hex(), "params": key.config.to_params(), "key_id": key.key_id, "text": SYNONYM_TEXT,
            "word_bits": [list(item) for item in result.word_bits], "num_scored_tokens": result.num_scored_tokens,
            "payload": result.payload, "log10_p_value": result.log10_p_value.hex()}
    if key.config.payload_bits:  # each scored word's payload position (words.word_bit_position)
        case["word_positions"] = [position for *_, position in detector.word_bits_and_positions(SYNONYM_TEXT)]
    return case


def golden_probs(positions: int, vocab: int, shift: int = 0) -> torch.Tensor:
    """Deterministic float64 distributions (positions, vocab) from integer weights, no RNG."""
    ids = torch.arange(vocab, dtype=torch.int64)
    rows = torch.arange(positions, dtype=torch.int64)[:, None] + shift
    weights = (((ids * 2654435761 + rows * 97) % 1000) + 1).to(torch.float64) ** -2
    return weights / weights.sum(dim=1, keepdim=True)


class GoldenProxy:
    """A model-free proxy with ``golden_probs`` distributions, for the Balance cases."""

    def heads(self, sequences, head):
        return [head_of(golden_probs(max(len(s) - 1, 0), 128256), head) for s in sequences]


def _split_case(order_seed, coin_seed, pool_index, pool_size, head) -> dict:
    probs = golden_probs(1, GOLDEN_VOCAB, shift=pool_index)
    start = partition_starts(_tensor([pool_index]), pool_size)
    mask = available_ids(probs, _tensor([order_seed]), _tensor([coin_seed]), start, head)
    return {"order_seed": order_seed, "coin_seed": coin_seed, "pool_index": pool_index, "pool_size": pool_size,
            "head": head, "vocab_size": GOLDEN_VOCAB, "mask": "".join("1" if b else "0" for b in mask[0].tolist())}


def _codable_case(scheme: str, params: dict) -> dict:
    """Balance or Vanilla end to end on SCHEME_TOKENS: the scored pairs, each pair's
    availability under the K partitions, payload and p-value."""
    key = create_key(scheme, params, secret=bytes(range(32)))
    detector = create_detector(key, proxy=GoldenProxy() if scheme == "balance" else None)
    (pairs,) = detector.pairs([SCHEME_TOKENS])
    result = detector.detect(SCHEME_TOKENS)
    return {"secret": key.secret.hex(), "params": key.config.to_params(), "key_id": key.key_id, "tokens": SCHEME_TOKENS,
            "scored": torch.cat([pairs.contexts, pairs.tokens[:, None]], dim=1).tolist(),
            "available": ["".join("1" if b else "0" for b in row) for row in pairs.available.tolist()],
            "num_scored_tokens": result.num_scored_tokens, "payload": result.payload,
            "log10_p_value": result.log10_p_value.hex()}


def compute() -> dict:
    """Every vector the golden file pins, computed with the current code."""
    seeds = []
    for key in KEYS:
        for salt in SALTS:
            for context in CONTEXTS:
                words = _tensor([split_key(key)])
                seed = int(context_seeds(words, _tensor([salt]), _tensor([context]).reshape(1, len(context)))[0])
                seeds.append({"key": str(key), "salt": salt, "context": context, "seed": seed})
    words = []
    for seed in (0, 1, seeds[7]["seed"], 0xFFFFFFFF):
        row = token_words(_tensor([seed]), _tensor(TOKENS)).tolist()
        words.append({"seed": seed, "tokens": TOKENS, "words": row,
                      "shards_s4": fastrange(_tensor(row), 4).tolist(), "shards_s37": fastrange(_tensor(row), 37).tolist()})
    masks = []
    for key, salt, context, shards, preferred, vocab in SHARD_CASES:
        pref = preferred - (1 << 64) if preferred >= 1 << 63 else preferred  # stored as a signed int64 word
        mask = preferred_mask(_tensor([split_key(key)]), _tensor([salt]), _tensor([context]), _tensor([shards]),
                              _tensor([pref]), vocab)
        masks.append({"key": str(key), "salt": salt, "context": context, "shard_count": shards,
                      "preferred": str(preferred), "vocab_size": vocab, "mask": "".join("1" if b else "0" for b in mask[0].tolist())})
    kgw = [_scheme_case("kgw", params) for params in KGW_CASES]
    mpac = [_scheme_case("mpac", params) for params in MPAC_CASES]
    majormark = [_scheme_case("majormark", params) for params in MAJORMARK_CASES]
    majormark_plus = [_scheme_case("majormark+", params) for params in MAJORMARK_PLUS_CASES]
    vanilla = [_codable_case("vanilla", params) for params in VANILLA_CASES]
    balance = [_codable_case("balance", params) for params in BALANCE_CASES]
    synonym = [_synonym_case(params) for params in SYNONYM_CASES]
    splits = [_split_case(*case) for case in SPLIT_CASES]
    subkeys = [{"secret": secret.hex(), "scheme": "kgw", "purpose": purpose,
                "subkey": str(derive_subkey(secret, PRF_VERSION, "kgw", purpose))}
               for secret in (bytes(32), bytes(range(32))) for purpose in ("shard", "position")]
    return {
        "schema_version": SCHEMA_VERSION,
        "prf_version": PRF_VERSION,
        "mix32": [{"x": x, "mix32": int(mix32(_tensor([x]))[0])} for x in MIX_INPUTS],
        "context_seeds": seeds,
        "token_words": words,
        "preferred_masks": masks,
        "kgw": kgw,
        "mpac": mpac,
        "majormark": majormark,
        "majormark+": majormark_plus,
        "balanced_splits": splits,
        "vanilla": vanilla,
        "balance": balance,
        "synonym": synonym,
        "subkeys": subkeys,
    }


def environment() -> dict:
    """Where the file was generated; recorded for humans, never compared."""
    return {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine()}


def comparable(data: dict) -> dict:
    return {k: v for k, v in data.items() if k != "environment"}


LIBM_FIELDS = ("log10_p_value",)
"""Fields computed through libm (lgamma, log1p, ...), stored as hex floats and compared at a
relative tolerance of 1e-9, as tests/test_goldens.py does: a few ulp differ between builds."""


def reproduces(committed, computed, field: str = "") -> bool:
    """Whether ``computed`` equals ``committed``: exactly, except ``LIBM_FIELDS`` at rel 1e-9."""
    if isinstance(committed, dict) and isinstance(computed, dict):
        return committed.keys() == computed.keys() and all(reproduces(committed[k], computed[k], k) for k in committed)
    if isinstance(committed, list) and isinstance(computed, list):
        return len(committed) == len(computed) and all(reproduces(a, b, field) for a, b in zip(committed, computed))
    if field in LIBM_FIELDS and isinstance(committed, str) and isinstance(computed, str):
        return math.isclose(float.fromhex(committed), float.fromhex(computed), rel_tol=1e-9, abs_tol=0.0)
    return committed == computed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="compare the code with the committed file")
    group.add_argument("--candidate", action="store_true", help="write prf_v1.candidate.json instead")
    args = parser.parse_args(argv)
    data = compute()
    if args.check:
        committed = json.loads(GOLDEN.read_text())
        if not reproduces(comparable(committed), data):
            print(f"{GOLDEN} differs from what the code computes", file=sys.stderr)
            return 1
        print(f"{GOLDEN.name}: ok")
        return 0
    target = HERE / "prf_v1.candidate.json" if args.candidate else GOLDEN
    target.write_text(json.dumps({**data, "environment": environment()}, indent=1) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
