"""The per-user chronological ratio split of docs/protocol.md section 5 (RecBole's ``RS`` split after its sequential
data augmentation), and the rows it publishes.

A user with ``n`` interactions ``s_0 .. s_{n-1}`` has ``t = n - 1`` samples; sample ``j`` (``j = 1 .. t``) has
target ``s_j``. The samples, in order, are cut into train / validation / test by :func:`split_counts_array`.

Each split is published as one row per user that has a target in it: ``item_ids`` runs from the user's first
interaction through the split's last target, and ``target_start`` is the index of the split's first target, so
the targets are ``item_ids[target_start:]`` and everything before a target is its history (which crosses split
borders, PROTOCOL 5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from .errors import DatasetBuildError
from .format import ITEM_IDS, SPLIT_NAMES, TARGET_START, TIMESTAMPS, USER_ID

__all__ = [
    "parse_ratios",
    "split_counts",
    "split_counts_array",
    "split_tables",
]


def parse_ratios(ratios: str | Sequence[float]) -> tuple[float, float, float]:
    """Turn ``"0.3,0.2,0.5"`` (or ``"3,2,5"``, or a sequence) into three ratios that sum to 1, as RecBole does.

    Ratios are divided by their sum (RecBole's normalisation; ``0.3, 0.2, 0.5`` already sums to exactly 1.0 and
    is unchanged). Every part must be positive.
    """
    if isinstance(ratios, str):
        try:
            values = [float(part) for part in ratios.split(",")]
        except ValueError:
            raise DatasetBuildError(f"ratios must be three numbers like 0.3,0.2,0.5, got {ratios!r}") from None
    else:
        values = [float(part) for part in ratios]
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise DatasetBuildError(f"ratios must be three positive numbers (train, validation, test), got {ratios!r}")
    total = sum(values)
    return (values[0] / total, values[1] / total, values[2] / total)


def split_counts(t: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    """How many of a user's ``t`` samples go to train, validation and test (:func:`split_counts_array` for one user).

    >>> split_counts(4, (0.3, 0.2, 0.5))
    (1, 1, 2)
    """
    train, validation, test = split_counts_array(np.array([t]), ratios)[0].tolist()
    return train, validation, test


def split_counts_array(t: np.ndarray, ratios: Sequence[float]) -> np.ndarray:
    """How many of each user's ``t`` samples go to train, validation and test: an ``(len(t), 3)`` int64 array.

    RecBole's rule: ``c = floor(r * t)`` per part, train takes the rest, then a part whose
    ``r * t`` rounded down to zero takes one sample from train while train keeps more than one (test checked
    first). The products ``r * t`` are computed in float64 exactly as RecBole's Python computes them, so the floors
    agree.
    """
    t = np.asarray(t, dtype=np.int64)
    tf = t.astype(np.float64)
    r = [float(x) for x in ratios]
    c = np.stack([np.floor(r[0] * tf), np.floor(r[1] * tf), np.floor(r[2] * tf)], axis=1).astype(np.int64)
    c[:, 0] = t - c[:, 1] - c[:, 2]
    active = np.ones(t.shape, dtype=bool)  # users whose loop has not hit "break"
    for i in (1, 2):  # looks at r2 first, then r1
        active &= ~(c[:, 0] <= 1)
        part = r[-i] * tf
        bump = active & (part > 0) & (part < 1)
        c[bump, 3 - i] += 1  # column -i of 3
        c[bump, 0] -= 1
    return c


def _gather_prefixes(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``values[starts[k] : starts[k] + lengths[k]]`` for every k; return (values, list offsets)."""
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    index = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)
    return values[index], offsets


def _list_array(values: np.ndarray, offsets: np.ndarray) -> pa.Array:
    if offsets[-1] > np.iinfo(np.int32).max:  # datasets' List feature is a 32-bit-offset Arrow list
        return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.int64()))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=pa.int64()))


def split_tables(
    seq_items: np.ndarray,
    user_offsets: np.ndarray,
    user_ids: pa.Array,
    ratios: Sequence[float],
    seq_times: np.ndarray | None = None,
) -> tuple[dict[str, pa.Table], np.ndarray]:
    """Build the published rows of one ratio: a table per split, and the per-user split counts.

    Args:
        seq_items: Dense item ids of all users' sequences, concatenated, each user's in time order.
        user_offsets: ``len(users) + 1`` offsets into ``seq_items``: user ``u`` is
            ``seq_items[user_offsets[u]:user_offsets[u + 1]]``.
        user_ids: Original user id (string) of each user.
        ratios: The (train, validation, test) ratio.
        seq_times: Times aligned with ``seq_items``, or ``None`` when the raw data has none.

    Returns:
        ``({"train": table, "validation": table, "test": table}, counts)`` where each table has the columns
        ``user_id``, ``item_ids``, ``target_start`` (and ``timestamps``) and ``counts`` is the
        ``(num_users, 3)`` array of :func:`split_counts_array`.
    """
    lengths = np.diff(user_offsets)
    counts = split_counts_array(lengths - 1, ratios)
    # Split k's targets are samples ends[k-1]+1 .. ends[k] (1-based sample j has target s_j), so its row holds
    # s_0 .. s_{ends[k]} and its first target is at index ends[k-1] + 1.
    ends = np.cumsum(counts, axis=1)  # last sample index of each split, per user
    tables: dict[str, pa.Table] = {}
    for k, name in enumerate(SPLIT_NAMES):
        users = np.flatnonzero(counts[:, k] > 0)
        row_lengths = ends[users, k] + 1
        target_start = ends[users, k - 1] + 1 if k > 0 else np.ones(users.size, dtype=np.int64)
        items, offsets = _gather_prefixes(seq_items, user_offsets[users], row_lengths)
        columns = {
            USER_ID: user_ids.take(pa.array(users)),
            ITEM_IDS: _list_array(items, offsets),
            TARGET_START: pa.array(target_start, type=pa.int64()),
        }
        if seq_times is not None:
            times, _ = _gather_prefixes(seq_times, user_offsets[users], row_lengths)
            columns[TIMESTAMPS] = _list_array(times, offsets)
        tables[name] = pa.table(columns)
    return tables, counts
