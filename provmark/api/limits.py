"""The API's limits: per-client token buckets (in memory: one server process, and a restart
refills every bucket) and the defaults of the rate and request-size limits.

Kept free of heavy imports: the command line reads the defaults for ``provmark serve``'s help."""

from __future__ import annotations

import math
import threading
import time

__all__ = ["DEFAULT_BURST", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_RATE", "RateLimiter", "retry_after"]

DEFAULT_RATE = 20.0
"""Requests per second per API token (per address without one)."""
DEFAULT_BURST = 40
"""Requests a client may make at once before the rate applies."""
DEFAULT_MAX_BODY_BYTES = 1 << 20
"""Request bodies above this get 413."""


class RateLimiter:
    """``rate`` requests per second per client, with bursts of up to ``burst`` requests.

    A client is an API token's tenant id, or the peer address for requests without a token.
    ``rate`` 0 turns limiting off. Buckets idle long enough to be full again are dropped, so memory
    stays bounded by the clients active in the last ``burst / rate`` seconds.
    """

    def __init__(self, *, rate: float, burst: int, clock=time.monotonic):
        if rate < 0 or burst < 1:
            raise ValueError(f"rate must be >= 0 and burst >= 1, got rate {rate!r}, burst {burst!r}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, time of last update)
        self._lock = threading.Lock()
        self._last_sweep = clock()

    def acquire(self, client: str) -> float:
        """Take one request from ``client``'s bucket: 0.0 when allowed, else seconds until it would be."""
        if self.rate == 0:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                self._sweep(now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate

    def _sweep(self, now: float) -> None:
        refill = self.burst / self.rate
        if now - self._last_sweep < refill:
            return
        self._last_sweep = now
        for client, (tokens, then) in list(self._buckets.items()):
            if tokens + (now - then) * self.rate >= self.burst:
                del self._buckets[client]


def retry_after(seconds: float) -> str:
    """Whole seconds for a ``Retry-After`` header (at least 1)."""
    return str(max(1, math.ceil(seconds)))
