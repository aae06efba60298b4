"""A real 2-process data-parallel run on CPU (gloo): training works and the gathered metrics are exactly those of
one process (no sample lost or counted twice, with an uneven last share of batches)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import random_sequences, write_split_dataset

from modeling_ttt4rec.training.data import load_sequences, make_batches, prefix_units
from modeling_ttt4rec.training.evaluation import evaluate_split, load_checkpoint
from modeling_ttt4rec.training.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate CLI is not installed next to this Python")
def test_two_process_ddp_matches_one_process(tmp_path):
    data = write_split_dataset(tmp_path / "data", random_sequences(45, 30, 3, 16, seed=11), num_items=30, max_length=6)
    out = tmp_path / "run"
    sequences, meta = load_sequences(data)
    test = sequences["test"]
    # an evaluation batch size that gives an odd number of batches: one process gets one batch more than the other
    window = prefix_units(test, meta.max_length)
    eval_batch = next(b for b in range(7, 40) if len(make_batches(window, b, 65536)) % 2 == 1)
    # `accelerate launch --cpu --num_processes 2` silently runs ONE process; this is the launch that gives gloo DDP
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    cmd += [str(ROOT / "scripts" / "train.py"), "--dataset", str(data), "--output_dir", str(out), "--max_epochs", "2"]
    cmd += ["--hidden_size", "16", "--intermediate_size", "32", "--mini_batch_size", "4", "--num_attention_heads", "2"]
    cmd += ["--batch_targets", "40", "--eval_batch_targets", str(eval_batch)]
    # a fresh datasets cache: both processes prepare the data set (and would both show its progress bars)
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env["HF_DATASETS_CACHE"] = str(tmp_path / "datasets_cache")
    # (a launch with `--main_process_port 0` once hung in CI after training had finished; a chosen free port never
    # has). The time limit is a safety net against a hang on a slow, shared machine.
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    rank1 = "\n".join(line for line in proc.stderr.splitlines() if "rank1" in line)
    assert proc.returncode == 0, rank1[-6000:] + proc.stdout[-3000:] + proc.stderr[-3000:]
    runtime = json.loads((out / "run_config.json").read_text())["runtime"]
    assert runtime["num_processes"] == 2 and "MULTI_CPU" in runtime["distributed_type"]
    # progress bars come from the main process only: each finished bar once, not once per process
    finished = [line for line in proc.stderr.replace("\r", "\n").splitlines() if "Generating train split: 45" in line]
    assert len(finished) == 1, finished
    # the training state holds both processes' random states (each process writes its own)
    states = {p.name for p in (out / "checkpoint").glob("random_states_*.pkl")}
    assert states == {"random_states_0.pkl", "random_states_1.pkl"}

    results = json.loads((out / "results.json").read_text())
    model = load_checkpoint(str(out / "best_model"))
    for mode in ("window", "stream"):
        single = evaluate_split(model, test, meta.max_length, mode=mode, batch_targets=eval_batch)
        row = next(r for r in results["rows"] if r["split"] == "test" and r["mode"] == mode)
        assert row["num_samples"] == single["num_samples"] == test.num_samples
        for name in METRIC_NAMES:
            assert row[name] == single[name], (mode, name)
