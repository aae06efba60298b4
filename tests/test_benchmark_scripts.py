"""The benchmark scripts behind docs/benchmarks.md still run and print what the document quotes (tiny sizes)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import random_sequences, write_split_dataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def run_script(name: str, *args: str) -> str:
    # the scripts import `modeling_ttt4rec` from this checkout, not from an installed copy
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, str(SCRIPTS / name), *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_benchmark_model_prints_every_table():
    out = run_script(
        "benchmark_model.py",
        *"--num_items 50 --batch 4 --length 6 --repeats 1 --serving_repeats 2".split(),
        *"--serving_batches 2 --serving_lengths 3 9 --breakdown_length 3".split(),
    )
    assert "| forward (no grad) |" in out and "| forward + backward |" in out
    serving = [line for line in out.splitlines() if line.startswith("| 2 | ")]
    assert [line.split(" | ")[1] for line in serving] == ["3", "9"]
    assert all(cell.strip().endswith("x") for line in serving for cell in line.strip(" |").split(" | ")[-2:])
    for piece in ("encoder, eager", "encoder, compiled", "top-10 of the scores", "full recompute, eager"):
        assert f"| {piece}" in out


def test_benchmark_train_eval_reports_epochs_and_both_eval_modes(tmp_path):
    data = write_split_dataset(tmp_path / "data", random_sequences(30, 40, 4, 14), num_items=40, max_length=6)
    out_json = tmp_path / "bench.json"
    run_script("benchmark_train_eval.py", "--dataset", str(data), "--epochs", "1", "--output_json", str(out_json))
    result = json.loads(out_json.read_text())
    assert len(result["epoch_seconds"]) == 1 and result["train_targets"] > 0
    assert set(result["eval_seconds"]) == set(result["eval_parts"]) == {"window", "stream"}
    assert all(set(parts) == {"encode_seconds", "score_seconds"} for parts in result["eval_parts"].values())
    assert result["peak_memory_mb"] > 0


def test_a_smaller_synthetic_gowalla_file_keeps_the_real_shape_and_builds(tmp_path, capsys):
    """`make_synthetic_gowalla.py --rows N` scales users and locations with N (as `benchmark_builders.py --rows N`
    runs it), so the k-core filter keeps users and the build succeeds."""
    import importlib.util

    from dataset_builders.cli import main as build

    spec = importlib.util.spec_from_file_location("make_synthetic", ROOT / "scripts" / "make_synthetic_gowalla.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    raw = tmp_path / "g.txt.gz"
    module.main([str(raw), "--rows", "200000"])
    out = tmp_path / "out"
    assert build(["--dataset", "gowalla", "--raw", str(raw), "--output", str(out), "--no_progress", "-q"]) == 0
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["num_items"] > 1000


def test_benchmark_scaling_full_runs_the_whole_epoch_and_every_test_user(tmp_path):
    seqs = random_sequences(30, 40, 4, 14)
    data = write_split_dataset(tmp_path / "data", seqs, num_items=40, max_length=6)
    out = run_script(
        "benchmark_scaling.py", "gowalla", "--dataset", str(data), "--full", "--eval_modes", "window", "stream",
        "--torch_threads", "1", "--item_chunk_size", "64", "--losses", "sampled softmax (1,024 uniform)",
    )  # fmt: skip
    header, _, row = out.strip().splitlines()
    assert "epoch (s, measured)" in header and "test eval, stream (s, measured; encode + rank)" in header
    # every training batch was timed (no warm-up step) and every test sample ranked, in both modes
    steps = re.search(r"\((\d+) of (\d+) steps\)", row)
    assert steps and steps[1] == steps[2]
    samples = re.findall(r"([\d,]+) of ([\d,]+) samples", row)
    assert len(samples) == 2 and all(done == total for done, total in samples)
