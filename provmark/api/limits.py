"""The API's limits: per-client token buckets (in the memory of each server process, so a restart
refills every bucket, and N worker processes split each limit N ways) and the defaults of the rate
and request-size limits.

Kept free of heavy imports: the command line reads the defaults for ``provmark serve``'s help."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

__all__ = ["ATTRIBUTION_WORK_WEIGHT", "DEFAULT_ATTRIBUTION_TOKENS", "DEFAULT_BURST", "DEFAULT_HEAVY_PER_CLIENT",
           "DEFAULT_HEAVY_QUEUE", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_TOKENS_SCORED", "DEFAULT_PROXY_TOKENS",
           "DEFAULT_RATE", "DEFAULT_SHUTDOWN_TIMEOUT", "DEFAULT_TEXT_WORDS", "HEAVY_WORK", "SCHEME_WORK_WEIGHTS",
           "TOKENS_PER_REQUEST", "RateLimiter", "WorkLimits", "retry_after", "work_bound", "work_weight"]

DEFAULT_RATE = 20.0
"""Requests per second per API token (per address without one)."""
DEFAULT_BURST = 40
"""Requests a client may make at once before the rate applies."""
DEFAULT_MAX_BODY_BYTES = 1 << 20
"""Request bodies above this get 413."""
DEFAULT_MAX_TOKENS_SCORED = 200_000
"""Tokens (words, for the synonym scheme) one verification may score, summed over its texts and keys;
more is a 422."""
DEFAULT_PROXY_TOKENS = 256
"""Tokens of each text a Balance-Marking key scores: each runs the proxy LM (issue 16 measured 26.8 s
for 4,002 tokens); past them the result is marked ``capped_at``."""
DEFAULT_TEXT_WORDS = 4_000
"""Words of each text a synonym key scores: WordNet and morphology per word (issue 16 measured 13 s for a
200,000-character text); past them the result is marked ``capped_at``."""
DEFAULT_ATTRIBUTION_TOKENS = 2_048
"""Tokens of each text verify's zero-shot attribution may score (one forward pass of the serving model
over the text: benchmarks/results/zero_shot.txt measures the cost per 1,000 tokens on a CPU); a longer
text asked with ``attribution`` is refused (422)."""
ATTRIBUTION_WORK_WEIGHT = 2_100.0
"""Cost of one token of verify's zero-shot attribution (a forward pass of the serving model), in kgw
tokens: 3.9 ms a token with the embedded model on one quiet core (``benchmarks.zero_shot --cost``)
against 1.85 us a kgw token (``verify_cost.txt``, run 2), rounded."""
TOKENS_PER_REQUEST = 2_000
"""The rate limiter charges one request per this much work: tokens scored, each weighted by its scheme's
``SCHEME_WORK_WEIGHTS`` (2,000 kgw tokens, 4 to 11 ms of one core in ``verify_cost.txt``)."""
SCHEME_WORK_WEIGHTS = {"kgw": 1.0, "mpac": 1.7, "majormark": 1.5, "majormark+": 3.1, "vanilla": 18.0,
                       "synonym": 13.0, "balance": 2_300.0}
"""Verification cost of one scored token (word, for synonym) of each scheme, in kgw tokens: measured by
``benchmarks.verify_cost`` (``benchmarks/results/verify_cost.txt``, natural text at serve's caps, one
core, run 1: 5.4 us per kgw token including the tokenizer, 70 us per synonym word (WordNet and
morphology), 12.6 ms per balance token (a proxy LM pass each)), rounded; a quieter run 2 gave ratios
within about 25% of these. A multi-bit key was measured with 100
records issued (the record test scores each). majormark+'s weight is run 3's (3.1, down from 78,
after its record test's tables and pmf grids were cached); run 3's other ratios are within 35% of
these. A scheme not listed weighs 1."""
HEAVY_WORK = 10 * TOKENS_PER_REQUEST
"""Verifications whose work may exceed this (``work_bound``) run in the heavy lane (``api.admission``)."""
DEFAULT_HEAVY_PER_CLIENT = 1
"""Heavy verifications one client (API token, or address) may have in flight per server process."""
DEFAULT_HEAVY_QUEUE = 4
"""Heavy verifications that may wait for the heavy lane's thread per server process; more get 503."""
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
"""Seconds ``provmark serve`` lets requests in flight finish after SIGTERM before cancelling them."""


def work_weight(scheme: str) -> float:
    """``SCHEME_WORK_WEIGHTS`` of ``scheme`` (1 when not listed)."""
    return SCHEME_WORK_WEIGHTS.get(scheme, 1.0)


@dataclass(frozen=True, kw_only=True)
class WorkLimits:
    """What one verification may cost (``serve --max-tokens-scored``, ``--max-proxy-tokens``,
    ``--max-text-words``; ``attribution_tokens`` has no option yet)."""

    max_tokens_scored: int = DEFAULT_MAX_TOKENS_SCORED
    proxy_tokens: int = DEFAULT_PROXY_TOKENS
    text_words: int = DEFAULT_TEXT_WORDS
    attribution_tokens: int = DEFAULT_ATTRIBUTION_TOKENS
    heavy_per_client: int = DEFAULT_HEAVY_PER_CLIENT
    """``serve --max-heavy-per-client``: see ``api.admission``."""
    heavy_queue: int = DEFAULT_HEAVY_QUEUE
    """``serve --heavy-queue``: see ``api.admission``."""


def work_bound(chars: list[int], schemes: list[str], limits: WorkLimits) -> float:
    """An upper bound on the work (kgw tokens, ``SCHEME_WORK_WEIGHTS``) of verifying texts of these
    lengths in characters under keys of these schemes, read from the lengths alone:
    a token or a word covers at least one character, two words at least three, and the caps hold.
    ``api.admission`` sorts verifications by it before reading their text."""
    from provmark.errors import ProvmarkError
    from provmark.watermark.schemes import get_scheme

    total = 0.0
    for name in schemes:
        try:
            scheme = get_scheme(name)
        except ProvmarkError:  # a stored scheme this version lacks: it fails alone in verify, scoring nothing
            continue
        if scheme.uses_proxy:
            scored = [min(n, limits.proxy_tokens) for n in chars]
        elif scheme.reads_text:
            scored = [min((n + 1) // 2, limits.text_words) for n in chars]
        else:
            scored = chars
        total += work_weight(name) * sum(scored)
    return total


class RateLimiter:
    """``rate`` requests per second per client, with bursts of up to ``burst`` requests, across
    ``processes`` server processes that each hold one of these limiters.

    A client is an API token, keyed by the token's SHA-256 digest, or the peer address for
    requests without a token. ``rate`` 0 turns limiting off. Buckets idle long enough to be full
    again are dropped, so memory stays bounded by the clients active in the last ``burst / rate``
    seconds.

    Buckets live in process memory and processes share nothing, so each of ``processes`` limiters
    enforces its share: ``rate / processes`` per second with bursts of ``burst // processes`` (at
    least 1, so a ``burst`` below ``processes`` is exceeded: each process still admits one request).
    A client is therefore never admitted more than ``rate`` and ``burst`` in total, but may be
    throttled early when its requests pile up on one process (the kernel picks the process that
    accepts each connection). ``rate`` and ``burst`` keep the totals, for error messages.
    """

    def __init__(self, *, rate: float, burst: int, processes: int = 1, clock=time.monotonic):
        if rate < 0 or burst < 1 or processes < 1:
            raise ValueError(f"rate must be >= 0, burst >= 1 and processes >= 1, got rate {rate!r}, "
                             f"burst {burst!r}, processes {processes!r}")
        self.rate = float(rate)
        self.burst = int(burst)
        self.processes = int(processes)
        self._rate = self.rate / self.processes  # this process's share
        self._burst = max(1, self.burst // self.processes)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, time of last update)
        self._lock = threading.Lock()
        self._last_sweep = clock()

    def acquire(self, client: str, cost: float = 1.0, *, prepaid: float = 0.0) -> float:
        """Take ``cost`` requests (work, for a verification: ``TOKENS_PER_REQUEST``) from ``client``'s
        bucket: 0.0 when allowed, else seconds until it would be. A cost above the burst passes on a
        full bucket and leaves it in debt for the rest, which the rate repays before the client's next
        request passes: heavy work is paid in full, so a client's sustained work stays at ``rate``.
        ``prepaid``: what the same request took already (the middleware's one request), which counts
        toward the full bucket."""
        if self._rate == 0:
            return 0.0
        need = max(0.0, min(cost, self._burst - prepaid))
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.get(client, (self._burst, now))
            tokens = min(self._burst, tokens + (now - then) * self._rate)
            if tokens >= need:
                self._buckets[client] = (tokens - cost, now)
                self._sweep(now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (need - tokens) / self._rate

    def _sweep(self, now: float) -> None:
        refill = self._burst / self._rate
        if now - self._last_sweep < refill:
            return
        self._last_sweep = now
        for client, (tokens, then) in list(self._buckets.items()):
            if tokens + (now - then) * self._rate >= self._burst:
                del self._buckets[client]


def retry_after(seconds: float) -> str:
    """Whole seconds for a ``Retry-After`` header (at least 1)."""
    return str(max(1, math.ceil(seconds)))
