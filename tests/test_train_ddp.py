"""A real 2-process data-parallel run on CPU (gloo): training works and the gathered metrics are exactly those of
one process (no sample lost or counted twice, with an uneven last share of batches); the sampled softmax draws the
same negatives on every process while dropout is seeded per process."""

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


# runs scripts/train.py (argv[2:]) recording, in the folder argv[1], each process's sampled-softmax negatives and
# the seed of torch's global generator (dropout's) at each draw
RECORDING_LAUNCH = """
import os, runpy, sys
import torch
import modeling_ttt4rec.recommender_head as head

draw, folder = head.shared_negatives, sys.argv[1]


def recording(*args, **kwargs):
    ids, log_expected = draw(*args, **kwargs)
    with open(os.path.join(folder, f"negatives_{os.environ['RANK']}.txt"), "a") as f:
        f.write(f"{torch.initial_seed()} {ids.tolist()}\\n")
    return ids, log_expected


head.shared_negatives = recording
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def launch_command(script: str) -> list[str]:
    """`accelerate launch` of `script` on 2 CPU processes with gloo DDP."""
    # `accelerate launch --cpu --num_processes 2` silently runs ONE process; this is the launch that gives gloo DDP
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    return [*cmd, "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), script]


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
    cmd = launch_command(str(ROOT / "scripts" / "train.py"))
    cmd += ["--dataset", str(data), "--output_dir", str(out), "--max_epochs", "2"]
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


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate CLI is not installed next to this Python")
def test_every_process_draws_the_same_negatives(tmp_path):
    data = write_split_dataset(tmp_path / "data", random_sequences(30, 30, 3, 12, seed=5), num_items=30, max_length=6)
    launcher = tmp_path / "launch.py"
    launcher.write_text(RECORDING_LAUNCH)
    cmd = launch_command(str(launcher)) + [str(tmp_path), str(ROOT / "scripts" / "train.py")]
    cmd += ["--dataset", str(data), "--output_dir", str(tmp_path / "run"), "--max_epochs", "2"]
    cmd += ["--hidden_size", "16", "--intermediate_size", "32", "--mini_batch_size", "4", "--num_attention_heads", "2"]
    cmd += ["--loss_type", "sampled_softmax", "--num_negatives", "8", "--batch_targets", "40"]
    cmd += ["--test_eval_modes", "window"]
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env["HF_DATASETS_CACHE"] = str(tmp_path / "datasets_cache")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    draws = [(tmp_path / f"negatives_{rank}.txt").read_text().splitlines() for rank in (0, 1)]
    assert len(draws[0]) == len(draws[1]) >= 4  # every step of both epochs (two or more each)
    seeds = [[int(line.split(" ", 1)[0]) for line in lines] for lines in draws]
    negatives = [[line.split(" ", 1)[1] for line in lines] for lines in draws]
    assert negatives[0] == negatives[1]  # the same negatives on both processes ...
    assert all(a != b for a, b in zip(*seeds, strict=True))  # ... while dropout is seeded per process
    assert len(set(negatives[0])) > 1  # (and new negatives at each step)
