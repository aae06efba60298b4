"""Replay a user's history one interaction at a time with the cache, printing the top-k after each one.

python scripts/recommend.py --model_name_or_path path/or/repo --history 12 7 31 7 5 --top_k 5
python scripts/recommend.py --num_items 10673 --history 12 7 31   # a freshly initialised model
python scripts/recommend.py --history 12 7 31 7 5 --compile     # the compiled step (the first one compiles)

Options are snake_case (kebab-case spellings are accepted too).
"""

import argparse
import time

import torch

from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction
from modeling_ttt4rec.training.arguments import add_option


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_option(parser, "model_name_or_path", help="a save_pretrained folder or Hub repo id (default: a new model)")
    add_option(parser, "num_items", type=int, default=10673, help="items incl. padding, for a new model")
    add_option(parser, "history", type=int, nargs="+", required=True, help="the user's item ids, oldest first")
    add_option(parser, "top_k", type=int, default=10, help="how many items to recommend after each interaction")
    add_option(parser, "exclude_seen", action="store_true", help="never recommend an item already read")
    add_option(
        parser,
        "compile",
        action="store_true",
        help="compile the one-item step with torch.compile (`model.compile_step()`)",
    )
    args = parser.parse_args()

    if args.model_name_or_path:
        model = TTT4RecForNextItemPrediction.from_pretrained(args.model_name_or_path)
    else:
        torch.manual_seed(0)
        model = TTT4RecForNextItemPrediction(TTT4RecConfig(num_items=args.num_items))
    model.eval()
    if args.compile:
        model.compile_step()

    cache = model.init_cache(batch_size=1)
    seen: list[int] = []
    for step, item in enumerate(args.history, start=1):
        seen.append(item)
        start = time.perf_counter()
        try:
            out = model.recommend(
                torch.tensor([[item]]),
                cache_params=cache,
                top_k=args.top_k,
                exclude_items=torch.tensor([seen]) if args.exclude_seen else None,
            )
        except ValueError as error:
            parser.error(f"history item {step} ({item}): {error}")
        elapsed_ms = 1000 * (time.perf_counter() - start)
        cache = out.cache_params
        note = "  (includes compiling the step)" if args.compile and step == 1 else ""
        print(
            f"after item {step:>4} ({item:>6}): top-{args.top_k} {out.item_ids[0].tolist()}  "
            f"[{elapsed_ms:.2f} ms]{note}"
        )


if __name__ == "__main__":
    main()
