"""`scripts/compare.py` end to end on a tiny generated data set: every model trained with the same settings, one
table and two plots, resumable (a finished model is not retrained), clear errors for bad input."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import random_sequences, write_split_dataset
from test_train import fresh_accelerator_state  # noqa: F401 - a clean accelerator state per test

import modeling_ttt4rec.training.compare as compare_module

# the script as a module, without putting scripts/ on the import path (its evaluate.py would shadow `evaluate`)
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare.py"
_spec = importlib.util.spec_from_file_location("compare", SCRIPT)
compare_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_script)

FAST = ["--batch_targets", "64", "--disable_tqdm", "true", "--torch_threads", "1", "--hidden_size", "16"]


def test_compare_end_to_end_and_resumable(tmp_path, monkeypatch):
    data = write_split_dataset(tmp_path / "data", random_sequences(40, 25, 3, 14, seed=3), num_items=25, max_length=6)
    out = tmp_path / "compare"
    argv = ["--dataset", str(data), "--models", "ttt4rec,sasrec,gru4rec", "--output_dir", str(out)]
    result = compare_script.main([*argv, "--max_epochs", "2", "--seed", "7", *FAST])
    rows = {(r["model"], r["mode"]): r for r in result["rows"]}
    # window for every model; stream for the models with a cache
    assert set(rows) == {
        ("ttt4rec", "window"),
        ("ttt4rec", "stream"),
        ("sasrec", "window"),
        ("gru4rec", "window"),
        ("gru4rec", "stream"),
    }
    assert all(r["epochs"] == 2 for r in rows.values())
    for model in ("ttt4rec", "sasrec", "gru4rec"):
        settings = json.loads((out / model / "run_config.json").read_text())
        assert settings["training"]["seed"] == 7 and settings["training"]["max_epochs"] == 2
        # the table's numbers are each run's own test results
        run = json.loads((out / model / "results.json").read_text())
        window = next(r for r in run["rows"] if r["split"] == "test" and r["mode"] == "window")
        assert rows[(model, "window")]["NDCG@10"] == window["NDCG@10"]
    assert {"comparison.md", "comparison.json", "validation_by_epoch.png", "test_by_history_length.png"} <= {
        p.name for p in out.iterdir()
    }
    table = (out / "comparison.md").read_text()
    assert "| gru4rec | stream |" in table and "sasrec (window)" in table
    by_length = json.loads((out / "comparison.json").read_text())["by_history_length"]
    assert set(by_length) == {
        "ttt4rec (window)",
        "ttt4rec (stream)",
        "sasrec (window)",
        "gru4rec (window)",
        "gru4rec (stream)",
    }

    # run again: nothing is retrained, the same table comes out
    def no_training(run):
        raise AssertionError("a finished model was retrained")

    monkeypatch.setattr(compare_module, "train", no_training)
    again = compare_script.main([*argv, "--max_epochs", "2", "--seed", "7", *FAST])
    assert again["rows"] == result["rows"]

    # a variant joins the finished comparison: only it is trained, with its own options on top of the shared ones
    monkeypatch.undo()
    real_train, trained = compare_module.train, []

    def train_once(run):
        trained.append(run.training.output_dir)
        return real_train(run)

    monkeypatch.setattr(compare_module, "train", train_once)
    variant = ["--variant", "ttt4rec-L10=ttt4rec --max_length 10"]
    with_variant = compare_script.main([*argv, *variant, "--max_epochs", "2", "--seed", "7", *FAST])
    assert trained == [str(out / "ttt4rec-L10")]
    settings = json.loads((out / "ttt4rec-L10" / "run_config.json").read_text())
    assert settings["data"]["max_length"] == 10 and settings["training"]["seed"] == 7
    rows = {(r["model"], r["mode"]): r for r in with_variant["rows"]}
    assert {("ttt4rec-L10", "window"), ("ttt4rec-L10", "stream")} <= set(rows)
    # its metrics by history length are of its own windows (L = 10): their weighted mean is its test result
    by_length = json.loads((out / "comparison.json").read_text())["by_history_length"]["ttt4rec-L10 (window)"]
    mean = sum(g["NDCG@10"] * g["num_samples"] for g in by_length) / sum(g["num_samples"] for g in by_length)
    assert mean == pytest.approx(rows[("ttt4rec-L10", "window")]["NDCG@10"], abs=1e-6)


def test_compare_bad_input(tmp_path):
    with pytest.raises(SystemExit, match="Unknown --model_type 'caser'"):
        compare_script.main(["--dataset", str(tmp_path), "--models", "ttt4rec,caser", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="lists a model twice"):
        compare_script.main(["--dataset", str(tmp_path), "--models", "sasrec,sasrec", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="expected NAME=MODEL_TYPE"):
        compare_script.main(["--dataset", str(tmp_path), "--variant", "ttt4rec", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="the name 'sasrec' is taken"):
        argv = ["--dataset", str(tmp_path), "--models", "sasrec", "--variant", "sasrec=sasrec --max_length 20"]
        compare_script.main([*argv, "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="full protocol"):
        argv = ["--dataset", str(tmp_path), "--models", "sasrec", "--eval_protocol", "sampled"]
        compare_script.main([*argv, "--output_dir", str(tmp_path)])


def test_compare_script_ends_a_mistake_with_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SCRIPT.parents[1]))
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--dataset",
        str(tmp_path),
        "--variant",
        "ttt4rec",
        "--output_dir",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --variant 'ttt4rec': expected NAME=MODEL_TYPE followed by its train.py options, e.g. "
        '--variant "ttt4rec-L200=ttt4rec --max_length 200".'
    ]
