"""The HTTP API (FastAPI): events in, recommendations out, original item ids both ways (docs/serving.md)."""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import time
from pathlib import Path
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dataset_builders.item_ids import ItemIdMap, UnknownItemError

from .engine import LRU_SIZE, MAX_BATCH, MAX_WAIT_MS, Engine, RequestError
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


class EventQuery(BaseModel):
    """The query of `POST /v1/users/{user_id}/events` (other query parameters are ignored, as FastAPI does)."""

    k: int = 10
    exclude_seen: bool = False


EVENTS_ROUTE = "/v1/users/{user_id}/events"
_EVENTS_PATH = re.compile(r"/v1/users/([^/]+)/events")


class EventsRoute:
    """ASGI: `POST /v1/users/{user_id}/events`, nearly every request of a busy server, answered without the
    framework's router, request object and exception middleware (together they cost more CPU than the model step at
    a thousand events a second); every other request goes on to `app`. The same pydantic models check the request,
    and the answers and errors are those of the other routes (`error_response`)."""

    path = EVENTS_ROUTE  # (the metrics' route label, as FastAPI's routes have)

    def __init__(self, app, handle, max_body_bytes: int):
        self.app = app
        self.handle = handle  # async (user_id, query_string, body) -> the answer
        self.max_body_bytes = max_body_bytes  # (also for a body sent in chunks, without a content-length)

    async def __call__(self, scope, receive, send) -> None:
        match = scope["type"] == "http" and scope["method"] == "POST" and _EVENTS_PATH.fullmatch(scope["path"])
        if not match:
            await self.app(scope, receive, send)
            return
        scope["route"] = self
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await body_too_large(self.max_body_bytes)(scope, receive, send)
                return
        try:
            response = JSONResponse(await self.handle(match.group(1), scope["query_string"], body))
        except Exception as exc:  # (the server never dies on a request: an unexpected error is a 500)
            response = error_response(exc)
        await response(scope, receive, send)


def validated(model: type[BaseModel], where: str, value: dict | bytes) -> BaseModel:
    """`value` (a dict, or JSON bytes) as `model`, or the `RequestValidationError` FastAPI would raise for it."""
    try:
        return model.model_validate_json(value) if isinstance(value, bytes) else model.model_validate(value)
    except ValidationError as exc:
        raise RequestValidationError(
            [error | {"loc": (where, *error["loc"])} for error in exc.errors(include_url=False)]
        ) from exc


def error(status: int, message: str) -> JSONResponse:
    """The answer to a refused request: `{"error": message}`."""
    return JSONResponse({"error": message}, status_code=status)


def body_too_large(max_body_bytes: int) -> JSONResponse:
    """The answer to a request body over `max_body_bytes` (413)."""
    return error(413, f"The request body is larger than {max_body_bytes} bytes.")


def error_response(exc: Exception) -> JSONResponse:
    """The answer to a request that raised `exc`: 400 (not JSON), 422 (invalid), the status of a `RequestError`,
    503 (the store is unavailable: nothing applied) or 500 (a bug, logged)."""
    if isinstance(exc, RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error(400, "The request body is not valid JSON.")
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors)
        return error(422, f"Invalid request: {problems}.")
    if isinstance(exc, RequestError):
        return error(exc.status, str(exc))
    if isinstance(exc, StoreUnavailable):
        logger.error("%s", exc)
        return error(503, f"The state store is unavailable; nothing was applied, retry later. ({exc})")
    logger.error("A request failed", exc_info=exc)
    return error(500, f"Internal server error ({type(exc).__name__}); see the server's log.")


class MeasureAndLimit:
    """ASGI middleware: refuses a body over `max_body_bytes` (413) and counts and times every request by route.

    A plain ASGI class rather than `@app.middleware("http")`, whose per-request task group and streams cost more than
    the rest of the request's handling at a thousand requests a second."""

    def __init__(self, app, metrics: Metrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # (if the application fails before answering)

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await body_too_large(self.max_body_bytes)(scope, receive, send)
            status = 413
        else:
            await self.app(scope, receive, send_and_note)
        route = scope.get("route")  # (set on the shared scope by `EventsRoute` or the router when a route matched)
        name = route.path if route is not None else "unmatched"
        self.metrics.requests.labels(name, str(status)).inc()
        self.metrics.request_seconds.labels(name).observe(time.perf_counter() - started)


def build_engine(
    model_path: str,
    store_url: str,
    *,
    state_dtype: str = "float32",
    max_batch: int = MAX_BATCH,
    max_wait_ms: float = MAX_WAIT_MS,
    lru_size: int = LRU_SIZE,
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


def create_app(engine: Engine, max_items: int = 256, max_body_bytes: int = 65536) -> MeasureAndLimit:
    """The ASGI application around `engine` (`MeasureAndLimit` around `EventsRoute` around the FastAPI application
    of the other routes); `max_items` items per event and `max_body_bytes` per request."""
    metrics = engine.metrics
    max_k = min(MAX_K, engine.num_items - 1)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        # The model, the item map and the libraries live as long as the server: out of the garbage collector's full
        # collections, which would otherwise walk their objects every time (the states held are kept out: `lru.py`).
        gc.collect()
        gc.freeze()
        yield
        await engine.stop()

    # FastAPI's native OpenTelemetry looks up the global providers on every request (a sixth of the server's CPU at
    # a thousand events a second); this server reports through its own Prometheus metrics instead.
    app = FastAPI(
        title="TTT4Rec recommendation server",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )

    async def refuse(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    for refusal in (RequestValidationError, StoreUnavailable, RequestError):
        app.add_exception_handler(refusal, refuse)

    def check_request(user_id: str, k: int) -> None:
        if not 0 < len(user_id) <= MAX_ID_LENGTH:
            raise RequestError(422, f"A user id has 1 to {MAX_ID_LENGTH} characters; got {len(user_id)}.")
        if not 1 <= k <= max_k:
            raise RequestError(422, f"`k` must be in [1, {max_k}], got {k}.")

    async def post_event(user_id: str, query_string: bytes, body: bytes) -> dict:
        """`POST /v1/users/{user_id}/events?k=10&exclude_seen=false`: apply `items` to the user's state, in order;
        answers the new top-k once the state is committed (served by `EventsRoute`)."""
        query = validated(EventQuery, "query", dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)))
        event = validated(EventBody, "body", body)
        check_request(user_id, query.k)
        if len(event.items) > max_items:
            raise RequestError(413, f"An event has at most {max_items} items; got {len(event.items)}.")
        try:
            items = engine.item_map.to_dense(event.items)
        except UnknownItemError as err:
            raise RequestError(422, str(err)) from err
        return await engine.submit(
            "event", user_id, items=items, event_id=event.event_id, k=query.k, exclude_seen=query.exclude_seen
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

    return MeasureAndLimit(EventsRoute(app, post_event, max_body_bytes), metrics, max_body_bytes)
