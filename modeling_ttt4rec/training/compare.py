"""The papers' comparison in one command (`scripts/compare.py`): several registered recommenders trained with the
same protocol, budget, seed and early stopping (`trainer.train`, one run per model), evaluated on the same test
samples with the same metric code.

A *variant* is a model trained with options of its own on top of the shared ones, under a name of its own (e.g.
`ttt4rec-L200`: TTT4Rec with `--max_length 200`), compared with the same runs.

Output folder layout (`output_dir`):

    NAME/                        each run (a model, or a variant by its name; see `trainer`);
                                 NAME/by_history_length.json, its test metrics by history length
    comparison.md, .json         one row per (run, test eval mode): HR@10/50, NDCG@10/50, epochs, seconds per epoch
    validation_by_epoch.png      validation NDCG@10 by epoch, all models
    test_by_history_length.png   test NDCG@10 by history length, per model (and mode: window, and stream for the
                                 models with a cache)

Resumable: a model whose run finished (its `results.json` exists) is not retrained, an interrupted run is resumed
from its checkpoint, and the tables and plots are rebuilt from what the runs wrote.
"""

import json
import logging
import shlex
from pathlib import Path

from .arguments import model_classes, parse_args
from .data import DEFAULT_CONFIG_NAME, load_sequences, sample_history_lengths
from .evaluation import EVAL_MODES, compute_ranks, has_cache, load_checkpoint
from .metrics import metrics_by_history_length
from .reports import history_length_table, markdown_table, plot_metrics_by_history_length, plot_validation_by_epoch
from .trainer import STATE_FILE, train

logger = logging.getLogger("ttt4rec.compare")

METRICS = ("HR@10", "HR@50", "NDCG@10", "NDCG@50")
BY_LENGTH_FILE = "by_history_length.json"


def model_modes(model_type: str) -> list[str]:
    """The test evaluation modes of a model: window, and stream when it has a cache."""
    _, model_class = model_classes(model_type)
    return [mode for mode in EVAL_MODES if mode != "stream" or has_cache(model_class)]


def parse_variant(spec: str) -> tuple[str, str, list[str]]:
    """`"NAME=MODEL_TYPE [train.py options]"` (e.g. `"ttt4rec-L200=ttt4rec --max_length 200"`) as
    `(name, model_type, options)`."""
    name, sep, rest = spec.partition("=")
    words = shlex.split(rest)
    if not sep or not name.strip() or not words:
        raise ValueError(
            f"--variant {spec!r}: expected NAME=MODEL_TYPE followed by its train.py options, e.g. "
            '--variant "ttt4rec-L200=ttt4rec --max_length 200".'
        )
    return name.strip(), words[0], words[1:]


def run_model(model_type: str, output_dir: Path, common: list[str]) -> dict:
    """Train (or resume) `model_type` into `output_dir` with the train.py options `common`, unless that run
    finished; its results."""
    results_path = output_dir / "results.json"
    if results_path.is_file():
        logger.info("%s: finished before, not retrained (%s)", output_dir.name, results_path)
        return json.loads(results_path.read_text())
    argv = ["--model_type", model_type, "--output_dir", str(output_dir), *common]
    argv += ["--test_eval_modes", ",".join(model_modes(model_type))]
    if (output_dir / "checkpoint" / STATE_FILE).is_file():
        argv += ["--resume_from_checkpoint", "latest"]
    return train(parse_args(argv))


def history_length_metrics(model_type: str, output_dir: Path, dataset: str, dataset_config: str) -> dict:
    """`{mode: metrics_by_history_length rows}` of the run's best model on test, windows of the run's own `L`
    (cached in `BY_LENGTH_FILE`)."""
    path = output_dir / BY_LENGTH_FILE
    if path.is_file():
        return json.loads(path.read_text())
    model = load_checkpoint(str(output_dir / "best_model"), model_type=model_type)
    max_length = json.loads((output_dir / "run_config.json").read_text())["data"]["max_length"]
    sequences, _ = load_sequences(dataset, dataset_config, max_length=max_length, splits=("test",))
    lengths = sample_history_lengths(sequences["test"])
    by_length = {
        mode: metrics_by_history_length(compute_ranks(model, sequences["test"], max_length, mode=mode), lengths)
        for mode in model_modes(model_type)
    }
    path.write_text(json.dumps(by_length, indent=2))
    return by_length


def comparison_rows(results: dict[str, dict]) -> list[dict]:
    """One row per (run, test eval mode) of the runs' results (`{run name: results}`)."""
    return [
        {
            "model": name,
            "mode": row["mode"],
            **{m: row[m] for m in METRICS},
            "epochs": res["epochs"],
            "best_epoch": res["best_epoch"],
            "seconds_per_epoch": res["seconds_per_epoch"],
        }
        for name, res in results.items()
        for row in res["rows"]
        if row["split"] == "test"
    ]


def comparison_table(rows: list[dict]) -> str:
    """The markdown table of `comparison_rows`."""
    header = ["model", "test eval mode", *METRICS, "epochs (best)", "s / epoch"]
    cells = [
        [
            r["model"],
            r["mode"],
            *(f"{r[m]:.4f}" for m in METRICS),
            f"{r['epochs']} ({r['best_epoch']})",
            f"{r['seconds_per_epoch']:.1f}",
        ]
        for r in rows
    ]
    return markdown_table(header, cells, align="ll" + "r" * (len(METRICS) + 2))


def compare(
    dataset: str,
    models: list[str],
    output_dir: str | Path,
    dataset_config: str = DEFAULT_CONFIG_NAME,
    training_args: list[str] | None = None,
    variants: list[str] | None = None,
) -> dict:
    """Train every model of `models` (registered `--model_type` names) on `dataset` with the same settings
    (`training_args`: any `scripts/train.py` options shared by all runs, e.g. `--max_epochs 50 --seed 1`), and
    every variant (`"NAME=MODEL_TYPE [its own train.py options]"`, see `parse_variant`), then write the comparison
    table and plots into `output_dir`. Returns `{"rows": ..., "by_history_length": ...}`."""
    if len(set(models)) != len(models):
        raise ValueError(f"--models lists a model twice: {models}.")
    runs = {m: (m, []) for m in models}  # run name -> (model type, its own options)
    for spec in variants or []:
        name, model_type, options = parse_variant(spec)
        if name in runs:
            raise ValueError(f"--variant {spec!r}: the name {name!r} is taken; give the variant another name.")
        runs[name] = (model_type, options)
    common = ["--dataset", dataset, "--dataset_config", dataset_config, *(training_args or [])]
    for model_type, options in runs.values():
        model_classes(model_type)  # an unknown name or option fails before any training
        if parse_args([*common, "--model_type", model_type, *options]).training.eval_protocol != "full":
            raise ValueError("The comparison ranks all items (the papers' full protocol): drop --eval_protocol.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = {
        name: run_model(model_type, output_dir / name, [*common, *options])
        for name, (model_type, options) in runs.items()
    }
    by_length = {
        f"{name} ({mode})": rows
        for name, (model_type, _) in runs.items()
        for mode, rows in history_length_metrics(model_type, output_dir / name, dataset, dataset_config).items()
    }
    rows = comparison_rows(results)
    table = comparison_table(rows)
    (output_dir / "comparison.md").write_text(
        f"{table}\n\nTest NDCG@10 and the other metrics by history length:\n\n{history_length_table(by_length)}\n"
    )
    (output_dir / "comparison.json").write_text(json.dumps({"rows": rows, "by_history_length": by_length}, indent=2))
    histories = {name: _validation_history(output_dir / name) for name in runs}
    plot_validation_by_epoch(histories, "NDCG@10", output_dir / "validation_by_epoch.png")
    plot_metrics_by_history_length(by_length, "NDCG@10", output_dir / "test_by_history_length.png")
    print(table)
    return {"rows": rows, "by_history_length": by_length}


def _validation_history(run_dir: Path) -> list[dict]:
    """The epoch records of a run's `log.jsonl` (the last record of each epoch, if a resumed run logged it twice)."""
    records = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "epoch" in record and not record.get("final"):
            records[record["epoch"]] = record
    return [records[e] for e in sorted(records)]


__all__ = ["compare", "comparison_rows", "comparison_table", "parse_variant"]
