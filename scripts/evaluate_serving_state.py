"""The test metrics of a checkpoint served through stored user states, float32 and bfloat16 side by side, with the
`stream` evaluation as the reference (`ranks_changed`: samples whose rank differs from the reference's;
docs/serving.md, "Half-precision states").

python scripts/evaluate_serving_state.py --model outputs/video/best_model --dataset data/video \
    --dataset_config split-3-2-5 --state_dtypes float32,bfloat16

Every user is replayed as the server applies events (the history before the first target, then one target item
per event), its state stored and read back between events (`modeling_ttt4rec.serving.evaluation`).
Options are snake_case (kebab-case spellings are accepted too); `--debug` shows the traceback of an error.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_ttt4rec.serving.evaluation import serving_ranks  # noqa: E402
from modeling_ttt4rec.serving.state import STATE_DTYPES  # noqa: E402
from modeling_ttt4rec.training.arguments import add_option  # noqa: E402
from modeling_ttt4rec.training.cli import DEBUG_HELP, run_script  # noqa: E402
from modeling_ttt4rec.training.data import DEFAULT_CONFIG_NAME, load_sequences  # noqa: E402
from modeling_ttt4rec.training.evaluation import compute_ranks, load_checkpoint  # noqa: E402
from modeling_ttt4rec.training.metrics import ranking_metrics  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_option(parser, "model", required=True, help="a save_pretrained folder or Hub id")
    add_option(parser, "dataset", required=True, help="the data set folder or Hub id the model was trained on")
    add_option(parser, "dataset_config", default=DEFAULT_CONFIG_NAME, help="its split configuration")
    add_option(parser, "split", default="test", help="the split to rank")
    add_option(parser, "state_dtypes", default="float32,bfloat16", help="stored float formats, comma-separated")
    add_option(parser, "batch_users", type=int, default=1024, help="users advanced in one batched step")
    add_option(parser, "torch_threads", type=int, default=1, help="torch's threads")
    add_option(parser, "output_json", help="also write the results here")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(argv)
    dtypes = args.state_dtypes.split(",")
    unknown = [d for d in dtypes if d not in STATE_DTYPES]
    if unknown:
        raise SystemExit(f"--state_dtypes: unknown {unknown}; choose among {sorted(STATE_DTYPES)}.")
    torch.set_num_threads(args.torch_threads)

    model = load_checkpoint(args.model).eval()
    sequences, meta = load_sequences(
        args.dataset, args.dataset_config, num_items=model.config.num_items, splits=(args.split,)
    )
    split = sequences[args.split]
    rows = {}
    started = time.perf_counter()
    reference = compute_ranks(model, split, meta.max_length, mode="stream")
    rows["stream evaluation (reference)"] = ranking_metrics(reference, digits=5) | {
        "ranks_changed": 0,
        "seconds": round(time.perf_counter() - started, 1),
    }
    for dtype in dtypes:
        started = time.perf_counter()
        ranks = serving_ranks(model, split, dtype, args.batch_users)
        rows[f"served, states in {dtype}"] = ranking_metrics(ranks, digits=5) | {
            "ranks_changed": int((ranks != reference).sum()),
            "seconds": round(time.perf_counter() - started, 1),
        }
    names = ["HR@10", "NDCG@10", "HR@50", "NDCG@50", "num_samples", "ranks_changed", "seconds"]
    print(f"{args.split} split of {meta.name} ({args.dataset_config}), model {args.model}\n")
    print("| state path | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(str(row[n]) for n in names) + " |")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    run_script(main)
