"""A recommendation server that keeps every user's test-time-trained state (docs/serving.md).

Not part of the checkpoint's remote code: `scripts/serve.py` runs it. `state` (the compact per-user state), `store`
(SQLite or Redis), `engine` (micro-batched, ordered, durable application of events), `app` (the HTTP API),
`metrics` (Prometheus).
"""
