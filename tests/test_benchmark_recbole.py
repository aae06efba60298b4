"""scripts/benchmark_recbole.py without RecBole: the export of a built data set to RecBole's atomic files, the samples
it compares RecBole's with (equal to the project's sample rule) and the comparison's error. RecBole itself never runs
here (docs/benchmarks.md, "RecBole 1.2.1 side by side")."""

import importlib.util
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import random_sequences, write_split_dataset

from dataset_builders.samples import WindowedSamples

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "split-3-2-5"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_recbole", ROOT / "scripts" / "benchmark_recbole.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def seqs():
    return random_sequences(12, 30, 2, 14, seed=3)


def test_export_writes_every_interaction_of_every_user_in_order(bench, seqs, tmp_path):
    data = write_split_dataset(tmp_path / "data", seqs, num_items=30, max_length=4)
    path = bench.export_atomic(data, CONFIG, tmp_path / "atomic", "tiny")
    assert path == tmp_path / "atomic" / "tiny" / "tiny.inter"
    header, *lines = path.read_text().splitlines()
    assert header == "user_id:token\titem_id:token\ttimestamp:float"
    expected = [f"u{u}\t{item}\t{position}" for u, s in enumerate(seqs) for position, item in enumerate(s)]
    assert lines == expected


def test_our_samples_are_the_projects_windowed_samples(bench, seqs, tmp_path):
    data = write_split_dataset(tmp_path / "data", seqs, num_items=30, max_length=4)
    ours = bench.our_samples(data, CONFIG, max_length=4)
    for split in bench.SPLITS:
        table = pq.read_table(data / CONFIG / f"{split}-00000-of-00001.parquet")
        samples = WindowedSamples(table, max_length=4)
        users = table.column("user_id").to_pylist()
        project = Counter((users[s["row"]], tuple(int(i) for i in s["history"]), s["target"]) for s in samples)
        assert ours[split] == project and sum(project.values()) == len(samples) > 0


def test_rows_that_are_not_prefixes_of_one_sequence_are_refused(bench, tmp_path):
    data = write_split_dataset(tmp_path / "data", [[1, 2, 3, 4, 5, 6]], num_items=8, max_length=4)
    path = data / CONFIG / "validation-00000-of-00001.parquet"
    table = pq.read_table(path).to_pylist()
    table[0]["item_ids"][0] = 7
    pq.write_table(pa.Table.from_pylist(table), path)
    with pytest.raises(ValueError, match="user 'u0' are not prefixes of one sequence"):
        bench.export_atomic(data, CONFIG, tmp_path / "atomic", "tiny")


def test_a_difference_from_recboles_samples_is_named(bench, monkeypatch):
    ours = {split: Counter({("u0", (1, 2), 3): 1}) for split in bench.SPLITS}
    theirs = {"train": ours["train"], "validation": ours["validation"], "test": Counter({("u0", (2,), 3): 1})}
    monkeypatch.setattr(bench, "recbole_samples", lambda split: theirs[split])
    assert bench.check_samples(ours, ("train", "validation", "validation")) == dict.fromkeys(bench.SPLITS, 1)
    with pytest.raises(ValueError, match=r"test: 1 samples here, 1 in RecBole; only here: \[\('u0', \(1, 2\), 3\)\]"):
        bench.check_samples(ours, bench.SPLITS)


def test_split_ratios_come_from_the_config_name(bench):
    assert bench.ratios("split-3-2-5") == [0.3, 0.2, 0.5]
    assert bench.ratios("split-6-2-2") == pytest.approx([0.6, 0.2, 0.2])
    with pytest.raises(ValueError, match="split-A-B-C"):
        bench.ratios("default")
