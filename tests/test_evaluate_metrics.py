"""The protocol's metrics (docs/protocol.md section 7): one formula, plain function and `evaluate` module."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_ttt4rec.training.metrics import metrics_by_history_length, ranking_metrics, ranks_from_scores

METRIC_DIR = Path(__file__).resolve().parent.parent / "modeling_ttt4rec" / "training" / "ranking_metrics"


def test_metrics_by_hand():
    ranks = [0, 9, 10, 49, 50]
    out = ranking_metrics(ranks)
    assert out["HR@10"] == pytest.approx(2 / 5)
    assert out["HR@50"] == pytest.approx(4 / 5)
    assert out["NDCG@10"] == pytest.approx((1 / math.log2(2) + 1 / math.log2(11)) / 5)
    assert out["NDCG@50"] == pytest.approx((1 + 1 / math.log2(11) + 1 / math.log2(12) + 1 / math.log2(51)) / 5)
    assert out["num_samples"] == 5
    assert ranking_metrics(ranks, digits=4)["NDCG@10"] == round(out["NDCG@10"], 4)


def test_metrics_by_history_length_by_hand():
    ranks = [0, 3, 20, 60, 1, 9]
    lengths = [1, 3, 5, 60, 200, 51]
    rows = metrics_by_history_length(ranks, lengths, edges=(1, 4, 6, 51))
    # the group 6-50 has no sample and is left out; 51+ is open
    assert [(r["history"], r["min"], r["max"], r["num_samples"]) for r in rows] == [
        ("1-3", 1, 3, 2),
        ("4-5", 4, 5, 1),
        ("51+", 51, None, 3),
    ]
    assert rows[0]["HR@10"] == 1.0 and rows[1]["HR@10"] == 0.0 and rows[2]["HR@10"] == pytest.approx(2 / 3)
    assert rows[2]["NDCG@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(11)) / 3)
    # the groups' sample-weighted means are the overall means
    overall = ranking_metrics(ranks)
    for name in ("HR@10", "HR@50", "NDCG@10", "NDCG@50"):
        weighted = sum(r[name] * r["num_samples"] for r in rows) / len(ranks)
        assert weighted == pytest.approx(overall[name])
    assert metrics_by_history_length([0], [4], edges=(1, 4, 5))[0]["history"] == "4"


@pytest.mark.parametrize(
    "ranks, lengths, edges, message",
    [([0, 1], [1], (1, 4), "one value per sample"), ([0], [1], (4, 4), "increasing"), ([0], [1], (), "increasing")],
)
def test_metrics_by_history_length_bad_input(ranks, lengths, edges, message):
    with pytest.raises(ValueError, match=message):
        metrics_by_history_length(ranks, lengths, edges=edges)


def test_ranks_count_only_strictly_higher_scores():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0]])
    ranks = ranks_from_scores(scores, torch.tensor([0, 3]))
    assert ranks.tolist() == [1, 0]  # ties do not count against the target
    pessimistic = ranks_from_scores(scores, torch.tensor([0, 3]), ties="pessimistic")
    assert pessimistic.tolist() == [2, 3]  # ties do, but never the target itself
    with pytest.raises(ValueError, match="ties"):
        ranks_from_scores(scores, torch.tensor([0, 3]), ties="random")


@pytest.mark.parametrize(
    "bad, message",
    [([], "empty"), ([-1, 2], ">= 0"), ([[1, 2]], "1-D"), ([0.5], "integers")],
)
def test_bad_ranks(bad, message):
    with pytest.raises(ValueError, match=message):
        ranking_metrics(np.array(bad))


def test_evaluate_module_matches_plain_function(tmp_path, monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    from modeling_ttt4rec.training.metrics import EVALUATE_MODULE

    assert Path(EVALUATE_MODULE) == METRIC_DIR
    monkeypatch.chdir(tmp_path)  # the documented way loads from any working directory
    metric = evaluate.load(EVALUATE_MODULE)
    ranks = np.random.default_rng(0).integers(0, 200, size=500)
    assert metric.compute(predictions=ranks.tolist()) == ranking_metrics(ranks)
    metric.add_batch(predictions=ranks[:100].tolist())
    metric.add_batch(predictions=ranks[100:].tolist())
    assert metric.compute(digits=4) == ranking_metrics(ranks, digits=4)
