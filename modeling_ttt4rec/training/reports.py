"""Reports of runs: one markdown-table writer and the plots (training curves, metrics by history length, grid heat
map). Every table the trainer, the evaluation script, the grid search and the model card print is built here."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .metrics import metric_names


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A markdown table of already formatted cells.

    Args:
        header: the column titles.
        rows: one sequence of cell texts per row, as many as `header`.
        align: one letter per column, `"l"` (the default alignment) or `"r"` (right-aligned, `---:`); unset: all
            default.
    """
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"`align` needs one of 'l' or 'r' per column ({len(header)}), got {align!r}.")
    lines = ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"A row has {len(row)} cells but the table has {len(header)} columns: {row!r}.")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def split_metrics_table(rows: Sequence[dict], protocol: str = "full", samples: bool = True) -> str:
    """One row per evaluated (split, eval mode) of a run's results: the protocol's metrics (4 decimals) and, with
    `samples`, the number of samples."""
    names = metric_names(protocol)
    header = ["split", "eval mode", *names] + (["samples"] if samples else [])
    cells = [
        [row["split"], row["mode"], *(f"{row[m]:.4f}" for m in names)] + ([str(row["num_samples"])] if samples else [])
        for row in rows
    ]
    return markdown_table(header, cells)


def results_table(results: dict) -> str:
    """The final results of a training run (`results.md`): the metrics table and a line of epochs, times, memory."""
    table = split_metrics_table(results["rows"], results.get("eval_protocol", "full"))
    summary = (
        f"epochs: {results['epochs']} (best {results['best_epoch']}), time per epoch: "
        f"{results['seconds_per_epoch']:.1f} s (training only), total: {results['total_seconds']:.1f} s, "
        f"peak memory: {results['peak_memory_mb']:.0f} MiB"
    )
    return f"{table}\n\n{summary}"


def history_length_table(by_length: dict[str, list[dict]], protocol: str = "full") -> str:
    """Markdown table of `metrics_by_history_length` rows, one row per (mode, history group)."""
    names = metric_names(protocol)
    rows = [
        [mode, str(row["history"]), f"{row['num_samples']:,}", *(f"{row[name]:.4f}" for name in names)]
        for mode, groups in by_length.items()
        for row in groups
    ]
    return markdown_table(["eval mode", "history length", "samples", *names], rows, align="llr" + "r" * len(names))


def grid_table(rows: list[dict], metric: str) -> str:
    """Markdown table of a grid search: one row per `initializer_range`, one column per `mini_batch_size`, cells
    `metric`; the best cell in bold."""
    ranges = sorted({row["initializer_range"] for row in rows})
    sizes = sorted({row["mini_batch_size"] for row in rows})
    value = {(row["initializer_range"], row["mini_batch_size"]): row[metric] for row in rows}
    best = max(value.values())

    def cell(v: float | None) -> str:
        return "" if v is None else (f"**{v:.4f}**" if v == best else f"{v:.4f}")

    header = [f"{metric}: initializer_range \\ mini_batch_size", *(str(b) for b in sizes)]
    return markdown_table(header, [[f"{r:g}", *(cell(value.get((r, b))) for b in sizes)] for r in ranges])


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: str | Path, names: Sequence[str]) -> None:
    """PNG of the training loss and the validation metrics `names` by epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("Training loss")
    for name in names:
        points = [(h["epoch"], h[f"val_{name}"]) for h in history if f"val_{name}" in h]
        if points:
            ax_val.plot(*zip(*points, strict=True), marker="o", label=name)
    ax_val.set_xlabel("epoch")
    ax_val.set_title("Validation metrics")
    ax_val.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_validation_by_epoch(histories: dict[str, list[dict]], metric: str, path: str | Path) -> None:
    """PNG of validation `metric` by epoch, one line per run (`{label: epoch records}`, e.g. one per model)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, history in histories.items():
        points = [(h["epoch"], h[f"val_{metric}"]) for h in history if f"val_{metric}" in h]
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"Validation {metric} by epoch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_metrics_by_history_length(
    by_length: dict[str, list[dict]], metric: str, path: str | Path, max_length: int | None = None
) -> None:
    """PNG of `metric` by history-length group, one line per evaluation mode, sample counts under the groups."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    # every mode scores the same samples, so the groups are the same
    groups = next(iter(by_length.values()))
    for mode, rows in by_length.items():
        ax.plot(range(len(rows)), [r[metric] for r in rows], marker="o", label=mode)
    ax.set_xticks(range(len(groups)), [f"{r['history']}\n({r['num_samples']:,})" for r in groups])
    ax.set_xlabel("items read before the target (samples)")
    ax.set_ylabel(metric)
    title = f"{metric} by history length"
    if max_length is not None:
        title += f" (window mode reads the last {max_length})"
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_grid(rows: list[dict], metric: str, path: str | Path, title: str = "") -> None:
    """Heat map PNG of `metric` over a grid search (rows: initializer_range, columns: mini_batch_size)."""
    plt = _pyplot()
    ranges = sorted({row["initializer_range"] for row in rows})
    sizes = sorted({row["mini_batch_size"] for row in rows})
    grid = np.full((len(ranges), len(sizes)), np.nan)
    for row in rows:
        grid[ranges.index(row["initializer_range"]), sizes.index(row["mini_batch_size"])] = row[metric]
    fig, ax = plt.subplots(figsize=(1.2 * len(sizes) + 2.5, 0.8 * len(ranges) + 1.8))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(sizes)), [str(b) for b in sizes])
    ax.set_yticks(range(len(ranges)), [f"{r:g}" for r in ranges])
    ax.set_xlabel("mini_batch_size")
    ax.set_ylabel("initializer_range")
    high = np.nanmax(grid)
    for i in range(len(ranges)):
        for j in range(len(sizes)):
            if not np.isnan(grid[i, j]):
                color = "black" if grid[i, j] > np.nanmin(grid) + 0.6 * (high - np.nanmin(grid)) else "white"
                ax.text(j, i, f"{grid[i, j]:.4f}", ha="center", va="center", color=color, fontsize=8)
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(title or f"{metric} by initializer_range and mini_batch_size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = [
    "grid_table",
    "history_length_table",
    "markdown_table",
    "plot_curves",
    "plot_grid",
    "plot_metrics_by_history_length",
    "plot_validation_by_epoch",
    "results_table",
    "split_metrics_table",
]
