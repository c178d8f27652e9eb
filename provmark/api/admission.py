"""Fair admission of verification work in one server process, and its cancellation.

Detection is CPU work run off the event loop. Left to one shared pool, a client sending the
heaviest verifications the limits allow (long texts under synonym and balance keys, issue 16's
noisy neighbour) fills every thread and everyone else's cheap verification queues behind it. So a
verification is sorted, before any of its text is read, by an upper bound on its work
(``limits.work_bound``):

- **light** (at most ``limits.HEAVY_WORK``): run in one of the ``light_slots`` threads of the shared
  pool, as before;
- **heavy**: run in a lane of its own, ``heavy_slots`` threads started at the lowest CPU priority
  (nice 19, Linux applies it per thread), so the kernel gives a core to light work first. A client
  (API token, or address) has at most ``per_client`` heavy verifications in flight; one more is a
  429. At most ``queue`` heavy verifications wait for a thread; one more is a 503. Both say in
  Retry-After how long the lane's recent verifications took.

**Cancellation.** A ``Cancellation`` is set from the event loop (the client disconnected, the
server is shutting down) and read by the detection thread between keys and between texts of a
capped scheme (``Provenance.verify``), which then stops with ``VerificationCancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anyio

from provmark.api.errors import APIError, RateLimitedError

__all__ = ["Admission", "Cancellation", "ServiceBusyError", "VerificationCancelled"]

_log = logging.getLogger(__name__)
_HEAVY_NICE = 19


class ServiceBusyError(APIError):
    """The heavy lane's queue is full: 503 with Retry-After."""

    status = 503
    kind = "busy"

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class VerificationCancelled(APIError):
    """Detection stopped on a ``Cancellation`` (the answer is a 503, when anyone is left to read it)."""

    status = 503
    kind = "cancelled"


class Cancellation:
    """A flag the event loop sets and a detection thread reads: ``check()`` raises
    ``VerificationCancelled`` once this flag, or a parent's (the server's shutdown flag), is set."""

    def __init__(self, parent: Cancellation | None = None):
        self._event = threading.Event()
        self.reason: str | None = None
        self._parent = parent

    def cancel(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def cancelled(self) -> str | None:
        """Why work should stop (None: it should not)."""
        if self._event.is_set():
            return self.reason
        return None if self._parent is None else self._parent.cancelled()

    def check(self) -> None:
        reason = self.cancelled()
        if reason is not None:
            raise VerificationCancelled(f"verification cancelled: {reason}")


def _lower_priority() -> None:
    """Start a heavy-lane thread at nice 19 (per thread on Linux; a no-op where it is unsupported)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _HEAVY_NICE)


class Admission:
    """The light and heavy lanes of one server process (module docstring)."""

    def __init__(self, *, light_slots: int, heavy_slots: int = 1, per_client: int = 1, queue: int = 4):
        if min(light_slots, heavy_slots, per_client) < 1 or queue < 0:
            raise ValueError(f"light_slots, heavy_slots and per_client must be >= 1 and queue >= 0, got "
                             f"{light_slots}, {heavy_slots}, {per_client}, {queue}")
        self.light = anyio.CapacityLimiter(light_slots)
        self.heavy_slots = heavy_slots
        self.per_client = per_client
        self.queue = queue
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._clients: dict[str, int] = {}  # heavy verifications in flight or waiting, per client
        self._admitted = 0
        self._seconds = 1.0  # running mean duration of a heavy verification, for Retry-After

    def _heavy_executor(self) -> ThreadPoolExecutor:
        if self._executor is None:  # first heavy verification: its threads start at low priority
            self._executor = ThreadPoolExecutor(self.heavy_slots, thread_name_prefix="provmark-heavy",
                                                initializer=_lower_priority)
        return self._executor

    async def run(self, fn, *, heavy: bool, client: str | None, cancel: Cancellation):
        """``fn()`` in its lane; 429 or 503 (Retry-After) when the heavy lane refuses it. When the
        awaiting task is cancelled (the server's graceful shutdown ran out), ``cancel`` is set, so
        the thread stops at its next check."""
        if not heavy:
            return await self._await(anyio.to_thread.run_sync(fn, limiter=self.light), cancel)
        key = client or "anonymous"
        with self._lock:
            mine = self._clients.get(key, 0)
            wait = self._seconds * (1 + max(0, self._admitted - self.heavy_slots)) / self.heavy_slots
            if mine >= self.per_client:
                raise RateLimitedError(
                    f"{mine} heavy verification(s) of this client in flight, the most one client may have "
                    f"(long texts under synonym or balance keys run one at a time per client)", retry_after=wait)
            if self._admitted >= self.heavy_slots + self.queue:
                raise ServiceBusyError(
                    f"{self._admitted} heavy verifications running or queued, the most this server process "
                    f"takes; retry later", retry_after=wait)
            self._clients[key] = mine + 1
            self._admitted += 1
        began = time.monotonic()
        try:
            future = asyncio.get_running_loop().run_in_executor(self._heavy_executor(), fn)
            return await self._await(future, cancel)
        finally:
            with self._lock:
                self._admitted -= 1
                self._clients[key] -= 1
                if not self._clients[key]:
                    del self._clients[key]
                self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - began)

    @staticmethod
    async def _await(work, cancel: Cancellation):
        try:
            return await work
        except BaseException:
            cancel.cancel("the request was cancelled")  # e.g. shutdown's grace period ran out
            raise

    def close(self) -> None:
        """Cancel heavy verifications still waiting for a thread (the server is shutting down)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
