"""KGW detection: count green tokens among unique (context, token) pairs, exact binomial tail.

Under the null (text written without the key) each unique pair is green independently with
probability gamma = k/S (the PRF colours each id independently), so the number of green pairs is
Binomial(n, gamma) and the p-value is its exact upper tail, computed in log space. The score is
the z-statistic (g - gamma n) / sqrt(n gamma (1 - gamma)) of the KGW paper, for ranking only.
"""

from __future__ import annotations

import math

import torch

from provmark.detector.base import Evidence, PairDetector
from provmark.detector.stats import binomial_log_sf
from provmark.watermark.kgw import KGWConfig

__all__ = ["KGWDetector"]


class KGWDetector(PairDetector):
    """Zero-bit KGW detector; needs only the key (no model)."""

    def __init__(self, key, **kwargs):
        super().__init__(key, **kwargs)
        config: KGWConfig = key.config
        self.gamma = config.green_shards / config.shard_count  # exact k/S
        self._shard_count = config.shard_count
        self._green = config.green_shards

    def green_mask(self, contexts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Bool (N,): whether each token is green under its context (the embedder's exact rule)."""
        salts = torch.zeros(tokens.shape[0], dtype=torch.int64)
        return self.shards(contexts, tokens, salts, self._shard_count) < self._green

    def _score_tokens(self, contexts, tokens):
        return self.green_mask(contexts, tokens)

    def _aggregate_scores(self, token_scores, seq_index, num_sequences):
        trials = torch.bincount(seq_index, minlength=num_sequences).tolist()
        greens = torch.bincount(seq_index, weights=token_scores.double(), minlength=num_sequences).round().long().tolist()
        out = []
        for g, n in zip(greens, trials):
            if n == 0:
                out.append(Evidence(0.0, 0.0))
                continue
            z = (g - self.gamma * n) / math.sqrt(n * self.gamma * (1 - self.gamma))
            out.append(Evidence(z, binomial_log_sf(g, n, self.gamma)))
        return out
