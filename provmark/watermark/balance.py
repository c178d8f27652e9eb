"""Balance-Marking and Vanilla-Marking, the codable watermarks of Wang et al., "Towards Codable
Watermarking for Injecting Multi-bits Information to LLMs" (ICLR 2024; research/balance_marking.md).

The payload is cut into segments of b bits (default 20); each segment's value is a message m in
[0, 2**b). At each step the context picks the segment the token carries (the "position" PRF, as
in MPAC), and the message picks one of K partitions of the vocabulary drawn for this context
(the paper's partition pool): the available side of that partition gets +delta.

- **Vanilla-Marking**: the partition is a keyed fair coin per id (shard 1 of S = 2).
- **Balance-Marking**: the partition is cut where the proxy LM's cumulative mass, walked in the
  keyed order of the ids, crosses one half (``kernels.balanced_split``), so both sides carry about
  half the proxy's probability and a dominant id is never penalised.

Choices where provmark departs from the official code, each to fix a pitfall of it:

- *Pool index.* The message maps to partition ``j = c XOR (A m)`` with a context-keyed K x b
  binary matrix A and offset c, K = 2**k (``pool_indices``). For distinct messages the indices
  are pairwise independent and uniform, as with the official hash; being affine over GF(2) is
  what lets the detector score all 2**b messages with one Walsh-Hadamard transform.
- *Segments* are chosen by the context, not by absolute position, so an insertion or deletion
  does not shift every later token into the wrong segment.
- *Proxy ids are the model's ids*: the proxy must share the tokenizer (``watermark.proxy``);
  there is no string mapping between vocabularies. The proxy reads the generated text alone by
  default, as the detector will; ``proxy_context="window"`` reads only the last 10 ids, as the
  official code does, so a span pasted into other text (or text edited far from a position)
  keeps its splits; ``proxy_context="prompt"`` reuses the generating model's own logits instead
  (no second forward pass, weaker detection).
- Every step is watermarked, from the first generated token (the seed needs only the previous
  token); repeated contexts are not skipped, as in the paper. The bias goes to every id, not only
  the model's top 1000.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from provmark.errors import ParameterError
from provmark.kernels.balanced_split import available_ids, partition_starts
from provmark.kernels.prf import context_seeds, split_key
from provmark.kernels.shard_bias import parity, pool_indices
from provmark.kernels.shard_bias import pool_words as _pool_words
from provmark.watermark import subkeys
from provmark.watermark.base import SchemeConfig, StepParams, Watermarker, positions
from provmark.watermark.kgw import validate_context_width, validate_delta
from provmark.watermark.payload import parse_payload, to_bits, to_digits

__all__ = ["PROXY_WINDOW", "VanillaConfig", "BalanceConfig", "VanillaWatermarker", "BalanceWatermarker", "parity", "pool_words",
           "pool_indices", "order_seeds_of", "segments_of"]

MAX_SEGMENT_BITS = 24  # exhaustive decoding holds 2**b counts per segment
MAX_POOL_SIZE = 1 << 12
PROXY_WINDOW = 10
"""Ids the proxy reads with ``proxy_context="window"`` (the official code's prefix length P)."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


ProxyContext = Literal["text", "window", "prompt"]
"""What Balance-Marking's proxy reads (``BalanceConfig.proxy_context``)."""


@dataclass(frozen=True, kw_only=True)
class VanillaConfig(SchemeConfig):
    """Vanilla-Marking parameters (fair-coin partitions, no proxy)."""

    scheme = "vanilla"
    supports_payload = True
    bits: int = 20
    """Payload bits, a multiple of ``segment_bits``."""
    segment_bits: int = 20
    """Bits b of each segment; the decoder tries all 2**b messages of a segment (b <= 24)."""
    pool_size: int = 64
    """Partitions K drawn per context (a power of two); messages are hashed onto them. The
    official code uses 100; decoding cost grows linearly with K."""
    delta: float = 1.5
    """Bias added to the available ids (the official code's default)."""
    context_width: int = 1
    """Previous tokens that seed the partitions (the paper uses 1)."""

    def __post_init__(self):
        if not _is_int(self.segment_bits) or not 1 <= self.segment_bits <= MAX_SEGMENT_BITS:
            raise ParameterError(f"segment_bits must be an integer in [1, {MAX_SEGMENT_BITS}], got {self.segment_bits!r}; 20 is the default")
        if not _is_int(self.bits) or not 1 <= self.bits <= 64 or self.bits % self.segment_bits:
            raise ParameterError(
                f"bits must be an integer in [1, 64] and a multiple of segment_bits ({self.segment_bits}), got {self.bits!r}"
            )
        if not _is_int(self.pool_size) or not 2 <= self.pool_size <= MAX_POOL_SIZE or self.pool_size & (self.pool_size - 1):
            raise ParameterError(f"pool_size must be a power of two in [2, {MAX_POOL_SIZE}], got {self.pool_size!r}; 64 is the default")
        validate_delta(self.delta)
        validate_context_width(self.context_width)

    head = 0
    """Vanilla-Marking splits no proxy head: every id gets the keyed coin."""
    proxy_context = None
    """Vanilla-Marking runs no proxy."""

    @property
    def capacity(self) -> int:
        """Number of distinct payloads, 2**bits."""
        return 1 << self.bits

    @property
    def num_segments(self) -> int:
        return self.bits // self.segment_bits

    @property
    def pool_bits(self) -> int:
        """k = log2(K)."""
        return self.pool_size.bit_length() - 1

    def segments(self, payload) -> list[int]:
        """The message of each segment, most significant segment first."""
        return to_digits(parse_payload(payload, self.capacity), 1 << self.segment_bits, self.num_segments)

    def codeword_bits(self, payload) -> list[int]:
        """The payload's bits, most significant first (what bit accuracy compares)."""
        return to_bits(parse_payload(payload, self.capacity), self.bits)


@dataclass(frozen=True, kw_only=True)
class BalanceConfig(VanillaConfig):
    """Balance-Marking parameters: Vanilla's, plus the size of the proxy head split by mass."""

    scheme = "balance"
    head: int = 256
    """The proxy's most probable ids that are split at half their mass (``kernels.balanced_split``);
    the rest get Vanilla's coin. 0 is Vanilla-Marking."""
    proxy_context: ProxyContext = "text"
    """What the proxy reads at generation. "text": the generated text alone, exactly what the
    detector (which never sees the prompt) will read, at the price of a second forward pass per
    step. "window": the last ``PROXY_WINDOW`` ids of the generated text (the paper's choice), as the
    detector will read them: weaker per token than "text" (the proxy knows less), but a split
    depends only on the 10 ids before it, so a span pasted into other text can be located and
    decoded. "prompt": the prompt and the text, so with the generating model as proxy its own
    logits serve and generation costs nothing extra, but the detector's distributions differ
    from generation's and part of the evidence is lost."""

    def __post_init__(self):
        super().__post_init__()
        if not _is_int(self.head) or not 1 <= self.head <= 1 << 17:
            raise ParameterError(f"head must be an integer in [1, 131072], got {self.head!r}; 256 is the default")
        if self.proxy_context not in get_args(ProxyContext):
            raise ParameterError(f"proxy_context must be 'text', 'window' or 'prompt', got {self.proxy_context!r}")


def pool_words(pool_key: tuple[int, int], contexts: torch.Tensor, segments: torch.Tensor, config: VanillaConfig):
    """The affine map of each context from messages to pool indices: (offset c int64 (N,) in
    [0, K), rows int64 (N, k) b-bit masks). Words come from ``token_word(seed, r)`` for r = 0..k
    under the "pool" sub-key with the segment as salt (``kernels.shard_bias.pool_words``, which
    the kernels apply in generation; the masks drop bits that no b-bit message reads)."""
    n = contexts.shape[0]
    keys = torch.tensor([pool_key], dtype=torch.int64, device=contexts.device).expand(n, 2)
    offsets, rows = _pool_words(keys, segments, contexts, config.pool_bits)
    return offsets, rows & ((1 << config.segment_bits) - 1)


def segments_of(position_key: tuple[int, int], contexts: torch.Tensor, config: VanillaConfig) -> torch.Tensor:
    """int64 (N,): the payload segment each context carries (the "position" PRF; 0 for one)."""
    if config.num_segments == 1:
        return torch.zeros(contexts.shape[0], dtype=torch.int64, device=contexts.device)
    return positions(position_key, contexts, config.num_segments)


class VanillaWatermarker(Watermarker):
    """Each row: the context picks a segment, the segment's message a partition j; the partition
    is shard 1 of S = 2 under salt j.

    The step parameters are the (B, segments) table of messages with the position and pool keys:
    ``kernels.shard_bias`` picks the segment and hashes the message to its pool index at each
    context itself (inside the kernel on a GPU), so they are built once per generation."""

    skips_repeated_contexts = False

    def __init__(self, key):
        super().__init__(key)
        self.position_key = split_key(key.subkey(subkeys.POSITION))
        self.pool_key = split_key(key.subkey(subkeys.POOL))

    def messages(self, payloads) -> torch.Tensor:
        """int64 (B, segments) messages of each row's payload."""
        return self.payload_rows(payloads, lambda rows: torch.tensor([self.config.segments(p) for p in rows], dtype=torch.int64))

    def partition_salts(self, contexts: torch.Tensor, payloads) -> torch.Tensor:
        """int64 (B,) the pool index j of each row at this step (the salt of its partition seed)."""
        return self.step_params(contexts, payloads).resolved(contexts).salts

    def step_params(self, contexts: torch.Tensor, payloads: list | None) -> StepParams:
        config: VanillaConfig = self.config
        batch, device = contexts.shape[0], contexts.device
        messages = self.messages(payloads)
        segments = config.num_segments
        return self.constant_params((tuple(payloads), device), lambda: StepParams(
            keys=self.key_words(batch, device),
            salts=messages.to(device) if segments > 1 else messages[:, 0].to(device),
            shard_counts=torch.full((batch,), 2, dtype=torch.int64, device=device),
            preferred=torch.full(messages.shape if segments > 1 else (batch,), 0b10, dtype=torch.int64, device=device),
            deltas=torch.full((batch,), float(config.delta), device=device),
            # one segment needs no pick: segments_of gives 0 without hashing, as the op does without keys
            position_keys=torch.tensor([self.position_key] * batch, dtype=torch.int64, device=device) if segments > 1 else None,
            pool_keys=torch.tensor([self.pool_key] * batch, dtype=torch.int64, device=device),
            pool_bits=config.pool_bits,
        ))


class BalanceWatermarker(VanillaWatermarker):
    """Vanilla's partition choice, with the partition cut by the proxy's mass.

    Args:
        key: a balance key.
        proxy: a ``watermark.proxy.Proxy``. Required when the key's ``proxy_context`` is "text"
            or "window" (``hook.generate`` builds one over the generating model); with "prompt",
            None uses the generating model's own logits.
    """

    uses_proxy = True
    shard_rule = False

    def __init__(self, key, proxy=None):
        super().__init__(key)
        if proxy is None and key.config.proxy_context != "prompt":
            raise ParameterError(
                f"this balance key's proxy reads the generated text (proxy_context {key.config.proxy_context!r}): give a proxy "
                "(watermark.proxy.Proxy over the generating model), or use hook.generate, which builds one"
            )
        self.proxy = proxy
        self.order_key = split_key(key.subkey(subkeys.ORDER))

    def bias(self, input_ids, scores, contexts, payloads, skip, start):
        config: BalanceConfig = self.config
        batch, device = scores.shape[0], scores.device
        salts = self.partition_salts(contexts, payloads)
        coin_seeds = context_seeds(self.key_words(batch, device), salts, contexts)
        order_seeds = order_seeds_of(self.order_key, contexts)
        if config.proxy_context != "prompt":
            generated = input_ids[:, start:]
            if generated.shape[1] == 0:  # the first token has no text before it; the detector never scores it
                probs = torch.softmax(scores.float(), dim=-1)
            elif config.proxy_context == "window":
                probs = self.proxy.window_probs(generated[:, -PROXY_WINDOW:])
            else:
                probs = self.proxy.step_probs(generated)
        else:
            probs = torch.softmax(scores.float(), dim=-1) if self.proxy is None else self.proxy.step_probs(input_ids)
        starts = partition_starts(salts, config.pool_size)
        available = available_ids(_fit_width(probs, scores.shape[-1]), order_seeds, coin_seeds, starts, config.head)
        out = scores + available.to(scores.dtype) * config.delta
        if skip is not None:
            out = torch.where(skip[:, None], scores, out)
        return out


def order_seeds_of(order_key: tuple[int, int], contexts: torch.Tensor) -> torch.Tensor:
    """int64 (N,) seed of each context's cyclic order of the ids, under the "order" sub-key."""
    n = contexts.shape[0]
    keys = torch.tensor([order_key], dtype=torch.int64, device=contexts.device).expand(n, 2)
    return context_seeds(keys, torch.zeros(n, dtype=torch.int64, device=contexts.device), contexts)


def _fit_width(probs: torch.Tensor, width: int) -> torch.Tensor:
    """The proxy's distribution over the generating model's logit width (models pad their
    output layer to different sizes; ids beyond the shared vocabulary get no mass)."""
    if probs.shape[-1] >= width:
        return probs[:, :width]
    return torch.nn.functional.pad(probs, (0, width - probs.shape[-1]))
