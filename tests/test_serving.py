"""The recommendation server over real HTTP: `scripts/serve.py` (uvicorn) in a subprocess on 127.0.0.1, a real client.

Exact against `model.recommend` on the whole history for every model variant, idempotent, ordered per user, refusing
bad input without applying any of it, durable across `kill -9`, on SQLite and on a real Redis.
"""

import random
import subprocess
import sys
import threading

import httpx
import pytest
import torch
from serving_fixtures import NUM_ITEMS, SERVE, VARIANTS, RedisServer, Server, make_checkpoint, original_id, script_env

from modeling_ttt4rec import TTT4RecForNextItemPrediction


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    return {v: make_checkpoint(tmp_path_factory.mktemp("-".join(v)), *v) for v in VARIANTS}


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    """One server of the default variant (transformer, mlp) on SQLite, shared by the tests that need no other."""
    store = f"sqlite:///{tmp_path_factory.mktemp('store') / 'states.db'}"
    with Server(checkpoints["transformer", "mlp"], store, "--lru_size", "2", "--max_items", "16") as s:
        yield s


def reference(model, history: list[int], k: int, exclude_seen: bool = False) -> tuple[list[str], torch.Tensor]:
    """What `model.recommend` gives for the whole history (original ids, scores)."""
    out = model.recommend(torch.tensor([history]), top_k=k, exclude_seen=exclude_seen)
    return [original_id(i) for i in out.item_ids[0].tolist()], out.scores[0]


def assert_matches(answer: dict, model, history: list[int], k: int, exclude_seen: bool = False) -> None:
    ids, scores = reference(model, history, k, exclude_seen)
    assert answer["items_read"] == len(history)
    assert [r["item_id"] for r in answer["recommendations"]] == ids
    torch.testing.assert_close(torch.tensor([r["score"] for r in answer["recommendations"]]), scores)


def post(client: httpx.Client, user: str, items: list[int], **params) -> httpx.Response:
    event_id = params.pop("event_id", None)
    body = {"items": [original_id(i) for i in items]} | ({"event_id": event_id} if event_id else {})
    return client.post(f"/v1/users/{user}/events", json=body, params=params)


def random_events(rng: random.Random, users: int, steps: int) -> list[tuple[str, list[int]]]:
    return [
        (f"u{rng.randrange(users)}", [rng.randrange(1, NUM_ITEMS) for _ in range(rng.randint(1, 6))])
        for _ in range(steps)
    ]


def check_exact(server: Server, model, events: list[tuple[str, list[int]]]) -> None:
    """Concurrent event calls (one thread per user, so each user's order is known) equal `recommend`."""
    histories: dict[str, list[int]] = {}
    by_user: dict[str, list[list[int]]] = {}
    for user, items in events:
        by_user.setdefault(user, []).append(items)
    failures = []

    def run(user: str) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            history = []
            for n, items in enumerate(by_user[user]):
                history += items
                exclude = n % 2 == 1
                try:
                    assert_matches(
                        post(client, user, items, k=5, exclude_seen=exclude).json(), model, history, 5, exclude
                    )
                except AssertionError as error:
                    failures.append(error)
            histories[user] = history

    threads = [threading.Thread(target=run, args=(u,)) for u in by_user]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not failures, failures[0]
    for user, history in histories.items():  # reading changes nothing and gives the same
        assert_matches(
            server.client.get(f"/v1/users/{user}/recommendations", params={"k": 7}).json(), model, history, 7
        )


@pytest.mark.parametrize("variant", VARIANTS, ids="-".join)
def test_recommendations_equal_recommend_on_the_whole_history(checkpoints, variant, tmp_path):
    model = TTT4RecForNextItemPrediction.from_pretrained(checkpoints[variant]).eval()
    # a small LRU, so states are also read back from the store and their pending items replayed
    with Server(checkpoints[variant], f"sqlite:///{tmp_path / 's.db'}", "--lru_size", "2", "--max_wait_ms", "5") as s:
        check_exact(s, model, random_events(random.Random(0), users=5, steps=30))


def test_a_user_never_seen_gets_the_initial_state_recommendations(server, checkpoints):
    model = TTT4RecForNextItemPrediction.from_pretrained(checkpoints["transformer", "mlp"]).eval()
    answer = server.client.get("/v1/users/nobody/recommendations", params={"k": 3}).json()
    scores = model.score_items(model.init_cache(1).last_hidden_state)[0]
    assert answer["items_read"] == 0 and len(answer["recommendations"]) == 3
    assert [r["score"] for r in answer["recommendations"]] == pytest.approx(scores.topk(3).values.tolist())


def test_a_retried_event_is_applied_once(server):
    first = post(server.client, "retry", [1, 2, 3], event_id="e1").json()
    again = post(server.client, "retry", [1, 2, 3], event_id="e1").json()
    assert first["applied"] is True and again["applied"] is False
    assert again["items_read"] == first["items_read"] == 3
    assert again["recommendations"] == first["recommendations"]
    # concurrent retries of a new event: applied once
    with httpx.Client(base_url=server.url, timeout=60) as c:
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(post(c, "retry", [4], event_id="e2").json()))
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert sorted(r["applied"] for r in results) == [False] * 5 + [True]
    assert {r["items_read"] for r in results} == {4}
    assert post(server.client, "other-user", [1], event_id="e1").json()["applied"] is True  # ids are per user


def test_events_of_one_user_are_applied_one_at_a_time(server, checkpoints):
    model = TTT4RecForNextItemPrediction.from_pretrained(checkpoints["transformer", "mlp"]).eval()
    answers = {}

    def send(item: int) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            answers[item] = post(c, "busy", [item]).json()["items_read"]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(1, 21)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    # every event got its own position (none lost, none applied twice), and the state is the history in that order
    assert sorted(answers.values()) == list(range(1, 21))
    history = sorted(answers, key=answers.get)
    got = server.client.get("/v1/users/busy/recommendations", params={"k": 5}).json()
    assert_matches(got, model, history, 5)


@pytest.mark.parametrize(
    "body, params, status, message",
    [
        ({"items": [original_id(1), "no-such-item"]}, {}, 422, "'no-such-item'"),
        ({"items": []}, {}, 422, "items"),
        ({"items": "item-1"}, {}, 422, "items"),
        ({"items": [original_id(1)], "surprise": 1}, {}, 422, "surprise"),
        ({"items": [original_id(1)]}, {"k": 0}, 422, "`k` must be in [1, 39]"),
        ({"items": [original_id(1)]}, {"k": 40}, 422, "`k` must be in [1, 39]"),
        ({"items": [original_id(1)]}, {"k": "many"}, 422, "k"),
        ({"items": [original_id(1)] * 17}, {}, 413, "at most 16 items"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_applied(server, body, params, status, message):
    before = post(server.client, "careful", [5]).json()["items_read"]
    response = server.client.post("/v1/users/careful/events", json=body, params=params)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    after = server.client.get("/v1/users/careful/recommendations").json()["items_read"]
    assert after == before


def test_malformed_and_oversized_bodies_are_refused(server):
    headers = {"content-type": "application/json"}
    response = server.client.post("/v1/users/x/events", content=b'{"items": [', headers=headers)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    response = server.client.post("/v1/users/x/events", content=b"[" + b'"a",' * 40000 + b'"a"]', headers=headers)
    assert response.status_code == 413 and "larger than" in response.json()["error"]
    chunks = iter([b'{"items": ['] + [b'"a",' * 1000] * 40 + [b'"a"]}'])  # (sent in chunks: no content-length)
    response = server.client.post("/v1/users/x/events", content=chunks, headers=headers)
    assert response.status_code == 413 and "larger than" in response.json()["error"]
    assert server.client.get("/v1/users/x/recommendations").json()["items_read"] == 0
    assert server.client.get("/healthz").status_code == 200  # still serving


def test_delete_forgets_the_user_and_its_event_ids(server):
    post(server.client, "gone", [1, 2, 3, 4, 5], event_id="a")
    assert server.client.delete("/v1/users/gone").json() == {"user_id": "gone", "deleted": True}
    assert server.client.get("/v1/users/gone/recommendations").json()["items_read"] == 0
    assert post(server.client, "gone", [7], event_id="a").json() | {"recommendations": None} == {
        "user_id": "gone",
        "items_read": 1,
        "recommendations": None,
        "applied": True,
    }


def test_metrics_in_prometheus_format(server):
    post(server.client, "metered", [1])
    text = server.client.get("/metrics").text
    for name in (
        'ttt4rec_requests_total{route="/v1/users/{user_id}/events",status="200"}',
        "ttt4rec_request_seconds_bucket",
        "ttt4rec_batch_size_count",
        'ttt4rec_store_seconds_count{op="commit"}',
        "ttt4rec_states_in_memory 2.0",  # (--lru_size 2)
        "process_cpu_seconds_total",  # (scripts/load_test.py reports CPU time per event from it)
    ):
        assert name in text


def test_a_store_of_another_checkpoint_is_refused(checkpoints, tmp_path):
    store = f"sqlite:///{tmp_path / 's.db'}"
    with Server(checkpoints["transformer", "linear"], store) as s:
        assert post(s.client, "u", [1]).status_code == 200
    with pytest.raises(RuntimeError, match="holds user states computed with another checkpoint"):
        Server(checkpoints["mamba", "linear"], store)


@pytest.mark.parametrize(
    "model, store, message",
    [
        ("missing", "sqlite:///{tmp}/s.db", "no such checkpoint folder"),
        (None, "sqlite:///{tmp}/s.db?synchronous=off", "`synchronous` must be one of"),
        (None, "sqlite:///{tmp}/s.db?sync=normal", "Unknown SQLite store option"),
        (None, "sqlite:///{tmp}/s.db?wal_autocheckpoint=0", "`wal_autocheckpoint` must be a positive number"),
        (None, "postgres://x", "Unknown store"),
    ],
)
def test_serve_script_refuses_bad_settings_in_one_line(checkpoints, tmp_path, model, store, message):
    model = str(tmp_path / model) if model else str(checkpoints["transformer", "linear"])
    result = subprocess.run(
        [sys.executable, str(SERVE), "--model", model, "--store", store.format(tmp=tmp_path), "--port", "9"],
        capture_output=True,
        text=True,
        timeout=120,
        env=script_env(),
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_redis_store_exact_idempotent_and_503_when_unreachable(checkpoints, tmp_path):
    model = TTT4RecForNextItemPrediction.from_pretrained(checkpoints["mamba", "mlp"]).eval()
    with RedisServer(tmp_path, durable=True) as redis_server:
        with Server(checkpoints["mamba", "mlp"], redis_server.url, "--lru_size", "0") as s:
            check_exact(s, model, random_events(random.Random(1), users=3, steps=12))
            assert post(s.client, "r", [1, 2], event_id="x").json()["applied"] is True
            assert post(s.client, "r", [1, 2], event_id="x").json()["applied"] is False
            redis_server.stop()
            response = post(s.client, "r", [3], event_id="y")
            assert response.status_code == 503 and "nothing was applied" in response.json()["error"]
            assert s.client.get("/healthz").status_code == 503
            redis_server.start()  # (appendfsync always: everything committed is back)
            answer = post(s.client, "r", [3], event_id="y").json()
            assert answer["applied"] is True
            assert_matches(answer, model, [1, 2, 3], 10)
