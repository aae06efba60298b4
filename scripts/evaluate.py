#!/usr/bin/env python
"""Evaluate a saved TTT4Rec checkpoint: full ranking over all items (PROTOCOL.md 7) or sampled 1 + 99 ranking
(`--protocol sampled`, PROTOCOL.md 9).

    python scripts/evaluate.py --model outputs/run/best_model --dataset DATA_DIR --split test --eval_mode window
    accelerate launch scripts/evaluate.py --model USER/NAME --dataset USER/DATA --eval_mode stream
    python scripts/evaluate.py --model outputs/run/best_model --dataset DATA_DIR --protocol sampled
    python scripts/evaluate.py --model outputs/run/best_model --dataset DATA_DIR --eval_mode both \
        --by_history_length outputs/run/by_length

Prints HR@10, HR@50, NDCG@10, NDCG@50 (sampled: HR@5, HR@10, NDCG@5, NDCG@10; 4 decimals) and the evaluation
time; `--output_json` saves them. The sampled candidates depend only on the data and `--candidate_seed`, so
every model evaluated with the same seed is ranked against the same candidates.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_ttt4rec.training.data import DEFAULT_CONFIG_NAME  # noqa: E402
from modeling_ttt4rec.training.evaluation import EVAL_MODES, EVAL_PROTOCOLS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Checkpoint folder or Hub model id")
    parser.add_argument("--dataset", required=True, help="Data set folder or Hub dataset id")
    parser.add_argument("--dataset_config", default=DEFAULT_CONFIG_NAME)
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    parser.add_argument("--eval_mode", default="window", choices=[*EVAL_MODES, "both"])
    parser.add_argument("--protocol", default="full", choices=EVAL_PROTOCOLS, help="full ranking or 1 + N sampled")
    parser.add_argument("--num_negatives", type=int, default=99, help="Negatives per sample (sampled protocol)")
    parser.add_argument("--candidate_seed", type=int, default=0, help="Seed of the sampled candidates")
    parser.add_argument("--max_length", type=int, default=None, help="Default: the data set's metadata")
    parser.add_argument("--batch_targets", type=int, default=4096)
    parser.add_argument("--batch_tokens", type=int, default=65536)
    parser.add_argument("--stream_chunk_size", type=int, default=64)
    parser.add_argument("--mixed_precision", default=None, choices=["no", "bf16", "fp16"])
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument(
        "--torch_threads", type=int, default=None, help="torch.set_num_threads on CPU (1 is fastest on a busy machine)"
    )
    parser.add_argument("--output_json", default=None)
    parser.add_argument(
        "--by_history_length",
        default=None,
        metavar="DIR",
        help="Also write the metrics by history length (table, JSON and an NDCG@10 plot) into DIR",
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    from modeling_ttt4rec.training.evaluation import run_evaluation

    return run_evaluation(args)


if __name__ == "__main__":
    main()
