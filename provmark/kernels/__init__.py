"""Pure compute, no I/O: the keyed PRF and the per-step logit operations built on it.

Each operation has a torch reference (the specification and the CPU path) and a Triton kernel;
the public function sends CUDA tensors to the kernel when Triton is installed (``HAS_TRITON``).
"""

from provmark.kernels._triton import HAS_TRITON
from provmark.kernels.balanced_split import available_ids
from provmark.kernels.fused_sampling import FusedSampler, fused_sample, sampling_seed_table, sampling_seeds
from provmark.kernels.prf import PRF_VERSION, context_seeds, fastrange, mix32, split_key, token_words
from provmark.kernels.repeated_context import RepeatedContexts, repeated_context_mask
from provmark.kernels.shard_bias import MAX_SHARDS, preferred_mask, select_positions, shard_bias

__all__ = [
    "FusedSampler",
    "HAS_TRITON",
    "MAX_SHARDS",
    "PRF_VERSION",
    "RepeatedContexts",
    "available_ids",
    "context_seeds",
    "fastrange",
    "fused_sample",
    "mix32",
    "preferred_mask",
    "repeated_context_mask",
    "sampling_seed_table",
    "sampling_seeds",
    "select_positions",
    "shard_bias",
    "split_key",
    "token_words",
]
