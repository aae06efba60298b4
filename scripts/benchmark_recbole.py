#!/usr/bin/env python
"""RecBole 1.2.1 training the same model on the same samples as this project: seconds per training epoch and the
test HR@10 / NDCG@10 after epoch E (docs/benchmarks.md, "RecBole 1.2.1 side by side").

Runs in a separate environment with RecBole (never a dependency of this project), and imports nothing of it:

    python3 -m venv /tmp/recbole-venv
    /tmp/recbole-venv/bin/pip install -c constraints.txt torch==2.13.0 recbole==1.2.1 pyarrow
    /tmp/recbole-venv/bin/python scripts/benchmark_recbole.py --dataset data/amazon-video-games \
        --model SASRec --epochs 3 --seed 2020 --output_json runs/recbole-sasrec-2020.json

Steps:

1. `export_atomic`: the built data set (`--dataset`, config `--dataset_config`) as RecBole atomic files: one `.inter`
   row per interaction, `user_id:token` (the original user id), `item_id:token` (this project's dense item id) and
   `timestamp:float` (the interaction's position in the user's sequence, so RecBole's sort by time keeps our order).
   Each user's sequence is the longest of their split rows (every other row is a prefix of it: checked).
2. RecBole's own pipeline with the paper's settings (augmentation of every prefix, `MAX_ITEM_LIST_LENGTH` from the
   data set's metadata, ratio split per user in time order with the config's ratios, full ranking) builds train,
   validation and test; `check_samples` compares ALL of RecBole's samples, as (user, history, target) with its
   internal ids mapped back to our item ids, with ours (`our_samples`: docs/protocol.md section 4, restated here
   because this script imports nothing of the project) as multisets per split, and stops on any difference. On
   Video.txt (3:2:5) the three splits are equal: 70,497, 38,221 and 98,759 samples.
3. `--model` (SASRec, GRU4Rec, NARM, BERT4Rec) with this project's baseline defaults (the paper's: hidden 64,
   `dropout_prob` 0.2, CE loss, Adam 1e-3, 2,048 samples per batch; RecBole's model defaults otherwise) trains for
   `--epochs` epochs on one torch thread (`--torch_threads`), timing RecBole's `_train_epoch` only (its data loader
   included, no evaluation); then the model of the last epoch (not the best-validation one) is evaluated on test.

The JSON written holds the model, seed, parameter count, sample counts, every epoch's seconds and summed batch
losses, and the test metrics.
"""

import argparse
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

SPLITS = ("train", "validation", "test")
MODELS = ("GRU4Rec", "SASRec", "NARM", "BERT4Rec")
# this project's baseline defaults that differ from RecBole's own (the paper's `config.yaml`); the models' other
# settings are RecBole's defaults, which equal ours
PAPER_SETTINGS = {"hidden_size": 64, "dropout_prob": 0.2}
TRAINING = {"learning_rate": 0.001, "train_batch_size": 2048, "eval_batch_size": 4096, "loss_type": "CE"}


def read_rows(dataset: Path, config: str) -> dict[str, list[dict]]:
    """`{split: [{"user_id", "item_ids", "target_start"}, ...]}` of a built data set's config."""
    return {
        split: [
            row
            for path in sorted((dataset / config).glob(f"{split}-*.parquet"))
            for row in pq.read_table(path).to_pylist()
        ]
        for split in SPLITS
    }


def export_atomic(dataset: Path, config: str, output: Path, name: str) -> Path:
    """Write `output/name/name.inter` (RecBole's atomic interaction file) for the data set's `config`; returns it.

    Raises ValueError if a user's split rows are not prefixes of one sequence."""
    sequences: dict[str, list[int]] = {}
    for rows in read_rows(dataset, config).values():
        for row in rows:
            seq, items = sequences.get(row["user_id"], []), row["item_ids"]
            longer, shorter = (items, seq) if len(items) > len(seq) else (seq, items)
            if longer[: len(shorter)] != shorter:
                raise ValueError(f"The split rows of user {row['user_id']!r} are not prefixes of one sequence.")
            sequences[row["user_id"]] = longer
    path = output / name / f"{name}.inter"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, items in sequences.items():
            f.writelines(f"{user}\t{item}\t{position}\n" for position, item in enumerate(items))
    return path


def our_samples(dataset: Path, config: str, max_length: int) -> dict[str, Counter]:
    """`{split: Counter((user, history, target))}`: target j of a row from `target_start` on, its history the row's
    items before it cut to the last `max_length` (docs/protocol.md section 4)."""
    return {
        split: Counter(
            (row["user_id"], tuple(row["item_ids"][max(0, j - max_length) : j]), row["item_ids"][j])
            for row in rows
            for j in range(row["target_start"], len(row["item_ids"]))
        )
        for split, rows in read_rows(dataset, config).items()
    }


def recbole_samples(dataset) -> Counter:
    """RecBole's samples of one split, `(user, history, target)` in the tokens of the atomic file."""
    inter = dataset.inter_feat
    users = dataset.id2token(dataset.uid_field, inter[dataset.uid_field].numpy())
    items = dataset.field2id_token[dataset.iid_field]
    lists, lengths = inter[dataset.item_id_list_field].numpy(), inter[dataset.item_list_length_field].numpy()
    targets = inter[dataset.iid_field].numpy()
    return Counter(
        (str(user), tuple(int(items[i]) for i in row[:length]), int(items[target]))
        for user, row, length, target in zip(users, lists, lengths, targets, strict=True)
    )


def check_samples(ours: dict[str, Counter], datasets: tuple) -> dict[str, int]:
    """Compare RecBole's train/validation/test samples with ours; the sample counts, or ValueError naming a few
    differences."""
    counts = {}
    for split, dataset in zip(SPLITS, datasets, strict=True):
        theirs = recbole_samples(dataset)
        if theirs != ours[split]:
            only_ours, only_theirs = ours[split] - theirs, theirs - ours[split]
            raise ValueError(
                f"{split}: {sum(ours[split].values())} samples here, {sum(theirs.values())} in RecBole; only here: "
                f"{list(only_ours)[:3]}, only in RecBole: {list(only_theirs)[:3]}"
            )
        counts[split] = sum(theirs.values())
    return counts


def ratios(config: str) -> list[float]:
    """The split ratios of a config named `split-A-B-C` (e.g. split-3-2-5: 0.3, 0.2, 0.5)."""
    parts = [float(p) for p in config.split("-")[1:]]
    if len(parts) != 3:
        raise ValueError(f"Expected a config named split-A-B-C (e.g. split-3-2-5), got {config!r}.")
    return [p / sum(parts) for p in parts]


def our_run(folder: Path) -> dict:
    """Per-epoch training seconds and test (window mode) HR@10 / NDCG@10 of a `scripts/train.py` run, which must have
    tested the model of its last epoch (`--eval_every` = `--max_epochs`)."""
    results = json.loads((folder / "results.json").read_text())
    if results["best_epoch"] != results["epochs"]:
        raise ValueError(f"{folder} tested epoch {results['best_epoch']}, not its last: pass --eval_every E.")
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    test = next(r for r in results["rows"] if r["split"] == "test" and r["mode"] == "window")
    return {
        "seconds": [r["train_seconds"] for r in log if "train_seconds" in r],
        "test": {m: test[m] for m in ("HR@10", "NDCG@10")},
    }


def table(run_dir: Path) -> str:
    """The Markdown table of the runs in `run_dir`: `recbole-MODEL-SEED.json` (this script) beside
    `ours-MODEL-SEED/` (scripts/train.py), for every model and seed both finished; seconds are medians over all
    epochs of both seeds."""
    lines = [
        "| model | s / epoch here | s / epoch RecBole | RecBole / here | HR@10 here | HR@10 RecBole "
        "| NDCG@10 here | NDCG@10 RecBole |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in MODELS:
        theirs = [json.loads(p.read_text()) for p in sorted(run_dir.glob(f"recbole-{model.lower()}-*.json"))]
        folders = [run_dir / f"ours-{model.lower()}-{r['seed']}" for r in theirs]
        pairs = [(r, our_run(f)) for r, f in zip(theirs, folders, strict=True) if (f / "results.json").is_file()]
        if not pairs:
            continue
        here = statistics.median(s for _, ours in pairs for s in ours["seconds"])
        there = statistics.median(e["train_seconds"] for r, _ in pairs for e in r["epochs"])
        cells = [f"{model} ({', '.join(str(r['seed']) for r, _ in pairs)})", f"{here:.1f}", f"{there:.1f}"]
        cells.append(f"{there / here:.1f}x")
        for metric in ("HR@10", "NDCG@10"):
            cells += [" / ".join(f"{ours['test'][metric]:.4f}" for _, ours in pairs)]
            cells += [" / ".join(f"{r['test'][metric]:.4f}" for r, _ in pairs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, help="a data set built by scripts/build_dataset.py")
    parser.add_argument("--dataset_config", default="split-3-2-5")
    parser.add_argument(
        "--model",
        default="SASRec",
        type=lambda name: {m.lower(): m for m in MODELS}.get(name.lower(), name),
        choices=MODELS,
        help="RecBole's model name, in any case (sasrec, as scripts/train.py's --model_type)",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--torch_threads", type=int, default=1)
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/recbole-bench"), help="atomic files, logs")
    parser.add_argument("--output_json", type=Path)
    parser.add_argument("--table", type=Path, help="print the table of the runs in this folder instead (no RecBole)")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if args.dataset is None or args.output_json is None:
        parser.error("--dataset and --output_json are required (or --table RUN_DIR)")

    import numpy as np
    import torch

    # RecBole 1.2.1's `Config` aliases `np.float_`, `np.complex_` and `np.unicode_`, which NumPy 2 removed
    np.float_, np.complex_, np.unicode_ = np.float64, np.complex128, np.str_
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import get_model, init_logger, init_seed

    torch.set_num_threads(args.torch_threads)
    # RecBole writes its logs into ./log and ./log_tensorboard: keep them in the work folder
    args.dataset, args.output_json = args.dataset.resolve(), args.output_json.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work_dir.resolve())
    metadata = json.loads((args.dataset / "metadata.json").read_text())
    name = args.dataset.name
    export_atomic(args.dataset, args.dataset_config, Path.cwd(), name)
    config = Config(
        model=args.model,
        dataset=name,
        config_dict={
            "data_path": str(Path.cwd()),
            "checkpoint_dir": str(Path.cwd() / "saved"),
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "MAX_ITEM_LIST_LENGTH": metadata["max_length"],
            "eval_args": {
                "split": {"RS": ratios(args.dataset_config)},
                "order": "TO",
                "group_by": "user",
                "mode": "full",
            },
            "train_neg_sample_args": None,
            "metrics": ["Hit", "NDCG"],
            "topk": [10],
            "valid_metric": "NDCG@10",
            "metric_decimal_place": 6,
            "epochs": args.epochs,
            "seed": args.seed,
            "reproducibility": True,
            "use_gpu": False,
            "show_progress": False,
            **TRAINING,
            **PAPER_SETTINGS,
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    splits = (train_data.dataset, valid_data.dataset, test_data.dataset)
    samples = check_samples(our_samples(args.dataset, args.dataset_config, metadata["max_length"]), splits)
    print(f"RecBole's samples equal ours: {samples}", flush=True)

    init_seed(config["seed"], config["reproducibility"])  # as RecBole's run_recbole, before the model
    model = get_model(config["model"])(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    epochs = []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        loss = trainer._train_epoch(train_data, epoch, show_progress=False)
        epochs.append({"epoch": epoch + 1, "train_seconds": time.perf_counter() - start, "loss_sum": float(loss)})
        print(json.dumps(epochs[-1]), flush=True)
    start = time.perf_counter()
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    result = {
        "framework": "RecBole",
        "model": args.model,
        "seed": args.seed,
        "torch_threads": args.torch_threads,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "samples": samples,
        "epochs": epochs,
        "seconds_per_epoch": sum(e["train_seconds"] for e in epochs) / len(epochs),
        "test_eval_seconds": time.perf_counter() - start,
        "test": {"HR@10": float(test["hit@10"]), "NDCG@10": float(test["ndcg@10"])},
        "settings": {**TRAINING, **PAPER_SETTINGS, "MAX_ITEM_LIST_LENGTH": metadata["max_length"]},
    }
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["test"]))


if __name__ == "__main__":
    main()
