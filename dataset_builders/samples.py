"""The paper's windowed samples (PROTOCOL.md section 4) from a split's published rows.

A row ``(item_ids, target_start)`` gives one sample per target: target ``item_ids[j]`` for
``j = target_start .. len(item_ids) - 1``, with history ``item_ids[max(0, j - L) : j]`` (the last ``L`` items
before it, ``L`` the maximum context length). Histories are right-padded with 0 (the padding id): the model reads
the history from its first kept item. The trainer, the evaluator and the tests all use this one implementation.

:class:`WindowedSamples` keeps only the flat item ids and two integers per sample, and pads histories on demand,
so even Gowalla's millions of samples cost a few tens of MB until a batch is asked for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["WindowedSamples", "windowed_samples"]


def _rows_to_arrow(rows: Any) -> tuple[pa.Array, pa.Array, pa.Array | None]:
    """``item_ids``, ``target_start`` (and ``user_id``) as Arrow arrays from a Dataset, a Table or a dict."""
    if hasattr(rows, "with_format") and hasattr(rows, "features"):  # a datasets.Dataset (handles indices)
        rows = rows.with_format("arrow")[:]
    if isinstance(rows, pa.Table):
        user = rows.column("user_id").combine_chunks() if "user_id" in rows.column_names else None
        return rows.column("item_ids").combine_chunks(), rows.column("target_start").combine_chunks(), user
    if isinstance(rows, dict):
        user = pa.array(rows["user_id"], type=pa.string()) if "user_id" in rows else None
        items = pa.array(rows["item_ids"], type=pa.list_(pa.int64()))
        return items, pa.array(rows["target_start"], type=pa.int64()), user
    raise TypeError(f"expected a datasets.Dataset, a pyarrow.Table or a dict of columns, got {type(rows).__name__}")


class WindowedSamples:
    """All windowed samples of one split, indexable and batchable.

    Args:
        rows: The split's rows: a ``datasets.Dataset`` (as loaded by ``load_dataset``), a ``pyarrow.Table``, or
            a dict with the lists ``item_ids`` and ``target_start`` (and optionally ``user_id``).
        max_length: ``L``, the maximum history length (PROTOCOL 4: 100 Gowalla, 70 Twitch-100k, 50 Amazon;
            the dataset's ``metadata.json`` has it as ``max_length``).

    Samples are ordered by row, then by target position: sample ``i`` has
    ``target = targets[i]`` and history ``history(i)``. ``batch(indices)`` returns padded arrays for a model.
    """

    def __init__(self, rows: Any, max_length: int) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        items, target_start, user_ids = _rows_to_arrow(rows)
        self.max_length = int(max_length)
        self.user_ids = user_ids
        self.items = np.asarray(items.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
        offsets = np.asarray(items.offsets.to_numpy(), dtype=np.int64)
        offsets = offsets - offsets[0]  # a sliced Arrow array keeps its parent's offsets
        starts = np.asarray(target_start.to_numpy(zero_copy_only=False), dtype=np.int64)
        lengths = np.diff(offsets)
        if np.any(starts < 1) or np.any(starts >= lengths):
            bad = int(np.flatnonzero((starts < 1) | (starts >= lengths))[0])
            user = f" (user {user_ids[bad].as_py()!r})" if user_ids is not None else ""
            raise ValueError(
                f"Row {bad}{user}: target_start={int(starts[bad])} must be between 1 and len(item_ids) - 1 "
                f"= {int(lengths[bad]) - 1} (the first item is only history, and a row holds at least one target). "
                "Rebuild the split with dataset_builders."
            )
        per_row = lengths - starts
        #: row of each sample
        self.sample_row = np.repeat(np.arange(lengths.size, dtype=np.int64), per_row)
        # Flat position of each sample's target: row start + target_start + (0, 1, ...).
        first = np.zeros(per_row.size + 1, dtype=np.int64)
        np.cumsum(per_row, out=first[1:])
        within = np.arange(first[-1], dtype=np.int64) - np.repeat(first[:-1], per_row)
        #: index in ``items`` of each sample's target
        self.target_pos = np.repeat(offsets[:-1] + starts, per_row) + within
        self.row_start = offsets[:-1]

    def __len__(self) -> int:
        return int(self.target_pos.size)

    @property
    def targets(self) -> np.ndarray:
        """The target item id of every sample."""
        return self.items[self.target_pos]

    @property
    def history_lengths(self) -> np.ndarray:
        """The (truncated) history length of every sample: ``min(j, L)`` for target index ``j``."""
        return np.minimum(self.target_pos - self.row_start[self.sample_row], self.max_length)

    def history(self, i: int) -> np.ndarray:
        """Sample ``i``'s history, unpadded: at most ``L`` items, oldest first."""
        end = int(self.target_pos[i])
        start = max(int(self.row_start[self.sample_row[i]]), end - self.max_length)
        return self.items[start:end]

    def __getitem__(self, i: int) -> dict[str, Any]:
        """``{"history": np.ndarray, "target": int, "row": int}`` of sample ``i``."""
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample index {i} out of range for {len(self)} samples")
        i %= len(self)
        return {
            "history": self.history(i),
            "target": int(self.items[self.target_pos[i]]),
            "row": int(self.sample_row[i]),
        }

    def batch(self, indices: Sequence[int] | np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Padded arrays for the samples ``indices`` (all samples when ``None``).

        Returns:
            ``input_ids`` (``(k, L)`` int64, history left-aligned, right-padded with 0), ``attention_mask``
            (``(k, L)`` int64, 1 on history items), ``lengths`` (``(k,)``), ``labels`` (``(k,)`` targets) and
            ``rows`` (``(k,)`` row index of each sample in the split).
        """
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        end = self.target_pos[idx]
        rows = self.sample_row[idx]
        start = np.maximum(self.row_start[rows], end - self.max_length)
        length = end - start
        cols = np.arange(self.max_length, dtype=np.int64)
        mask = cols[None, :] < length[:, None]
        gather = np.where(mask, start[:, None] + cols[None, :], 0)
        input_ids = np.where(mask, self.items[gather], 0) if self.items.size else np.zeros(mask.shape, np.int64)
        return {
            "input_ids": input_ids,
            "attention_mask": mask.astype(np.int64),
            "lengths": length,
            "labels": self.items[end],
            "rows": rows,
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]


def windowed_samples(rows: Any, max_length: int) -> dict[str, np.ndarray]:
    """Every windowed sample of a split at once, as padded arrays (see :meth:`WindowedSamples.batch`).

    Convenient for small data; for large splits keep a :class:`WindowedSamples` and call ``batch`` per batch.
    """
    return WindowedSamples(rows, max_length).batch()
