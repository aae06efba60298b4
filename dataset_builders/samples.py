"""The sample rule, in one place, and the paper's windowed samples of a split's rows.

A user's interactions ``s_0 .. s_{n-1}`` give one sample per target: sample ``j`` (``j = 1 .. n - 1``) has target
``s_j`` and history ``s_{max(0, j - L)} .. s_{j-1}``, the last ``L`` items before it (``L`` the maximum context
length). A published split row ``(item_ids, target_start)`` holds the samples ``j = target_start .. len(item_ids) - 1``
of its user (see ``dataset_builders.format``); samples are ordered by row, then by target position.

:func:`sample_positions` and :func:`history_start` are the rule. Everything that turns rows into samples is built on
them: :class:`WindowedSamples` here (the samples one at a time or as padded batches: the tests' and the dataset
card's reference), and the trainer's and evaluator's units (``modeling_ttt4rec.training.data.prefix_units`` and
``stream_units``, which read whole prefixes in one pass and are tested to hold exactly these samples).

:class:`WindowedSamples` keeps only the flat item ids and two integers per sample, and pads histories on demand,
so even Gowalla's millions of samples cost a few tens of MB until a batch is asked for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from .format import ITEM_IDS, TARGET_START, USER_ID

__all__ = ["WindowedSamples", "history_start", "sample_positions", "windowed_samples"]


def sample_positions(lengths: np.ndarray, target_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every sample of a split's rows, in sample order: its row and the index ``j`` of its target in that row.

    Row ``r`` (``lengths[r]`` items) has the samples ``j = target_start[r] .. lengths[r] - 1``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    target_start = np.asarray(target_start, dtype=np.int64)
    per_row = lengths - target_start
    rows = np.repeat(np.arange(lengths.size, dtype=np.int64), per_row)
    first = np.zeros(per_row.size + 1, dtype=np.int64)
    np.cumsum(per_row, out=first[1:])
    j = np.arange(first[-1], dtype=np.int64) - np.repeat(first[:-1] - target_start, per_row)
    return rows, j


def history_start(j: np.ndarray | int, max_length: int) -> np.ndarray | int:
    """Where the history of the target at index ``j`` of its row starts: ``max(0, j - L)`` (it ends at ``j``)."""
    return np.maximum(np.asarray(j) - max_length, 0) if isinstance(j, np.ndarray) else max(0, j - max_length)


def _rows_to_arrow(rows: Any) -> tuple[pa.Array, pa.Array, pa.Array | None]:
    """``item_ids``, ``target_start`` (and ``user_id``) as Arrow arrays from a Dataset, a Table or a dict."""
    if hasattr(rows, "with_format") and hasattr(rows, "features"):  # a datasets.Dataset (handles indices)
        rows = rows.with_format("arrow")[:]
    if isinstance(rows, pa.Table):
        user = rows.column(USER_ID).combine_chunks() if USER_ID in rows.column_names else None
        return rows.column(ITEM_IDS).combine_chunks(), rows.column(TARGET_START).combine_chunks(), user
    if isinstance(rows, dict):
        user = pa.array(rows[USER_ID], type=pa.string()) if USER_ID in rows else None
        items = pa.array(rows[ITEM_IDS], type=pa.list_(pa.int64()))
        return items, pa.array(rows[TARGET_START], type=pa.int64()), user
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
        #: row of each sample
        self.sample_row, j = sample_positions(lengths, starts)
        self.row_start = offsets[:-1]
        #: index in ``items`` of each sample's target
        self.target_pos = self.row_start[self.sample_row] + j

    def __len__(self) -> int:
        return int(self.target_pos.size)

    @property
    def targets(self) -> np.ndarray:
        """The target item id of every sample."""
        return self.items[self.target_pos]

    @property
    def history_lengths(self) -> np.ndarray:
        """The (truncated) history length of every sample: ``min(j, L)`` for target index ``j``."""
        j = self.target_pos - self.row_start[self.sample_row]
        return j - history_start(j, self.max_length)

    def history(self, i: int) -> np.ndarray:
        """Sample ``i``'s history, unpadded: at most ``L`` items, oldest first."""
        row_start = int(self.row_start[self.sample_row[i]])
        end = int(self.target_pos[i])
        return self.items[row_start + history_start(end - row_start, self.max_length) : end]

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
        row_start = self.row_start[rows]
        start = row_start + history_start(end - row_start, self.max_length)
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
