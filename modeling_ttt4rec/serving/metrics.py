"""The server's Prometheus metrics (`GET /metrics`), in a registry of their own."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# latency buckets from 0.5 ms to 2.5 s
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Requests, latencies, micro-batch sizes, store latencies, the states held in memory, and the process's own
    (`process_cpu_seconds_total`, memory: what scripts/load_test.py reads to report CPU time per event)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "ttt4rec_requests", "HTTP requests by route and status.", ["route", "status"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "ttt4rec_request_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "ttt4rec_batch_size",
            "Operations per micro-batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "ttt4rec_batch_seconds", "Time to process one micro-batch.", buckets=_SECONDS, registry=self.registry
        )
        self.step_seconds = Histogram(
            "ttt4rec_step_seconds",
            "Time of the batched model step of one micro-batch.",
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.store_seconds = Histogram(
            "ttt4rec_store_seconds",
            "Store latency by operation (read, commit).",
            ["op"],
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.states_in_memory = Gauge(
            "ttt4rec_states_in_memory", "User states held in the in-memory LRU.", registry=self.registry
        )
