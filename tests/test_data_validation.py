"""Malformed data sets fail with a clear `DataError` that names the problem and the fix.

Each fixture is a data set in the builders' on-disk layout (README.md with `configs`, one parquet file per
configuration and split, metadata.json) written by `write_split_dataset`; a malformed split is then rewritten with
pyarrow directly, as a hand-edited or foreign parquet file would be.
"""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import random_sequences, write_split_dataset

from dataset_builders import WindowedSamples, split_tables
from modeling_ttt4rec.training.data import DataError, SplitSequences, load_sequences, resolve_dataset_dir

CONFIG = "split-3-2-5"
NUM_ITEMS = 30


@pytest.fixture
def dataset_dir(tmp_path):
    seqs = random_sequences(6, NUM_ITEMS, 4, 10, seed=4)
    return write_split_dataset(tmp_path / "data", seqs, num_items=NUM_ITEMS, max_length=6, configs=(CONFIG,))


def replace_splits(folder, splits: tuple[str, ...], columns: dict) -> None:
    """Overwrite these splits' parquet files with the given columns (written by pyarrow, no `datasets` features).

    `datasets` casts every split to the schema of the configuration's first file, so a column of the wrong type is
    only seen as such when every split has it; a single split of another type fails that cast.
    """
    for split in splits:
        pq.write_table(pa.table(columns), folder / CONFIG / f"{split}-00000-of-00001.parquet")


def ints(rows):
    return pa.array(rows, type=pa.list_(pa.int64()))


ALL = ("train", "validation", "test")
VALIDATION = ("validation",)

# (the splits rewritten, their columns, what the error must say)
MALFORMED = {
    "null item_ids row": (
        VALIDATION,
        {"user_id": ["a", "b"], "item_ids": ints([[1, 2, 3], None]), "target_start": [1, 1]},
        r"Row 1 \(user 'b'\) of the 'validation' split has a missing \(null\) 'item_ids'.*drop those rows, or rebuild",
    ),
    "null item id inside a list": (
        VALIDATION,
        {"user_id": ["a"], "item_ids": ints([[1, None, 3]]), "target_start": [1]},
        r"'validation' split has 1 missing \(null\) item id\(s\) inside its lists.*Rebuild the data set",
    ),
    "float item_ids": (
        ALL,
        {"user_id": ["a"], "item_ids": pa.array([[1.0, 2.0, 3.0]]), "target_start": [1]},
        r"'item_ids' of the 'train' split must hold integer item ids, got lists of double.*Rebuild",
    ),
    "item_ids not a list": (
        ALL,
        {"user_id": ["a"], "item_ids": ["1 2 3"], "target_start": [1]},
        r"'item_ids' of the 'train' split must be a list of integer item ids per row, got string.*Rebuild",
    ),
    "float target_start": (
        ALL,
        {"user_id": ["a"], "item_ids": ints([[1, 2, 3]]), "target_start": [1.0]},
        r"'target_start' of the 'train' split must be integers .*got double.*Rebuild",
    ),
    "null target_start": (
        VALIDATION,
        {"user_id": ["a", "b"], "item_ids": ints([[1, 2, 3], [4, 5]]), "target_start": pa.array([1, None])},
        r"Row 1 \(user 'b'\) of the 'validation' split has a missing \(null\) 'target_start'.*Rebuild",
    ),
    "target_start 0": (
        VALIDATION,
        {"user_id": ["a", "b"], "item_ids": ints([[1, 2, 3], [4, 5]]), "target_start": [1, 0]},
        r"Row 1 \(user 'b'\) of the 'validation' split has target_start 0 for 2 items; it must be in "
        r"\[1, len\(item_ids\) - 1\].*Rebuild",
    ),
    "target_start past the end": (
        VALIDATION,
        {"user_id": ["a"], "item_ids": ints([[1, 2, 3]]), "target_start": [5]},
        r"Row 0 \(user 'a'\) of the 'validation' split has target_start 5 for 3 items",
    ),
    "row without a target": (
        VALIDATION,
        {"user_id": ["a", "b"], "item_ids": ints([[1, 2, 3], [4, 5]]), "target_start": [2, 2]},
        r"Row 1 \(user 'b'\) of the 'validation' split has target_start 2 for 2 items.*every row needs at least one "
        r"target",
    ),
    "one split of another schema": (
        VALIDATION,
        {"user_id": ["a"], "item_ids": ["1 2 3"], "target_start": [1]},
        r"Could not read configuration 'split-3-2-5' of the data set at .*Couldn't cast array of type string to "
        r"List\(Value\('int64'\)\).*must all have the published columns.*rebuild the data set",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_rows_are_rejected_with_a_clear_message(dataset_dir, case):
    splits, columns, message = MALFORMED[case]
    replace_splits(dataset_dir, splits, columns)
    with pytest.raises(DataError, match=message):
        load_sequences(dataset_dir, CONFIG)


def test_well_formed_rows_written_by_pyarrow_load(dataset_dir):
    """The malformed cases above differ from this one only in what they break."""
    columns = {"user_id": ["a", "b"], "item_ids": ints([[1, 2, 3], [4, 5]]), "target_start": [2, 1]}
    replace_splits(dataset_dir, VALIDATION, columns)
    sequences, _ = load_sequences(dataset_dir, CONFIG)
    validation = sequences["validation"]
    assert validation.values.tolist() == [1, 2, 3, 4, 5]
    assert validation.target_start.tolist() == [2, 1]
    assert validation.user_ids == ["a", "b"]
    assert validation.num_samples == 2


@pytest.mark.parametrize("n", range(1, 6))
def test_target_start_range_matches_the_builders(n):
    """`validate` accepts exactly the rows `dataset_builders.WindowedSamples` accepts: 1 <= target_start <= n - 1.
    A split never holds a user with no target (docs/protocol.md section 5 publishes a row only for a user with samples
    there)."""
    item_ids = list(range(1, n + 1))
    for ts in range(-1, n + 2):
        try:
            WindowedSamples({"item_ids": [item_ids], "target_start": [ts]}, max_length=3)
            builder_accepts = True
        except ValueError:
            builder_accepts = False
        try:
            SplitSequences.from_rows([item_ids], [ts]).validate(NUM_ITEMS, "test")
            loader_accepts = True
        except DataError:
            loader_accepts = False
        assert loader_accepts == builder_accepts == (1 <= ts <= n - 1), (n, ts)


@pytest.mark.parametrize("ratios", [(0.3, 0.2, 0.5), (0.6, 0.2, 0.2)])
def test_every_published_row_has_a_target(ratios):
    """The builders' rows for users of every small length (1 interaction: no row anywhere) pass `validate`."""
    from datasets import Dataset

    lengths = list(range(1, 30))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = (np.arange(offsets[-1], dtype=np.int64) % (NUM_ITEMS - 1)) + 1
    users = pa.array([f"u{k}" for k in range(len(lengths))])
    tables, counts = split_tables(items, offsets, users, ratios)
    for k, (split, table) in enumerate(tables.items()):
        sequences = SplitSequences.from_dataset(Dataset(table), split)
        sequences.validate(NUM_ITEMS, split)
        assert sequences.num_samples == counts[:, k].sum()
        assert sequences.num_rows == (counts[:, k] > 0).sum()


def test_invalid_metadata_json(dataset_dir):
    (dataset_dir / "metadata.json").write_text('{"num_items": 30, "max_length": ')
    with pytest.raises(DataError, match=r"metadata file .*metadata\.json is not valid JSON .*delete it and pass"):
        load_sequences(dataset_dir, CONFIG)
    (dataset_dir / "metadata.json").write_text(json.dumps([30, 6]))
    with pytest.raises(DataError, match=r"metadata file .*metadata\.json holds a JSON list, not an object"):
        load_sequences(dataset_dir, CONFIG)
    (dataset_dir / "metadata.json").unlink()
    _, meta = load_sequences(dataset_dir, CONFIG, num_items=NUM_ITEMS, max_length=6)  # the fix the message names
    assert (meta.num_items, meta.max_length) == (NUM_ITEMS, 6)


def test_missing_split(dataset_dir):
    readme = dataset_dir / "README.md"
    lines = readme.read_text().splitlines()
    readme.write_text("\n".join(line for line in lines if "split: validation" not in line) + "\n")
    with pytest.raises(DataError, match=r"'split-3-2-5' of .* lacks the split\(s\) \['validation'\]; it has "):
        load_sequences(dataset_dir, CONFIG)
    with pytest.raises(DataError, match=r"Add them to the `configs` of its README.md.*`splits=`"):
        load_sequences(dataset_dir, CONFIG)
    sequences, _ = load_sequences(dataset_dir, CONFIG, splits=("train", "test"))  # the fix the message names
    assert set(sequences) == {"train", "test"}


def test_dataset_path_that_is_a_file(dataset_dir):
    path = dataset_dir / CONFIG / "train-00000-of-00001.parquet"
    with pytest.raises(DataError, match=r"is a file, not a folder; pass the folder that holds its README\.md"):
        resolve_dataset_dir(path)
    with pytest.raises(DataError, match=r"is a file, not a folder"):
        load_sequences(path, CONFIG)
