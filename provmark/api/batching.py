"""The generation queue: completions of concurrent callers decoded together, one batch per process.

Each request (``Job``: one prompt's ``n`` choices, or a completion request's prompts) reserves its
rows in a bounded queue before its records are issued (``reserve``: ``QueueFullError`` when full),
then waits in it (``submit``). One worker thread per process decodes them with one
``watermark.streaming.BatchDecoder``: a batch starts with the jobs waiting (after ``gather_s``, so
requests sent together start together), and between steps the jobs that arrived since join it, as
many whole jobs as fit ``max_batch_rows`` beside the rows still decoding (continuous batching;
each row keeps its own key, payload and sampling settings), while finished rows leave it. Every
step, and every join's prompt pass, runs under ``Models.generate_lock``, so one batch of the
process runs at a time, interleaved with ``/v1/generate`` and ``/v1/embed`` between steps. A model
whose cache cannot be joined runs static batches: jobs wait for the running batch to end.

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

from provmark.api.provenance import text_sha256
from provmark.api.registry import Record, Registry
from provmark.errors import ProvmarkError
from provmark.watermark.models import Models
from provmark.watermark.streaming import BatchDecoder, RowRequest, TextStream, reads_generated_text

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
        """The jobs that start a batch: wait for one, then ``gather_s``, then ``_waiting``."""
        with self._changed:
            while not self._jobs:
                self._changed.wait()
        if self.gather_s:
            time.sleep(self.gather_s)
        return self._waiting(self.max_batch_rows)

    def _waiting(self, room: int) -> list[Job]:
        """Waiting jobs in arrival order while their rows fit ``room`` (none when the first does not)."""
        with self._changed:
            batch = []
            while self._jobs and len(self._jobs[0].rows) <= room:
                job = self._jobs.popleft()
                batch.append(job)
                room -= len(job.rows)
                self._reserved -= len(job.rows)
            return batch

    def _run(self) -> None:
        while True:
            running: list[Job] = []
            try:
                self._decode(self._take(), running)
            except BaseException as exc:  # noqa: BLE001 - the worker must survive any batch
                _log.exception("generation batch of %d jobs failed", len(running))
                for job in running:
                    self._fail(job, exc)

    def _decode(self, jobs: list[Job], running: list[Job]) -> None:
        """Decode ``jobs`` and every job that joins the batch while it runs; ``running`` holds the
        jobs not yet done (what a failure must settle)."""
        running += jobs
        live = []
        for job in jobs:
            if job.cancelled.is_set():  # its client left while it waited
                self._abandon(job, running)
            else:
                live.append(job)
        if not live:
            return
        loaded = self.models.loaded()
        tokenizer = loaded.tokenizer
        proxy = self._proxy([row for job in live for row in job.rows])
        stop_ids = sorted({tokenizer.eos_token_id, tokenizer.pad_token_id} - {None})
        owners: dict[int, tuple[Job, int]] = {}
        streams: dict[int, TextStream] = {}

        def own(job: Job, handles: list[int]) -> None:
            for index, handle in enumerate(handles):
                owners[handle] = (job, index)
                streams[handle] = TextStream(tokenizer, job.stop)

        decoder = BatchDecoder(loaded.model, [row for job in live for row in job.rows], stop_ids=stop_ids,
                               pad_id=tokenizer.pad_token_id, proxy=proxy)  # runs nothing until its first step
        handles = iter(range(len(decoder.rows)))
        for job in live:
            own(job, [next(handles) for _ in job.rows])
        while True:
            for handle in decoder.active:
                job, index = owners[handle]
                if job.cancelled.is_set():
                    decoder.finish(handle)
                    self._settle_incomplete(job, index)
            with self.models.generate_lock:
                if decoder.can_join:  # continuous batching: waiting jobs join between steps
                    for job in self._waiting(self.max_batch_rows - len(decoder.active)):
                        running.append(job)
                        if job.cancelled.is_set():
                            self._abandon(job, running)
                            continue
                        decoder.proxy = decoder.proxy or self._proxy(job.rows)
                        own(job, decoder.join(job.rows))
                if decoder.done:
                    break
                sampled = decoder.step()
            for handle, token in enumerate(sampled):
                if token is None:
                    continue
                job, index = owners[handle]
                piece = streams[handle].push(token)
                if piece:
                    job.notify(Delta(index, piece))
                if streams[handle].stopped:
                    decoder.finish(handle)
                if decoder.finished[handle]:
                    stopped = streams[handle].stopped or token in stop_ids
                    tokens = decoder.num_tokens[handle] - (token in stop_ids)
                    self._settle(job, index, streams[handle], "stop" if stopped else "length", tokens)
            for job in list(running):
                if len(job._ended) == len(job.rows):
                    running.remove(job)
                    job.notify(Done())

    def _proxy(self, rows: list[RowRequest]):
        """Balance-Marking's proxy (the serving model) when a row's key reads the generated text."""
        needs = any(r.key is not None and reads_generated_text(r.key) for r in rows)
        return self.models.proxy() if needs else None

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

    def _abandon(self, job: Job, running: list[Job]) -> None:
        """Settle a job cancelled before it started: every record incomplete."""
        for index in range(len(job.rows)):
            self._settle_incomplete(job, index)
        running.remove(job)
        job.notify(Done())

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
