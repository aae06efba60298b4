#!/usr/bin/env python
"""Evaluate a saved TTT4Rec checkpoint: full ranking over all items (docs/protocol.md section 7) or sampled 1 + 99
ranking (`--eval_protocol sampled`, docs/protocol.md section 9).

    python scripts/evaluate.py --model_name_or_path outputs/run/best_model --dataset DATA_DIR --split test
    accelerate launch scripts/evaluate.py --model_name_or_path USER/NAME --dataset USER/DATA --eval_mode stream
    python scripts/evaluate.py --model_name_or_path outputs/run/best_model --dataset DATA_DIR --eval_protocol sampled
    python scripts/evaluate.py --model_name_or_path outputs/run/best_model --dataset DATA_DIR --eval_mode both \\
        --by_history_length outputs/run/by_length [--history_length_edges 1,11,51,101,201,401]

Prints HR@10, HR@50, NDCG@10, NDCG@50 (sampled: HR@5, HR@10, NDCG@5, NDCG@10; 4 decimals) and the evaluation
time; `--output_json` saves them. Options are snake_case (kebab-case spellings are accepted too) and mean what
they mean in `scripts/train.py`. The sampled candidates depend only on the data and `--candidate_seed`, so
every model evaluated with the same seed is ranked against the same candidates. A mistake ends with one line
`error: ...` (exit status 2); `--debug` shows its traceback.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_ttt4rec.training.arguments import ITEM_CHUNK_HELP, add_option  # noqa: E402
from modeling_ttt4rec.training.cli import DEBUG_HELP, run_script  # noqa: E402
from modeling_ttt4rec.training.data import DEFAULT_CONFIG_NAME  # noqa: E402
from modeling_ttt4rec.training.evaluation import EVAL_MODES, EVAL_PROTOCOLS  # noqa: E402
from modeling_ttt4rec.training.metrics import HISTORY_LENGTH_EDGES  # noqa: E402

TRAINED = "(default: the checkpoint's training setting, else"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_option(parser, "model_name_or_path", required=True, help="Checkpoint folder or Hub model id")
    add_option(parser, "dataset", required=True, help="Data set folder or Hub dataset id")
    add_option(
        parser, "dataset_config", default=None, help=f"Split configuration name {TRAINED} {DEFAULT_CONFIG_NAME})"
    )
    add_option(parser, "split", default="test", choices=["validation", "test"])
    add_option(parser, "eval_mode", default="window", choices=[*EVAL_MODES, "both"])
    add_option(parser, "eval_protocol", choices=EVAL_PROTOCOLS, help=f"full ranking or 1 + N sampled {TRAINED} full)")
    add_option(parser, "eval_num_negatives", type=int, help=f"Negatives per sample (sampled protocol) {TRAINED} 99)")
    add_option(parser, "candidate_seed", type=int, help=f"Seed of the sampled candidates {TRAINED} 0)")
    add_option(parser, "max_length", type=int, help=f"History length L {TRAINED} the data set's metadata)")
    add_option(
        parser,
        "ignore_item_map_mismatch",
        action="store_true",
        help="Evaluate even if the data set numbers its items differently from the checkpoint's training data",
    )
    add_option(parser, "eval_batch_targets", type=int, default=4096, help="Targets per evaluation batch")
    add_option(parser, "eval_batch_tokens", type=int, default=65536, help="Padded tokens per evaluation batch")
    add_option(parser, "stream_chunk_size", type=int, default=64, help="Items read per step in stream mode")
    add_option(parser, "item_chunk_size", type=int, default=None, help=ITEM_CHUNK_HELP)
    add_option(parser, "mixed_precision", default=None, choices=["no", "bf16", "fp16"])
    add_option(parser, "cpu", action="store_true", help="Evaluate on the CPU even if a GPU is there")
    add_option(
        parser,
        "torch_threads",
        type=int,
        default=None,
        help="torch.set_num_threads on CPU (1 is fastest on a busy machine)",
    )
    add_option(parser, "output_json", default=None, help="Also write the metrics to this JSON file")
    add_option(
        parser,
        "by_history_length",
        default=None,
        metavar="DIR",
        help="Also write the metrics by history length (table, JSON and an NDCG@10 plot) into DIR",
    )
    add_option(
        parser,
        "history_length_edges",
        default=",".join(map(str, HISTORY_LENGTH_EDGES)),
        help="The lower ends of the history-length groups of --by_history_length, increasing (the last group is open)",
    )
    add_option(parser, "debug", action="store_true", help=DEBUG_HELP)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    from modeling_ttt4rec.training.evaluation import run_evaluation

    return run_evaluation(args)


if __name__ == "__main__":
    run_script(main)
