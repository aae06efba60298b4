"""The serving engine: applies users' events to their states in micro-batches, in order, durably.

One worker takes the queued operations in arrival order and forms a micro-batch of up to `max_batch` of them
(waiting at most `max_wait_ms` for more), **one per user**: a user's later operation waits for the next batch, so each
user's events are applied one at a time in arrival order (the worker is the per-user lock). A batch is:

1. load the states of its users (the in-memory LRU, else the store) and the `event_id`s already applied;
2. advance every user with new items in one batched cached step of the model. A state held in memory carries its
   whole cache row, so only the new items are read; one read from the store replays its pending items first (see
   `state.py`). (Two steps for the mamba backbone when some users finish a mini-batch: the boundary's convolution
   windows must be kept.)
3. commit all new states (summaries, and the boundaries that changed) and event ids in one atomic write (a group
   commit), and only then update the LRU and answer. If the commit fails, nothing of the batch is applied and its
   requests get `StoreUnavailable`.

Steps 1-2 run in one thread and step 3 in another, as a pipeline: batch N+1's model step runs while batch N is
committed (the sync of a commit waits on the disk, not the interpreter). Batch N+1 holds none of batch N's users
(their operations wait for N's commit), so a user's state is always read after its previous commit, and a failed
commit can have nothing built on it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from .lru import StateLRU
from .metrics import Metrics
from .state import StateCodec, StateError, UserState
from .store import Commit, StoreUnavailable

# The engine's defaults (`scripts/serve.py` options). A 2 ms wait for more operations makes larger micro-batches at
# high load, less CPU per event (docs/serving.md, "Load": no wait was measured too).
MAX_BATCH = 64
MAX_WAIT_MS = 2.0
LRU_SIZE = 100_000


class RequestError(ValueError):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Operation:
    """One queued request: `kind` is "event" (apply `items`), "read" (recommend) or "delete"."""

    kind: str
    user_id: str
    future: asyncio.Future
    items: list[int] = field(default_factory=list)
    event_id: str | None = None
    k: int = 10
    exclude_seen: bool = False


class Engine:
    """Users' states for one model and checkpoint.

    Args:
        model: a `TTT4RecForNextItemPrediction` in eval mode.
        item_map: the checkpoint's `ItemIdMap` (original ids in and out).
        store: a `SQLiteStore` or `RedisStore`, already bound to the checkpoint.
        codec: the `StateCodec` of the model and checkpoint.
        max_batch: most operations in one micro-batch.
        max_wait_ms: longest wait for more operations once one is queued.
        lru_size: most user states kept in memory (0: always read the store).
        metrics: where to record batch sizes, store latencies and the states held.
    """

    def __init__(
        self,
        model,
        item_map,
        store,
        codec: StateCodec,
        max_batch: int = MAX_BATCH,
        max_wait_ms: float = MAX_WAIT_MS,
        lru_size: int = LRU_SIZE,
        metrics: Metrics | None = None,
    ):
        self.model = model
        self.item_map = item_map
        self.store = store
        self.codec = codec
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.metrics = metrics or Metrics()
        self.lru = StateLRU(codec, lru_size)
        self.num_items = model.config.num_items
        self.item_features = model.item_features().detach() if model.config.item_scoring == "target_mlp" else None
        self._queue: asyncio.Queue[Operation | None] | None = None
        self._deferred: collections.deque[Operation] = collections.deque()
        self._worker: asyncio.Task | None = None
        self._committing: asyncio.Task | None = None  # the batch being committed
        self._committing_users: set[str] = set()
        self._step_thread: ThreadPoolExecutor | None = None
        self._commit_thread: ThreadPoolExecutor | None = None

    # --------------------------------------------------------------------------------------------------------------
    # The asynchronous interface (called by the HTTP handlers)
    # --------------------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker in the running event loop (the queue belongs to that loop)."""
        self._queue = asyncio.Queue()
        self._deferred.clear()
        self._committing_users = set()
        self._step_thread = ThreadPoolExecutor(1, thread_name_prefix="ttt4rec-step")
        self._commit_thread = ThreadPoolExecutor(1, thread_name_prefix="ttt4rec-commit")
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop forming batches; the batch being committed is still committed and answered."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self._committing is not None:
            await asyncio.gather(self._committing, return_exceptions=True)
            self._committing = None
        for pool in (self._step_thread, self._commit_thread):
            if pool is not None:
                pool.shutdown()

    async def submit(self, kind: str, user_id: str, **kwargs) -> dict:
        """Queue one operation and wait for its answer (or its error)."""
        if self._worker is None or self._worker.done():
            raise RuntimeError("The engine is not running: `await engine.start()` first (the app does it).")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(Operation(kind, user_id, future, **kwargs))
        return await future

    async def _run(self) -> None:
        """Two stages in a pipeline: the model step of batch N+1 runs while batch N is committed (the commit waits on
        the disk or the network, not on the interpreter). Batches commit in order, and a batch never holds a user of
        the batch being committed, so each user's states still follow one another, whatever a commit's fate."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            started = time.perf_counter()
            try:
                outcomes, commit, fresh = await loop.run_in_executor(self._step_thread, self.prepare, batch)
            except Exception as error:  # a bug must fail the batch's requests, never stop the server
                outcomes, commit, fresh = [error] * len(batch), Commit(), {}
            if self._committing is not None:
                await self._committing
            self._committing_users = {op.user_id for op in batch}
            self._committing = asyncio.create_task(self._finish(batch, outcomes, commit, fresh, started))

    async def _finish(
        self, batch: list[Operation], outcomes: list, commit: Commit, fresh: dict[str, UserState], started: float
    ) -> None:
        """Commit a prepared batch, then (only then) answer its requests and let its users into a new batch."""
        try:
            failed = await asyncio.get_running_loop().run_in_executor(self._commit_thread, self.commit, commit, fresh)
        except Exception as error:  # (a bug, as above)
            failed = error
        if failed is not None:
            outcomes = [failed] * len(batch)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        for op, outcome in zip(batch, outcomes, strict=True):
            if op.future.done():  # (the client went away)
                continue
            if isinstance(outcome, Exception):
                op.future.set_exception(outcome)
            else:
                op.future.set_result(outcome)
        self._committing_users = set()
        self._queue.put_nowait(None)  # wakes `_next_batch` for the operations of these users it holds back

    async def _next_batch(self) -> list[Operation]:
        """Up to `max_batch` operations of distinct users, oldest first; a user's later operations, and those of the
        users of the batch being committed, stay queued (a `None` in the queue is a wake-up: look at them again)."""
        batch: list[Operation] = []
        users: set[str] = set()

        def take(op: Operation | None) -> None:
            if op is None:
                return
            if op.user_id in users or op.user_id in self._committing_users or len(batch) >= self.max_batch:
                self._deferred.append(op)
            else:
                users.add(op.user_id)
                batch.append(op)

        while not batch:
            deferred, self._deferred = self._deferred, collections.deque()
            for op in deferred:
                take(op)
            if not batch:
                take(await self._queue.get())
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                op = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    op = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            take(op)
        return batch

    # --------------------------------------------------------------------------------------------------------------
    # One micro-batch (runs in the engine's two worker threads)
    # --------------------------------------------------------------------------------------------------------------

    def prepare(self, batch: list[Operation]) -> tuple[list[dict | Exception], Commit, dict[str, UserState]]:
        """The step of one micro-batch of operations of distinct users: each one's answer or error, the commit
        that must succeed before any answer is given, and the new states (for the LRU once committed)."""
        self.metrics.batch_size.observe(len(batch))
        outcomes: list[dict | Exception | None] = [None] * len(batch)
        commit = Commit()
        fresh: dict[str, UserState] = {}
        try:
            states = self._load([op.user_id for op in batch])
            events = [(op.user_id, op.event_id) for op in batch if op.kind == "event" and op.event_id is not None]
            with self.metrics.store_seconds.labels("read").time():
                applied = self.store.applied(events)
        except StoreUnavailable as error:
            return [error] * len(batch), commit, fresh

        answer: list[int] = []  # operations answered with recommendations
        advance: list[int] = []  # events to apply
        for i, op in enumerate(batch):
            state = states[op.user_id]
            if op.kind == "delete":  # (also the way out of a state this server cannot use)
                commit.deletes.append(op.user_id)
                outcomes[i] = {"user_id": op.user_id, "deleted": True}
            elif isinstance(state, StateError):
                outcomes[i] = RequestError(409, str(state))
            elif op.kind == "event" and (op.user_id, op.event_id) not in applied:
                advance.append(i)
                answer.append(i)
                if op.event_id is not None:
                    commit.events.append((op.user_id, op.event_id))
            else:  # a read, or an event already applied (a retry): answer from the state as it is
                answer.append(i)

        new_states = self.advance([states[batch[i].user_id] for i in advance], [batch[i].items for i in advance])
        for i, state in zip(advance, new_states, strict=True):
            user_id = batch[i].user_id
            commit.states[user_id] = self.codec.encode(state)
            if self.codec.crossed_boundary(states[user_id], state):  # (the boundary is written only when it changes)
                commit.boundaries[user_id] = self.codec.encode_boundary(state)
            states[user_id] = fresh[user_id] = state
        ranked = self._top_k([states[batch[i].user_id] for i in answer], [batch[i] for i in answer])
        for i, result in zip(answer, ranked, strict=True):
            result["applied"] = i in advance if batch[i].kind == "event" else None
            outcomes[i] = result
        return outcomes, commit, fresh

    def commit(self, commit: Commit, fresh: dict[str, UserState]) -> StoreUnavailable | None:
        """Write `commit` atomically, then put the `fresh` states it stores in the LRU; the store's error if it
        failed (nothing applied)."""
        if commit.states or commit.deletes:
            try:
                with self.metrics.store_seconds.labels("commit").time():
                    self.store.commit(commit)
            except StoreUnavailable as error:
                return error
        for user_id in commit.deletes:
            self.lru.pop(user_id)
        for user_id, state in fresh.items():
            self.lru.put(user_id, state)
        self.metrics.states_in_memory.set(len(self.lru))
        return None

    def _load(self, user_ids: list[str]) -> dict[str, UserState | StateError]:
        """Each user's state: from the LRU, else the store, else a new user's."""
        states: dict[str, UserState | StateError] = {}
        for u in user_ids:
            state = self.lru.get(u)
            if state is not None:
                states[u] = state
        missing = [u for u in user_ids if u not in states]
        if missing:
            with self.metrics.store_seconds.labels("read").time():
                stored = self.store.get(missing)
            for u in missing:
                try:
                    states[u] = self.codec.decode(*stored[u], user_id=u) if u in stored else self.codec.new_user()
                except StateError as error:
                    states[u] = error
            for u in stored:
                if isinstance(states[u], UserState):
                    self.lru.put(u, states[u])
            self.metrics.states_in_memory.set(len(self.lru))
        return states

    @torch.no_grad()
    def advance(self, states: list[UserState], new_items: list[list[int]]) -> list[UserState]:
        """The states after reading `new_items`, in one batched step.

        A state with its live row (computed by the previous step, kept in memory) reads only its new items; one
        decoded from its stored bytes starts at its last mini-batch boundary and reads its pending items again
        first. With the mamba backbone, rows that reach a new boundary read up to it first (phase A, whose
        convolution windows are kept as the new boundary), then the rest (phase B).
        """
        if not states:
            return []
        b = self.codec.mini_batch_size
        cache = self.codec.cache_of(states)
        reads = [items if s.row is not None else s.pending + items for s, items in zip(states, new_items, strict=True)]
        with self.metrics.step_seconds.time():
            if self.codec.boundary_in_row:
                self._read(cache, reads)
                boundaries = {}
            else:
                # items up to the last boundary: the boundary count after the step minus where the row starts
                to_boundary = [
                    max(0, (s.seen + len(items)) // b * b - (s.seen - len(read) + len(items)))
                    for s, items, read in zip(states, new_items, reads, strict=True)
                ]
                self._read(cache, [r[:n] for r, n in zip(reads, to_boundary, strict=True)])
                crossed = [i for i, n in enumerate(to_boundary) if n > 0]
                boundaries = dict(zip(crossed, self.codec.boundaries(cache, crossed), strict=True)) if crossed else {}
                self._read(cache, [r[n:] for r, n in zip(reads, to_boundary, strict=True)])
        rows = self.codec.live_rows(cache)
        out = []
        for i, (state, items, row) in enumerate(zip(states, new_items, rows, strict=True)):
            seen = state.seen + len(items)
            unbounded = state.pending + items  # (every item since the boundary before this step)
            if self.codec.boundary_in_row:
                boundary = row[: self.codec.boundary_numel] if seen >= b else None
            else:
                boundary = boundaries.get(i, state.boundary)
            history = state.history + [item for item in dict.fromkeys(items) if item not in state.history_set]
            out.append(
                UserState(
                    seen=seen,
                    pending=unbounded[len(unbounded) - seen % b :],
                    history=history,
                    boundary=boundary,
                    last_hidden=row[-self.codec.hidden_size :],
                    row=row,
                )
            )
        return out

    def _read(self, cache, rows: list[list[int]]) -> None:
        """Advance `cache` by each row's items (rows may be empty; nothing happens if all are)."""
        width = max(map(len, rows))
        if width == 0:
            return
        pad = self.model.config.pad_token_id or 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        # (ids come from the item map, hence in range: skip the checks that read values)
        self.model(
            input_ids, attention_mask, cache_params=cache, use_cache=True, return_logits=False, check_inputs=False
        )

    @torch.no_grad()
    def _top_k(self, states: list[UserState], ops: list[Operation]) -> list[dict]:
        """Each operation's top-k from its user's final hidden state, scored as `model.recommend` scores."""
        if not states:
            return []
        hidden = torch.stack([s.last_hidden for s in states]).to(self.model.dtype)
        scores = self.model.score_items(hidden, self.item_features)
        for row, (state, op) in enumerate(zip(states, ops, strict=True)):
            if op.exclude_seen and state.history:
                scores[row, state.history] = torch.finfo(scores.dtype).min
        values, indices = scores.topk(max(op.k for op in ops), dim=1)
        floor = torch.finfo(scores.dtype).min
        results = []
        for row, (state, op) in enumerate(zip(states, ops, strict=True)):
            ranked = zip(indices[row, : op.k].tolist(), values[row, : op.k].tolist(), strict=True)
            keep = [(i, v) for i, v in ranked if v > floor]  # (fewer than k when exclude_seen leaves fewer)
            originals = self.item_map.to_original([i for i, _ in keep])
            results.append(
                {
                    "user_id": op.user_id,
                    "items_read": state.seen,
                    "recommendations": [
                        {"item_id": item, "score": score} for item, (_, score) in zip(originals, keep, strict=True)
                    ],
                }
            )
        return results
