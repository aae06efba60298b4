"""`evaluate` module for the protocol's ranking metrics: `evaluate.load("modeling_ttt4rec/training/ranking_metrics")`.

The formula lives in `modeling_ttt4rec.training.metrics.ranking_metrics`; this module only exposes it through the
`evaluate` library. `predictions` are ranks: for each sample, the number of items that scored strictly higher than
the target.
"""

import datasets
import evaluate

from modeling_ttt4rec.training.metrics import DEFAULT_KS, ranking_metrics

_DESCRIPTION = """HR@K and NDCG@K of full-ranking next-item evaluation (TTT4Rec protocol, docs/protocol.md section 7):
for each sample, rank = number of items (1..N, padding excluded, seen items not masked) scoring strictly higher than
the target; HR@K = 1[rank < K], NDCG@K = 1/log2(rank + 2) if rank < K else 0; means over all samples."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): the rank of each sample's target.
    ks (`list[int]`, *optional*, defaults to `[10, 50]`): the cut-offs.
    digits (`int`, *optional*): round to this many decimals (the protocol reports 4).
Returns:
    `{"HR@10", "HR@50", "NDCG@10", "NDCG@50", "num_samples"}`.
Example:
    >>> metric = evaluate.load("modeling_ttt4rec/training/ranking_metrics")
    >>> metric.compute(predictions=[0, 3, 60])["HR@10"]
    0.6666666666666666
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RankingMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64")}),
        )

    def _compute(self, predictions, ks=DEFAULT_KS, digits=None):
        return ranking_metrics(predictions, ks=ks, digits=digits)
