"""Pure compute, no I/O: the keyed PRF and the per-step logit operations built on it."""

from provmark.kernels.prf import PRF_VERSION, context_seeds, fastrange, mix32, split_key, token_words
from provmark.kernels.repeated_context import repeated_context_mask
from provmark.kernels.shard_bias import MAX_SHARDS, preferred_mask, shard_bias

__all__ = [
    "MAX_SHARDS",
    "PRF_VERSION",
    "context_seeds",
    "fastrange",
    "mix32",
    "preferred_mask",
    "repeated_context_mask",
    "shard_bias",
    "split_key",
    "token_words",
]
