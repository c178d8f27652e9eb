"""What every generation-time scheme provides: a frozen config and per-row step parameters."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import torch

from provmark.errors import ParameterError
from provmark.kernels.prf import context_seeds, fastrange, split_key
from provmark.kernels.shard_bias import select_positions, shard_bias
from provmark.watermark import subkeys

if TYPE_CHECKING:
    from provmark.watermark.keys import WatermarkKey

__all__ = ["SchemeConfig", "StepParams", "Watermarker", "positions"]


def positions(position_key: tuple[int, int], contexts: torch.Tensor, num_positions: int) -> torch.Tensor:
    """Position (MPAC digit, MajorMark+ block) each context carries, int64 (N,): fastrange of
    its seed under the "position" sub-key, salt 0."""
    n = contexts.shape[0]
    keys = torch.tensor([position_key], dtype=torch.int64, device=contexts.device).expand(n, 2)
    seeds = context_seeds(keys, torch.zeros(n, dtype=torch.int64, device=contexts.device), contexts)
    return fastrange(seeds, num_positions)


@dataclass(frozen=True, kw_only=True)
class SchemeConfig:
    """Base of the per-scheme configs; subclasses validate every field in ``__post_init__``."""

    scheme: ClassVar[str]
    supports_payload: ClassVar[bool] = False
    """Whether a key carries a payload (multi-bit); such a config also has ``bits`` and ``capacity``."""
    stored_defaults: ClassVar[Mapping[str, object]] = {}
    """What a field means when stored parameters lack it (a key file or registry row written before
    the field existed), where that differs from its default for new keys: the value that keeps
    such a key's results as they were (``schemes.stored_config``)."""
    context_width: int

    def to_params(self) -> dict:
        """The config's fields as a JSON-ready dict (what a key file stores under ``params``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class StepParams(NamedTuple):
    """Per-row inputs of ``kernels.shard_bias`` for one generation step (all (B,) but keys (B, 2)).

    With ``position_keys`` (B, 2), salts and preferred are (B, L) tables over the payload
    positions and the op picks each row's column from its context (MPAC, MajorMark+,
    Vanilla-Marking's segments). With ``pool_keys`` (B, 2), the salts are messages and the op
    turns each into its pool index at the context (Vanilla-Marking, ``kernels.shard_bias.pool_salts``).
    Either way the parameters stay constant for a whole generation."""

    keys: torch.Tensor
    salts: torch.Tensor
    shard_counts: torch.Tensor
    preferred: torch.Tensor
    deltas: torch.Tensor
    position_keys: torch.Tensor | None = None
    pool_keys: torch.Tensor | None = None
    pool_bits: int = 0
    """k: the pool has 2**k partitions (with ``pool_keys``)."""

    def resolved(self, contexts: torch.Tensor) -> StepParams:
        """The same step with each row's table column and pool index already chosen for
        ``contexts`` (B, h): salts and preferred (B,), no position or pool keys."""
        salts, preferred = select_positions(self.position_keys, contexts, self.salts, self.preferred, self.pool_keys,
                                            self.pool_bits)
        return self._replace(salts=salts, preferred=preferred, position_keys=None, pool_keys=None, pool_bits=0)


class Watermarker(abc.ABC):
    """Turns a key (and a payload per row, for multi-bit schemes) into shard-bias parameters."""

    uses_proxy: ClassVar[bool] = False
    """Whether the scheme reads a proxy LM's distribution (its constructor takes ``proxy=``)."""
    skips_repeated_contexts: ClassVar[bool] = True
    """Whether generation leaves a step plain when its context already occurred in the row
    (``kernels.repeated_context``); the detector of such a scheme scores first occurrences."""
    shard_rule: ClassVar[bool] = True
    """Whether ``bias`` is the shard rule of ``step_params`` (so a fused sampler may apply the
    bias itself from the step parameters); False for a scheme that overrides ``bias``."""

    def __init__(self, key: WatermarkKey):
        self.key = key
        self.config = key.config
        self.context_width = key.config.context_width
        self._shard_key = split_key(key.subkey(subkeys.SHARD))
        self._rows: tuple[tuple, object] | None = None
        self._params: tuple[tuple, StepParams] | None = None

    def payload_rows(self, payloads, build):
        """Per-row constants ``build(payloads)`` of a multi-bit scheme, cached for the last
        payload list (generation asks for the same rows at every step)."""
        if payloads is None or any(p is None for p in payloads):
            raise ParameterError(f"{self.key.scheme} carries a payload: give one per row (--payload on the command line)")
        if self._rows is None or self._rows[0] != tuple(payloads):
            self._rows = (tuple(payloads), build(payloads))
        return self._rows[1]

    def constant_params(self, cache_key: tuple, build) -> StepParams:
        """``build()``, made once per ``cache_key`` (the last one is kept): a generation asks for
        the same rows at every step, and on a GPU rebuilding them would copy them over each time."""
        if self._params is None or self._params[0] != cache_key:
            self._params = (cache_key, build())
        return self._params[1]

    def key_words(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """int64 (B, 2) copy of the (low, high) words of the colouring sub-key for every row."""
        return torch.tensor([self._shard_key], dtype=torch.int64).expand(batch, 2).contiguous().to(device)

    def bias(self, input_ids, scores, contexts, payloads, skip, start):
        """New logits for one step: ``scores`` (B, V) with each row's preferred ids raised.

        ``input_ids`` (B, T) is the whole sequence so far (generation began at column
        ``start``), ``contexts`` (B, h) its last h ids, ``skip`` (B,) bool or None the rows to
        leave plain. Shard schemes go through ``kernels.shard_bias``; a scheme with another rule
        overrides this."""
        params = self.step_params(contexts, payloads)
        return shard_bias(
            scores,
            keys=params.keys,
            salts=params.salts,
            contexts=contexts,
            shard_counts=params.shard_counts,
            preferred=params.preferred,
            deltas=params.deltas if params.deltas.device == scores.device else params.deltas.to(scores.device),
            skip=skip,
            position_keys=params.position_keys,
            pool_keys=params.pool_keys,
            pool_bits=params.pool_bits,
        )

    @abc.abstractmethod
    def step_params(self, contexts: torch.Tensor, payloads: list | None) -> StepParams:
        """Parameters of each row for one step, given contexts int64 (B, h) and the row payloads
        (position tables and pool keys where the context picks the payload position or the
        salt). They are the same at every step of a generation, so it may build them once."""
