"""Speed of the TTT4Rec model on this machine: training-shaped batches and cached (incremental) serving steps.

    python scripts/benchmark_model.py                 # everything, prints Markdown tables
    python scripts/benchmark_model.py --only training
    python scripts/benchmark_model.py --only serving --repeats 20
    python scripts/benchmark_model.py --only breakdown --compiled_recompute

Every number is the median of `--repeats` timed runs after one warm-up run, measured side by side in one process.
"""

import argparse
import copy
import platform
import statistics
import time

import torch

from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction


def median_seconds(fn, repeats: int, setup=None) -> float:
    """Median of `repeats` timed calls `fn(setup())` after one warm-up; `setup` (untimed) makes each call's input."""
    setup = setup or (lambda: None)
    fn(setup())
    times = []
    for _ in range(repeats):
        argument = setup()
        start = time.perf_counter()
        fn(argument)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark_training(model: TTT4RecForNextItemPrediction, batch: int, length: int, repeats: int) -> str:
    generator = torch.Generator().manual_seed(0)
    num_items = model.config.num_items
    ids = torch.randint(1, num_items, (batch, length), generator=generator)
    labels = torch.randint(1, num_items, (batch,), generator=generator)
    model.train()

    def forward(_=None):
        with torch.no_grad():
            model(ids, labels=labels, use_cache=False)

    def forward_backward(_=None):
        model.zero_grad(set_to_none=True)
        model(ids, labels=labels, use_cache=False).loss.backward()

    rows = ["| pass | median (s) | items/s |", "|---|---:|---:|"]
    for name, fn in (("forward (no grad)", forward), ("forward + backward", forward_backward)):
        seconds = median_seconds(fn, repeats)
        rows.append(f"| {name} | {seconds:.3f} | {batch * length / seconds:,.0f} |")
    model.eval()
    return "\n".join(rows)


def time_serving_step(
    models: dict[str, TTT4RecForNextItemPrediction], batch: int, length: int, repeats: int, top_k: int, generator
) -> dict[str, float]:
    """Median seconds of one cached step (one new item per row + top-k) of each of `models` after `length` to
    `length + b - 1` items (every position inside the inner mini-batch of size `b`, in turn), and of recomputing
    the whole history (`"full"`, with the first model)."""
    first = next(iter(models.values()))
    num_items, b = first.config.num_items, first.config.mini_batch_size
    history = torch.randint(1, num_items, (batch, length + b - 1), generator=generator)
    new_item = torch.randint(1, num_items, (batch, 1), generator=generator)
    with torch.inference_mode():
        # the states after length, length + 1, ..., length + b - 1 items
        states = [first(history[:, :length], use_cache=True).cache_params]
        for j in range(length, length + b - 1):
            states.append(first(history[:, j : j + 1], cache_params=states[-1].select(range(batch))).cache_params)
        # the models take turns within each repeat, so a burst of load from elsewhere hits them alike; each step
        # reads its own copy of one of the states (made before the clock starts)
        times = {name: [] for name in models}
        for repeat in range(repeats + 1):
            for name, model in models.items():
                state = states[repeat % b].select(range(batch))
                start = time.perf_counter()
                model.recommend(new_item, cache_params=state, top_k=top_k)
                if repeat > 0:  # the first round warms up (and compiles)
                    times[name].append(time.perf_counter() - start)
        seconds = {name: statistics.median(values) for name, values in times.items()}
        full_history = torch.cat([history[:, :length], new_item], dim=1)
        seconds["full"] = median_seconds(lambda _: first.recommend(full_history, top_k=top_k), max(3, repeats // 4))
    return seconds


def benchmark_serving(model: TTT4RecForNextItemPrediction, batches, lengths, repeats: int, top_k: int = 10) -> str:
    """The cached step of the eager model and of a copy with `compile_step()`, next to recomputing the history."""
    generator = torch.Generator().manual_seed(1)
    model.eval()
    compiled = copy.deepcopy(model)
    compiled.compile_step()
    rows = [
        "| batch | history | cached step (ms) | compiled cached step (ms) | full recompute (ms) | speed-up | "
        "speed-up compiled |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch in batches:
        for length in lengths:
            t = time_serving_step({"eager": model, "compiled": compiled}, batch, length, repeats, top_k, generator)
            rows.append(
                f"| {batch} | {length} | {1000 * t['eager']:.2f} | {1000 * t['compiled']:.2f} | "
                f"{1000 * t['full']:.1f} | {t['full'] / t['eager']:.1f}x | {t['full'] / t['compiled']:.1f}x |"
            )
    return "\n".join(rows)


def serving_breakdown(
    model: TTT4RecForNextItemPrediction, length: int, repeats: int, compiled_recompute: bool, top_k: int = 10
) -> str:
    """Where one batch-1 step goes: the encoder (eager, compiled), scoring all items, the top-k; and, with
    `compiled_recompute`, the recompute of the whole history compiled for exactly this length."""
    generator = torch.Generator().manual_seed(2)
    num_items, b = model.config.num_items, model.config.mini_batch_size
    history = torch.randint(1, num_items, (1, length + b), generator=generator)
    new_item = history[:, length + b - 1 :]
    full_history = torch.cat([history[:, :length], new_item], dim=1)
    model.eval()
    compiled = copy.deepcopy(model)
    compiled.compile_step()
    with torch.inference_mode():
        # the states after length .. length + b - 1 items: every position inside the inner mini-batch
        states = [model(history[:, : length + j], use_cache=True).cache_params for j in range(b)]
        turn = iter(range(10**9))

        def state():
            return states[next(turn) % b].select([0])

        hidden = states[0].last_hidden_state
        scores = model.score_items(hidden)
        pieces = {
            "encoder, eager (`model.model(item, cache_params=...)`)": median_seconds(
                lambda s: model.model(new_item, cache_params=s, use_cache=True), repeats, setup=state
            ),
            "encoder, compiled": median_seconds(
                lambda s: compiled.model(new_item, cache_params=s, use_cache=True), repeats, setup=state
            ),
            "encoder, compiled, then scoring all items": median_seconds(
                lambda s: compiled.score_items(compiled.model(new_item, cache_params=s).last_hidden_state[:, -1]),
                repeats,
                setup=state,
            ),
            "scoring all items alone (matrix already in cache)": median_seconds(
                lambda _: model.score_items(hidden), repeats
            ),
            f"top-{top_k} of the scores": median_seconds(lambda _: scores.topk(top_k, dim=1), repeats),
            "full recompute, eager (`recommend(history)`)": median_seconds(
                lambda _: model.recommend(full_history, top_k=top_k), max(3, repeats // 4)
            ),
        }
        if compiled_recompute:
            encode = torch.compile(type(model.model)._encode, fullgraph=True, dynamic=False)

            def recompute(_=None):
                hidden_states, _ = encode(model.model, full_history, None, None, False)
                return model.score_items(hidden_states[:, -1]).topk(top_k, dim=1)

            start = time.perf_counter()
            recompute()
            seconds = time.perf_counter() - start
            print(f"(compiling the recompute for length {full_history.shape[1]} took {seconds:.0f} s)\n")
            pieces["full recompute, compiled for this length"] = median_seconds(recompute, max(3, repeats // 4))
    rows = ["| piece | median (ms) |", "|---|---:|"]
    rows += [f"| {name} | {1000 * seconds:.3f} |" for name, seconds in pieces.items()]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["training", "serving", "breakdown"])
    parser.add_argument("--num_items", type=int, default=10673, help="items incl. padding (10,672 items + 1)")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--serving_repeats", type=int, default=96)
    parser.add_argument("--serving_batches", type=int, nargs="+", default=[1, 256], help="users per serving step")
    parser.add_argument(
        "--serving_lengths", type=int, nargs="+", default=[10, 50, 200, 1000], help="history lengths to serve after"
    )
    parser.add_argument("--breakdown_length", type=int, default=200, help="history length of the breakdown")
    parser.add_argument(
        "--serving_threads", type=int, default=1, help="torch threads for the serving table (one per worker)"
    )
    parser.add_argument(
        "--compiled_recompute",
        action="store_true",
        help="in the breakdown, also time a recompute compiled for one history length (compiles for minutes)",
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    model = TTT4RecForNextItemPrediction(TTT4RecConfig(num_items=args.num_items))
    print(
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; default TTT4Rec (transformer, TTT-MLP, mini-batch 8), "
        f"{args.num_items - 1:,} items.\n"
    )
    if args.only in (None, "training"):
        print(f"Training-shaped batch: {args.batch} x {args.length}, full softmax over all items\n")
        print(benchmark_training(model, args.batch, args.length, args.repeats), "\n")
    if args.only in (None, "serving"):
        torch.set_num_threads(args.serving_threads)
        print(
            f"Serving ({args.serving_threads} thread(s)): one new item per row plus top-10, cached step vs "
            "recomputing the whole history\n"
        )
        print(benchmark_serving(model, args.serving_batches, args.serving_lengths, args.serving_repeats), "\n")
    if args.only in (None, "breakdown"):
        torch.set_num_threads(args.serving_threads)
        length = args.breakdown_length
        print(f"One batch-1 step after {length} items, piece by piece ({args.serving_threads} thread(s))\n")
        print(serving_breakdown(model, length, args.serving_repeats, args.compiled_recompute))


if __name__ == "__main__":
    main()
