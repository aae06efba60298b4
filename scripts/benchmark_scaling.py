#!/usr/bin/env python
"""Full softmax against sampled softmax at large catalogs: one training step, and a Gowalla-sized epoch and test
evaluation. Every configuration runs in its own process (so its peak memory is its own), one after the other.

    python scripts/benchmark_scaling.py step --items 10000 100000 1000000
    python scripts/benchmark_scaling.py gowalla --dataset DATA_DIR --steps 20 --eval_users 2000

`step`: one optimizer step (forward, backward, Adam) of the default TTT4Rec on 2,048 targets (41 rows of L = 50),
median of `--repeats` after a warm-up, and the peak resident memory of the process. `gowalla`: `--steps` training
steps of the data set's epoch after a warm-up (extrapolated to the whole epoch) and the full-ranking test evaluation
(`--eval_modes`) of the first `--eval_users` users (extrapolated to all test samples; split into encoding and
ranking), with the process's peak memory (load + training + evaluation). `--full` runs the whole epoch and
evaluates every test user instead, timing exactly what runs:

    python scripts/benchmark_scaling.py gowalla --dataset DATA_DIR --full --losses 'full softmax'
    python scripts/benchmark_scaling.py gowalla --dataset DATA_DIR --full --eval_users 0   # epochs only

Results are printed as Markdown tables (the numbers of docs/benchmarks.md, "Large catalogs").
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LOSSES = {
    "full softmax": {"loss_type": "full_ce"},
    "sampled softmax (1,024 uniform)": {"loss_type": "sampled_softmax", "num_negatives": 1024},
    "sampled softmax (1,024 popularity)": {
        "loss_type": "sampled_softmax",
        "num_negatives": 1024,
        "negative_sampler": "popularity",
    },
}


def _optimizer_step(model, optimizer, batch: dict, targets: int) -> None:
    """One training step as the trainer takes it (its `batch_loss`, then Adam)."""
    from modeling_ttt4rec.training.trainer import batch_loss

    batch_loss(model, batch, targets).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_step(num_items: int, loss: dict, repeats: int) -> dict:
    """One configuration of `step`, in this process."""
    import torch

    from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction
    from modeling_ttt4rec.training.trainer import peak_memory_mb

    torch.manual_seed(0)
    model = TTT4RecForNextItemPrediction(TTT4RecConfig(num_items=num_items, **loss))
    if loss.get("negative_sampler") == "popularity":  # a Zipf-like popularity
        model.set_item_counts((1e6 / torch.arange(1, num_items + 1).double()).long())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows, length = 41, 50
    ids = torch.randint(1, num_items, (rows, length))
    target_mask = torch.ones(rows, length, dtype=torch.bool)
    target_mask.view(-1)[2048:] = False
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "target_mask": target_mask,
        "targets": torch.randint(1, num_items, (2048,)),
    }
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        _optimizer_step(model, optimizer, batch, 2048)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times[1:]), "peak_memory_mb": peak_memory_mb(torch.device("cpu"))}


def run_gowalla(
    dataset: str,
    loss: dict,
    steps: int | None,
    eval_users: int | None,
    eval_modes: list[str],
    torch_threads: int | None = None,
    item_chunk_size: int | None = None,
) -> dict:
    """One configuration of `gowalla`, in this process: `steps` training steps (None: the whole epoch, 0: none),
    then the full-ranking test evaluation of the first `eval_users` users (None: all, 0: none) in each mode."""
    import numpy as np
    import torch

    from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction
    from modeling_ttt4rec.training.data import (
        SplitSequences,
        collate,
        load_sequences,
        make_batches,
        prefix_units,
        sample_targets,
    )
    from modeling_ttt4rec.training.evaluation import evaluate_split
    from modeling_ttt4rec.training.trainer import peak_memory_mb

    if torch_threads:
        torch.set_num_threads(torch_threads)
    start = time.perf_counter()
    sequences, meta = load_sequences(dataset)
    result = {
        "num_items": meta.num_items,
        "load_seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
    }
    torch.manual_seed(0)
    model = TTT4RecForNextItemPrediction(TTT4RecConfig(num_items=meta.num_items, **loss))
    if loss.get("negative_sampler") == "popularity":
        counts = np.bincount(sample_targets(sequences["train"]), minlength=meta.num_items)
        model.set_item_counts(torch.from_numpy(counts))
    if steps != 0:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        units = prefix_units(sequences["train"], meta.max_length)
        batches = make_batches(units, 2048, shuffle=True, seed=0)
        timed = batches if steps is None else batches[1 : steps + 1]
        model.train()
        if steps is not None:  # a warm-up step, not timed
            _optimizer_step(model, optimizer, collate(units, batches[0]), 2048)
        start = time.perf_counter()
        for index in timed:
            _optimizer_step(model, optimizer, collate(units, index), 2048)
        seconds = time.perf_counter() - start
        result.update(
            train_targets=units.total_targets,
            steps_per_epoch=len(batches),
            steps_timed=len(timed),
            step_seconds=seconds / len(timed),
            epoch_seconds=seconds * len(batches) / len(timed),
        )
    test = sequences["test"]
    users = test.num_rows if eval_users is None else min(eval_users, test.num_rows)
    subset = SplitSequences(
        test.values[: test.offsets[users]], test.offsets[: users + 1], test.target_start[:users], test.user_ids[:users]
    )
    result.update(test_samples=test.num_samples, eval_samples=subset.num_samples if users else 0)
    for mode in eval_modes if users else []:
        timings = {}
        metrics = evaluate_split(
            model, subset, meta.max_length, mode=mode, item_chunk_size=item_chunk_size, timings=timings
        )
        scale = test.num_samples / metrics["num_samples"]  # 1 when every user is evaluated
        result[f"{mode}_eval_seconds"] = metrics["eval_seconds"] * scale
        result[f"{mode}_encode_seconds"] = timings["encode_seconds"] * scale
        result[f"{mode}_score_seconds"] = timings["score_seconds"] * scale
        result[f"{mode}_NDCG@10"] = metrics["NDCG@10"]
    result["peak_memory_mb"] = peak_memory_mb(torch.device("cpu"))
    return result


def _in_subprocess(kind: str, **kwargs) -> dict:
    """Run one configuration in a fresh process; its result as a dict."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import benchmark_scaling as b; "
        f"print('RESULT', json.dumps(b.run_{kind}(**json.loads(sys.argv[2]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__)), json.dumps(kwargs)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[len("RESULT ") :])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    step = sub.add_parser("step")
    step.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    step.add_argument("--repeats", type=int, default=3)
    gowalla = sub.add_parser("gowalla")
    gowalla.add_argument("--dataset", required=True)
    gowalla.add_argument("--steps", type=int, default=20, help="training steps timed (0: no training)")
    gowalla.add_argument("--eval_users", type=int, default=2000, help="test users evaluated (0: no evaluation)")
    gowalla.add_argument("--full", action="store_true", help="the whole epoch and every test user: no extrapolation")
    gowalla.add_argument("--eval_modes", nargs="+", default=["window"], choices=["window", "stream"])
    gowalla.add_argument("--torch_threads", type=int, default=None)
    gowalla.add_argument("--item_chunk_size", type=int, default=None)
    for p in (step, gowalla):
        p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    args = parser.parse_args(argv)
    if args.kind == "step":
        print("| items | loss | step (s) | peak memory (MiB) |\n|---:|---|---:|---:|")
        for num_items in args.items:
            for name in args.losses:
                r = _in_subprocess("step", num_items=num_items, loss=LOSSES[name], repeats=args.repeats)
                print(f"| {num_items:,} | {name} | {r['seconds']:.2f} | {r['peak_memory_mb']:,.0f} |", flush=True)
        return
    steps = None if args.full and args.steps else args.steps
    eval_users = None if args.full and args.eval_users else args.eval_users
    how = "measured" if args.full else "extrapolated"
    print(
        f"| loss | step (s) | epoch (s, {how}) | "
        + " | ".join(f"test eval, {m} (s, {how}; encode + rank)" for m in args.eval_modes)
        + " | peak memory (MiB) |\n|---|---:|---:|"
        + "---:|" * len(args.eval_modes)
        + "---:|"
    )
    for name in args.losses:
        r = _in_subprocess(
            "gowalla",
            dataset=args.dataset,
            loss=LOSSES[name],
            steps=steps,
            eval_users=eval_users,
            eval_modes=args.eval_modes,
            torch_threads=args.torch_threads,
            item_chunk_size=args.item_chunk_size,
        )
        print(json.dumps(r), file=sys.stderr)
        epoch = (
            f"{r['epoch_seconds']:,.0f} ({r['steps_timed']} of {r['steps_per_epoch']} steps)"
            if "step_seconds" in r
            else "-"
        )
        evals = [
            f"{r[f'{m}_eval_seconds']:,.0f} ({r[f'{m}_encode_seconds']:,.0f} + {r[f'{m}_score_seconds']:,.0f}; "
            f"{r['eval_samples']:,} of {r['test_samples']:,} samples)"
            if f"{m}_eval_seconds" in r
            else "-"
            for m in args.eval_modes
        ]
        step_seconds = f"{r['step_seconds']:.3f}" if "step_seconds" in r else "-"
        print(
            f"| {name} | {step_seconds} | {epoch} | " + " | ".join(evals) + f" | {r['peak_memory_mb']:,.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
