#!/usr/bin/env python
"""Train TTT4Rec on a split data set with the paper's protocol.

    python scripts/train.py --dataset DATA_DIR_OR_HUB_ID --output_dir outputs/run
    accelerate launch scripts/train.py --dataset ... --mixed_precision bf16
    python scripts/train.py --config_file run.yaml --backbone mamba --ttt_layer_type linear

All settings: `python scripts/train.py --help` (snake_case; kebab-case spellings are accepted too). The model
settings are those of the chosen model's config (`--model_type`, default ttt4rec). The logic is in
`modeling_ttt4rec.training.trainer`. A mistake in the settings or the data ends with one line `error: ...` (exit
status 2); `--debug` shows its traceback.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_ttt4rec.training.cli import run_script  # noqa: E402
from modeling_ttt4rec.training.trainer import parse_args, train  # noqa: E402

INTERRUPTED = (
    "the last finished epoch (or --save_steps step) is kept in OUTPUT_DIR/checkpoint; run the same command with "
    "--resume_from_checkpoint latest to continue"
)


def main(argv: list[str] | None = None) -> dict:
    return train(parse_args(argv))


if __name__ == "__main__":
    run_script(main, interrupted=INTERRUPTED)
