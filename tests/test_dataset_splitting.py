"""The ratio split (docs/protocol.md section 5), the published rows, and the windowed samples (docs/protocol.md section
4)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from dataset_fixtures import protocol_split_labels, reference_samples, reference_split_counts
from hypothesis import given, settings
from hypothesis import strategies as st

from dataset_builders import (
    DatasetBuildError,
    WindowedSamples,
    config_name,
    parse_ratios,
    split_counts,
    split_counts_array,
    split_tables,
    windowed_samples,
)
from dataset_builders.pipeline import prepare_sequences
from dataset_builders.readers import RawInteractions

RATIOS = [(0.3, 0.2, 0.5), (0.6, 0.2, 0.2)]


# docs/protocol.md section 5 worked by hand: t = n - 1 samples; validation = floor(r1 * t), test = floor(r2 * t),
# train = the rest; then test first, validation second: a part with 0 < r * t < 1 takes one sample from train while
# train > 1.
HAND_CASES = [
    # 3:2:5 (validation 0.2 t, test 0.5 t)
    ((0.3, 0.2, 0.5), 1, (0, 0, 0)),  # t = 0: no samples
    ((0.3, 0.2, 0.5), 2, (1, 0, 0)),  # t = 1: floor(.2) = 0, floor(.5) = 0, train 1 -> no bump
    ((0.3, 0.2, 0.5), 3, (1, 0, 1)),  # t = 2: floor(.4) = 0, floor(1.0) = 1, train 1 -> no bump
    ((0.3, 0.2, 0.5), 4, (1, 1, 1)),  # t = 3: floor(.6) = 0, floor(1.5) = 1, train 2; 0 < .6 < 1 -> validation + 1
    ((0.3, 0.2, 0.5), 5, (1, 1, 2)),  # t = 4: floor(.8) = 0, floor(2.0) = 2, train 2; .8 -> validation + 1
    ((0.3, 0.2, 0.5), 6, (2, 1, 2)),  # t = 5: floor(1.0) = 1, floor(2.5) = 2, train 2; no part below 1
    ((0.3, 0.2, 0.5), 7, (2, 1, 3)),  # t = 6: floor(1.2) = 1, floor(3.0) = 3, train 2
    ((0.3, 0.2, 0.5), 8, (3, 1, 3)),  # t = 7: floor(1.4) = 1, floor(3.5) = 3, train 3
    ((0.3, 0.2, 0.5), 11, (3, 2, 5)),  # t = 10: 2, 5, train 3
    ((0.3, 0.2, 0.5), 12, (4, 2, 5)),  # t = 11: floor(2.2) = 2, floor(5.5) = 5, train 4
    ((0.3, 0.2, 0.5), 21, (6, 4, 10)),  # t = 20: 4, 10, train 6
    ((0.3, 0.2, 0.5), 100, (31, 19, 49)),  # t = 99: floor(19.8) = 19, floor(49.5) = 49, train 99 - 68 = 31
    ((0.3, 0.2, 0.5), 101, (30, 20, 50)),  # t = 100: 20, 50, train 30
    # 6:2:2 (validation 0.2 t, test 0.2 t)
    ((0.6, 0.2, 0.2), 1, (0, 0, 0)),  # t = 0
    ((0.6, 0.2, 0.2), 2, (1, 0, 0)),  # t = 1: floors 0, 0, train 1 -> no bump
    ((0.6, 0.2, 0.2), 3, (1, 0, 1)),  # t = 2: floors 0, 0, train 2; .4 -> test + 1, train 1 -> stop before validation
    ((0.6, 0.2, 0.2), 4, (1, 1, 1)),  # t = 3: floors 0, 0, train 3; .6 -> test + 1 (train 2), .6 -> validation + 1
    ((0.6, 0.2, 0.2), 5, (2, 1, 1)),  # t = 4: floors 0, 0, train 4; .8 -> test + 1, .8 -> validation + 1
    ((0.6, 0.2, 0.2), 6, (3, 1, 1)),  # t = 5: floor(1.0) = 1 twice, train 3; no part below 1
    ((0.6, 0.2, 0.2), 7, (4, 1, 1)),  # t = 6: floor(1.2) = 1 twice, train 4
    ((0.6, 0.2, 0.2), 10, (7, 1, 1)),  # t = 9: floor(1.8) = 1 twice, train 7
    ((0.6, 0.2, 0.2), 11, (6, 2, 2)),  # t = 10: 2, 2, train 6
    ((0.6, 0.2, 0.2), 12, (7, 2, 2)),  # t = 11: floor(2.2) = 2 twice, train 7
    ((0.6, 0.2, 0.2), 100, (61, 19, 19)),  # t = 99: floor(19.8) = 19 twice, train 99 - 38 = 61
    ((0.6, 0.2, 0.2), 101, (60, 20, 20)),  # t = 100: 20, 20, train 60
]


@pytest.mark.parametrize(("ratios", "n", "expected"), HAND_CASES)
def test_split_counts_hand_computed(ratios: tuple[float, ...], n: int, expected: tuple[int, int, int]) -> None:
    assert split_counts(n - 1, ratios) == expected
    assert split_counts_array(np.array([n - 1]), ratios).tolist() == [list(expected)]
    # the independent reference agrees with the hand arithmetic too
    labels = protocol_split_labels(n, ratios)
    assert tuple(labels.count(name) for name in ("train", "validation", "test")) == expected


def _label_counts(n: int, ratios: tuple[float, float, float]) -> list[int]:
    labels = protocol_split_labels(n, ratios)
    return [labels.count(name) for name in ("train", "validation", "test")]


@pytest.mark.parametrize("ratios", RATIOS, ids=["3-2-5", "6-2-2"])
def test_split_counts_match_the_literal_protocol(ratios: tuple[float, float, float]) -> None:
    ns = [*range(1, 302), 1_001, 4_567, 100_001, 1_234_567]
    expected = [_label_counts(n, ratios) for n in ns]
    assert [list(split_counts(n - 1, ratios)) for n in ns] == expected
    assert split_counts_array(np.array(ns) - 1, ratios).tolist() == expected
    assert all(sum(c) == n - 1 for c, n in zip(expected, ns, strict=True))


@pytest.mark.parametrize(("ratios", "parts"), [((0.3, 0.2, 0.5), (3, 2, 5)), ((0.6, 0.2, 0.2), (6, 2, 2))])
def test_float_floors_equal_exact_floors_for_the_published_ratios(
    ratios: tuple[float, float, float], parts: tuple[int, int, int]
) -> None:
    """RecBole floors float products (0.3 * t); the independent reference floors exact ones (3 t / 10). They agree
    for every t below two million, so the reference is exact for any real data set's users."""
    t = np.arange(2_000_000, dtype=np.int64)
    for r, a in zip(ratios, parts, strict=True):
        assert (np.floor(r * t.astype(np.float64)).astype(np.int64) == a * t // 10).all()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 500), min_size=1, max_size=40),
    st.tuples(*[st.floats(0.01, 1.0, allow_nan=False)] * 3),
)
def test_vectorised_split_equals_formula_for_any_ratio(ts: list[int], raw_ratios: tuple[float, float, float]) -> None:
    ratios = parse_ratios(raw_ratios)
    counts = split_counts_array(np.array(ts), ratios)
    assert counts.tolist() == [reference_split_counts(t, ratios) for t in ts]
    assert (counts.sum(axis=1) == np.array(ts)).all() and (counts >= 0).all()


def test_ratio_parsing_and_config_names() -> None:
    assert parse_ratios("0.3,0.2,0.5") == (0.3, 0.2, 0.5)
    assert parse_ratios("6,2,2") == pytest.approx((0.6, 0.2, 0.2))
    assert config_name((0.3, 0.2, 0.5)) == "split-3-2-5"
    assert config_name((0.6, 0.2, 0.2)) == "split-6-2-2"
    assert config_name((0.25, 0.25, 0.5)) == "split-25-25-50"
    for bad in ("0.5,0.5", "a,b,c", "0.5,0,0.5", (0.5, -0.1, 0.6)):
        with pytest.raises(DatasetBuildError, match="ratios"):
            parse_ratios(bad)


def _tables(lengths: list[int], ratios: tuple[float, float, float]) -> dict[str, pa.Table]:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.arange(1, offsets[-1] + 1, dtype=np.int64)  # user u's k-th item is offsets[u] + k + 1
    users = pa.array([f"user{u}" for u in range(len(lengths))])
    tables, _ = split_tables(items, offsets, users, ratios, seq_times=items * 10)
    return tables


def test_rows_hold_histories_across_split_borders() -> None:
    tables = _tables([5, 11], (0.3, 0.2, 0.5))
    # n = 5: c = (1, 1, 2): train target s1, validation s2, test s3 s4.
    # n = 11: t = 10, c = (3, 2, 5): train s1..s3, validation s4 s5, test s6..s10.
    assert tables["train"].to_pylist() == [
        {"user_id": "user0", "item_ids": [1, 2], "target_start": 1, "timestamps": [10, 20]},
        {"user_id": "user1", "item_ids": [6, 7, 8, 9], "target_start": 1, "timestamps": [60, 70, 80, 90]},
    ]
    validation = tables["validation"].to_pylist()
    assert [(r["item_ids"], r["target_start"]) for r in validation] == [
        ([1, 2, 3], 2),
        ([6, 7, 8, 9, 10, 11], 4),
    ]
    test = tables["test"].to_pylist()
    assert [(r["item_ids"], r["target_start"]) for r in test] == [([1, 2, 3, 4, 5], 3), (list(range(6, 17)), 6)]
    # The first test target's history is the user's train and validation items.
    assert test[1]["item_ids"][: test[1]["target_start"]] == [6, 7, 8, 9, 10, 11]


def test_user_without_target_in_a_split_has_no_row() -> None:
    tables = _tables([2, 3, 1], (0.3, 0.2, 0.5))  # n = 2: (1, 0, 0); n = 3: (1, 0, 1); n = 1: no sample at all
    assert tables["train"].column("user_id").to_pylist() == ["user0", "user1"]
    assert tables["validation"].num_rows == 0
    assert tables["test"].column("user_id").to_pylist() == ["user1"]


@pytest.mark.parametrize("ratios", RATIOS, ids=["3-2-5", "6-2-2"])
def test_rows_hold_the_literally_assigned_targets(ratios: tuple[float, float, float]) -> None:
    """Each published row's targets are exactly the user's interactions that the protocol assigns to its split, and
    its items run from the first interaction through the last of them."""
    lengths = list(range(1, 41))
    tables = _tables(lengths, ratios)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for split in ("train", "validation", "test"):
        got = {r["user_id"]: (r["item_ids"], r["target_start"]) for r in tables[split].to_pylist()}
        expected = {}
        for u, n in enumerate(lengths):
            items = list(range(offsets[u] + 1, offsets[u] + n + 1))
            mine = [j for j, label in enumerate(protocol_split_labels(n, ratios)) if label == split]
            if mine:
                expected[f"user{u}"] = (items[: mine[-1] + 1], mine[0])
        assert got == expected


def test_rows_of_small_users_by_hand() -> None:
    # 6:2:2, n = 5 (t = 4): counts (2, 1, 1) -> train targets s1 s2, validation s3, test s4.
    tables = _tables([5], (0.6, 0.2, 0.2))
    assert [(r["item_ids"], r["target_start"]) for r in tables["train"].to_pylist()] == [([1, 2, 3], 1)]
    assert [(r["item_ids"], r["target_start"]) for r in tables["validation"].to_pylist()] == [([1, 2, 3, 4], 3)]
    assert [(r["item_ids"], r["target_start"]) for r in tables["test"].to_pylist()] == [([1, 2, 3, 4, 5], 4)]
    # 6:2:2, n = 3 (t = 2): counts (1, 0, 1) -> train target s1, no validation row, test s2.
    tables = _tables([3], (0.6, 0.2, 0.2))
    assert [(r["item_ids"], r["target_start"]) for r in tables["train"].to_pylist()] == [([1, 2], 1)]
    assert tables["validation"].num_rows == 0
    assert [(r["item_ids"], r["target_start"]) for r in tables["test"].to_pylist()] == [([1, 2, 3], 2)]


def test_windowed_samples_truncate_to_max_length() -> None:
    rows = {"item_ids": [list(range(1, 9))], "target_start": [3], "user_id": ["a"]}
    samples = WindowedSamples(rows, max_length=3)
    assert len(samples) == 5
    assert [samples[i]["target"] for i in range(5)] == [4, 5, 6, 7, 8]
    assert [samples.history(i).tolist() for i in range(5)] == [[1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [5, 6, 7]]
    short = WindowedSamples({"item_ids": [[7, 8, 9]], "target_start": [1]}, max_length=5)
    batch = short.batch()
    assert batch["input_ids"].tolist() == [[7, 0, 0, 0, 0], [7, 8, 0, 0, 0]]  # right padding after the history
    assert batch["attention_mask"].tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [8, 9] and batch["lengths"].tolist() == [1, 2]
    assert windowed_samples({"item_ids": [[7, 8, 9]], "target_start": [1]}, 5)["labels"].tolist() == [8, 9]


def test_windowed_samples_reject_bad_rows() -> None:
    with pytest.raises(ValueError, match="target_start=0"):
        WindowedSamples({"item_ids": [[1, 2]], "target_start": [0]}, max_length=3)
    rows = {"user_id": ["a", "b"], "item_ids": [[1, 2], [3, 4]], "target_start": [1, 2]}  # b has no target
    with pytest.raises(ValueError, match=r"Row 1 \(user 'b'\): target_start=2 .* Rebuild the split"):
        WindowedSamples(rows, max_length=3)
    with pytest.raises(ValueError, match="max_length"):
        WindowedSamples({"item_ids": [[1, 2]], "target_start": [1]}, max_length=0)
    with pytest.raises(IndexError):
        WindowedSamples({"item_ids": [[1, 2]], "target_start": [1]}, max_length=3)[1]


def test_windowed_samples_of_a_sliced_table() -> None:
    table = pa.table({"item_ids": [[1, 2], [3, 4, 5], [6, 7]], "target_start": [1, 2, 1]}).slice(1)
    samples = WindowedSamples(table, max_length=4)
    assert samples.batch()["labels"].tolist() == [5, 7]
    assert [samples.history(i).tolist() for i in range(2)] == [[3, 4], [6]]


records_strategy = st.lists(
    st.tuples(st.sampled_from("abcdef"), st.sampled_from("pqrstuvw"), st.integers(0, 6)), min_size=1, max_size=80
)


@settings(max_examples=100, deadline=None)
@given(records_strategy, st.integers(1, 4), st.integers(1, 3), st.sampled_from(RATIOS), st.integers(1, 6))
def test_pipeline_samples_equal_the_literal_protocol(
    records: list[tuple[str, str, int]], user_min: int, item_min: int, ratios: tuple[float, float, float], L: int
) -> None:
    """k-core, stable time order with ties in file order, split and windows, against a from-scratch reference."""
    import polars as pl

    frame = pl.DataFrame(records, schema={"user": pl.String, "item": pl.String, "time": pl.Int64}, orient="row")
    raw = RawInteractions(frame, "mem", "csv", has_time=True, num_lines=len(records))
    expected = reference_samples(records, user_min, item_min, ratios, L)
    try:
        seq = prepare_sequences(raw, user_min, item_min)
    except DatasetBuildError:
        assert not any(expected.values())
        return
    tables, _ = split_tables(seq.seq_items, seq.user_offsets, seq.user_map, ratios, seq_times=seq.seq_times)
    item_map = seq.item_map.to_pylist()
    for split, table in tables.items():
        samples = WindowedSamples(table, L)
        users = table.column("user_id").to_pylist()
        got = [
            (users[samples[i]["row"]], [item_map[x] for x in samples.history(i)], item_map[samples[i]["target"]])
            for i in range(len(samples))
        ]
        assert got == expected[split]
