"""Replay a user's history one interaction at a time with the cache, printing the top-k after each one.

python scripts/recommend.py --model_name_or_path outputs/video/best_model --history 7351 20163 18028 --top_k 5
python scripts/recommend.py --num_items 10673 --history 12 7 31   # a freshly initialised model (dense ids)
python scripts/recommend.py --history 12 7 31 7 5 --compile     # the compiled step (the first one compiles)

A checkpoint trained on a data set of `dataset_builders` ships its `item_map.parquet`: the history is then read, and
the recommendations printed, as the data set's original item ids (strings such as Amazon's `B00005`); an id that
is not in the map (e.g. removed by the k-core filter) is an error naming it. `--dense_ids` reads and prints the
model's dense ids `1 .. num_items - 1` instead (always so for a checkpoint without an item map or a new model).
Options are snake_case (kebab-case spellings are accepted too); `--debug` shows the traceback of an error.
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_builders.format import ITEM_MAP_FILE  # noqa: E402
from dataset_builders.item_ids import ItemIdMap, UnknownItemError  # noqa: E402
from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction  # noqa: E402
from modeling_ttt4rec.training.arguments import ITEM_CHUNK_HELP, add_option, check_item_chunk_option  # noqa: E402
from modeling_ttt4rec.training.cli import DEBUG_HELP, run_script  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model_name_or_path",
        "--model-name-or-path",
        "--checkpoint",
        help="a save_pretrained folder or Hub repo id (default: a new model)",
    )
    add_option(parser, "num_items", type=int, default=10673, help="items incl. padding, for a new model")
    add_option(parser, "history", nargs="+", required=True, help="the user's item ids, oldest first")
    add_option(parser, "dense_ids", action="store_true", help="read and print dense ids, not the original ids")
    add_option(parser, "top_k", type=int, default=10, help="how many items to recommend after each interaction")
    add_option(parser, "exclude_seen", action="store_true", help="never recommend an item already read")
    add_option(parser, "item_chunk_size", type=int, default=None, help=ITEM_CHUNK_HELP)
    add_option(
        parser,
        "compile",
        action="store_true",
        help="compile the one-item step with torch.compile (`model.compile_step()`)",
    )
    add_option(parser, "debug", action="store_true", help=DEBUG_HELP)
    return parser


def dense_history(history: list[str], item_map: ItemIdMap | None) -> list[int]:
    """The history as dense ids: through the item map, or read as dense ids (integers, never the padding id 0)."""
    if item_map is not None:
        try:
            return item_map.to_dense(history)
        except UnknownItemError as error:
            raise UnknownItemError(f"{error} (--dense_ids reads the model's dense ids instead)") from error
    bad = [item for item in history if not item.isdigit() or int(item) == 0]
    if bad:
        raise ValueError(
            f"History item(s) {bad[:10]} are not dense item ids (integers 1 .. num_items - 1; 0 is the padding id). "
            "Original item ids need a checkpoint with an item map (item_map.parquet)."
        )
    return [int(item) for item in history]


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_item_chunk_option(args.item_chunk_size)
    except ValueError as error:
        parser.error(str(error))

    item_map = None
    if args.model_name_or_path:
        from modeling_ttt4rec.training.evaluation import checkpoint_folder, load_checkpoint

        folder = checkpoint_folder(args.model_name_or_path)
        model = load_checkpoint(str(folder))
        if not args.dense_ids and (folder / ITEM_MAP_FILE).is_file():
            item_map = ItemIdMap.from_file(folder)
            if item_map.num_items != model.config.num_items:
                raise ValueError(
                    f"The checkpoint's {ITEM_MAP_FILE} has {item_map.num_items - 1} items but the model scores "
                    f"{model.config.num_items - 1}: the checkpoint is damaged. Use --dense_ids, or save it again."
                )
    else:
        torch.manual_seed(0)
        model = TTT4RecForNextItemPrediction(TTT4RecConfig(num_items=args.num_items))
    model.eval()
    if args.compile:
        model.compile_step()

    history = dense_history(args.history, item_map)
    cache = model.init_cache(batch_size=1)
    seen: list[int] = []
    for step, (shown, item) in enumerate(zip(args.history, history, strict=True), start=1):
        seen.append(item)
        start = time.perf_counter()
        try:
            out = model.recommend(
                torch.tensor([[item]]),
                cache_params=cache,
                top_k=args.top_k,
                exclude_items=torch.tensor([seen]) if args.exclude_seen else None,
                item_chunk_size=args.item_chunk_size,
                item_map=item_map,
            )
        except ValueError as error:
            parser.error(f"history item {step} ({shown}): {error}")
        elapsed_ms = 1000 * (time.perf_counter() - start)
        cache = out.cache_params
        top = out.original_ids[0] if item_map is not None else out.item_ids[0].tolist()
        note = "  (includes compiling the step)" if args.compile and step == 1 else ""
        print(
            f"after item {step:>4} ({shown:>6}): top-{args.top_k} [{', '.join(map(str, top))}]  "
            f"[{elapsed_ms:.2f} ms]{note}"
        )


if __name__ == "__main__":
    run_script(main)
