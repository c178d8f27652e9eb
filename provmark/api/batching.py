"""The generation queue: completions of concurrent callers decoded together, one batch per process.

Each request (``Job``: one prompt's ``n`` choices, or a completion request's prompts) reserves its
rows in a bounded queue before its records are issued (``reserve``: ``QueueFullError`` when full),
then waits in it (``submit``). One worker thread per process takes the waiting jobs first come,
first served, as many whole jobs as fit ``max_batch_rows`` (whatever their keys and sampling
settings: ``watermark.streaming.BatchDecoder`` applies each row's own), and decodes them as one
batch under ``Models.generate_lock``, so a batch never runs beside another generation of the same
process (``/v1/generate``, ``/v1/embed``). Jobs that arrive while a batch runs wait for the next one:
batches are static, rows do not join a running batch. The worker waits ``gather_s`` after the first
job of a batch arrives, so requests sent together are decoded together.

Every sampled token goes to its job as an event the moment the step ends (``Delta``: the text
that became safe to show, see ``TextStream``). The worker also settles each row's record when the
row ends: the text's hash stored (``Registry.set_record_text``: status "complete"), or, when the
job was cancelled (a streaming client left), status "incomplete" and no hash. A failure withdraws
the records of jobs that acknowledged nothing yet (not streaming) and marks the others incomplete.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from provmark.api.provenance import Models, text_sha256
from provmark.api.registry import Record, Registry
from provmark.errors import ProvmarkError
from provmark.watermark.streaming import BatchDecoder, RowRequest, TextStream

__all__ = ["Delta", "Done", "Failed", "Finished", "GenerationQueue", "Job", "QueueFullError"]

_log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_ROWS = 16
"""Rows decoded in one batch (a request's rows are never split across batches)."""
DEFAULT_MAX_QUEUED_ROWS = 64
"""Rows that may wait for a batch; requests beyond it are refused (``QueueFullError``)."""
DEFAULT_GATHER_S = 0.02
"""How long the worker waits, after the first job of a batch, for others sent at the same time."""


class QueueFullError(ProvmarkError):
    """The generation queue has no room for the request's rows; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Delta:
    """Text of choice ``index`` that became safe to show."""

    index: int
    text: str


@dataclass(frozen=True)
class Finished:
    """Choice ``index`` ended: ``reason`` "stop" (a stop id or stop string) or "length"."""

    index: int
    reason: str
    completion_tokens: int
    text: str
    record: Record


@dataclass(frozen=True)
class Failed:
    """The batch failed; no further events follow."""

    error: BaseException


@dataclass(frozen=True)
class Done:
    """Every choice of the job has ended (after its ``Finished`` events)."""


@dataclass(eq=False, kw_only=True)
class Job:
    """One request's rows (its choices, in order) and where their events go.

    ``notify`` is called from the worker thread; it must be thread-safe and return at once."""

    rows: list[RowRequest]
    record_ids: list[str]
    stop: tuple[str, ...] = ()
    streaming: bool = False
    notify: Callable[[object], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    _ended: set[int] = field(default_factory=set)

    def cancel(self) -> None:
        """Stop decoding this job's rows (its client left); rows already ended keep their records."""
        self.cancelled.set()


class GenerationQueue:
    """The process's generation queue and its worker thread (module docstring).

    Args:
        models: the serving model; the worker holds ``models.generate_lock`` for each batch.
        registry: where rows' records are settled.
        max_batch_rows, max_queued_rows, gather_s: see the module constants.
    """

    def __init__(self, models: Models, registry: Registry, *, max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
                 max_queued_rows: int = DEFAULT_MAX_QUEUED_ROWS, gather_s: float = DEFAULT_GATHER_S):
        if max_batch_rows < 1 or max_queued_rows < 1 or gather_s < 0:
            raise ValueError(f"max_batch_rows and max_queued_rows must be >= 1 and gather_s >= 0, got "
                             f"{max_batch_rows!r}, {max_queued_rows!r}, {gather_s!r}")
        self.models = models
        self.registry = registry
        self.max_batch_rows = max_batch_rows
        self.max_queued_rows = max_queued_rows
        self.gather_s = gather_s
        self._jobs: collections.deque[Job] = collections.deque()
        self._reserved = 0  # rows reserved or waiting, not yet taken into a batch
        self._changed = threading.Condition()
        self._worker: threading.Thread | None = None

    def reserve(self, rows: int) -> None:
        """Hold room for ``rows`` rows, or raise ``QueueFullError``; ``submit`` or ``release`` it next."""
        if rows > self.max_batch_rows:
            raise ValueError(f"a job of {rows} rows exceeds max_batch_rows = {self.max_batch_rows}")
        with self._changed:
            if self._reserved + rows > self.max_queued_rows:
                raise QueueFullError(f"the generation queue is full ({self._reserved} of {self.max_queued_rows} "
                                     f"rows waiting); retry shortly")
            self._reserved += rows

    def release(self, rows: int) -> None:
        """Give back a reservation that will not be submitted."""
        with self._changed:
            self._reserved -= rows

    def submit(self, job: Job) -> None:
        """Queue a job whose rows were reserved; the worker starts with the first job."""
        with self._changed:
            self._jobs.append(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="provmark-generation", daemon=True)
                self._worker.start()
            self._changed.notify()

    @property
    def waiting_rows(self) -> int:
        with self._changed:
            return self._reserved

    def _take(self) -> list[Job]:
        """The next batch: waiting jobs in arrival order while their rows fit ``max_batch_rows``."""
        with self._changed:
            while not self._jobs:
                self._changed.wait()
        if self.gather_s:
            time.sleep(self.gather_s)
        with self._changed:
            batch, rows = [], 0
            while self._jobs and rows + len(self._jobs[0].rows) <= self.max_batch_rows:
                job = self._jobs.popleft()
                batch.append(job)
                rows += len(job.rows)
                self._reserved -= len(job.rows)
            return batch

    def _run(self) -> None:
        while True:
            jobs = self._take()
            try:
                self._decode(jobs)
            except BaseException as exc:  # noqa: BLE001 - the worker must survive any batch
                _log.exception("generation batch of %d jobs failed", len(jobs))
                for job in jobs:
                    self._fail(job, exc)

    def _decode(self, jobs: list[Job]) -> None:
        live = []
        for job in jobs:
            if job.cancelled.is_set():  # its client left while it waited
                self._abandon(job)
            else:
                live.append(job)
        if not live:
            return
        loaded = self.models.loaded()
        tokenizer = loaded.tokenizer
        owners = [(job, index) for job in live for index in range(len(job.rows))]
        rows = [row for job in live for row in job.rows]
        needs_proxy = any(r.key is not None and r.key.config.generation_time
                          and getattr(r.key.config, "proxy_context", "prompt") != "prompt" for r in rows)
        proxy = self.models.proxy() if needs_proxy else None
        stop_ids = sorted({tokenizer.eos_token_id, tokenizer.pad_token_id} - {None})
        with self.models.generate_lock:
            decoder = BatchDecoder(loaded.model, rows, stop_ids=stop_ids, pad_id=tokenizer.pad_token_id, proxy=proxy)
            streams = [TextStream(tokenizer, job.stop) for job, _ in owners]
            while True:
                for row, (job, index) in enumerate(owners):
                    if job.cancelled.is_set() and not decoder.finished[row]:
                        decoder.finish(row)
                        self._settle_incomplete(job, index)
                if decoder.done:
                    break
                for row, token in enumerate(decoder.step()):
                    if token is None:
                        continue
                    job, index = owners[row]
                    piece = streams[row].push(token)
                    if piece:
                        job.notify(Delta(index, piece))
                    if streams[row].stopped:
                        decoder.finish(row)
                    if decoder.finished[row]:
                        stopped = streams[row].stopped or token in stop_ids
                        tokens = decoder.num_tokens[row] - (token in stop_ids)
                        self._settle(job, index, streams[row], "stop" if stopped else "length", tokens)
        for job in live:
            if len(job._ended) == len(job.rows):
                job.notify(Done())

    def _settle(self, job: Job, index: int, stream: TextStream, reason: str, tokens: int) -> None:
        rest = stream.close()
        if rest:
            job.notify(Delta(index, rest))
        record = self.registry.set_record_text(job.record_ids[index], text_sha256(stream.text))
        job._ended.add(index)
        job.notify(Finished(index, reason, tokens, stream.text, record))

    def _settle_incomplete(self, job: Job, index: int) -> None:
        job._ended.add(index)
        self.registry.set_record_incomplete(job.record_ids[index])

    def _abandon(self, job: Job) -> None:
        for index in range(len(job.rows)):
            self._settle_incomplete(job, index)

    def _fail(self, job: Job, exc: BaseException) -> None:
        try:
            for index, record_id in enumerate(job.record_ids):
                if not job.streaming:  # nothing was acknowledged: withdraw every record
                    self.registry.delete_record(record_id)
                elif index not in job._ended:
                    self.registry.set_record_incomplete(record_id)
        except Exception:  # noqa: BLE001 - the job still hears of the failure
            _log.exception("settling the records of a failed job")
        job.notify(Failed(exc))
