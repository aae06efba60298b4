"""The published data set format, in one place: every name a builder writes and a reader reads.

A data set is a folder (or a Hub dataset repository with the same files)::

    README.md                                   dataset card; its YAML `configs` map files to splits
    metadata.json                               settings and counts (METADATA_KEYS), read by read_metadata
    item_map.parquet                            item_index (dense id, 0 = padding) -> item_id (original)
    user_map.parquet                            user_index (dense id) -> user_id (original)
    split-3-2-5/{train,validation,test}-00000-of-00001.parquet
    split-6-2-2/...

Each split holds one row per user with a target in it: `user_id` (string), `item_ids` (list of int64: the user's
dense item ids from the first interaction through the split's last target) and `target_start` (int64: the index of
the split's first target), plus `timestamps` (list of int64) when the raw data has times. What a row means as
(history, target) samples is `dataset_builders.samples`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import DataError, DatasetBuildError

__all__ = [
    "CARD_FILE",
    "DEFAULT_CONFIG",
    "FORMAT_VERSION",
    "ITEM_IDS",
    "ITEM_MAP_FILE",
    "METADATA_FILE",
    "REQUIRED_COLUMNS",
    "SPLIT_NAMES",
    "TARGET_START",
    "TIMESTAMPS",
    "USER_ID",
    "USER_MAP_FILE",
    "config_name",
    "is_config_folder",
    "read_metadata",
    "split_file",
    "split_file_pattern",
]

#: The three splits, in time order.
SPLIT_NAMES: tuple[str, str, str] = ("train", "validation", "test")

# Columns of a split's rows.
USER_ID = "user_id"
ITEM_IDS = "item_ids"
TARGET_START = "target_start"
TIMESTAMPS = "timestamps"
#: The columns every split must have (`timestamps` is optional).
REQUIRED_COLUMNS: tuple[str, str, str] = (USER_ID, ITEM_IDS, TARGET_START)

# Columns of the id maps.
ITEM_INDEX = "item_index"
ITEM_ID = "item_id"
USER_INDEX = "user_index"

# Files of a data set folder.
CARD_FILE = "README.md"
METADATA_FILE = "metadata.json"
ITEM_MAP_FILE = "item_map.parquet"
USER_MAP_FILE = "user_map.parquet"
#: Metadata file name of data sets written before `metadata.json` (still read).
_LEGACY_METADATA_FILE = "dataset_metadata.json"

#: Version of the published layout (row schema, metadata keys); bump on an incompatible change.
FORMAT_VERSION = 1

# Metadata keys a reader relies on (the builders write more: counts, settings, the build command).
NUM_ITEMS = "num_items"  # item vocabulary size, padding id 0 included
MAX_LENGTH = "max_length"  # the maximum history length L
DATASET_NAME = "dataset"
FORMAT_VERSION_KEY = "format_version"  # present in every metadata file the builders write
#: Older spellings of metadata keys, read as the current ones.
_LEGACY_KEYS = {"max_seq_length": MAX_LENGTH, "name": DATASET_NAME}

#: The configuration trainers and evaluators use unless told otherwise (the paper's 3:2:5 split).
DEFAULT_CONFIG = "split-3-2-5"
_CONFIG_PREFIX = "split-"


def config_name(ratios: Sequence[float]) -> str:
    """The configuration name of a ratio: ``(0.3, 0.2, 0.5)`` -> ``"split-3-2-5"``, ``(0.25, 0.25, 0.5)`` ->
    ``"split-25-25-50"`` (the smallest power of ten that makes every part a whole number, at most 10**6)."""
    for scale in (10**k for k in range(1, 7)):
        scaled = [r * scale for r in ratios]
        if all(abs(s - round(s)) < 1e-9 for s in scaled):
            return _CONFIG_PREFIX + "-".join(str(round(s)) for s in scaled)
    shown = ", ".join(f"{r:.6g}" for r in ratios)
    raise DatasetBuildError(
        f"split ratios ({shown} after dividing by their sum) cannot be named: each part must have at most 6 "
        "decimals once the parts sum to 1 (e.g. 3,2,5 or 0.25,0.25,0.5; 1,1,1 gives thirds)"
    )


def is_config_folder(path: Path) -> bool:
    """Whether ``path`` is a configuration's folder of a data set (``split-...``)."""
    return path.is_dir() and path.name.startswith(_CONFIG_PREFIX)


def split_file(config: str, split: str) -> str:
    """The path, inside a data set folder, of the one Parquet file the builders write for a split."""
    return f"{config}/{split}-00000-of-00001.parquet"


def split_file_pattern(config: str, split: str) -> str:
    """The data-files pattern of a split in the card's ``configs`` (any number of shards)."""
    return f"{config}/{split}-*.parquet"


def _parse_metadata(path: Path) -> dict[str, Any]:
    fix = (
        'JSON object such as {"num_items": 1001, "max_length": 50}), or delete it and pass --num_items and '
        "--max_length to scripts/train.py (--max_length to scripts/evaluate.py)."
    )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(
            f"The data set's metadata file {path} is not valid JSON ({err}). Fix or rebuild it (it is a {fix}"
        ) from err
    if not isinstance(meta, dict):
        raise DataError(
            f"The data set's metadata file {path} holds a JSON {type(meta).__name__}, not an object. Fix or rebuild "
            f"it (a {fix}"
        )
    for old, new in _LEGACY_KEYS.items():
        if old in meta and new not in meta:
            meta[new] = meta[old]
    return meta


def read_metadata(folder: str | Path, config: str | None = None) -> dict[str, Any] | None:
    """The metadata of the data set in ``folder``, or ``None`` when it has none.

    Read from ``metadata.json`` (or the older ``dataset_metadata.json``), in the configuration's folder first when
    ``config`` is given, then at the data set's root. Older key spellings (``max_seq_length``, ``name``) are also
    given under the current keys (``max_length``, ``dataset``).

    Raises:
        DataError: the file is not a JSON object.
    """
    folder = Path(folder)
    for place in (folder / config, folder) if config else (folder,):
        for name in (METADATA_FILE, _LEGACY_METADATA_FILE):
            if (place / name).is_file():
                return _parse_metadata(place / name)
    return None
