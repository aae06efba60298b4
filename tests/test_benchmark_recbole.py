"""scripts/benchmark_recbole.py without RecBole: the export of a built data set to RecBole's atomic files, the samples
it compares RecBole's with (equal to the project's sample rule) and the comparison's error. RecBole itself never runs
here (docs/benchmarks.md, "RecBole 1.2.1 side by side")."""

import importlib.util
import json
import subprocess
import sys
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


def write_runs(run_dir: Path, best_epoch: int = 2) -> None:
    """Two seeds of GRU4Rec in both frameworks, two epochs each, as the script and scripts/train.py write them."""
    for seed, (hr, ndcg) in {2020: (0.05, 0.02), 2021: (0.06, 0.03)}.items():
        epochs = [{"epoch": e, "train_seconds": 40.0 + e + seed % 2, "loss_sum": 1.0} for e in (1, 2)]
        recbole = {"seed": seed, "epochs": epochs, "test": {"HR@10": hr + 0.001, "NDCG@10": ndcg + 0.001}}
        (run_dir / f"recbole-gru4rec-{seed}.json").write_text(json.dumps(recbole))
        ours = run_dir / f"ours-gru4rec-{seed}"
        ours.mkdir(parents=True)
        log = [{"epoch": e, "train_seconds": 2.0 + e + seed % 2} for e in (1, 2)] + [{"final": True}]
        (ours / "log.jsonl").write_text("\n".join(json.dumps(r) for r in log))
        rows = [{"split": "test", "mode": "window", "HR@10": hr, "NDCG@10": ndcg}]
        (ours / "results.json").write_text(json.dumps({"epochs": 2, "best_epoch": best_epoch, "rows": rows}))
    # a RecBole run whose run here has not finished is left out
    (run_dir / "recbole-sasrec-2020.json").write_text(json.dumps({"seed": 2020, "epochs": [], "test": {}}))


def test_the_table_sets_both_frameworks_side_by_side(bench, tmp_path):
    write_runs(tmp_path)
    lines = bench.table(tmp_path).splitlines()
    assert len(lines) == 3
    # medians over the 4 epochs: here 3, 4, 4, 5; RecBole 41, 42, 42, 43
    assert lines[2] == "| GRU4Rec (2020, 2021) | 4.0 | 42.0 | 10.5x | 0.0500 / 0.0600 | 0.0510 / 0.0610 " + (
        "| 0.0200 / 0.0300 | 0.0210 / 0.0310 |"
    )


def test_the_table_refuses_a_run_here_that_tested_another_epoch(bench, tmp_path):
    write_runs(tmp_path, best_epoch=1)
    with pytest.raises(ValueError, match="tested epoch 1, not its last: pass --eval_every E"):
        bench.table(tmp_path)


def test_model_names_are_recboles_in_any_case(tmp_path):
    script = [sys.executable, str(ROOT / "scripts" / "benchmark_recbole.py"), "--table", str(tmp_path)]
    assert subprocess.run([*script, "--model", "gru4rec"], capture_output=True).returncode == 0
    bad = subprocess.run([*script, "--model", "gru"], capture_output=True, text=True)
    assert bad.returncode == 2 and "choose from 'GRU4Rec', 'SASRec', 'NARM', 'BERT4Rec'" in bad.stderr
