#!/usr/bin/env python
"""Grid search over initializer_range x mini_batch_size (the second paper's Figure 3).

    python scripts/grid_search.py --output_dir outputs/grid --initializer_range 0.002,0.02,0.2 \
        --mini_batch_size 1,5,10 -- --dataset DATA_DIR --max_epochs 10 --ttt_layer_type linear \
        --item_scoring target_mlp --loss_type sampled_bce --eval_protocol sampled

Everything after `--` goes to `scripts/train.py` for every cell. Options are snake_case (kebab-case spellings are
accepted too). Writes `grid.json`, `grid.md` (a table per metric)
and `grid_heatmap.png` in the output folder; finished cells are not trained again.

The default `--split test` is a sensitivity analysis like the paper's Figure 3; to choose settings, compare the
cells with `--split validation` (choosing on test metrics would leak the test set into the choice).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_ttt4rec.training.arguments import add_option  # noqa: E402
from modeling_ttt4rec.training.cli import run_script  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_option(parser, "output_dir", required=True, help="Where the cells' runs and the grid's outputs go")
    add_option(parser, "initializer_range", default="0.002,0.02,0.2", help="Comma-separated values")
    add_option(parser, "mini_batch_size", default="1,5,10", help="Comma-separated values")
    add_option(parser, "metric", default="NDCG@10", help="Metric of the heat map")
    add_option(
        parser,
        "split",
        default="test",
        choices=["validation", "test"],
        help="test: sensitivity; validation: selection",
    )
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1 :]
    args = build_parser().parse_args(argv)
    from modeling_ttt4rec.training.grid import run_grid
    from modeling_ttt4rec.training.reports import grid_table, plot_grid

    ranges = [float(v) for v in args.initializer_range.split(",")]
    sizes = [int(v) for v in args.mini_batch_size.split(",")]
    rows = run_grid(train_args, ranges, sizes, args.output_dir, split=args.split)
    if args.metric not in rows[0]:
        raise SystemExit(f"--metric {args.metric} was not computed; choose one of {[k for k in rows[0] if '@' in k]}")
    names = [k for k in rows[0] if "@" in k]
    tables = "\n\n".join(grid_table(rows, name) for name in names)
    with open(os.path.join(args.output_dir, "grid.md"), "w") as f:
        f.write(f"{args.split} metrics by initializer_range (rows) and mini_batch_size (columns)\n\n{tables}\n")
    plot_grid(
        rows, args.metric, os.path.join(args.output_dir, "grid_heatmap.png"), title=f"{args.split} {args.metric}"
    )
    print(grid_table(rows, args.metric))
    return rows


if __name__ == "__main__":
    run_script(main)
