"""Every number issued under a key, cached per process and refreshed incrementally for verify.

Verify scores every record a key has issued (``detector.records``), so it needs all their numbers
on every request; reading 100,000 of them from the database costs about 30 ms. ``IssuedNumbers``
keeps each key's numbers as one sorted uint64 array and, on each request, asks the database only
for what changed since it last looked:

- records added since: ``records.seq`` increases in commit order within a key (every registry
  write holds the write lock; the database fills the column, migration m004), so the rows with a
  larger seq than the cache's cursor are exactly the new ones, whichever node or process wrote them;
- records withdrawn (``Registry.delete_record``, a generation that failed before its record was
  acknowledged): the key's ``records_removed`` counter moved, and the key is read afresh.

Every record present is a candidate, whatever its status: "generating" and "incomplete" records
carry their payload in text that may be verified (status changes need no refresh). A refresh is
two indexed statements, the new rows' worth of work; a record committed before verify reads is
seen by that verify.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from provmark.api.stores import Store

__all__ = ["IssuedNumbers"]

_MAX_KEYS = 1024


@dataclass(frozen=True)
class _Entry:
    numbers: np.ndarray
    """uint64 (R,), ascending, read-only."""
    cursor: int
    """The largest ``seq`` read."""
    removed: int
    """The key's ``records_removed`` when it was read in full."""


def _frozen(numbers: np.ndarray) -> np.ndarray:
    numbers.flags.writeable = False
    return numbers


class IssuedNumbers:
    """Per key, the sorted numbers of its records (module docstring). Thread-safe."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def numbers(self, key_id: str) -> np.ndarray:
        """uint64 (R,): every number issued under ``key_id``, ascending (empty for an unknown key)."""
        found = self.store.query('SELECT "records_removed" FROM keys WHERE id = ?', [key_id])
        if not found:
            return _frozen(np.empty(0, dtype=np.uint64))
        removed = found[0][0]
        with self._lock:
            entry = self._entries.get(key_id)
        if entry is None or entry.removed != removed:
            rows = self.store.query('SELECT "seq", number FROM records WHERE key_id = ?', [key_id])
            fresh = _Entry(_frozen(np.sort(np.array([r[1] for r in rows], dtype=np.uint64))),
                           max((r[0] for r in rows), default=0), removed)
        else:
            rows = self.store.query('SELECT "seq", number FROM records WHERE key_id = ? AND "seq" > ?',
                                    [key_id, entry.cursor])
            if not rows:
                return entry.numbers
            new = np.sort(np.array([r[1] for r in rows], dtype=np.uint64))
            numbers = np.insert(entry.numbers, np.searchsorted(entry.numbers, new), new)
            fresh = _Entry(_frozen(numbers), max(entry.cursor, max(r[0] for r in rows)), removed)
        with self._lock:
            current = self._entries.get(key_id)
            # keep whichever look is newer when two threads refreshed the same key at once
            if current is None or (current.removed, current.cursor) <= (fresh.removed, fresh.cursor):
                if len(self._entries) >= _MAX_KEYS and key_id not in self._entries:
                    self._entries.clear()
                self._entries[key_id] = fresh
        return fresh.numbers
