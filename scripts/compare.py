#!/usr/bin/env python
"""The papers' comparison in one command: train several recommenders (TTT4Rec and the RecBole baselines) with the
same protocol, budget, seed and early stopping on the same split, evaluate them on the same test samples with the
same metric code, and write a results table (Markdown + JSON) and plots (validation NDCG@10 by epoch, test NDCG@10
by history length). Resumable: run the same command again and finished models are not retrained.

    python scripts/compare.py --dataset data/amazon-video-games --models ttt4rec,sasrec,gru4rec \\
        --output_dir outputs/compare-amazon --torch_threads 1
    python scripts/compare.py --dataset DATA --models ttt4rec,sasrec --dataset_config split-6-2-2 --max_epochs 50
    python scripts/compare.py --dataset DATA --models ttt4rec,sasrec --variant "ttt4rec-L200=ttt4rec --max_length 200"

Every other option (`--seed`, `--patience`, `--learning_rate`, `--batch_targets`, `--torch_threads`, ...) is a
`scripts/train.py` option, given to every run alike. Logic: `modeling_ttt4rec.training.compare`. A mistake ends
with one line `error: ...` (exit status 2); `--debug` shows its traceback.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_ttt4rec.training.arguments import add_option  # noqa: E402
from modeling_ttt4rec.training.cli import DEBUG_HELP, run_script  # noqa: E402
from modeling_ttt4rec.training.data import DEFAULT_CONFIG_NAME  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_option(parser, "dataset", required=True, help="Data set folder or Hub dataset id")
    add_option(parser, "models", default="ttt4rec,sasrec,gru4rec", help="Comma-separated --model_type names")
    add_option(parser, "dataset_config", default=DEFAULT_CONFIG_NAME, help="Split configuration name")
    add_option(parser, "output_dir", default="outputs/compare", help="One folder per model, and the comparison")
    add_option(
        parser,
        "variant",
        action="append",
        default=[],
        help='A model with train.py options of its own, named: "NAME=MODEL_TYPE OPTIONS", e.g. '
        '"ttt4rec-L200=ttt4rec --max_length 200" (repeatable)',
    )
    add_option(parser, "debug", action="store_true", help=DEBUG_HELP)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args, training_args = build_parser().parse_known_args(argv)
    from modeling_ttt4rec.training.compare import compare

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        return compare(args.dataset, models, args.output_dir, args.dataset_config, training_args, args.variant)
    except ValueError as err:
        raise SystemExit(str(err)) from err


INTERRUPTED = "run the same command again: finished models are not retrained, the interrupted one resumes"

if __name__ == "__main__":
    run_script(main, interrupted=INTERRUPTED)
