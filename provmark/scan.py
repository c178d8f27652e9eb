"""Scan a corpus for watermarks: every text against a key (or every key of a registry tenant), on a
local process pool or on a Ray cluster, into one Parquet or CSV table.

**Input** (``read_corpus``): JSON Lines, CSV or Parquet with a text column (default ``text``) and
an optional id column (default ``id``; the row number when absent), or a folder of ``.txt`` files
(the id is the file's path inside the folder).

**Output** (``SCAN_COLUMNS``): one row per text, in input order: ``id``, ``verdict``
("watermarked", "not watermarked" or "too short": fewer than ``min_tokens`` tokens scored),
``p_value`` and ``log10_p_value``, ``key_id`` (the key that explains the text best), ``payload``
(multi-bit keys), ``record`` (the registry record the text maps to, when scanning a tenant's keys),
``num_scored_tokens`` and ``text_sha256`` (the registry's ``provenance.text_sha256``, by which a
zero-bit record is found). With several keys the reported p-value is the smallest
one times the number of keys (Bonferroni: the scan searched that many keys, as the verify API's
closed-set test corrects for the records it searched), so the verdict at ``alpha`` keeps its
false-positive rate whatever the number of keys.

**Engines.** Both run the same ``ScanWorker`` over batches of texts: ``local`` in a process pool on
this machine (the default), ``ray`` as Ray Data ``map_batches`` over ``ScanWorker`` actors, so a
Ray cluster (``address``) scales it without changes. The corpus is read by the driver and handed
to Ray as an Arrow table; the key secrets travel to the actors inside Ray's own transport, so run
a cluster only on a network you trust with them.

**Resumable.** Finished batches are written, each atomically (temporary file, then rename), as
part files in ``<output>.parts/``; a scan started again with the same output skips the ids found
there. The final table is assembled from the parts, which are then removed.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from provmark.errors import ParameterError, ProvmarkError
from provmark.watermark.keys import WatermarkKey, key_from_dict

__all__ = ["SCAN_COLUMNS", "ScanOptions", "ScanSummary", "ScanWorker", "read_corpus", "registry_lookup", "scan_corpus"]

SCAN_COLUMNS = ("id", "verdict", "p_value", "log10_p_value", "key_id", "payload", "record", "num_scored_tokens",
                "text_sha256")
_ORDER = "_row"  # input position, kept in the part files so the final table is in input order


@dataclass(frozen=True, kw_only=True)
class ScanOptions:
    """How to scan."""

    engine: Literal["local", "ray"] = "local"
    """Where batches run: a local process pool, or Ray Data actors."""
    workers: int = 0
    """Processes (local) or actors (ray); 0: one per CPU core (local) or per CPU of the Ray cluster."""
    batch_size: int = 64
    """Texts per batch (one task, one part file)."""
    alpha: float = 1e-3
    """Significance level of the verdict."""
    min_tokens: int = 1
    """Texts with fewer scored tokens are "too short"."""
    model_path: str | None = None
    """Tokenizer (and Balance proxy) folder; None: the embedded model."""
    ray_address: str | None = None
    """Ray cluster to join (``ray start --head`` prints it); None starts a local Ray runtime."""
    progress: bool = True
    """Show a progress bar on stderr."""

    def __post_init__(self):
        if self.engine not in ("local", "ray"):
            raise ParameterError(f"engine must be 'local' or 'ray', got {self.engine!r}")
        if self.workers < 0 or self.batch_size < 1 or self.min_tokens < 0:
            raise ParameterError(f"workers must be >= 0, batch_size >= 1 and min_tokens >= 0, got workers "
                                 f"{self.workers}, batch_size {self.batch_size}, min_tokens {self.min_tokens}")
        if not 0 < self.alpha < 1:
            raise ParameterError(f"alpha must lie in (0, 1), got {self.alpha!r}")
        if self.ray_address is not None and self.engine != "ray":
            raise ParameterError("a Ray address applies to --engine ray")


@dataclass(frozen=True, kw_only=True)
class ScanSummary:
    """What a scan did."""

    texts: int
    """Rows in the output."""
    scanned: int
    """Texts detected in this run (the rest were done by an interrupted earlier run)."""
    watermarked: int
    seconds: float
    """Wall time of this run's detection (reading and writing excluded)."""


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.csv  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ProvmarkError("provmark scan needs pyarrow: pip install 'provmark[scale]'") from None
    return pyarrow


def read_corpus(path: str | os.PathLike, *, id_field: str = "id", text_field: str = "text"):
    """The corpus at ``path`` as an Arrow table with string columns ``id`` and ``text`` (see the module
    docstring for the formats). Refuses a missing text column, a non-string text and duplicate ids."""
    pa = _pyarrow()
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ParameterError(f"no .txt files in {path}")
        table = pa.table({"id": [p.relative_to(path).as_posix() for p in files],
                          "text": [p.read_bytes().decode("utf-8", errors="replace") for p in files]})
    else:
        suffix = path.suffix.lower()
        try:
            if suffix in (".jsonl", ".ndjson"):
                with open(path, encoding="utf-8") as handle:
                    rows = [json.loads(line) for line in handle if line.strip()]
                if not all(isinstance(row, dict) for row in rows):
                    raise ParameterError(f"{path}: every line must be a JSON object")
                table = pa.Table.from_pylist(rows) if rows else pa.table({text_field: pa.array([], pa.string())})
            elif suffix == ".csv":
                table = pa.csv.read_csv(path, convert_options=pa.csv.ConvertOptions(
                    column_types={id_field: pa.string(), text_field: pa.string()}))
            elif suffix == ".parquet":
                table = pa.parquet.read_table(path)
            else:
                raise ParameterError(f"{path}: give a .jsonl, .csv or .parquet file or a folder of .txt files")
        except (OSError, ValueError, pa.ArrowException) as exc:
            if isinstance(exc, ParameterError):
                raise
            raise ParameterError(f"cannot read {path}: {exc}") from None
        if text_field not in table.column_names:
            raise ParameterError(f"{path} has no {text_field!r} column (columns: {', '.join(table.column_names)}); "
                                 "name it with --text-field")
        texts = table.column(text_field)
        if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type) or texts.null_count == len(texts)):
            raise ParameterError(f"{path}: column {text_field!r} holds {texts.type}, not text")
        ids = (table.column(id_field).cast(pa.string()) if id_field in table.column_names
               else pa.array([str(i) for i in range(table.num_rows)]))
        table = pa.table({"id": ids, "text": texts.cast(pa.string()).fill_null("")})
    if table.column("id").null_count:
        raise ParameterError(f"{path}: the {id_field!r} column has empty ids")
    ids = table.column("id").to_pylist()
    if len(set(ids)) != len(ids):
        raise ParameterError(f"{path}: ids must be unique (a resumed scan skips ids it has done)")
    return table


class ScanWorker:
    """Detects a batch of texts with every key through the front door (``front.Watermark``): the map
    function of both engines (one per process or Ray actor; it loads the tokenizer, and the model
    when a Balance key needs its proxy, once).

    Args:
        keys: the key files' dicts (``WatermarkKey.to_dict``), secrets included.
        alpha, min_tokens, model_path: as in ``ScanOptions``.
    """

    def __init__(self, keys: Sequence[dict], *, alpha: float, min_tokens: int, model_path: str | None):
        from provmark.front import Watermark
        from provmark.watermark.models import Models

        self.keys: list[WatermarkKey] = [key_from_dict(k) for k in keys]
        self.alpha, self.min_tokens = alpha, min_tokens
        models = Models(model_path)  # the tokenizer, and the model for a Balance key's proxy, loaded on first use
        self.marks = [Watermark(k, models) for k in self.keys]

    def __call__(self, batch):
        """Arrow table (``_row``, ``id``, ``text``) -> Arrow table of ``_row`` and ``SCAN_COLUMNS`` but
        ``record`` (the driver looks records up)."""
        import pyarrow as pa

        from provmark.api.provenance import text_sha256  # the registry's hash (NFC, whitespace collapsed)

        texts = [t or "" for t in batch.column("text").to_pylist()]
        ids = None
        best = [None] * len(texts)  # (log_p, result) of the key with the smallest p-value
        for mark in self.marks:
            if mark.scheme.reads_text:
                results = mark.detect(texts, alpha=self.alpha)
            else:
                if ids is None:
                    ids = mark.token_ids(texts)
                results = mark.detect(texts, alpha=self.alpha, token_ids=ids)
            for i, result in enumerate(results):
                log_p = result.log10_p_value
                if best[i] is None or log_p < best[i][0] or (log_p == best[i][0] and result.num_scored_tokens
                                                              > best[i][1].num_scored_tokens):
                    best[i] = (log_p, result)
        correction = math.log10(len(self.marks))
        out = {name: [] for name in (_ORDER, *SCAN_COLUMNS) if name != "record"}
        for i, (log_p, result) in enumerate(best):
            log_p = min(0.0, log_p + correction)
            scored = result.num_scored_tokens
            if scored < max(self.min_tokens, 1):
                verdict = "too short"
            else:
                verdict = "watermarked" if log_p <= math.log10(self.alpha) else "not watermarked"
            out[_ORDER].append(batch.column(_ORDER)[i].as_py())
            out["id"].append(batch.column("id")[i].as_py())
            out["verdict"].append(verdict)
            out["p_value"].append(10.0 ** log_p)
            out["log10_p_value"].append(log_p)
            out["key_id"].append(result.key_id)
            out["payload"].append(result.payload if verdict == "watermarked" else None)
            out["num_scored_tokens"].append(scored)
            out["text_sha256"].append(text_sha256(texts[i]))
        return pa.table(out, schema=_part_schema())


def _part_schema():
    import pyarrow as pa

    return pa.schema([(_ORDER, pa.int64()), ("id", pa.string()), ("verdict", pa.string()), ("p_value", pa.float64()),
                      ("log10_p_value", pa.float64()), ("key_id", pa.string()), ("payload", pa.uint64()),
                      ("num_scored_tokens", pa.int64()), ("text_sha256", pa.string())])


# -- the local engine: one ScanWorker per process ----------------------------------------------

_WORKER: ScanWorker | None = None


def _init_local(keys, alpha, min_tokens, model_path, torch_threads):
    import torch

    global _WORKER
    torch.set_num_threads(torch_threads)
    _WORKER = ScanWorker(keys, alpha=alpha, min_tokens=min_tokens, model_path=model_path)


def _run_local(batch):
    return _WORKER(batch)


def _local_batches(batches, keys: list[dict], options: ScanOptions):
    workers = options.workers or os.cpu_count() or 1
    initargs = (keys, options.alpha, options.min_tokens, options.model_path, 1)
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, initializer=_init_local,
                                                initargs=initargs) as pool:
        pending = set()
        for batch in batches:
            pending.add(pool.submit(_run_local, batch))
            if len(pending) >= 2 * workers:  # bounded: a million texts are not all in flight at once
                done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                yield from (future.result() for future in done)
        for future in concurrent.futures.as_completed(pending):
            yield future.result()


# -- the Ray engine: the same ScanWorker as Ray Data actors ------------------------------------

def _ray_batches(table, keys: list[dict], options: ScanOptions):
    try:
        import ray
    except ImportError:
        raise ProvmarkError("--engine ray needs Ray: pip install 'provmark[scale]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, **({} if options.ray_address else {"num_cpus": options.workers or None}))
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        workers = options.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        # One block per batch, made here: a repartition would run as tasks that wait for CPUs the
        # actors already hold (a hang when the pool fills the cluster).
        dataset = ray.data.from_arrow([table.slice(start, options.batch_size)
                                       for start in range(0, table.num_rows, options.batch_size)])
        results = dataset.map_batches(
            ScanWorker, fn_constructor_kwargs={"keys": keys, "alpha": options.alpha, "min_tokens": options.min_tokens,
                                               "model_path": options.model_path},
            batch_size=options.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1)
        for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield batch
    finally:
        if started_here:
            ray.shutdown()


# -- the driver ---------------------------------------------------------------------------------

def _parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def _done_rows(parts: Path):
    pa = _pyarrow()
    tables = [pa.parquet.read_table(p) for p in sorted(parts.glob("part-*.parquet"))]
    return pa.concat_tables(tables) if tables else None


def scan_corpus(corpus, output: str | os.PathLike, keys: Sequence[WatermarkKey], options: ScanOptions = ScanOptions(),
                *, record_lookup=None) -> ScanSummary:
    """Detect every text of ``corpus`` (an Arrow table from ``read_corpus``) with ``keys`` and write
    the table of ``SCAN_COLUMNS`` to ``output`` (``.parquet`` or ``.csv``), resuming from the part
    files of an interrupted run with the same output.

    Args:
        record_lookup: ``(key_id, payload, text_sha256) -> record id or None`` for each watermarked
            text (a registry's records); None leaves ``record`` empty.
    """
    import time

    pa = _pyarrow()
    output = Path(output)
    if output.suffix.lower() not in (".parquet", ".csv"):
        raise ParameterError(f"output {output} must end in .parquet or .csv")
    if not keys:
        raise ParameterError("no keys to scan with")
    parts = _parts_dir(output)
    parts.mkdir(parents=True, exist_ok=True)
    done = _done_rows(parts)
    done_ids = set(done.column("id").to_pylist()) if done is not None else set()
    table = corpus.append_column(_ORDER, pa.array(range(corpus.num_rows), pa.int64()))
    table = table.select([_ORDER, "id", "text"])
    if done_ids:
        keep = pa.array([i not in done_ids for i in table.column("id").to_pylist()])
        table = table.filter(keep)
    key_dicts = [k.to_dict() for k in keys]
    started = time.perf_counter()
    if table.num_rows:
        batches = (table.slice(start, options.batch_size) for start in range(0, table.num_rows, options.batch_size))
        engine = (_local_batches(batches, key_dicts, options) if options.engine == "local"
                  else _ray_batches(table, key_dicts, options))
        from tqdm import tqdm

        with tqdm(total=corpus.num_rows, initial=corpus.num_rows - table.num_rows, unit="text", desc="scan",
                  disable=not options.progress) as bar:
            for result in engine:
                temporary = parts / f".{uuid.uuid4().hex}.tmp"
                pa.parquet.write_table(result, temporary)
                os.replace(temporary, parts / f"part-{uuid.uuid4().hex}.parquet")
                bar.update(result.num_rows)
    seconds = time.perf_counter() - started
    rows = _done_rows(parts)
    rows = rows.sort_by(_ORDER)
    if rows.num_rows != corpus.num_rows or rows.column("id").to_pylist() != corpus.column("id").to_pylist():
        raise ProvmarkError(f"the scan's parts in {parts} do not match the corpus (another corpus scanned into "
                            f"the same output?); remove {parts} and scan again")
    records = [None] * rows.num_rows
    if record_lookup is not None:
        columns = rows.select(["verdict", "key_id", "payload", "text_sha256"]).to_pylist()
        records = [record_lookup(r["key_id"], r["payload"], r["text_sha256"]) if r["verdict"] == "watermarked" else None
                   for r in columns]
    rows = rows.append_column("record", pa.array(records, pa.string()))
    rows = rows.select(list(SCAN_COLUMNS))
    temporary = output.with_name(f".{output.name}.tmp")
    if output.suffix.lower() == ".parquet":
        pa.parquet.write_table(rows, temporary)
    else:
        pa.csv.write_csv(rows, temporary)
    os.replace(temporary, output)
    for part in parts.glob("part-*.parquet"):
        part.unlink()
    for leftover in parts.glob(".*.tmp"):
        leftover.unlink()
    parts.rmdir()
    watermarked = sum(1 for v in rows.column("verdict").to_pylist() if v == "watermarked")
    return ScanSummary(texts=rows.num_rows, scanned=table.num_rows, watermarked=watermarked, seconds=seconds)


def registry_lookup(registry):
    """The ``record_lookup`` of a registry: a multi-bit text's record by its payload, a zero-bit
    text's by its hash (as the verify API finds them)."""
    def lookup(key_id: str, payload: int | None, text_sha256: str) -> str | None:
        record = (registry.record_by_number(key_id, payload) if payload is not None
                  else registry.record_by_text(key_id, text_sha256))
        return None if record is None else record.id

    return lookup

