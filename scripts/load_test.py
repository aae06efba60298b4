"""Load a running recommendation server (scripts/serve.py) on loopback: events of N users at a fixed rate, bounded in
time and requests; prints p50/p95/p99 latency and the sustained throughput (docs/serving.md).

python scripts/load_test.py --url http://127.0.0.1:8000 --users 100000 --rate 1000 --duration 30 \
    --item_ids_from path/to/checkpoint --prefill_items 10

Options are snake_case (kebab-case spellings are accepted too).
"""

import argparse
import asyncio
import json
import random
import statistics
import time
from urllib.parse import urlparse

import httpx

from dataset_builders.item_ids import ItemIdMap
from modeling_ttt4rec.training.arguments import add_option


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def send(client, user: str, items: list[str], latencies: list[float], errors: list[str]) -> None:
    started = time.perf_counter()
    try:
        response = await client.post(f"/v1/users/{user}/events", json={"items": items}, params={"k": 10})
        if response.status_code != 200:
            errors.append(f"{response.status_code}: {response.text[:200]}")
            return
    except httpx.HTTPError as error:
        errors.append(repr(error))
        return
    latencies.append(time.perf_counter() - started)


async def phase(url: str, rate: float, duration: float, max_requests: int, concurrency: int, make_event) -> dict:
    """Send `make_event()` at `rate` per second (open loop) until `duration` s or `max_requests`; waits for all."""
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        tasks = []
        started = time.perf_counter()
        n = 0
        while n < max_requests and time.perf_counter() - started < duration:
            due = started + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(client, *make_event(n), latencies, errors)))
            n += 1
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    ms = [1000 * v for v in latencies] or [float("nan")]
    return {
        "requests": n,
        "ok": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": round(elapsed, 2),
        "throughput_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_option(parser, "url", default="http://127.0.0.1:8000", help="the server (loopback only)")
    add_option(parser, "item_ids_from", required=True, help="a checkpoint or data set folder with item_map.parquet")
    add_option(parser, "users", type=int, default=1000, help="how many users")
    add_option(parser, "rate", type=float, default=500, help="events per second to send")
    add_option(parser, "duration", type=float, default=10, help="seconds of load (a bound)")
    add_option(parser, "max_requests", type=int, default=1_000_000, help="most events to send (a bound)")
    add_option(parser, "concurrency", type=int, default=256, help="most requests in flight")
    add_option(parser, "prefill_items", type=int, default=0, help="first give every user one event of this many items")
    add_option(parser, "prefill_rate", type=float, default=2000, help="events per second of the prefill")
    add_option(parser, "seed", type=int, default=0)
    add_option(parser, "output_json", help="also write the results here")
    args = parser.parse_args()
    if urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"--url must be on loopback (127.0.0.1), got {args.url}.")

    items = [i for i in ItemIdMap.from_file(args.item_ids_from).original_ids if i is not None]
    rng = random.Random(args.seed)
    results = {"users": args.users, "rate": args.rate}
    if args.prefill_items:
        results["prefill"] = asyncio.run(
            phase(
                args.url,
                args.prefill_rate,
                float("inf"),
                args.users,
                args.concurrency,
                lambda n: (f"user{n}", rng.choices(items, k=args.prefill_items)),
            )
        )
        print("prefill:", json.dumps(results["prefill"]))
    results["load"] = asyncio.run(
        phase(
            args.url,
            args.rate,
            args.duration,
            args.max_requests,
            args.concurrency,
            lambda n: (f"user{rng.randrange(args.users)}", [rng.choice(items)]),
        )
    )
    print("load:", json.dumps(results["load"]))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
