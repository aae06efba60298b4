"""Negative sampling for the sampled protocol of Zhan, Lv, Zhang and Li (2025) (docs/protocol.md section 9).

* Training: each positive (a target item) is paired with `num_negatives` (4) items drawn uniformly from the real
  items other than the positive; the loss is binary cross-entropy over the `1 + num_negatives` instances
  (`losses.sampled_binary_cross_entropy`). Drawn afresh for every batch from torch's generator.
* Evaluation: each sample is ranked among itself and `num_negatives` (99) distinct items, none of them the
  positive or the padding id. The candidates depend only on the split's targets, the padding id and a seed, never
  on the model's weights, the batch size or the number of processes, so every model compared is ranked against the
  same candidates.

Negatives are not filtered against the user's history: an item the user interacted with before (but not the
target) can be drawn. The second paper does not say whether it filters; not filtering keeps the candidates a
function of the targets alone, and matches the full protocol, which does not mask seen items either.
"""

import numpy as np


def evaluation_candidates(
    targets: np.ndarray, num_items: int, num_negatives: int = 99, seed: int = 0, *, pad_token_id: int | None
) -> np.ndarray:
    """`[num_samples, 1 + num_negatives]` candidates per sample: column 0 is the target, the other columns are
    distinct items other than the target and the padding id, drawn uniformly with `seed`.

    Args:
        targets: `[num_samples]` the target item of every sample, in the split's sample order.
        num_items: the vocabulary size, padding id included.
        num_negatives: negatives per sample (99 in the paper's 1:99 protocol).
        seed: the same seed gives the same candidates.
        pad_token_id: the model's padding id, never a candidate; `None` when the model has none.
    """
    targets = np.asarray(targets, dtype=np.int64)
    real = num_items - (pad_token_id is not None)
    if real - 1 < num_negatives:
        raise ValueError(
            f"{num_negatives} distinct negatives per sample need at least {num_negatives + 1} real items; the data "
            f"set has {real}. Use fewer negatives."
        )
    rng = np.random.default_rng(seed)
    # a rank among the `real - 1` ids that are neither the target nor padding, mapped to an id below
    draws = rng.integers(0, real - 1, size=(len(targets), num_negatives))
    # rows that drew an item twice draw again, without replacement (a few rows: the data stays cheap to build)
    ordered = np.sort(draws, axis=1)
    for row in np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1)):
        draws[row] = rng.choice(real - 1, size=num_negatives, replace=False)
    # step over the excluded ids in increasing order
    column = targets[:, None]
    if pad_token_id is None:
        excluded = [column]
    else:
        excluded = [np.minimum(column, pad_token_id), np.maximum(column, pad_token_id)]
    for skip in excluded:
        draws = draws + (draws >= skip)
    return np.concatenate([column, draws], axis=1)


__all__ = ["evaluation_candidates"]
