"""Training samples are exactly the protocol's; batching; data set loading and its errors."""

import collections
import json
import shutil

import numpy as np
import pytest
from helpers import random_sequences, write_split_dataset

from dataset_builders import WindowedSamples
from dataset_builders.format import ITEM_MAP_FILE
from modeling_ttt4rec.training.data import (
    BATCHING,
    DataError,
    SplitSequences,
    collate,
    load_sequences,
    make_batches,
    prefix_units,
    sample_history_lengths,
    sample_targets,
    sample_units,
    stream_units,
)


def protocol_samples(seqs, starts, L):
    """docs/protocol.md section 4: sample j has target s[j] and history s[max(0, j - L):j]."""
    return collections.Counter(
        (tuple(s[max(0, j - L) : j]), s[j]) for s, ts in zip(seqs, starts, strict=True) for j in range(ts, len(s))
    )


def unit_samples(units, batches):
    found = collections.Counter()
    for index in batches:
        batch = collate(units, index)
        ids, tm, targets = batch["input_ids"].numpy(), batch["target_mask"].numpy(), batch["targets"].numpy()
        k = 0
        for row, cols in zip(ids, tm, strict=True):
            for p in np.flatnonzero(cols):
                found[(tuple(int(i) for i in row[: p + 1] if i), int(targets[k]))] += 1
                k += 1
    return found


@pytest.mark.parametrize("L", [3, 5, 50])
def test_prefix_units_hold_exactly_the_protocol_samples(L):
    seqs = random_sequences(30, 25, 2, 20, seed=L)
    starts = [1 if k % 3 else min(3, len(s) - 1) for k, s in enumerate(seqs)]
    split = SplitSequences.from_rows(seqs, starts)
    units = prefix_units(split, L)
    assert units.total_targets == split.num_samples
    assert units.length.max() <= L
    batches = make_batches(units, max_targets=16, shuffle=True, seed=1)
    assert unit_samples(units, batches) == protocol_samples(seqs, starts, L)


@pytest.mark.parametrize("L", [2, 4, 50])
def test_prefix_units_number_samples_in_split_order(L):
    """Sample ids (used to gather ranks across processes and to pick sampled candidates) follow the split's order:
    users in row order, targets in time order."""
    seqs = random_sequences(20, 25, 2, 14, seed=L)
    starts = [max(1, len(s) // 2) for s in seqs]
    split = SplitSequences.from_rows(seqs, starts)
    expected = [(r, j) for r, s in enumerate(seqs) for j in range(starts[r], len(s))]
    units = prefix_units(split, L)
    found = {}
    for index in make_batches(units, max_targets=7, shuffle=True, seed=2):
        batch = collate(units, index)
        ids, tm = batch["input_ids"].numpy(), batch["target_mask"].numpy()
        k = 0
        for row, cols in zip(ids, tm, strict=True):
            for p in np.flatnonzero(cols):
                found[int(batch["sample_ids"][k])] = (
                    tuple(int(i) for i in row[: p + 1] if i),
                    int(batch["targets"][k]),
                )
                k += 1
    assert sorted(found) == list(range(len(expected)))
    targets = sample_targets(split)
    assert sample_history_lengths(split).tolist() == [j for _, j in expected]
    for sample_id, (r, j) in enumerate(expected):
        history, target = found[sample_id]
        assert target == seqs[r][j] == targets[sample_id]
        assert history == tuple(seqs[r][max(0, j - L) : j])


def test_prefix_and_stream_units():
    seqs = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11]]
    split = SplitSequences.from_rows(seqs, [3, 1, 3])
    w = prefix_units(split, 2)
    assert unit_samples(w, make_batches(w, 100)) == protocol_samples(seqs, [3, 1, 3], 2)
    s = stream_units(split)
    assert len(s) == 2  # the third user has no target in this split
    assert s.total_targets == split.num_samples


def test_make_batches_budgets_and_coverage():
    seqs = random_sequences(50, 25, 2, 20, seed=0)
    units = prefix_units(SplitSequences.from_rows(seqs, [1] * 50), 8)
    for shuffle in (False, True):
        batches = make_batches(units, max_targets=20, max_tokens=64, shuffle=shuffle, seed=3, min_rows=2)
        flat = np.concatenate(batches)
        assert sorted(flat.tolist()) == list(range(len(units)))
        assert all(len(b) >= 2 for b in batches)
        assert all(units.num_targets[b].sum() <= 20 or len(b) <= 2 for b in batches)
    a = make_batches(units, 20, shuffle=True, seed=5)
    b = make_batches(units, 20, shuffle=True, seed=5)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))


def test_random_batching_mixes_lengths_and_length_batching_groups_them():
    seqs = random_sequences(400, 25, 2, 40, seed=1)
    units = sample_units(SplitSequences.from_rows(seqs, [1] * 400), 30)
    spread = {}
    for batching, bucket_batches in BATCHING.items():
        batches = make_batches(units, max_targets=50, shuffle=True, seed=0, bucket_batches=bucket_batches)
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(units)))  # every unit, once
        spread[batching] = np.mean([np.ptp(units.length[b]) for b in batches])  # lengths within a batch
    assert spread["length"] <= 1 and spread["random"] > 15


@pytest.fixture
def dataset_dir(tmp_path):
    return write_split_dataset(tmp_path / "data", random_sequences(15, 30, 3, 12, seed=2), num_items=30, max_length=6)


def test_load_sequences_reads_metadata_and_id_map(dataset_dir):
    sequences, meta = load_sequences(dataset_dir, "split-6-2-2")
    assert (meta.num_items, meta.max_length, meta.config_name) == (30, 6, "split-6-2-2")
    assert meta.item_id_map == dataset_dir / ITEM_MAP_FILE
    assert set(sequences) == {"train", "validation", "test"}


def test_unknown_config(dataset_dir):
    with pytest.raises(DataError, match=r"Unknown configuration 'split-1-1-8'.*split-3-2-5"):
        load_sequences(dataset_dir, "split-1-1-8")


def test_missing_column(tmp_path):
    data = write_split_dataset(tmp_path / "d", random_sequences(5, 30, 3, 8), 30, 6, drop_column="target_start")
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['target_start'\]"):
        load_sequences(data)


def test_ids_out_of_range_and_missing_max_length(tmp_path):
    data = write_split_dataset(tmp_path / "d", random_sequences(5, 30, 3, 8), 30, 6, with_metadata=False)
    with pytest.raises(DataError, match="max_length"):
        load_sequences(data)
    with pytest.raises(DataError, match=r"outside \[1, 9\]"):
        load_sequences(data, num_items=10, max_length=6)
    with pytest.raises(DataError, match="does not exist"):
        load_sequences(tmp_path / "nowhere")


def test_dataset_repo_id_through_the_hub_cache_offline(dataset_dir, tmp_path, monkeypatch):
    """A Hub dataset repo laid out in the cache as the Hub does is found offline by repo id."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "datasets--someone--tiny-rec"
    shutil.copytree(dataset_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    sequences, meta = load_sequences("someone/tiny-rec", "split-3-2-5")
    assert meta.local_dir == repo / "snapshots" / commit
    assert sequences["test"].num_samples > 0
    with pytest.raises(DataError, match="not in the Hugging Face cache"):
        load_sequences("someone/not-cached")


def units_by_sample_id(units):
    """{sample id: (history, target)} of every target of `units`, read through `collate` as the model reads it."""
    found = {}
    for index in make_batches(units, max_targets=9, shuffle=True, seed=4):
        batch = collate(units, index)
        ids, tm = batch["input_ids"].numpy(), batch["target_mask"].numpy()
        k = 0
        for row, cols in zip(ids, tm, strict=True):
            for p in np.flatnonzero(cols):
                found[int(batch["sample_ids"][k])] = (tuple(int(i) for i in row[: p + 1]), int(batch["targets"][k]))
                k += 1
    return found


@pytest.mark.parametrize("L", [1, 3, 6, 50])
def test_units_are_built_from_the_sample_rule(L):
    """The trainer's and evaluator's units hold exactly the samples of `dataset_builders.samples` (the one sample
    rule, as `WindowedSamples` gives it), numbered in its order: window units sample by sample (prefix units, and
    one unit per sample with a single target after its newest item), stream units with the whole history before
    each target."""
    seqs = random_sequences(25, 25, 2, 16, seed=L)
    starts = [1 + k % (len(s) - 1) for k, s in enumerate(seqs)]
    split = SplitSequences.from_rows(seqs, starts)
    rule = WindowedSamples({"item_ids": seqs, "target_start": starts}, max_length=L)
    expected = {i: (tuple(rule[i]["history"].tolist()), rule[i]["target"]) for i in range(len(rule))}
    assert units_by_sample_id(prefix_units(split, L)) == expected
    per_sample = sample_units(split, L)
    assert units_by_sample_id(per_sample) == expected
    assert (per_sample.num_targets == 1).all() and len(per_sample) == split.num_samples
    assert sample_targets(split).tolist() == rule.targets.tolist()
    whole = WindowedSamples({"item_ids": seqs, "target_start": starts}, max_length=max(map(len, seqs)))
    expected_stream = {i: (tuple(whole[i]["history"].tolist()), whole[i]["target"]) for i in range(len(whole))}
    assert units_by_sample_id(stream_units(split)) == expected_stream
    assert sample_history_lengths(split).tolist() == whole.history_lengths.tolist()


def test_item_map_is_the_published_file_only(dataset_dir):
    """The item id map is `item_map.parquet` at the data set's root, never another file with a similar name."""
    (dataset_dir / ITEM_MAP_FILE).rename(dataset_dir / "item_id_map.parquet")
    (dataset_dir / "split-3-2-5" / "my_item_mapping.json").write_text("{}")
    _, meta = load_sequences(dataset_dir)
    assert meta.item_id_map is None


def test_metadata_written_by_older_builders_loads(dataset_dir):
    """Older data sets name the file `dataset_metadata.json` and the keys `max_seq_length` and `name`."""
    (dataset_dir / "metadata.json").unlink()
    legacy = {"name": "old-tiny", "num_items": 30, "max_seq_length": 6}
    (dataset_dir / "dataset_metadata.json").write_text(json.dumps(legacy))
    _, meta = load_sequences(dataset_dir)
    assert (meta.name, meta.num_items, meta.max_length) == ("old-tiny", 30, 6)
    # a configuration's own metadata comes first
    (dataset_dir / "split-6-2-2" / "metadata.json").write_text(json.dumps({"num_items": 30, "max_length": 4}))
    assert load_sequences(dataset_dir, "split-6-2-2")[1].max_length == 4
    assert load_sequences(dataset_dir, "split-3-2-5")[1].max_length == 6
