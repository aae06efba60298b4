"""Quick start: build a benchmark data set with `dataset_builders`, then train a TTT4Rec model on it briefly.

    python scripts/quickstart.py                      # MovieLens-100K from ../shared/data (or --raw u.data)
    python scripts/quickstart.py --steps 50 --device cuda

Trains on whole train prefixes (a loss at every target position), printing the loss as it goes down, then
recommends for one user with the cache. The full protocol (early stopping, evaluation, checkpoints) is
`scripts/train.py`.
"""

import argparse
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dataset_builders import build_dataset, load_metadata, load_splits, write_hub_folder
from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction

DEFAULT_RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k" / "u.data"


def prefix_batch(rows: list[dict], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and per-position labels for the train prefixes of `rows` (each cut to its last `max_length + 1`)."""
    sequences = [row["item_ids"][-(max_length + 1) :] for row in rows]
    width = max(len(s) for s in sequences) - 1
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, seq in enumerate(sequences):
        input_ids[i, : len(seq) - 1] = torch.tensor(seq[:-1])
        labels[i, : len(seq) - 1] = torch.tensor(seq[1:])
    return input_ids, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW, help="a MovieLens u.data file")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=256, help="users per step")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not args.raw.exists():
        raise SystemExit(f"{args.raw} not found: pass --raw path/to/u.data (MovieLens-100K).")

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="ttt4rec-quickstart-"))
    write_hub_folder(build_dataset("movielens-100k", args.raw), folder)
    metadata = load_metadata(folder)
    train = load_splits(folder, "split-3-2-5")["train"]
    print(f"data set: {folder} ({len(train)} users, {metadata['num_items'] - 1} items)")

    model = TTT4RecForNextItemPrediction(TTT4RecConfig(num_items=metadata["num_items"])).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    rows = list(train)
    progress = tqdm(range(args.steps), desc="training")
    for step in progress:
        start = (step * args.batch_size) % len(rows)
        input_ids, labels = prefix_batch(rows[start : start + args.batch_size], metadata["max_length"])
        loss = model(input_ids.to(args.device), labels=labels.to(args.device)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
        if step % 5 == 0 or step == args.steps - 1:
            tqdm.write(f"step {step:>3}  loss {loss.item():.4f}")

    model.eval()
    history = torch.tensor([rows[0]["item_ids"]], device=args.device)
    top = model.recommend(history, top_k=5, exclude_seen=True)
    print(f"top-5 for user {rows[0]['user_id']} after {history.shape[1]} items: {top.item_ids[0].tolist()}")


if __name__ == "__main__":
    main()
