"""A Balance-Marking proxy that remembers the windows it has read, for evaluation runs.

With ``proxy_context="window"`` the proxy's split at a position depends only on the 10 ids before
it, and attacked texts share most windows with the texts they came from: a truncated text shares
all of them, a text pasted into unwatermarked hosts shares all but the seams' (the hosts are the
controls, read unattacked first), and a 5% deletion leaves most untouched. Reading every window
again is most of an evaluation's cost on a CPU, so ``WindowCache`` reads each distinct window
once.

Windows read while ``keep`` is on (the runner turns it on for the unattacked, truncated and pasted
texts) are remembered for the whole run; the others only within one call, which bounds the memory
by the windows of those texts. A window's
head is computed in a different batch than without the cache, so its floats may differ in the
last bits (as generation's batches already do); a split can move only where two ids tie at the
half-mass cut.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from provmark.watermark.proxy import Proxy

__all__ = ["WindowCache"]


class WindowCache(Proxy):
    """A ``Proxy`` whose ``window_heads`` reads each distinct window once (see the module doc)."""

    def __init__(self, model, tokenizer, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        self.keep = False
        """Whether windows read from now on are remembered for the rest of the run."""
        self._kept: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self.windows_read = 0
        """Windows the model has read (for tests and reports)."""

    @torch.no_grad()
    def window_heads(self, sequences: Sequence[Sequence[int]], head: int, window: int,
                     rows_per_pass: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``Proxy.window_heads``, each distinct window read by the model once."""
        keys_of = []
        for seq in sequences:
            seq = [int(t) for t in seq]
            keys_of.append([(head, *seq[max(0, i - window) : i]) for i in range(1, len(seq))])
        known = self._kept
        missing = list(dict.fromkeys(k for keys in keys_of for k in keys if k not in known))
        fresh = {}
        if missing:
            mass, top = self.heads_of_windows([torch.tensor(k[1:], dtype=torch.int64) for k in missing], head,
                                              rows_per_pass)
            fresh = {k: (mass[i], top[i]) for i, k in enumerate(missing)}
            self.windows_read += len(missing)
            if self.keep:
                known.update(fresh)
        out = []
        for keys in keys_of:
            rows = [known[k] if k in known else fresh[k] for k in keys]
            if rows:
                out.append((torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])))
            else:
                out.append((torch.empty((0, head), dtype=torch.float64), torch.empty((0, head), dtype=torch.int64)))
        return out
