"""The ranking metrics of the evaluation protocol (docs/protocol.md section 7), in one place.

For every evaluated sample the model scores all items `1 .. N` (the padding id 0 is excluded, items the user has
already seen are *not* masked), and `rank` is the number of items whose score is strictly higher than the target's.
Then, per sample,

    HR@K   = 1 if rank < K else 0
    NDCG@K = 1 / log2(rank + 2) if rank < K else 0

and each reported metric is the mean over all samples of the split (not per user first), rounded to 4 decimals
when reported. In the sampled protocol (docs/protocol.md section 9) the same definitions apply to the `1 + 99`
candidates of each sample instead of all items, reported at K = 5 and 10, except that a negative scoring exactly as the
target counts as ranked above it: with only 100 candidates a model that gives them all the same score (a collapsed
target tower does) would otherwise score HR = NDCG = 1. `ranks_from_scores` computes the ranks,
`ranking_metrics` turns ranks into metrics; the `evaluate` module in `modeling_ttt4rec/training/ranking_metrics/` wraps
the same function: `evaluate.load(EVALUATE_MODULE)` loads it from wherever the package is installed.
"""

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

#: The folder of the `evaluate` module of these metrics, for `evaluate.load(EVALUATE_MODULE)` from any directory.
EVALUATE_MODULE = str(Path(__file__).resolve().parent / "ranking_metrics")
DEFAULT_KS = (10, 50)
METRIC_NAMES = ("HR@10", "HR@50", "NDCG@10", "NDCG@50")
# the cut-offs each evaluation protocol reports: full ranking over all items (the first paper) and ranking among
# 1 + 99 sampled candidates (the second paper, docs/protocol.md section 9)
PROTOCOL_KS = {"full": DEFAULT_KS, "sampled": (5, 10)}


def metric_names(protocol: str = "full") -> tuple[str, ...]:
    """The metrics `protocol` reports, in report order: `("HR@10", "HR@50", "NDCG@10", "NDCG@50")` for `"full"`,
    `("HR@5", "HR@10", "NDCG@5", "NDCG@10")` for `"sampled"`."""
    ks = PROTOCOL_KS[protocol]
    return tuple(f"HR@{k}" for k in ks) + tuple(f"NDCG@{k}" for k in ks)


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor, ties: str = "optimistic") -> torch.Tensor:
    """Number of items scoring strictly higher than each target (`ties="optimistic"`, docs/protocol.md section 7), or
    higher or equal (`ties="pessimistic"`: a candidate that ties with the target is ranked above it).

    Args:
        scores: `[batch, num_candidates]`, the scores of the candidate items (for the protocol: items `1 .. N`, so
            column `c` is item `c + 1`).
        targets: `[batch]`, the column of each sample's target in `scores`.
        ties: how candidates scoring exactly as the target count.

    Returns:
        `[batch]` int64 ranks (0 = the target scored highest; `num_candidates` when the target's score is not
        finite).
    """
    if ties not in ("optimistic", "pessimistic"):
        raise ValueError(f"`ties` must be 'optimistic' or 'pessimistic', got {ties!r}.")
    if scores.dim() != 2 or targets.dim() != 1 or scores.shape[0] != targets.shape[0]:
        raise ValueError(
            f"`scores` must be [batch, items] and `targets` [batch]; got {tuple(scores.shape)} and "
            f"{tuple(targets.shape)}."
        )
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= scores.shape[1]):
        raise ValueError(f"`targets` must be columns of `scores` in [0, {scores.shape[1]}).")
    target_scores = scores.gather(1, targets[:, None].long())
    if ties == "optimistic":
        higher = torch.gt(scores, target_scores)
    else:
        # every candidate >= the target, except the target itself
        higher = torch.ge(scores, target_scores).scatter_(1, targets[:, None].long(), False)
    # (counting in int32 is ~2x faster on CPU than the default int64 sum of bools, and exact below 2**31 items)
    ranks = higher.sum(dim=1, dtype=torch.int32).long()
    # a target score that is NaN or infinite (a diverged model) compares as nothing: it ranks last, not first
    return ranks.masked_fill(~torch.isfinite(target_scores[:, 0]), scores.shape[1])


def ranking_metrics(
    ranks: Sequence[int] | np.ndarray | torch.Tensor, ks: Iterable[int] = DEFAULT_KS, digits: int | None = None
) -> dict[str, float]:
    """HR@K and NDCG@K for each `K` in `ks`, means over all samples.

    Args:
        ranks: one rank per sample (the number of items scoring strictly higher than the target).
        ks: the cut-offs.
        digits: round the results to this many decimals (the protocol reports 4); `None` keeps full precision.

    Returns:
        `{"HR@10": ..., "HR@50": ..., "NDCG@10": ..., "NDCG@50": ..., "num_samples": n}` (keys follow `ks`, HR
        first).
    """
    if isinstance(ranks, torch.Tensor):
        ranks = ranks.detach().cpu().numpy()
    ranks = np.asarray(ranks)
    if ranks.ndim != 1:
        raise ValueError(f"`ranks` must be one rank per sample (1-D), got shape {ranks.shape}.")
    if ranks.size == 0:
        raise ValueError("No samples to compute metrics from: the split is empty.")
    if not np.issubdtype(ranks.dtype, np.integer):
        if not np.all(np.equal(np.mod(ranks, 1), 0)):
            raise ValueError("`ranks` must be integers (counts of items scoring higher than the target).")
        ranks = ranks.astype(np.int64)
    if ranks.min() < 0:
        raise ValueError(f"`ranks` must be >= 0, got {int(ranks.min())}.")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"Cut-offs `ks` must be positive integers, got {ks}.")
    gains = 1.0 / np.log2(ranks.astype(np.float64) + 2.0)
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = float(np.mean(ranks < k))
    for k in ks:
        out[f"NDCG@{k}"] = float(np.mean(np.where(ranks < k, gains, 0.0)))
    if digits is not None:
        out = {name: round(value, digits) for name, value in out.items()}
    out["num_samples"] = int(ranks.size)
    return out


# history-length groups (items read before the target) for `metrics_by_history_length`: 1-3, 4-5, ..., 101+
HISTORY_LENGTH_EDGES = (1, 4, 6, 11, 21, 51, 101)


def check_history_length_edges(edges: Iterable[int]) -> list[int]:
    """`edges` as a list of ints; a `ValueError` unless they are increasing non-negative integers."""
    edges = [int(e) for e in edges]
    if not edges or any(b <= a for a, b in zip(edges, edges[1:], strict=False)) or edges[0] < 0:
        raise ValueError(f"History-length edges must be increasing non-negative integers, got {edges}.")
    return edges


def metrics_by_history_length(
    ranks: Sequence[int] | np.ndarray | torch.Tensor,
    history_lengths: Sequence[int] | np.ndarray,
    edges: Sequence[int] = HISTORY_LENGTH_EDGES,
    ks: Iterable[int] = DEFAULT_KS,
) -> list[dict]:
    """`ranking_metrics` of the samples in each history-length group.

    Group `i` holds the samples with `edges[i] <= history_length < edges[i + 1]` (the last group is open), so
    `edges=(1, 4, 6)` gives the groups `1-3`, `4-5` and `6+`. Returns one row per non-empty group:
    `{"history": "1-3", "min": 1, "max": 3, "num_samples": n, "HR@10": ..., ...}` (`max` is `None` for the
    open group); the metrics are means over the group's samples, as in `ranking_metrics`.
    """
    ranks = np.asarray(ranks.detach().cpu().numpy() if isinstance(ranks, torch.Tensor) else ranks)
    lengths = np.asarray(history_lengths)
    if ranks.shape != lengths.shape or ranks.ndim != 1:
        raise ValueError(
            f"`ranks` and `history_lengths` must be 1-D with one value per sample; got shapes {ranks.shape} and "
            f"{lengths.shape}."
        )
    edges = check_history_length_edges(edges)
    rows = []
    for i, low in enumerate(edges):
        high = edges[i + 1] - 1 if i + 1 < len(edges) else None
        in_group = (lengths >= low) & (lengths <= high if high is not None else True)
        if not in_group.any():
            continue
        label = f"{low}+" if high is None else (f"{low}" if high == low else f"{low}-{high}")
        metrics = ranking_metrics(ranks[in_group], ks=ks)
        rows.append({"history": label, "min": low, "max": high, **metrics})
    return rows


__all__ = [
    "check_history_length_edges",
    "DEFAULT_KS",
    "HISTORY_LENGTH_EDGES",
    "METRIC_NAMES",
    "PROTOCOL_KS",
    "metric_names",
    "metrics_by_history_length",
    "ranking_metrics",
    "ranks_from_scores",
]
