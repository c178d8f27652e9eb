"""MajorMark's simulated split null, stored: no verification pays the simulation's cold start.

``majormark.split_null`` simulates NULL_DRAWS multinomial count vectors per (scored tokens, shards)
and keeps, per majority-bit salt, how many draws land in each (high-group size, high-group total)
cell; the p-value is read from those cells. The draws take half a second to a second of CPU, of
which the seeded ``Generator.multinomial`` call alone is about 0.4 s and cannot be vectorised
without changing the draws (and so every version 2 p-value, the goldens included). So the cells of
the default width (32 shards) are simulated once, for every token count from 1 to ``STORED_TRIALS``,
and shipped in ``null_data/split_null_b32.npz``; ``stored_cells`` reads them (exactly the cells the
live simulation makes: tests/test_majormark_presence.py recomputes a sample). Other widths and
longer texts are simulated on first use, as before, and cached in memory.

Regenerate (minutes of one core; only when NULL_DRAWS, the seed or the statistic changes, which
also needs a new key version): ``python -m provmark.detector.split_null_table``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

__all__ = ["STORED_BITS", "STORED_TRIALS", "stored_cells", "write_table"]

STORED_BITS = (32,)
"""The shard counts (MajorMark ``bits``) whose null is shipped: the default width."""
STORED_TRIALS = 256
"""Token counts 1..STORED_TRIALS are shipped (a 200-token text scores 150 to 200 of its tokens)."""
_DIR = Path(__file__).with_name("null_data")


def _path(bits: int) -> Path:
    return _DIR / f"split_null_b{bits}.npz"


@functools.lru_cache(maxsize=None)
def _table(bits: int, draws: int, seed: int) -> dict[str, np.ndarray] | None:
    """The stored arrays of ``bits`` (None: not shipped, or made with other draws or another seed)."""
    path = _path(bits)
    if bits not in STORED_BITS or not path.exists():
        return None
    with np.load(path) as data:
        table = {name: data[name] for name in data.files}
    if int(table["draws"]) != draws or int(table["seed"]) != seed or int(table["bits"]) != bits:
        return None
    return table


def stored_cells(trials: int, bits: int, draws: int, seed: int) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
    """Per salt lambda, (size int64 (C,), total int64 (C,), draws int64 (C,)): the shipped cells of
    ``majormark.split_null`` at (``trials``, ``bits``), or None when they are not shipped."""
    table = _table(bits, draws, seed)
    if table is None or not 1 <= trials <= int(table["max_trials"]):
        return None
    lo, hi = np.searchsorted(table["trials"], [trials, trials + 1])
    salt = table["salt"][lo:hi]
    out = {}
    for lam in np.unique(salt).tolist():
        rows = np.flatnonzero(salt == lam) + lo
        out[lam] = tuple(table[name][rows].astype(np.int64) for name in ("size", "total", "count"))
    return out


def write_table(bits: int, max_trials: int, *, progress: bool = True) -> Path:
    """Simulate (``majormark.simulate_split_cells``) and write the cells of every token count 1..max_trials."""
    from provmark.detector.majormark import _NULL_SEED, NULL_DRAWS, simulate_split_cells

    columns = {name: [] for name in ("trials", "salt", "size", "total", "count")}
    for trials in range(1, max_trials + 1):
        for lam, (size, total, count) in simulate_split_cells(trials, bits).items():
            columns["trials"].append(np.full(size.size, trials, dtype=np.uint16))
            columns["salt"].append(np.full(size.size, lam, dtype=np.uint8))
            columns["size"].append(size.astype(np.uint8))
            columns["total"].append(total.astype(np.uint16))
            columns["count"].append(count.astype(np.uint32))
        if progress and trials % 16 == 0:
            print(f"b{bits}: {trials}/{max_trials}", flush=True)
    _DIR.mkdir(exist_ok=True)
    path = _path(bits)
    np.savez_compressed(path, **{name: np.concatenate(parts) for name, parts in columns.items()},
                        bits=np.int64(bits), max_trials=np.int64(max_trials), draws=np.int64(NULL_DRAWS),
                        seed=np.int64(_NULL_SEED))
    return path


if __name__ == "__main__":
    for width in STORED_BITS:
        print(write_table(width, STORED_TRIALS))
