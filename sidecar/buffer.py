"""A query's rolling window of history: one row per series, one column per step.

Each cycle fetches only the steps it has not seen (plus a short overlap for late samples)
and merges them here, so that Prometheus is asked for the full history once, not every
cycle. Row indices stay stable between compactions, which lets fitted detectors keep
addressing their series by row.
"""

from __future__ import annotations

import numpy as np

from sidecar.prometheus import RangeResult

LabelKey = tuple[tuple[str, str], ...]


class SeriesBuffer:
    """Values of shape (n_rows, capacity); the last column is at time ``end``."""

    def __init__(self, step: float, capacity: int) -> None:
        self.step = step
        self.capacity = capacity
        self.end: float | None = None
        self.values = np.empty((0, capacity))
        self.keys: list[LabelKey] = []
        self.index: dict[LabelKey, int] = {}

    @property
    def n_rows(self) -> int:
        return len(self.keys)

    @property
    def timestamps(self) -> np.ndarray:
        if self.end is None:
            return np.empty(0)
        return self.end - self.step * np.arange(self.capacity - 1, -1, -1, dtype=np.float64)

    def _advance(self, end: float) -> int:
        """Move the window so that its last column is ``end``; returns the columns shifted in."""
        if self.end is None:
            self.end = end
            return self.capacity
        shift = int(round((end - self.end) / self.step))
        if shift <= 0:
            return 0
        if shift >= self.capacity:
            self.values[:] = np.nan
        else:
            self.values[:, :-shift] = self.values[:, shift:]
            self.values[:, -shift:] = np.nan
        self.end = end
        return min(shift, self.capacity)

    def merge(self, result: RangeResult, keys: list[LabelKey]) -> tuple[np.ndarray, int]:
        """Write ``result`` into the window; returns (buffer row of each result series, columns added)."""
        if result.timestamps.size == 0:
            return np.empty(0, dtype=np.intp), 0
        added = self._advance(float(result.timestamps[-1]))
        new_keys = [k for k in keys if k not in self.index]
        if new_keys:
            for k in new_keys:
                self.index[k] = len(self.keys)
                self.keys.append(k)
            self.values = np.concatenate([self.values, np.full((len(new_keys), self.capacity), np.nan)])
        rows = np.fromiter((self.index[k] for k in keys), dtype=np.intp, count=len(keys))
        assert self.end is not None
        cols = self.capacity - 1 - np.rint((self.end - result.timestamps) / self.step).astype(np.intp)
        keep = cols >= 0
        # The fetched range is authoritative for the series it returns (late samples included).
        self.values[np.ix_(rows, cols[keep])] = result.values[:, keep]
        return rows, added

    def compact(self, keep: np.ndarray) -> np.ndarray:
        """Drop rows where ``keep`` is False; returns the old row index of every remaining row."""
        old = np.flatnonzero(keep)
        self.values = self.values[old]
        self.keys = [self.keys[i] for i in old]
        self.index = {k: i for i, k in enumerate(self.keys)}
        return old
