"""Original item ids <-> dense ids through a data set's item map."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataset_builders.format import ITEM_MAP_FILE
from dataset_builders.item_ids import ItemIdMap, UnknownItemError


def write_map(folder, originals):
    table = pa.table({"item_index": list(range(len(originals))), "item_id": originals})
    pq.write_table(table, folder / ITEM_MAP_FILE)
    return folder


def test_both_directions_from_a_folder(tmp_path):
    # written out of order: the file's row order must not matter
    table = pa.table({"item_index": [2, 0, 1, 3], "item_id": ["B00005", None, "7351", "42"]})
    pq.write_table(table, tmp_path / ITEM_MAP_FILE)
    item_map = ItemIdMap.from_file(tmp_path)
    assert item_map.num_items == 4
    assert item_map.to_dense(["7351", "B00005", 42]) == [1, 2, 3]  # numbers are read as the raw data wrote them
    assert item_map.to_original([3, 1]) == ["42", "7351"]


def test_unknown_ids_are_named_and_never_padding(tmp_path):
    item_map = ItemIdMap.from_file(write_map(tmp_path, [None, "a", "b"]))
    with pytest.raises(UnknownItemError, match=r"'12', 'zz'.*k-core"):
        item_map.to_dense(["a", "12", "zz"])
    with pytest.raises(UnknownItemError):
        item_map.to_dense(["None"])
    with pytest.raises(ValueError, match=r"\[0, 3\] are not items"):
        item_map.to_original([0, 1, 3])


def test_a_missing_or_damaged_map_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No item map"):
        ItemIdMap.from_file(tmp_path)
    table = pa.table({"item_index": [0, 1, 1], "item_id": [None, "a", "b"]})
    pq.write_table(table, tmp_path / ITEM_MAP_FILE)
    with pytest.raises(ValueError, match="every dense id"):
        ItemIdMap.from_file(tmp_path)
    with pytest.raises(ValueError, match="several dense ids"):
        ItemIdMap([None, "a", "a"])


def test_the_fingerprint_tells_maps_apart():
    same = ItemIdMap([None, "a", "b"]).fingerprint()
    assert same == ItemIdMap([None, "a", "b"]).fingerprint()
    assert same != ItemIdMap([None, "b", "a"]).fingerprint()  # same items, other dense ids
    assert same != ItemIdMap([None, "a", "b", "c"]).fingerprint()
