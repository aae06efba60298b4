"""Quick start: build a benchmark data set with `dataset_builders`, then train a TTT4Rec model on it briefly.

    python scripts/quickstart.py                      # MovieLens-100K from ../shared/data (or --raw u.data)
    python scripts/quickstart.py --steps 50 --device cuda

Trains on the train split's samples exactly as `scripts/train.py` reads them (whole prefixes of at most `L` items
with a target after every position, plus one window per target beyond `L`: `training.data.prefix_units`), printing
the loss as it goes down, then recommends for one user (in the data set's original item ids, through its
`item_map.parquet`). The data set is written to a temporary folder, removed at the end. The full protocol (early
stopping, evaluation, checkpoints) is `scripts/train.py`.
"""

import argparse
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dataset_builders import build_dataset, write_hub_folder
from dataset_builders.item_ids import ItemIdMap
from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction
from modeling_ttt4rec.training.cli import run_script
from modeling_ttt4rec.training.data import Units, collate, load_sequences, make_batches, prefix_units

DEFAULT_RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k" / "u.data"


def training_batch(units: Units, index, device: str) -> dict[str, torch.Tensor]:
    """A batch of units as the model's inputs, with `labels` the target after each position (-100: none)."""
    batch = collate(units, index, device)
    labels = torch.full_like(batch["input_ids"], -100)
    labels[batch["target_mask"]] = batch["targets"]
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW, help="a MovieLens u.data file")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_targets", type=int, default=4096, help="targets per step")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if not args.raw.exists():
        raise SystemExit(f"{args.raw} not found: pass --raw path/to/u.data (MovieLens-100K).")

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="ttt4rec-quickstart-") as tmp:
        folder = Path(tmp)
        write_hub_folder(build_dataset("movielens-100k", args.raw), folder)
        sequences, meta = load_sequences(folder, splits=("train",))  # the default configuration, split-3-2-5
        item_map = ItemIdMap.from_file(folder)
        print(f"data set: {folder} (temporary)", end=" ")
        train_and_recommend(sequences["train"], meta, item_map, args)


def train_and_recommend(train, meta, item_map: ItemIdMap, args: argparse.Namespace) -> None:
    """Train a new model on the train split's samples for `args.steps` steps, then recommend for the first user."""
    print(f"({train.num_rows} users, {train.num_samples} samples, {meta.num_items - 1} items)")

    units = prefix_units(train, meta.max_length)
    model = TTT4RecForNextItemPrediction(TTT4RecConfig(num_items=meta.num_items)).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    batches, epoch = [], 0
    progress = tqdm(range(args.steps), desc="training")
    for step in progress:
        if not batches:  # a new pass over the samples, in a new random order
            batches = make_batches(units, args.batch_targets, shuffle=True, seed=epoch)
            epoch += 1
        loss = model(**training_batch(units, batches.pop(), args.device)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
        if step % 5 == 0 or step == args.steps - 1:
            tqdm.write(f"step {step:>3}  loss {loss.item():.4f}")

    model.eval()
    history = torch.from_numpy(train.values[train.offsets[0] : train.offsets[1]])[None].to(args.device)
    top = model.recommend(history, top_k=5, exclude_seen=True, item_map=item_map)
    print(f"top-5 item ids for user {train.user_ids[0]} after {history.shape[1]} items: {top.original_ids[0]}")


if __name__ == "__main__":
    run_script(main)
