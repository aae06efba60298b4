"""The one markdown-table writer of the reports."""

import pytest

from modeling_ttt4rec.training.reports import grid_table, history_length_table, markdown_table


def test_markdown_table_aligns_and_checks_its_shape():
    assert (
        markdown_table(["a", "b"], [["1", ""], ["x", "y"]], align="lr") == "| a | b |\n|---|---:|\n| 1 |  |\n| x | y |"
    )
    assert markdown_table(["a"], []) == "| a |\n|---|"
    with pytest.raises(ValueError, match="one of 'l' or 'r' per column"):
        markdown_table(["a", "b"], [], align="l")
    with pytest.raises(ValueError, match="A row has 1 cells but the table has 2 columns"):
        markdown_table(["a", "b"], [["1"]])


def test_history_length_and_grid_tables():
    by_length = {
        "window": [{"history": "1-3", "num_samples": 1234, "HR@10": 0.5, "HR@50": 1, "NDCG@10": 0.25, "NDCG@50": 0.3}]
    }
    assert history_length_table(by_length).splitlines() == [
        "| eval mode | history length | samples | HR@10 | HR@50 | NDCG@10 | NDCG@50 |",
        "|---|---|---:|---:|---:|---:|---:|",
        "| window | 1-3 | 1,234 | 0.5000 | 1.0000 | 0.2500 | 0.3000 |",
    ]
    rows = [{"initializer_range": 0.02, "mini_batch_size": b, "HR@5": v} for b, v in ((1, 0.1), (4, 0.3))]
    rows.append({"initializer_range": 0.2, "mini_batch_size": 4, "HR@5": 0.2})
    assert grid_table(rows, "HR@5").splitlines() == [
        "| HR@5: initializer_range \\ mini_batch_size | 1 | 4 |",
        "|---|---|---|",
        "| 0.02 | 0.1000 | **0.3000** |",
        "| 0.2 |  | 0.2000 |",
    ]
