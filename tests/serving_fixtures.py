"""Helpers of the serving tests: tiny checkpoints with an item map, a real server (uvicorn in a subprocess) and a
real `redis-server`, all on 127.0.0.1, each bounded in time."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dataset_builders.format import ITEM_ID, ITEM_INDEX, ITEM_MAP_FILE
from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction

ROOT = Path(__file__).resolve().parents[1]
SERVE = ROOT / "scripts" / "serve.py"
NUM_ITEMS = 40
VARIANTS = [(b, t) for b in ("transformer", "mamba") for t in ("linear", "mlp")]


def original_id(dense: int) -> str:
    """The original id the test item maps give dense id `dense`."""
    return f"item-{dense}"


def make_checkpoint(
    folder: Path, backbone: str = "transformer", ttt_layer_type: str = "mlp", num_hidden_layers: int = 2, seed=0
) -> Path:
    """A small random checkpoint (mini-batches of 4, so events cross boundaries) with an item map."""
    torch.manual_seed(seed)
    config = TTT4RecConfig(
        num_items=NUM_ITEMS,
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_hidden_layers=num_hidden_layers,
        mini_batch_size=4,
        backbone=backbone,
        ttt_layer_type=ttt_layer_type,
    )
    TTT4RecForNextItemPrediction(config).save_pretrained(folder)
    ids = [None] + [original_id(i) for i in range(1, NUM_ITEMS)]
    pq.write_table(pa.table({ITEM_INDEX: list(range(NUM_ITEMS)), ITEM_ID: ids}), Path(folder) / ITEM_MAP_FILE)
    return Path(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script_env() -> dict[str, str]:
    """The subprocess imports this checkout's packages."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def wait_until(check, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}: {process.stderr.read()}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not come up in {timeout} s.")


class Server:
    """`scripts/serve.py` in a subprocess on 127.0.0.1; `url`, `client` (httpx), `kill()` (SIGKILL)."""

    def __init__(self, model: Path, store: str, *extra: str, timeout: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, str(SERVE), "--model", str(model), "--store", store, "--port", str(self.port)]
        self.process = subprocess.Popen(
            args + list(extra),
            env=script_env(),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)
        try:
            wait_until(lambda: self.client.get("/healthz").status_code == 200, timeout, "The server", self.process)
        except BaseException:
            self.close()
            raise

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def close(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RedisServer:
    """A real `redis-server` on 127.0.0.1 on a free port, in `folder`; skips the test if it cannot start."""

    def __init__(self, folder: Path, durable: bool = False):
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it).")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
        self.args = [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)]
        self.args += persistence
        self.start()

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            wait_until(client.ping, 30, "redis-server", self.process)
        except (RuntimeError, TimeoutError) as error:
            self.stop()
            pytest.skip(f"redis-server could not start: {error}")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
