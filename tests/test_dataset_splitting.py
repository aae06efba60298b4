"""The ratio split (PROTOCOL.md 5), the published rows, and the windowed samples (PROTOCOL.md 4)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from dataset_fixtures import reference_samples, reference_split_counts
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


@pytest.mark.parametrize("ratios", RATIOS, ids=["3-2-5", "6-2-2"])
@pytest.mark.parametrize("n", range(2, 31))
def test_split_counts_match_the_protocol_formula(n: int, ratios: tuple[float, float, float]) -> None:
    expected = reference_split_counts(n - 1, ratios)
    assert list(split_counts(n - 1, ratios)) == expected
    assert split_counts_array(np.array([n - 1]), ratios).tolist() == [expected]
    assert sum(expected) == n - 1


def test_protocol_example_and_small_cases() -> None:
    assert split_counts(4, (0.3, 0.2, 0.5)) == (1, 1, 2)  # PROTOCOL 5's example, n = 5
    assert split_counts(1, (0.3, 0.2, 0.5)) == (1, 0, 0)  # n = 2: one train sample, no validation or test
    assert split_counts(2, (0.3, 0.2, 0.5)) == (1, 0, 1)
    assert split_counts(0, (0.3, 0.2, 0.5)) == (0, 0, 0)


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
