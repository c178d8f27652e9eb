"""Fair admission of verification work in one server process, and its cancellation.

Detection is CPU work run off the event loop. Left to one shared pool, a client sending the
heaviest verifications the limits allow (long texts under synonym and balance keys, issue 16's
noisy neighbour) fills every thread and everyone else's cheap verification queues behind it. So a
verification is sorted, before any of its text is read, by an upper bound on its work
(``limits.work_bound``):

- **light** (at most ``limits.HEAVY_WORK``): run in one of the ``light_slots`` threads of the shared
  pool, as before;
- **heavy**: run in a lane of its own: ``heavy_slots`` threads, whose detection (the expensive
  part: ``detect_key``) runs in a separate process at the lowest CPU priority (nice 19) when
  ``heavy_processes`` is on (``provmark serve``). A thread at low priority is not enough: it holds
  Python's GIL while it scores, so the light threads and the event loop of its process wait for it
  (the first noisy-neighbour runs measured B's p99 at 1.4 s that way); a process shares no GIL, and
  the kernel gives a core to light work first. A client (API token, or address) has at most
  ``per_client`` heavy verifications in flight; one more is a 429. At most ``queue`` heavy
  verifications wait for a thread; one more is a 503. Both say in Retry-After how long the lane's
  recent verifications took.

**Cancellation.** A ``Cancellation`` is set from the event loop (the client disconnected, the
server is shutting down) and read by the detection thread between keys and between texts of a
capped scheme (``Provenance.verify``), which then stops with ``VerificationCancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import anyio

from provmark.api.errors import APIError, RateLimitedError, RetryLaterError

__all__ = ["Admission", "Cancellation", "ServiceBusyError", "VerificationCancelled", "detect_key"]

_log = logging.getLogger(__name__)
_HEAVY_NICE = 19
_PR_SET_PDEATHSIG = 1


class ServiceBusyError(RetryLaterError):
    """The heavy lane's queue is full: 503 with Retry-After."""

    status = 503
    kind = "busy"


class VerificationCancelled(APIError):
    """Detection stopped on a ``Cancellation`` (the answer is a 503, when anyone is left to read it)."""

    status = 503
    kind = "cancelled"

    def __init__(self, reason: str):
        super().__init__(f"verification cancelled: {reason}")
        self.reason = reason


class Cancellation:
    """A flag the event loop sets and a detection thread reads: ``check()`` raises
    ``VerificationCancelled`` once this flag, or a parent's (the server's shutdown flag), is set."""

    def __init__(self, parent: Cancellation | None = None):
        self._event = threading.Event()
        self.reason: str | None = None
        self._parent = parent
        self.progress = (0, 0)
        """(keys done, keys) of the detection it guards, for the log line when it stops."""

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
            raise VerificationCancelled(reason)


def detect_key(watermark, texts, token_ids, alpha: float, issued):
    """(presence results, record tests or Nones) of ``texts`` under one key: the detection step of
    ``Provenance.verify``, run in the verify thread or, for the heavy lane, in its process.
    ``issued``: the key's issued numbers (uint64 array, ``Registry.issued_numbers``; empty: no record test)."""
    return watermark.detect_and_attribute(texts, issued, alpha=alpha, token_ids=token_ids)


_CHILD: dict = {}


def _start_child(model_path: str | None) -> None:
    """A heavy-lane process: lowest CPU priority, one torch thread, the serving models on first use."""
    import torch

    from provmark.watermark.models import Models

    with contextlib.suppress(OSError):
        os.nice(_HEAVY_NICE)
    with contextlib.suppress(OSError, AttributeError):  # Linux: end with the server, even mid-detection
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the server was gone before the line above
            os._exit(0)
    torch.set_num_threads(1)
    _CHILD["models"] = Models(model_path)
    _CHILD["watermarks"] = {}


def _detect_in_child(key, texts, token_ids, alpha: float, issued):
    from provmark.front import Watermark

    watermarks = _CHILD["watermarks"]
    if key.key_id not in watermarks:
        if len(watermarks) >= 256:
            watermarks.clear()
        watermarks[key.key_id] = Watermark(key, _CHILD["models"])
    return detect_key(watermarks[key.key_id], texts, token_ids, alpha, issued)


class Admission:
    """The light and heavy lanes of one server process (module docstring)."""

    def __init__(self, *, light_slots: int, heavy_slots: int = 1, per_client: int = 1, queue: int = 4,
                 heavy_processes: bool = False, model_path: str | None = None):
        if min(light_slots, heavy_slots, per_client) < 1 or queue < 0:
            raise ValueError(f"light_slots, heavy_slots and per_client must be >= 1 and queue >= 0, got "
                             f"{light_slots}, {heavy_slots}, {per_client}, {queue}")
        self.light = anyio.CapacityLimiter(light_slots)
        self.heavy_slots = heavy_slots
        self.per_client = per_client
        self.queue = queue
        self._executor: ThreadPoolExecutor | None = None
        self.heavy_processes = heavy_processes
        self._model_path = model_path
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._clients: dict[str, int] = {}  # heavy verifications in flight or waiting, per client
        self._admitted = 0
        self._seconds = 1.0  # running mean duration of a heavy verification, for Retry-After

    def _heavy_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.heavy_slots, thread_name_prefix="provmark-heavy")
            return self._executor

    def start(self) -> None:
        """Start the heavy lane's processes now (``heavy_processes``), not on the first heavy verification."""
        if self.heavy_processes:
            self._processes().submit(int).result()

    def _processes(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise VerificationCancelled("the server is shutting down")
            if self._pool is None:
                # spawn, not fork: the server process runs threads, which fork would copy mid-lock
                self._pool = ProcessPoolExecutor(self.heavy_slots, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_start_child, initargs=(self._model_path,))
            return self._pool

    def detector(self, heavy: bool):
        """The ``detect_key`` a verification in this lane runs: here, or in the heavy lane's process."""
        if not (heavy and self.heavy_processes):
            return detect_key

        def in_process(watermark, texts, token_ids, alpha, issued):
            pool = self._processes()
            try:
                return pool.submit(_detect_in_child, watermark.key, list(texts), None if token_ids is None
                                   else [list(row) for row in token_ids], alpha, issued).result()
            except BrokenProcessPool:
                # The process died (killed, out of memory, a signal to the server's group): this request
                # fails whole (the next key would start a process only to stop at shutdown); the next
                # heavy request starts another.
                with self._lock:
                    if self._pool is pool:
                        self._pool = None
                raise ServiceBusyError("the heavy verification lane's process stopped; retry", retry_after=1) from None

        return in_process

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
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when serve --shutdown-timeout runs out: stop
            # the detection, and answer 503 in the JSON shape rather than leave uvicorn to write a 500.
            cancel.cancel("the server is shutting down")
            _log.warning("verify cancelled (the server is shutting down) after %d of %d keys", *cancel.progress)
            raise VerificationCancelled("the server is shutting down") from None

    def close(self) -> None:
        """Cancel heavy verifications still waiting for a thread or a process (the server is shutting
        down); the detection running finishes its text (``Provenance.verify`` checks between them)."""
        with self._lock:
            self._closed = True
        for executor in (self._executor, self._pool):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
