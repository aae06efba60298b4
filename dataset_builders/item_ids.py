"""Original item ids (what a person reads and types) <-> dense item ids (what a model reads), in one place.

A data set's `item_map.parquet` (and a checkpoint's copy of it) gives each dense id `1 .. N` the original item id of
the raw data, as a string; dense id 0 is the padding id and no item. `ItemIdMap` reads that file and converts in
both directions, refusing an id that is not in the map by name, never mapping it to padding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import DataError
from .format import ITEM_ID, ITEM_INDEX, ITEM_MAP_FILE

__all__ = ["ItemIdMap", "UnknownItemError"]


class UnknownItemError(DataError):
    """An original item id that the item map does not know (e.g. removed by the k-core filter)."""


class ItemIdMap:
    """The item map of a data set or checkpoint.

    Args:
        original_ids: `original_ids[dense_id]` is the original id (a string) of each dense id; entry 0, the padding
            id, is `None`.
    """

    def __init__(self, original_ids: Sequence[str | None]):
        if not original_ids or original_ids[0] is not None:
            raise DataError("An item map starts with the padding id 0, which has no original id (None).")
        self.original_ids: list[str | None] = list(original_ids)
        self.dense_ids: dict[str, int] = {item: dense for dense, item in enumerate(self.original_ids) if dense}
        if len(self.dense_ids) != len(self.original_ids) - 1:
            raise DataError("The item map gives one original id to several dense ids: it is damaged; rebuild it.")

    @classmethod
    def from_file(cls, path: str | Path) -> ItemIdMap:
        """Read an `item_map.parquet` file, or the one in a data set or checkpoint folder."""
        path = Path(path)
        if path.is_dir():
            path = path / ITEM_MAP_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"No item map at {path}: a data set from dataset_builders, and a checkpoint trained on one, hold "
                f"`{ITEM_MAP_FILE}`. Use dense item ids instead (the option is named where the ids are given)."
            )
        table = pq.read_table(path, columns=[ITEM_INDEX, ITEM_ID])
        order = np.argsort(table.column(ITEM_INDEX).to_numpy())
        index = table.column(ITEM_INDEX).to_numpy()[order]
        if not np.array_equal(index, np.arange(len(index))):
            raise DataError(f"{path} does not hold every dense id 0 .. {len(index) - 1} once: rebuild the data set.")
        return cls(table.column(ITEM_ID).take(pa.array(order)).to_pylist())

    @property
    def num_items(self) -> int:
        """The model's `num_items` for this map: the items plus the padding id."""
        return len(self.original_ids)

    def __len__(self) -> int:
        return self.num_items

    def to_dense(self, original_ids: Iterable[str | int]) -> list[int]:
        """Dense ids of `original_ids` (strings, or numbers written as in the raw data); an unknown id is an
        `UnknownItemError` that names every unknown id."""
        original_ids = [str(item) for item in original_ids]
        unknown = [item for item in original_ids if item not in self.dense_ids]
        if unknown:
            shown = ", ".join(repr(item) for item in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise UnknownItemError(
                f"Unknown item id(s) {shown}: not in the item map of {self.num_items - 1} items (an item of the raw "
                "data may have been removed by the k-core filter). Use ids of the data set the model was trained on."
            )
        return [self.dense_ids[item] for item in original_ids]

    def to_original(self, dense_ids: Iterable[int]) -> list[str]:
        """Original ids of dense ids `1 .. num_items - 1`; the padding id or an id out of range is a `ValueError`."""
        dense_ids = [int(i) for i in dense_ids]
        bad = [i for i in dense_ids if not 0 < i < self.num_items]
        if bad:
            raise ValueError(f"Dense item id(s) {bad[:10]} are not items of this map (1 .. {self.num_items - 1}).")
        return [self.original_ids[i] for i in dense_ids]

    def fingerprint(self) -> str:
        """A SHA-256 of the map (every dense id's original id, in order): equal fingerprints, equal maps."""
        digest = hashlib.sha256()
        for item in self.original_ids[1:]:
            digest.update(item.encode("utf-8") + b"\n")
        return digest.hexdigest()
