"""Reading the published split data sets and turning them into the protocol's samples (docs/protocol.md sections 4-5).

A data set (a local folder or a Hub dataset repository, as `dataset_builders` publish them) has one configuration
per split ratio (`split-3-2-5`, `split-6-2-2`) with `train` / `validation` / `test` splits and one row per user with
a target in the split: `user_id`, `item_ids` (the user's items from the first interaction through the last target of
this split) and `target_start` (this split's targets are `item_ids[target_start:]`, at least one; a user with no
target in a split has no row there). Sample `j` of a row has target
`item_ids[j]` and history `item_ids[max(0, j - L):j]`: the sample rule, defined once in `dataset_builders.samples`
(and the names of the format in `dataset_builders.format`).

Everything the model reads is described as **units**: a contiguous slice `values[start : start + length]` of the
split's flattened item ids, with targets after its positions `first_target .. length - 1` (the target after position
`p` is `values[start + p + 1]`). One kind of unit serves all three uses:

* training and window evaluation (`prefix_units`): the first `min(n - 1, L)` items of each row with a target after
  every position from `target_start - 1` on (one forward pass reads all these samples, whose histories are whole
  prefixes of at most `L` items: the model is causal, so the hidden state after item `j - 1` of the prefix is the
  one of the window `item_ids[:j]`), plus, only for targets `j > L`, one window `item_ids[j - L:j]` with a single
  target. The set of (history, target) pairs is exactly the protocol's (the paper evaluates each sample on its own
  window; the results are the same);
* stream evaluation (`stream_units`): one unit per user, the whole history, every target of the split scored on the
  way (read in chunks with the cache, see `evaluation.py`);
* window evaluation of a model that cannot share one pass among a user's samples (`sample_units`, BERT4Rec): one
  window `item_ids[max(0, j - L):j]` per sample, its target after the last position.
"""

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from dataset_builders.errors import DataError
from dataset_builders.format import (
    CARD_FILE,
    DATASET_NAME,
    DEFAULT_CONFIG,
    ITEM_IDS,
    ITEM_MAP_FILE,
    MAX_LENGTH,
    NUM_ITEMS,
    REQUIRED_COLUMNS,
    SPLIT_NAMES,
    TARGET_START,
    USER_ID,
    read_metadata,
)
from dataset_builders.resolve import resolve_folder
from dataset_builders.samples import history_start, sample_positions

logger = logging.getLogger(__name__)

#: The split configuration a trainer or evaluator reads unless told otherwise.
DEFAULT_CONFIG_NAME = DEFAULT_CONFIG


# ----------------------------------------------------------------------------------------------------------------
# Locating and loading
# ----------------------------------------------------------------------------------------------------------------


def resolve_dataset_dir(dataset: str | os.PathLike, revision: str | None = None, token: str | None = None) -> Path:
    """The local folder of a data set given as a folder or as a Hub dataset repository id (through the Hugging Face
    cache, also offline: `dataset_builders.resolve.resolve_folder`)."""
    return resolve_folder(
        dataset, "dataset", what="data set", marker=CARD_FILE, revision=revision, token=token, error=DataError
    )


@dataclass
class DatasetMetadata:
    """What the trainer needs to know about a data set besides its rows."""

    num_items: int
    max_length: int
    name: str
    config_name: str
    source: str
    local_dir: Path
    item_id_map: Path | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class SplitSequences:
    """One split with its rows flattened: row `r` is `values[offsets[r]:offsets[r + 1]]`."""

    values: np.ndarray
    offsets: np.ndarray
    target_start: np.ndarray
    user_ids: list

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_rows(self) -> int:
        return len(self.target_start)

    @property
    def num_samples(self) -> int:
        """Number of (history, target) samples of this split."""
        return int((self.lengths - self.target_start).sum())

    @classmethod
    def from_rows(
        cls, item_ids: list[list[int]], target_start: list[int], user_ids: list | None = None
    ) -> "SplitSequences":
        """Build from Python lists (tests, small data)."""
        lengths = np.array([len(s) for s in item_ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = np.array([i for s in item_ids for i in s], dtype=np.int64)
        user_ids = list(range(len(item_ids))) if user_ids is None else list(user_ids)
        return cls(values, offsets, np.asarray(target_start, dtype=np.int64), user_ids)

    @classmethod
    def from_dataset(cls, dataset, split: str = "?") -> "SplitSequences":
        """Flatten a `datasets.Dataset` with the published columns (checked, with clear errors)."""
        missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
        if missing:
            raise DataError(
                f"The {split!r} split lacks the column(s) {missing}; it has {dataset.column_names}. A TTT4Rec data "
                f"set needs {list(REQUIRED_COLUMNS)} (see dataset_builders)."
            )
        table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
        user_ids = table.column(USER_ID).to_pylist()
        rebuild = "Rebuild the data set with dataset_builders (see its README for the row format)."
        column = table.column(ITEM_IDS)
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
            raise DataError(
                f"Column 'item_ids' of the {split!r} split must be a list of integer item ids per row, got "
                f"{column.type}. {rebuild}"
            )
        if not pa.types.is_integer(column.type.value_type):
            raise DataError(
                f"Column 'item_ids' of the {split!r} split must hold integer item ids, got lists of "
                f"{column.type.value_type}. {rebuild}"
            )
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if array.null_count:
            r = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(
                f"Row {r} (user {user_ids[r]!r}) of the {split!r} split has a missing (null) 'item_ids' "
                f"({array.null_count} such row(s)). Every row needs its list of item ids: drop those rows, or "
                "rebuild the data set with dataset_builders."
            )
        raw_offsets = array.offsets.to_numpy().astype(np.int64)
        flat = array.values.slice(int(raw_offsets[0]), int(raw_offsets[-1] - raw_offsets[0]))
        if flat.null_count:
            raise DataError(
                f"Column 'item_ids' of the {split!r} split has {flat.null_count} missing (null) item id(s) inside "
                f"its lists; every item id must be an integer in [1, num_items - 1]. {rebuild}"
            )
        values = flat.to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = raw_offsets - raw_offsets[0]
        starts = table.column(TARGET_START)
        if not pa.types.is_integer(starts.type):
            raise DataError(
                f"Column 'target_start' of the {split!r} split must be integers (the index of each row's first "
                f"target in 'item_ids'), got {starts.type}. {rebuild}"
            )
        if starts.null_count:
            r = int(np.flatnonzero(starts.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(
                f"Row {r} (user {user_ids[r]!r}) of the {split!r} split has a missing (null) 'target_start'. {rebuild}"
            )
        target_start = np.asarray(starts.to_numpy(), dtype=np.int64)
        return cls(values, offsets, target_start, user_ids)

    def validate(self, num_items: int, split: str = "?") -> None:
        """Raise `DataError` if ids or target starts are out of range.

        A row must have at least one target: `1 <= target_start <= len(item_ids) - 1`. The builders publish a row
        only for a user with a target in the split (a user with no target there has no row), and
        `dataset_builders.WindowedSamples` rejects a row without one, so such a row means a malformed data set.
        """
        lengths = self.lengths
        if self.values.size:
            low, high = int(self.values.min()), int(self.values.max())
            if low < 1 or high >= num_items:
                raise DataError(
                    f"The {split!r} split has item id {low if low < 1 else high}, outside [1, {num_items - 1}] "
                    f"(num_items = {num_items} counts the padding id 0). Pass the right --num_items or rebuild the "
                    "data set."
                )
        bad = np.flatnonzero((self.target_start < 1) | (self.target_start >= lengths))
        if bad.size:
            r = int(bad[0])
            raise DataError(
                f"Row {r} (user {self.user_ids[r]!r}) of the {split!r} split has target_start "
                f"{int(self.target_start[r])} for {int(lengths[r])} items; it must be in [1, len(item_ids) - 1] "
                "(the first item is only history, and every row needs at least one target; a user with no target "
                "in a split has no row there). Rebuild the data set with dataset_builders."
            )


def load_sequences(
    dataset: str | os.PathLike,
    config_name: str | None = DEFAULT_CONFIG_NAME,
    num_items: int | None = None,
    max_length: int | None = None,
    revision: str | None = None,
    token: str | None = None,
    splits: tuple[str, ...] = SPLIT_NAMES,
) -> tuple[dict[str, SplitSequences], DatasetMetadata]:
    """Load a split data set and its metadata.

    Args:
        dataset: a local folder or a Hub dataset repository id.
        config_name: the split configuration (`split-3-2-5` by default); `None` takes the data set's default.
        num_items: number of item ids including the padding id; default: the data set's metadata, else the
            largest id + 1.
        max_length: the maximum history length `L`; default: the data set's metadata (required there otherwise).
        splits: the splits to load.

    Returns:
        `{split: SplitSequences}` and the `DatasetMetadata`.
    """
    local_dir = resolve_dataset_dir(dataset, revision=revision, token=token)
    config_name = _choose_config(local_dir, str(dataset), config_name)
    sequences = _read_splits(local_dir, str(dataset), config_name, splits)
    meta = read_metadata(local_dir, config_name) or {}
    if num_items is None:
        num_items = meta.get(NUM_ITEMS)
    if num_items is None:
        num_items = 1 + max(int(seq.values.max()) for seq in sequences.values() if seq.values.size)
        logger.warning("No num_items in the data set's metadata: using the largest item id + 1 = %d.", num_items)
    if max_length is None:
        max_length = meta.get(MAX_LENGTH)
    if max_length is None:
        raise DataError(
            f"The data set {str(dataset)!r} has no `max_length` in its metadata; pass the maximum history length "
            "(--max_length, e.g. 50 for Amazon, 100 for Gowalla)."
        )
    if int(max_length) < 1:
        raise DataError(f"`max_length` must be >= 1, got {max_length}.")
    for name, seq in sequences.items():
        seq.validate(int(num_items), name)
    item_map = local_dir / ITEM_MAP_FILE
    metadata = DatasetMetadata(
        num_items=int(num_items),
        max_length=int(max_length),
        name=str(meta.get(DATASET_NAME, Path(str(dataset)).name)),
        config_name=config_name,
        source=str(dataset),
        local_dir=local_dir,
        item_id_map=item_map if item_map.is_file() else None,
        extra=meta,
    )
    return sequences, metadata


def _choose_config(local_dir: Path, dataset: str, config_name: str | None) -> str:
    """`config_name`, checked against the data set's configurations (its default when `None`)."""
    import datasets

    if not (local_dir / CARD_FILE).is_file() and not any(local_dir.glob("**/*.parquet")):
        raise DataError(
            f"{local_dir} is not a data set folder: it has no {CARD_FILE} with `configs` and no parquet files."
        )
    try:
        available = datasets.get_dataset_config_names(str(local_dir))
    except Exception as err:
        raise DataError(f"Could not read the configurations of the data set at {local_dir}: {err}") from err
    if config_name is None:
        config_name = DEFAULT_CONFIG_NAME if DEFAULT_CONFIG_NAME in available else available[0]
    if config_name not in available:
        raise DataError(f"Unknown configuration {config_name!r} for data set {dataset!r}; it has {available}.")
    return config_name


def _read_splits(
    local_dir: Path, dataset: str, config_name: str, splits: tuple[str, ...]
) -> dict[str, SplitSequences]:
    """The rows of `splits` of one configuration, flattened and checked."""
    import datasets

    # Read the parquet files into memory with a throw-away cache: `datasets` keys its cache on the folder's name and
    # file times and can hand back stale rows (or a stale schema) for a data set rebuilt into a same-named folder.
    with tempfile.TemporaryDirectory(prefix="ttt4rec-datasets-") as cache_dir:
        try:
            dataset_dict = datasets.load_dataset(str(local_dir), config_name, cache_dir=cache_dir, keep_in_memory=True)
        except (datasets.exceptions.DatasetsError, pa.ArrowException) as err:
            cause = err.__cause__ or err.__context__ or err
            raise DataError(
                f"Could not read configuration {config_name!r} of the data set at {local_dir}: "
                f"{' '.join(str(cause).split())}. Its parquet files must all have the published columns ({USER_ID}: "
                f"string, {ITEM_IDS}: list of int64, {TARGET_START}: int64); rebuild the data set with "
                "dataset_builders."
            ) from err
        missing = [s for s in splits if s not in dataset_dict]
        if missing:
            raise DataError(
                f"Configuration {config_name!r} of {dataset!r} lacks the split(s) {missing}; it has "
                f"{list(dataset_dict)}. Add them to the `configs` of its {CARD_FILE} (dataset_builders publish "
                f"{list(SPLIT_NAMES)}), or load only the splits it has (`splits=`)."
            )
        return {s: SplitSequences.from_dataset(dataset_dict[s], s) for s in splits}


# ----------------------------------------------------------------------------------------------------------------
# Units: what the model reads
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Units:
    """Slices of a split's flattened item ids with their targets (see the module docstring).

    `sample_offset[u]` is the index of unit `u`'s first sample in the split's sample order (users in row order,
    targets in time order), so that results gathered from any number of processes can be put back in one order.
    """

    values: np.ndarray
    start: np.ndarray
    length: np.ndarray
    first_target: np.ndarray
    sample_offset: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    @property
    def num_targets(self) -> np.ndarray:
        return self.length - self.first_target

    @property
    def total_targets(self) -> int:
        return int(self.num_targets.sum())


def _sample_positions(split: SplitSequences) -> tuple[np.ndarray, np.ndarray]:
    """For every sample in split order: its row and its index `j` in that row (the sample rule,
    `dataset_builders.samples.sample_positions`)."""
    return sample_positions(split.lengths, split.target_start)


def sample_targets(split: SplitSequences) -> np.ndarray:
    """The target item of every sample of `split`, in sample order."""
    rows, j = _sample_positions(split)
    return split.values[split.offsets[rows] + j]


def sample_history_lengths(split: SplitSequences) -> np.ndarray:
    """How many items each sample's user had read before its target (`j` for target `item_ids[j]`: the whole
    history, which window evaluation truncates to the last `L`), in sample order."""
    return _sample_positions(split)[1]


def stream_units(split: SplitSequences) -> Units:
    """One unit per user with at least one target: the whole history, a target after every position from
    `target_start - 1` on."""
    counts = split.lengths - split.target_start
    keep = np.flatnonzero(counts > 0)
    sample_offset = np.concatenate([[0], np.cumsum(counts)])[:-1][keep]
    start = split.offsets[keep]
    length = split.lengths[keep] - 1
    first_target = split.target_start[keep] - 1
    return Units(split.values, start, length, first_target, sample_offset)


def _window_units(split: SplitSequences, max_length: int, min_history: int) -> Units:
    """One unit per sample of `split` whose history has at least `min_history` items: its window
    `item_ids[history_start(j, L):j]`, its target after the last position."""
    rows, j = sample_positions(split.lengths, split.target_start)
    ids = np.flatnonzero(j >= min_history)  # sample ids in the split's sample order
    rows, j = rows[ids], j[ids]
    start = split.offsets[rows] + history_start(j, max_length)
    length = j - history_start(j, max_length)
    return Units(split.values, start, length, length - 1, ids)


def sample_units(split: SplitSequences, max_length: int) -> Units:
    """One unit per sample of `split`: its window of at most `L` items (the sample rule), a single target after it.
    For a model whose hidden state after an item is computed from the history ending there alone."""
    return _window_units(split, max_length, min_history=1)


def prefix_units(split: SplitSequences, max_length: int) -> Units:
    """Units that hold exactly the protocol's samples of `split` (`dataset_builders.samples`): whole prefixes of
    at most `L` items, plus one window per target beyond `L` (see the module docstring)."""
    lengths, ts = split.lengths, split.target_start
    # prefix units: first min(n - 1, L) items, targets j = ts .. min(n - 1, L), whose histories start at 0
    m = np.minimum(lengths - 1, max_length)
    p_rows = np.flatnonzero(m >= ts)
    # window units for the samples j > L: history item_ids[history_start(j, L):j], L items
    w = _window_units(split, max_length, min_history=max_length + 1)
    start = np.concatenate([split.offsets[p_rows], w.start]).astype(np.int64)
    length = np.concatenate([m[p_rows], w.length]).astype(np.int64)
    first_target = np.concatenate([ts[p_rows] - 1, w.first_target]).astype(np.int64)
    # a prefix unit's first sample is its row's first: row r's samples start at row_first[r]
    row_first = np.concatenate([[0], np.cumsum(lengths - ts)])[:-1]
    sample_offset = np.concatenate([row_first[p_rows], w.sample_offset]).astype(np.int64)
    return Units(split.values, start, length, first_target, sample_offset)


# `--train_units`: how the training samples are read (the samples are the same)
TRAINING_UNITS = {"prefix": prefix_units, "sample": sample_units}
# `--batching`: the training batches are cut from buckets of about this many batches' units, sorted by length
BATCHING = {"length": 64, "random": 1}


# ----------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------


def _cut(order: np.ndarray, units: Units, max_targets: int, max_tokens: int, min_rows: int) -> list[np.ndarray]:
    """Cut `order` (units sorted by length, longest first) into consecutive batches within the budgets."""
    batches, current, targets, longest = [], [], 0, 0
    num_targets, length = units.num_targets, units.length
    for u in order.tolist():
        t, n = int(num_targets[u]), int(length[u])
        new_longest = max(longest, n)
        if (
            current
            and len(current) >= min_rows
            and (targets + t > max_targets or new_longest * (len(current) + 1) > max_tokens)
        ):
            batches.append(np.array(current, dtype=np.int64))
            current, targets, new_longest = [], 0, n
        current.append(u)
        targets += t
        longest = new_longest
    if current:
        if len(current) < min_rows and batches:
            batches[-1] = np.concatenate([batches[-1], np.array(current, dtype=np.int64)])
        else:
            batches.append(np.array(current, dtype=np.int64))
    return batches


def make_batches(
    units: Units,
    max_targets: int,
    max_tokens: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    min_rows: int = 1,
    bucket_batches: int = 64,
) -> list[np.ndarray]:
    """Group units into batches of at most `max_targets` targets and `max_tokens` padded tokens.

    Units are sorted by length so batches carry little padding. With `shuffle`, the units are first permuted (with
    `seed`), sorted by length within buckets of about `bucket_batches` batches, and the batch order is shuffled:
    random batches with little padding, the same on every process for the same seed. `min_rows` makes every batch
    hold at least that many units (one per process in data-parallel training).
    """
    if max_targets < 1:
        raise ValueError(f"`max_targets` must be >= 1, got {max_targets}.")
    max_tokens = max_tokens or np.iinfo(np.int64).max
    if len(units) == 0:
        return []
    if not shuffle:
        order = np.argsort(-units.length, kind="stable")
        return _cut(order, units, max_targets, max_tokens, min_rows)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(units))
    mean_targets = max(units.total_targets / len(units), 1.0)
    bucket = max(int(bucket_batches * max_targets / mean_targets), 1)
    batches: list[np.ndarray] = []
    for s in range(0, len(perm), bucket):
        chunk = perm[s : s + bucket]
        chunk = chunk[np.argsort(-units.length[chunk], kind="stable")]
        batches.extend(_cut(chunk, units, max_targets, max_tokens, min_rows))
    if len(batches) > 1 and len(batches[-1]) < min_rows:
        batches[-2] = np.concatenate([batches[-2], batches.pop()])
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(units: Units, index: np.ndarray, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors for units `index`: right-padded `input_ids` / `attention_mask` `[B, T]`, `target_mask` `[B, T]`
    (positions with a target after them), `targets` (the target item ids in row-major order of `target_mask`) and
    `sample_ids` (their sample indices in the split)."""
    start, length, first = units.start[index], units.length[index], units.first_target[index]
    width = int(length.max())
    pos = np.arange(width)[None, :]
    mask = pos < length[:, None]
    flat = np.where(mask, start[:, None] + pos, 0)
    ids = np.where(mask, units.values[flat], 0)
    target_mask = mask & (pos >= first[:, None])
    targets = units.values[(start[:, None] + pos + 1)[target_mask]]
    sample_ids = (units.sample_offset[index][:, None] + pos - first[:, None])[target_mask]
    return {
        "input_ids": torch.from_numpy(ids).to(device),
        "attention_mask": torch.from_numpy(mask.astype(np.int64)).to(device),
        "target_mask": torch.from_numpy(target_mask).to(device),
        "targets": torch.from_numpy(targets).to(device),
        "sample_ids": torch.from_numpy(sample_ids).to(device),
    }


__all__ = [
    "DataError",
    "DatasetMetadata",
    "SplitSequences",
    "Units",
    "collate",
    "load_sequences",
    "make_batches",
    "resolve_dataset_dir",
    "sample_history_lengths",
    "sample_units",
    "stream_units",
    "prefix_units",
    "sample_targets",
]
