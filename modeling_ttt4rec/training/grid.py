"""A grid search over `initializer_range` x `mini_batch_size`, the two settings the second paper found to matter
(its Figure 3): one training run per cell, then a table and a heat map of a test metric.

Each cell is a normal `train` run in `OUTPUT_DIR/init-{r}_mb-{b}/`; a cell whose `results.json` exists is read, not
run again, so an interrupted grid continues where it stopped.
"""

import json
import time
from pathlib import Path

from .arguments import find_option
from .trainer import parse_args, train


def cell_dir(output_dir: Path, initializer_range: float, mini_batch_size: int) -> Path:
    return output_dir / f"init-{initializer_range:g}_mb-{mini_batch_size}"


def run_grid(
    train_args: list[str],
    initializer_ranges: list[float],
    mini_batch_sizes: list[int],
    output_dir: str | Path,
    split: str = "test",
    mode: str = "window",
) -> list[dict]:
    """Train every cell of the grid (or read its finished results) and return one row per cell with the metrics of
    `split` in eval `mode`.

    Args:
        train_args: `scripts/train.py` flags shared by every cell (data set, epochs, protocol, ...); they must not
            set `--output_dir`, `--initializer_range` or `--mini_batch_size`.
        initializer_ranges, mini_batch_sizes: the grid's axes.
        output_dir: where the cells' runs and the grid's outputs go.
    """
    for name in ("output_dir", "initializer_range", "mini_batch_size"):
        if find_option(train_args, name):
            raise ValueError(f"--{name} is set by the grid for each cell; remove it from the training flags.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    cells = [(r, b) for r in initializer_ranges for b in mini_batch_sizes]
    for k, (r, b) in enumerate(cells, start=1):
        folder = cell_dir(output_dir, r, b)
        results_path = folder / "results.json"
        if results_path.is_file():
            print(f"[{k}/{len(cells)}] initializer_range={r:g} mini_batch_size={b}: done before, reading {folder}")
            results = json.loads(results_path.read_text())
        else:
            print(f"[{k}/{len(cells)}] initializer_range={r:g} mini_batch_size={b}: training in {folder}")
            start = time.perf_counter()
            args = [*train_args, "--output_dir", str(folder), "--overwrite_output_dir", "true"]
            args += ["--initializer_range", str(r), "--mini_batch_size", str(b)]
            results = train(parse_args(args))
            print(f"    {time.perf_counter() - start:.0f} s")
        row = next((x for x in results["rows"] if x["split"] == split and x["mode"] == mode), None)
        if row is None:
            reported = sorted({(x["split"], x["mode"]) for x in results["rows"]})
            raise ValueError(
                f"The run in {folder} reports no {split} metrics in {mode} mode (it has {reported}); pass "
                f"--split / eval modes that the training flags produce (e.g. --test_eval_modes {mode})."
            )
        metrics = {k2: v for k2, v in row.items() if "@" in k2}
        rows.append({"initializer_range": r, "mini_batch_size": b, "best_epoch": results["best_epoch"], **metrics})
    (output_dir / "grid.json").write_text(json.dumps(rows, indent=2))
    return rows


__all__ = ["cell_dir", "run_grid"]
