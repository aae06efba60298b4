"""The HTTP API (FastAPI): events in, recommendations out, original item ids both ways (docs/serving.md)."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from dataset_builders.item_ids import ItemIdMap, UnknownItemError

from .engine import Engine, RequestError
from .metrics import Metrics
from .state import StateCodec, checkpoint_fingerprint
from .store import StoreUnavailable, open_store

logger = logging.getLogger(__name__)

MAX_ID_LENGTH = 256
MAX_K = 1000


class EventBody(BaseModel):
    """`POST /v1/users/{user_id}/events`: the items read, oldest first, and an optional idempotency key."""

    model_config = ConfigDict(extra="forbid")
    items: list[str | int] = Field(min_length=1)
    event_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)


def build_engine(
    model_path: str,
    store_url: str,
    *,
    state_dtype: str = "float32",
    max_batch: int = 64,
    max_wait_ms: float = 2.0,
    lru_size: int = 100_000,
) -> Engine:
    """Load a checkpoint (folder or Hub id, with its `item_map.parquet`) and open and bind the store."""
    from dataset_builders.resolve import resolve_folder

    from ..training.evaluation import load_checkpoint

    folder = resolve_folder(
        model_path,
        "model",
        what="checkpoint",
        marker="config.json",
        allow_patterns=["*.json", "*.safetensors", "*.parquet"],
    )
    model = load_checkpoint(str(folder))
    item_map = ItemIdMap.from_file(Path(folder))
    if item_map.num_items != model.config.num_items:
        raise ValueError(
            f"The item map of {model_path} has {item_map.num_items} ids but the model has num_items="
            f"{model.config.num_items}: the checkpoint is inconsistent."
        )
    fingerprint = checkpoint_fingerprint(folder, item_map.fingerprint())
    store = open_store(store_url)
    store.bind(fingerprint)
    codec = StateCodec(model, fingerprint, state_dtype)
    return Engine(model, item_map, store, codec, max_batch, max_wait_ms, lru_size, Metrics())


def create_app(engine: Engine, max_items: int = 256, max_body_bytes: int = 65536) -> FastAPI:
    """The FastAPI application around `engine`; `max_items` items per event and `max_body_bytes` per request."""
    metrics = engine.metrics
    max_k = min(MAX_K, engine.num_items - 1)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        yield
        await engine.stop()

    app = FastAPI(title="TTT4Rec recommendation server", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            response = error(413, f"The request body is larger than {max_body_bytes} bytes.")
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        name = route.path if route is not None else "unmatched"
        metrics.requests.labels(name, str(response.status_code)).inc()
        metrics.request_seconds.labels(name).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error(400, "The request body is not valid JSON.")
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors)
        return error(422, f"Invalid request: {problems}.")

    @app.exception_handler(StoreUnavailable)
    async def unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        logger.error("%s", exc)
        return error(503, f"The state store is unavailable; nothing was applied, retry later. ({exc})")

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return error(exc.status, str(exc))

    def check_request(user_id: str, k: int) -> None:
        if not 0 < len(user_id) <= MAX_ID_LENGTH:
            raise RequestError(422, f"A user id has 1 to {MAX_ID_LENGTH} characters; got {len(user_id)}.")
        if not 1 <= k <= max_k:
            raise RequestError(422, f"`k` must be in [1, {max_k}], got {k}.")

    @app.post("/v1/users/{user_id}/events")
    async def post_event(user_id: str, body: EventBody, k: int = 10, exclude_seen: bool = False) -> dict:
        """Apply `items` to the user's state, in order; answers the new top-k once the state is committed."""
        check_request(user_id, k)
        if len(body.items) > max_items:
            raise RequestError(413, f"An event has at most {max_items} items; got {len(body.items)}.")
        try:
            items = engine.item_map.to_dense(body.items)
        except UnknownItemError as err:
            raise RequestError(422, str(err)) from err
        return await engine.submit(
            "event", user_id, items=items, event_id=body.event_id, k=k, exclude_seen=exclude_seen
        )

    @app.get("/v1/users/{user_id}/recommendations")
    async def get_recommendations(user_id: str, k: int = 10, exclude_seen: bool = False) -> dict:
        """The user's top-k from the stored state (the initial state's for a user never seen)."""
        check_request(user_id, k)
        return await engine.submit("read", user_id, k=k, exclude_seen=exclude_seen)

    @app.delete("/v1/users/{user_id}")
    async def delete_user(user_id: str) -> dict:
        """Forget the user: state and applied event ids."""
        check_request(user_id, 1)
        return await engine.submit("delete", user_id)

    @app.get("/healthz")
    async def healthz() -> dict:
        engine.store.ping()
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
