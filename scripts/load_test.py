"""Load a running recommendation server (scripts/serve.py) on loopback: events of N users at a fixed rate, bounded in
time and requests; prints p50/p95/p99 latency and the sustained throughput (docs/serving.md).

python scripts/load_test.py --url http://127.0.0.1:8000 --users 100000 --rate 1000 --duration 30 \
    --item_ids_from path/to/checkpoint --prefill_items 10

The client is light on purpose (it shares the machine with the server it measures): plain HTTP/1.1 over
`--concurrency` keep-alive connections on one asyncio loop (uvloop when installed), no client library. Events are
due on an open-loop schedule (`--rate` per second) and each latency counts from the moment its event was due, so
time spent waiting for a free connection is part of it (no coordinated omission).

Options are snake_case (kebab-case spellings are accepted too).
"""

import argparse
import asyncio
import json
import random
import statistics
import time
from urllib.parse import urlparse

from dataset_builders.item_ids import ItemIdMap
from modeling_ttt4rec.training.arguments import add_option


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a request and reads its answer (`Content-Length` bodies only)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        length = {k.strip().lower(): v.strip() for k, v in headers.items()}.get("content-length")
        if length is None:
            raise ConnectionError(f"the server answered without a Content-Length: {head[:200]!r}")
        return status, await self.reader.readexactly(int(length))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def server_cpu_seconds(url: str) -> float | None:
    """The server process's CPU seconds so far (`process_cpu_seconds_total` of its /metrics), if it reports them."""
    parsed = urlparse(url)
    connection = Connection(parsed.hostname, parsed.port or 80)
    try:
        _, text = await connection.request("GET", "/metrics")
    finally:
        connection.close()
    for line in text.decode().splitlines():
        if line.startswith("process_cpu_seconds_total "):
            return float(line.split()[1])
    return None


async def phase(url: str, rate: float, duration: float, max_requests: int, concurrency: int, make_event) -> dict:
    """Send `make_event(n)` at `rate` per second (open loop) until `duration` s or `max_requests`; waits for all."""
    parsed = urlparse(url)
    latencies: list[float] = []
    errors: list[str] = []
    due: asyncio.Queue[tuple[float, str, bytes] | None] = asyncio.Queue()

    async def worker() -> None:
        connection = Connection(parsed.hostname, parsed.port or 80)
        while (event := await due.get()) is not None:
            scheduled, path, body = event
            try:
                status, answer = await connection.request("POST", path, body)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as error:
                errors.append(repr(error))
                connection.close()  # (a new one for the next event)
                continue
            if status != 200:
                errors.append(f"{status}: {answer[:200].decode(errors='replace')}")
            else:
                latencies.append(time.perf_counter() - scheduled)
        connection.close()

    server_cpu = await server_cpu_seconds(url)
    client_cpu = time.process_time()
    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    started = time.perf_counter()
    n = 0
    while n < max_requests and time.perf_counter() - started < duration:
        scheduled = started + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        user, items = make_event(n)
        due.put_nowait((scheduled, f"/v1/users/{user}/events?k=10", json.dumps({"items": items}).encode()))
        n += 1
    for _ in workers:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    if server_cpu is not None:
        server_cpu = await server_cpu_seconds(url) - server_cpu
    ms = [1000 * v for v in latencies] or [float("nan")]
    per_event = 1000 / max(1, len(latencies))
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
        # CPU time per answered event: what a sustained rate costs in cores, whatever else shares the machine
        "server_cpu_ms_per_event": None if server_cpu is None else round(server_cpu * per_event, 3),
        "client_cpu_ms_per_event": round(client_cpu * per_event, 3),
    }


def run(coroutine):
    """`asyncio.run` on uvloop when it is installed (less client overhead on a machine shared with the server)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_option(parser, "url", default="http://127.0.0.1:8000", help="the server (loopback only)")
    add_option(parser, "item_ids_from", required=True, help="a checkpoint or data set folder with item_map.parquet")
    add_option(parser, "users", type=int, default=1000, help="how many users")
    add_option(parser, "rate", type=float, default=500, help="events per second to send")
    add_option(parser, "duration", type=float, default=10, help="seconds of load (a bound)")
    add_option(parser, "max_requests", type=int, default=1_000_000, help="most events to send (a bound)")
    add_option(parser, "concurrency", type=int, default=256, help="keep-alive connections (most requests in flight)")
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
        results["prefill"] = run(
            phase(
                args.url,
                args.prefill_rate,
                float("inf"),
                args.users,
                args.concurrency,
                lambda n: (f"user{n}", rng.choices(items, k=args.prefill_items)),
            )
        )
        print("prefill:", json.dumps(results["prefill"]), flush=True)
    results["load"] = run(
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
