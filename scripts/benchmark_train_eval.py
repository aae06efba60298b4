#!/usr/bin/env python
"""Time one training epoch and the full test evaluation (window and stream) of the default TTT4Rec.

    python scripts/benchmark_train_eval.py --dataset DATA_DIR [--dataset_config split-3-2-5] [--threads 2]

Prints and optionally saves (`--output_json`) seconds per epoch, evaluation seconds per mode and peak memory, the
numbers recorded in docs/benchmarks.md ("Training and evaluation").
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--dataset_config", default="split-3-2-5")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--epochs", type=int, default=2, help="Timed epochs (the first one includes warm-up)")
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)

    import torch

    from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction
    from modeling_ttt4rec.training.data import collate, load_sequences, make_batches, prefix_units, stream_units
    from modeling_ttt4rec.training.evaluation import evaluate_split
    from modeling_ttt4rec.training.trainer import peak_memory_mb

    if args.threads:
        torch.set_num_threads(args.threads)
    sequences, meta = load_sequences(args.dataset, args.dataset_config)
    torch.manual_seed(0)
    model = TTT4RecForNextItemPrediction(TTT4RecConfig(num_items=meta.num_items))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    units = prefix_units(sequences["train"], meta.max_length)
    epochs = []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        model.train()
        for index in make_batches(units, 2048, shuffle=True, seed=epoch):
            batch = collate(units, index)
            labels = torch.full_like(batch["input_ids"], -100).masked_scatter_(batch["target_mask"], batch["targets"])
            loss = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=labels,
                num_items_in_batch=2048,
                return_logits=False,
                check_inputs=False,
            ).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        epochs.append(time.perf_counter() - start)
        print(f"epoch {epoch + 1}: {epochs[-1]:.1f} s ({units.total_targets} targets)", flush=True)
    result = {
        "dataset": meta.source,
        "config": meta.config_name,
        "threads": torch.get_num_threads(),
        "train_targets": units.total_targets,
        "epoch_seconds": epochs,
        "eval_seconds": {},
    }
    result["eval_parts"] = {}
    # how many items each mode's encoder reads for the test split
    result["eval_items_read"] = {
        "stream": int(stream_units(sequences["test"]).length.sum()),
        "window": int(prefix_units(sequences["test"], meta.max_length).length.sum()),
    }
    for mode in ("stream", "window"):
        parts: dict[str, float] = {}
        metrics = evaluate_split(model, sequences["test"], meta.max_length, mode=mode, timings=parts)
        result["eval_seconds"][mode] = metrics["eval_seconds"]
        result["eval_parts"][mode] = parts
        print(
            f"test eval ({mode}): {metrics['eval_seconds']:.1f} s for {metrics['num_samples']} samples "
            f"(encoding {result['eval_items_read'][mode]:,} items {parts['encode_seconds']:.1f} s, scoring and "
            f"ranking {parts['score_seconds']:.1f} s)",
            flush=True,
        )
    result["peak_memory_mb"] = peak_memory_mb(torch.device("cpu"))
    print(json.dumps(result))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
