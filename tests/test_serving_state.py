"""The serving package in one process: the compact state, the stores, micro-batching, ordering, the LRU."""

import asyncio
import gc
import sqlite3
import time

import numpy as np
import pytest
import torch
from serving_fixtures import NUM_ITEMS, VARIANTS, RedisServer, make_checkpoint
from starlette.testclient import TestClient

from modeling_ttt4rec.serving.app import build_engine, create_app
from modeling_ttt4rec.serving.evaluation import serving_ranks
from modeling_ttt4rec.serving.lru import StateLRU
from modeling_ttt4rec.serving.state import StateCodec, StateError, UserState
from modeling_ttt4rec.serving.store import Commit, RedisStore, SQLiteStore, StoreUnavailable, open_store
from modeling_ttt4rec.training.data import SplitSequences
from modeling_ttt4rec.training.evaluation import compute_ranks, load_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), "mamba", "mlp")


def engine_for(checkpoint, tmp_path, **kwargs):
    return build_engine(str(checkpoint), f"sqlite:///{tmp_path / 'states.db'}", **kwargs)


def run(engine, coroutine_factory):
    async def main():
        await engine.start()
        try:
            return await coroutine_factory()
        finally:
            await engine.stop()

    return asyncio.run(main())


def events(engine, batches: list[list[tuple[str, list[int]]]]) -> list[list[dict]]:
    """Each inner list submitted concurrently, the lists one after the other."""

    async def go():
        out = []
        for batch in batches:
            out.append(await asyncio.gather(*(engine.submit("event", u, items=i) for u, i in batch)))
        return out

    return run(engine, go)


def test_compact_state_round_trips_and_is_smaller_than_the_cache(checkpoint, tmp_path):
    engine = engine_for(checkpoint, tmp_path)
    codec = engine.codec
    events(engine, [[("a", [1, 2, 3, 4, 5, 6]), ("b", [7, 8])]])
    stored = engine.store.get(["a", "b"])
    a, b = codec.decode(*stored["a"]), codec.decode(*stored["b"])
    assert (a.seen, a.pending, a.history) == (6, [5, 6], [1, 2, 3, 4, 5, 6])
    assert (b.seen, b.pending, b.boundary) == (2, [7, 8], None)  # no boundary yet: the initial weights are implied
    assert stored["b"][1] is None
    assert (codec.encode(a), codec.encode_boundary(a)) == stored["a"] and (codec.encode(b), None) == stored["b"]
    cache_bytes = sum(t[0].numel() * t.element_size() for t in engine.model.init_cache(1).state_dict().values())
    assert len(stored["a"][0]) + len(stored["a"][1]) < 0.55 * cache_bytes  # (no gradient sums: about half)
    assert len(stored["a"][0]) < 300 and len(stored["b"][0]) < 300  # (the summary, written at every event)
    half = StateCodec(engine.model, "ab" * 32, "bfloat16")
    a_half = half.decode(half.encode(a), half.encode_boundary(a))
    assert len(half.encode_boundary(a)) < 0.55 * len(stored["a"][1])
    torch.testing.assert_close(a_half.boundary, a.boundary, rtol=1e-2, atol=1e-2)


def test_the_boundary_is_written_only_when_the_user_reaches_a_new_one(checkpoint, tmp_path):
    """An event writes the user's small summary; its boundary (nearly all the bytes) only when the user finished a
    mini-batch (4 items here). The state read back is the engine's."""
    engine = engine_for(checkpoint, tmp_path, lru_size=0)
    commits = []
    commit = engine.store.commit
    engine.store.commit = lambda c: commits.append(c) or commit(c)
    events(engine, [[("a", [1, 2])], [("a", [3])], [("a", [4, 5])], [("a", [6])], [("a", [7, 8, 9, 10, 11])]])
    assert [set(c.states) for c in commits] == [{"a"}] * 5
    assert [set(c.boundaries) for c in commits] == [set(), set(), {"a"}, set(), {"a"}]
    summary, boundary = engine.store.get(["a"])["a"]
    assert boundary == commits[-1].boundaries["a"] and summary == commits[-1].states["a"]
    state = engine.codec.decode(summary, boundary)
    assert (state.seen, state.pending) == (11, [9, 10, 11])


def test_a_damaged_or_foreign_state_is_refused(checkpoint, tmp_path):
    engine = engine_for(checkpoint, tmp_path)
    events(engine, [[("a", [1, 2, 3, 4, 5])]])
    summary, boundary = engine.store.get(["a"])["a"]
    decode = engine.codec.decode
    other = StateCodec(engine.model, "cd" * 32)
    with pytest.raises(StateError, match="computed with another checkpoint"):
        other.decode(summary, boundary, "a")
    with pytest.raises(StateError, match="damaged"):
        decode(summary[:-4], boundary, "a")
    with pytest.raises(StateError, match="truncated"):
        decode(summary[:10], boundary, "a")
    with pytest.raises(StateError, match="not a TTT4Rec serving state of this version"):
        decode(b"XXXX" + summary[4:], boundary, "a")
    with pytest.raises(StateError, match="boundary of user 'a' is damaged"):
        decode(summary, boundary[:-4], "a")
    with pytest.raises(StateError, match="its boundary is missing"):
        decode(summary, None, "a")
    with pytest.raises(StateError, match="there but not expected"):
        decode(engine.codec.encode(engine.codec.new_user()), boundary, "a")
    events(engine, [[("a", [6, 7, 8])]])  # a new boundary (8 items): the old one does not go with the new summary
    with pytest.raises(StateError, match="the one after 4 items, its state needs the one after 8"):
        decode(engine.store.get(["a"])["a"][0], boundary, "a")


def test_serving_never_changes_the_model(checkpoint, tmp_path):
    engine = engine_for(checkpoint, tmp_path, lru_size=0)
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    events(engine, [[("a", [1, 2, 3, 4, 5])], [("a", [6, 7, 8, 9])], [("a", [1])]])  # one row, boundaries crossed
    for name, value in engine.model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_events_of_different_users_share_one_batched_step(checkpoint, tmp_path):
    engine = engine_for(checkpoint, tmp_path, max_batch=8, max_wait_ms=500)
    events(engine, [[(f"u{i}", [i + 1]) for i in range(8)]])
    batches = engine.metrics.registry.get_sample_value("ttt4rec_batch_size_count")
    assert batches == 1 and engine.metrics.registry.get_sample_value("ttt4rec_batch_size_sum") == 8


def test_events_of_one_user_are_applied_in_arrival_order(checkpoint, tmp_path):
    engine = engine_for(checkpoint, tmp_path, max_batch=4, max_wait_ms=50)
    (answers,) = events(engine, [[("same", [i]) for i in range(1, 11)] + [("other", [3])]])
    assert [a["items_read"] for a in answers[:10]] == list(range(1, 11))
    assert engine.codec.decode(*engine.store.get(["same"])["same"]).history == list(range(1, 11))


def test_the_next_batch_steps_while_one_commits_and_never_holds_its_users(checkpoint, tmp_path):
    """The pipeline: batch 2's model step runs during batch 1's (slow) commit, without batch 1's user, whose next
    event waits for that commit; nobody is answered before its own batch is committed."""
    engine = engine_for(checkpoint, tmp_path, max_batch=8, max_wait_ms=20)
    timeline: list[tuple[str, set[str]]] = []
    store_commit, prepare = engine.store.commit, engine.prepare

    def slow_commit(commit):
        timeline.append(("commit starts", set(commit.states)))
        time.sleep(0.5)
        store_commit(commit)
        timeline.append(("commit ends", set(commit.states)))

    def noted_prepare(batch):
        timeline.append(("step", {op.user_id for op in batch}))
        return prepare(batch)

    engine.store.commit, engine.prepare = slow_commit, noted_prepare

    async def go():
        first = asyncio.ensure_future(engine.submit("event", "a", items=[1]))
        while ("commit starts", {"a"}) not in timeline:  # batch 1 (a) is committing
            await asyncio.sleep(0.01)
        assert not first.done()  # (not answered before its commit)
        later = [asyncio.ensure_future(engine.submit("event", u, items=[2])) for u in ("a", "b")]
        return [await first, *await asyncio.gather(*later)]

    answers = run(engine, go)
    assert [a["items_read"] for a in answers] == [1, 2, 1]
    assert timeline == [
        ("step", {"a"}),
        ("commit starts", {"a"}),
        ("step", {"b"}),  # during a's commit, without a
        ("commit ends", {"a"}),
        ("commit starts", {"b"}),
        ("step", {"a"}),  # a's second event, after its first is committed
        ("commit ends", {"b"}),
        ("commit starts", {"a"}),
        ("commit ends", {"a"}),
    ]


def test_the_lru_is_bounded(checkpoint, tmp_path):
    engine = engine_for(checkpoint, tmp_path, lru_size=3)
    events(engine, [[(f"u{i}", [1]) for i in range(10)]])
    assert len(engine.lru) == 3 and engine.metrics.registry.get_sample_value("ttt4rec_states_in_memory") == 3


def random_states(codec, n: int, seed: int = 0) -> list[UserState]:
    """`n` states shaped as the engine's: live rows (with and without a boundary) and states read from bytes."""
    g = torch.Generator().manual_seed(seed)
    states = []
    for i in range(n):
        seen = i % 20 + 1
        pending = list(range(seen % codec.mini_batch_size))
        row = torch.randn(codec.row_numel, generator=g)
        boundary = torch.randn(codec.boundary_numel, generator=g) if seen >= codec.mini_batch_size else None
        if i % 3 == 2:  # read from its stored bytes: no live row
            states.append(
                UserState(seen, pending, list(range(seen)), boundary, torch.randn(codec.hidden_size, generator=g))
            )
            continue
        if codec.boundary_in_row and boundary is not None:
            boundary = row[: codec.boundary_numel]
        states.append(UserState(seen, pending, list(range(seen)), boundary, row[-codec.hidden_size :], row))
    return states


def assert_same_state(got: UserState, expected: UserState) -> None:
    assert (got.seen, got.pending, got.history) == (expected.seen, expected.pending, expected.history)
    assert (got.row is None, got.boundary is None) == (expected.row is None, expected.boundary is None)
    torch.testing.assert_close(got.last_hidden, expected.last_hidden, rtol=0, atol=0)
    for a, b in ((got.row, expected.row), (got.boundary, expected.boundary)):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("backbone", ["transformer", "mamba"])
def test_the_lru_returns_each_state_as_it_was_put_and_evicts_the_least_recently_used(backbone, tmp_path):
    codec = engine_for(make_checkpoint(tmp_path / "ckpt", backbone, "linear"), tmp_path).codec
    states = random_states(codec, 9)
    lru = StateLRU(codec, capacity=5)
    for i, state in enumerate(states[:6]):
        lru.put(f"u{i}", state)
    assert len(lru) == 5 and "u0" not in lru and lru.get("u0") is None  # (the oldest went)
    lru.get("u1")  # u1 becomes the most recently used: u2 goes next
    for i, state in enumerate(states[6:], start=6):
        lru.put(f"u{i}", state)  # (in the slots the evicted states left)
    assert all(f"u{i}" in lru for i in (1, 5, 6, 7, 8)) and len(lru) == 5
    for i in (1, 5, 6, 7, 8):
        assert_same_state(lru.get(f"u{i}"), states[i])
    copy = lru.get("u6")
    copy.last_hidden += 1  # a copy: the state held does not change
    copy.pending.append(99)
    assert_same_state(lru.get("u6"), states[6])
    lru.put("u6", states[2])  # a user's new state takes the place of the old
    assert_same_state(lru.get("u6"), states[2])
    lru.pop("u6")
    assert "u6" not in lru and len(lru) == 4


def test_states_in_the_lru_are_not_tracked_by_the_garbage_collector(checkpoint, tmp_path):
    """A full collection visits every tracked object: the states held must add (almost) none, however many."""
    codec = engine_for(checkpoint, tmp_path).codec
    lru = StateLRU(codec, capacity=2000)
    gc.collect()
    before = len(gc.get_objects())
    states = random_states(codec, 2000)
    for i, state in enumerate(states):
        lru.put(f"user-{i}", state)
    del states
    gc.collect()
    gc.collect()  # (a tuple is untracked once the collector has seen that its items are)
    assert len(lru) == 2000
    assert len(gc.get_objects()) - before < 50  # (a `UserState` each would be 2000 objects, with its parts 14,000)


def test_the_server_keeps_its_startup_objects_out_of_full_collections(checkpoint, tmp_path):
    """The model and the libraries live as long as the server: once it has started, a full collection of the garbage
    collector must not walk them (they are frozen; hundreds of thousands of objects, a third of a second a time)."""
    app = create_app(engine_for(checkpoint, tmp_path))
    try:
        with TestClient(app) as client:
            assert client.get("/healthz").status_code == 200
            assert gc.get_freeze_count() > 10_000
            assert len(gc.get_objects(generation=2)) < 1_000
    finally:
        gc.unfreeze()


def test_a_failed_commit_applies_nothing(checkpoint, tmp_path):
    engine = engine_for(checkpoint, tmp_path)
    events(engine, [[("a", [1])]])
    before = engine.store.get(["a"])
    with pytest.raises(StoreUnavailable):  # (the second event row breaks the primary key: the whole commit fails)
        engine.store.commit(
            Commit(states={"a": b"new", "b": b"new"}, boundaries={"b": b"new"}, events=[("a", "e"), ("a", "e")])
        )
    assert engine.store.get(["a", "b"]) == before


def test_an_unreachable_store_fails_the_batch_and_changes_nothing(checkpoint, tmp_path):
    engine = engine_for(checkpoint, tmp_path)
    events(engine, [[("a", [1])]])

    def broken(commit):
        raise StoreUnavailable("no store")

    engine.store.commit = broken
    with pytest.raises(StoreUnavailable):
        events(engine, [[("a", [2])]])
    assert engine.lru.get("a").history == [1]


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_stores_keep_summaries_and_boundaries_apart_and_forget_both(kind, tmp_path):
    """A summary written alone keeps the stored boundary; a deleted user leaves no boundary behind for a new one."""
    if kind == "redis":
        redis_server = RedisServer(tmp_path)
        store = RedisStore(redis_server.url)
    else:
        store = SQLiteStore(tmp_path / "s.db")
    try:
        store.commit(Commit(states={"a": b"s1", "b": b"t1"}, boundaries={"a": b"B1"}))
        store.commit(Commit(states={"a": b"s2"}))
        assert store.get(["a", "b", "c"]) == {"a": (b"s2", b"B1"), "b": (b"t1", None)}
        store.commit(Commit(deletes=["a"]))
        store.commit(Commit(states={"a": b"s3"}))
        assert store.get(["a"]) == {"a": (b"s3", None)}
    finally:
        if kind == "redis":
            redis_server.stop()


def test_sqlite_store_is_durable_and_bound_to_one_checkpoint(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    store.bind("f1")
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store._connect().execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    with pytest.raises(RuntimeError, match="another checkpoint"):
        SQLiteStore(tmp_path / "s.db").bind("f2")


def test_store_urls(tmp_path):
    assert isinstance(open_store(f"sqlite:///{tmp_path / 'a.db'}"), SQLiteStore)
    assert isinstance(open_store(str(tmp_path / "b.db")), SQLiteStore)
    with pytest.raises(ValueError, match="sqlite:///PATH or redis://"):
        open_store("postgres://x")
    normal = open_store(f"sqlite:///{tmp_path / 'c.db'}?synchronous=normal")
    assert normal.path == str(tmp_path / "c.db") and not (tmp_path / "c.db?synchronous=normal").exists()
    assert normal._connect().execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    with pytest.raises(ValueError, match="`synchronous` must be one of"):
        open_store(f"sqlite:///{tmp_path / 'd.db'}?synchronous=off")
    with pytest.raises(ValueError, match="Unknown SQLite store option"):
        open_store(f"sqlite:///{tmp_path / 'd.db'}?sync=normal")
    assert normal._connect().execute("PRAGMA wal_autocheckpoint").fetchone() == (200,)  # (not SQLite's 1,000)
    pages = open_store(f"sqlite:///{tmp_path / 'e.db'}?wal_autocheckpoint=50&synchronous=normal")
    assert pages._connect().execute("PRAGMA wal_autocheckpoint").fetchone() == (50,)
    for bad in ("0", "x"):
        with pytest.raises(ValueError, match="`wal_autocheckpoint` must be a positive number of pages"):
            open_store(f"sqlite:///{tmp_path / 'f.db'}?wal_autocheckpoint={bad}")


def test_served_states_rank_test_targets_as_the_stream_evaluation(checkpoint):
    """`serving_ranks` (each user's state stored and read back between events) equals the `stream` evaluation in
    float32; bfloat16 states rank every sample too (their effect is measured by scripts/evaluate_serving_state.py)."""
    model = load_checkpoint(str(checkpoint)).eval()
    rng = np.random.default_rng(0)
    rows, starts = [], []
    for _ in range(7):
        length = int(rng.integers(2, 19))
        rows.append(rng.integers(1, NUM_ITEMS, length).tolist())
        starts.append(int(rng.integers(1, length + 1)))  # (a user may have no target: start == length)
    split = SplitSequences.from_rows(rows, starts)
    expected = compute_ranks(model, split, max_length=64, mode="stream")
    np.testing.assert_array_equal(serving_ranks(model, split, "float32", batch_users=3), expected)
    half = serving_ranks(model, split, "bfloat16", batch_users=3)
    assert half.shape == expected.shape and ((0 <= half) & (half < NUM_ITEMS)).all()
    with pytest.raises(ValueError, match="history before it"):
        serving_ranks(model, SplitSequences.from_rows([[1, 2]], [0]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_states_kept_in_memory_equal_states_replayed_from_the_store(variant, tmp_path):
    """An engine that keeps live cache rows (only new items are read), one that replays every state from its stored
    boundary (`lru_size=0`), and one that mixes both in a batch (`lru_size=2`, four users) give the same
    recommendations and stored states, and each user's final hidden state equals the model's on the whole history."""
    checkpoint = make_checkpoint(tmp_path / "ckpt", *variant)
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(4)]
    batches = [
        [(u, rng.integers(1, NUM_ITEMS, size=int(rng.integers(1, 6))).tolist()) for u in users if rng.random() < 0.8]
        for _ in range(8)
    ]
    finals, answers = {}, {}
    for lru_size in (100, 2, 0):
        (tmp_path / str(lru_size)).mkdir()
        engine = engine_for(checkpoint, tmp_path / str(lru_size), lru_size=lru_size)
        answers[lru_size] = events(engine, batches)
        stored = engine.store.get(users)
        finals[lru_size] = {u: engine.codec.decode(*stored[u]) for u in users}
        if lru_size == 100:
            assert all(engine.lru.is_live(u) for u in users)  # (the in-memory path ran)
    for lru_size in (2, 0):
        for got, expected in zip(answers[lru_size], answers[100], strict=True):
            for a, b in zip(got, expected, strict=True):
                assert [r["item_id"] for r in a["recommendations"]] == [r["item_id"] for r in b["recommendations"]]
                np.testing.assert_allclose(
                    [r["score"] for r in a["recommendations"]], [r["score"] for r in b["recommendations"]], atol=1e-4
                )
        for u in users:
            a, b = finals[lru_size][u], finals[100][u]
            assert (a.seen, a.pending, a.history) == (b.seen, b.pending, b.history)
            assert (a.boundary is None) == (b.boundary is None)
            if a.boundary is not None:
                torch.testing.assert_close(a.boundary, b.boundary, rtol=1e-4, atol=1e-5)
    model = load_checkpoint(str(checkpoint))
    for u in users:
        history = [item for batch in batches for user, items in batch if user == u for item in items]
        with torch.no_grad():
            whole = model(torch.tensor([history]), return_logits=False).last_hidden_state[0, -1]
        torch.testing.assert_close(finals[100][u].last_hidden, whole, rtol=1e-4, atol=1e-5)
