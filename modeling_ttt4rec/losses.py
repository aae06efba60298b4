"""The training losses: cross-entropy over all items (docs/protocol.md section 6), sampled softmax (the same
cross-entropy over each target and negatives shared by the batch, logQ-corrected) and sampled binary cross-entropy
(docs/protocol.md section 9).

`TTT4RecForNextItemPrediction.forward` computes them from `labels` according to `config.loss_type`; these are the
implementations. Every score is `hidden . item_features[i]` (the model's `item_features()`, as in `score_items` and
`score_candidates`), and the padding id is never a target, a negative or a class.

The full cross-entropy is fused with the scoring matmul.
`full_item_cross_entropy(hidden, model.item_features(), targets, pad_token_id=pad)` equals
`F.cross_entropy(model.score_items(hidden), targets, reduction="sum")` (softmax over the items other than the padding
id, which never gets probability) but never materialises the `[targets, num_items]` score matrix for the backward
pass: it computes the loss and both gradients chunk by chunk in the forward pass, so each chunk of scores is written
once and read while it is still in cache. On a CPU this is the difference between memory-bound and compute-bound
training.
"""

import math

import torch
import torch.nn.functional as F

# the training losses a recommender computes from `labels` (`config.loss_type`; recommender_head.RecommenderHeadMixin)
LOSS_TYPES = ("full_ce", "sampled_softmax", "sampled_bce")
# how `loss_type="sampled_softmax"` draws its negatives (`shared_negatives`)
NEGATIVE_SAMPLERS = ("uniform", "popularity")

# The config fields of the loss, the same in every recommender's config (`document_loss_settings` puts this in the
# config's docstring, `check_loss_settings` checks the values).
LOSS_SETTINGS_DOC = """\
        loss_type (`str`, *optional*, defaults to `"full_ce"`):
            The loss `forward` computes from `labels`: `"full_ce"` is the softmax cross-entropy over all items
            (padding id excluded; Yang, Wang and Ge, 2024); `"sampled_softmax"` is the same cross-entropy over each
            target and `num_negatives` negatives shared by the batch (drawn by `negative_sampler`, logQ-corrected,
            negatives equal to the target masked), whose cost does not grow with the catalog; `"sampled_bce"` is
            binary cross-entropy of each target against `num_negatives` items drawn uniformly from the other real
            items (Zhan, Lv, Zhang and Li, 2025).
        num_negatives (`int`, *optional*, defaults to 4):
            Negatives drawn at each step: per target with `loss_type="sampled_bce"`, shared by all the targets of
            the batch with `"sampled_softmax"` (use hundreds to thousands there, e.g. 1024; at least the number of
            items gives the full softmax). Unused by `"full_ce"`.
        negative_sampler (`str`, *optional*, defaults to `"uniform"`):
            How `loss_type="sampled_softmax"` draws its negatives: `"uniform"` over the real items, or
            `"popularity"` in proportion to each item's training-split count plus one (the trainer gives the model
            the counts, `set_item_counts`).
        in_batch_negatives (`bool`, *optional*, defaults to `False`):
            With `loss_type="sampled_softmax"`, also use the batch's other targets as negatives (logQ-corrected by
            their number of occurrences in the batch).
"""
_LOSS_SETTINGS_MARKER = "        [loss settings]\n"


def document_loss_settings(config_class: type) -> type:
    """Class decorator: the config's docstring gets `LOSS_SETTINGS_DOC` at its `[loss settings]` line (its `Args:`
    section then documents `loss_type`, `num_negatives`, `negative_sampler` and `in_batch_negatives`, the fields
    the config declares with the defaults `"full_ce"`, 4, `"uniform"` and False)."""
    if _LOSS_SETTINGS_MARKER not in (config_class.__doc__ or ""):
        raise TypeError(f"{config_class.__name__}'s docstring has no `[loss settings]` line in its `Args:` section.")
    config_class.__doc__ = config_class.__doc__.replace(_LOSS_SETTINGS_MARKER, LOSS_SETTINGS_DOC)
    return config_class


def check_loss_settings(config) -> None:
    """Raise a `ValueError` naming the setting for a loss setting of `config` the model cannot train with."""
    if config.num_negatives < 1:
        raise ValueError(f"`num_negatives` must be >= 1, got {config.num_negatives}.")
    if config.loss_type not in LOSS_TYPES:
        raise ValueError(f"Unknown `loss_type` {config.loss_type!r}; choose one of {LOSS_TYPES}.")
    if config.negative_sampler not in NEGATIVE_SAMPLERS:
        raise ValueError(f"Unknown `negative_sampler` {config.negative_sampler!r}; choose one of {NEGATIVE_SAMPLERS}.")


def _without_row(matrix: torch.Tensor, row: int | None) -> torch.Tensor:
    """`matrix` without row `row` (all of it when `row` is None)."""
    if row is None:
        return matrix
    return torch.cat([matrix[:row], matrix[row + 1 :]])


def _with_zero_row(matrix: torch.Tensor, row: int | None) -> torch.Tensor:
    """The inverse of `_without_row` for gradients: a zero row put back at `row`."""
    if row is None:
        return matrix
    return torch.cat([matrix[:row], matrix.new_zeros(1, matrix.shape[1]), matrix[row:]])


class _FullItemCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden: torch.Tensor, item_features: torch.Tensor, targets: torch.Tensor, pad: int | None, chunk_size: int
    ):
        weight = _without_row(item_features, pad)  # the classes: every item but the padding id
        columns = targets if pad is None else targets - (targets > pad).long()
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight)
        total = hidden.new_zeros((), dtype=torch.float64)
        for s in range(0, hidden.shape[0], chunk_size):
            h = hidden[s : s + chunk_size]
            c = columns[s : s + chunk_size]
            scores = h @ weight.T
            lse = torch.logsumexp(scores, dim=1)
            rows = torch.arange(h.shape[0], device=h.device)
            total += (lse - scores[rows, c]).sum(dtype=torch.float64)
            # softmax - one-hot, in place: d loss / d scores
            probs = scores.sub_(lse[:, None]).exp_()
            probs[rows, c] -= 1.0
            grad_hidden[s : s + chunk_size] = probs @ weight
            grad_weight.addmm_(probs.T, h)
        ctx.save_for_backward(grad_hidden, _with_zero_row(grad_weight, pad))
        return total.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None, None


def full_item_cross_entropy(
    hidden: torch.Tensor,
    item_features: torch.Tensor,
    targets: torch.Tensor,
    *,
    pad_token_id: int | None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Summed cross-entropy of `targets` under a softmax over every item but the padding id.

    Args:
        hidden: `[T, hidden]` final hidden states at the target positions.
        item_features: `[num_items, hidden]` the vectors items are scored against (`model.item_features()`: the
            tied item embedding, or its image through the target tower).
        targets: `[T]` the target item ids (never the padding id).
        pad_token_id: the padding id, excluded from the softmax; `None` when the model has none.
        chunk_size: rows scored at a time (keep `chunk_size * num_items * 4` bytes within the CPU cache).

    Returns:
        The sum (not the mean) of the per-target losses, computed without autocast in float32 (float64 when an
        input is float64).
    """
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"{hidden.shape[0]} hidden states for {targets.shape[0]} targets.")
    if targets.numel() == 0:
        return hidden.sum() * 0.0
    # float32 (the trainer's case, also under mixed precision), or float64 for a float64 model
    dtype = torch.promote_types(torch.promote_types(hidden.dtype, item_features.dtype), torch.float32)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        return _FullItemCrossEntropy.apply(
            hidden.to(dtype), item_features.to(dtype), targets.long(), pad_token_id, chunk_size
        )


def sampled_binary_cross_entropy(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each positive (label 1) and its sampled negatives (label 0), averaged over the
    `1 + k` instances of each positive and summed over positives.

    Args:
        positive_scores: `[T]` scores (logits) of the positives.
        negative_scores: `[T, k]` scores of their negatives.

    Returns:
        `sum_t (softplus(-s_t) + sum_j softplus(s_tj)) / (1 + k)`, in float32: the trainer divides by the number of
        positives, which makes it the mean over all instances.
    """
    if negative_scores.dim() != 2 or negative_scores.shape[0] != positive_scores.shape[0]:
        raise ValueError(
            f"`negative_scores` must be [T, k] for {positive_scores.shape[0]} positives, got "
            f"{tuple(negative_scores.shape)}."
        )
    positive_scores, negative_scores = positive_scores.float(), negative_scores.float()
    # -log sigmoid(s) = softplus(-s), -log(1 - sigmoid(s)) = softplus(s)
    per_positive = F.softplus(-positive_scores) + F.softplus(negative_scores).sum(dim=1)
    return per_positive.sum() / (1 + negative_scores.shape[1])


def sample_negatives(
    positives: torch.Tensor,
    num_items: int,
    num_negatives: int,
    generator: torch.Generator | None = None,
    *,
    pad_token_id: int | None,
) -> torch.Tensor:
    """`[T, num_negatives]` item ids drawn uniformly (with replacement) from the items other than each row's
    positive and the padding id.

    Args:
        positives: `[T]` the positive item ids (never the padding id).
        num_items: the vocabulary size, padding id included.
        num_negatives: negatives per positive.
        generator: the random generator (default: torch's global one).
        pad_token_id: the padding id, never drawn; `None` when the model has none.
    """
    real = num_items - (pad_token_id is not None)
    if real < 2:
        raise ValueError(
            f"Sampling negatives needs at least 2 real items; num_items={num_items} with padding id "
            f"{pad_token_id} leaves {real}."
        )
    # uniform over the ids that are neither the positive nor padding: draw a rank among them, then step over the
    # excluded ids in increasing order
    draws = torch.randint(
        0, real - 1, (positives.shape[0], num_negatives), generator=generator, device=positives.device
    )
    if pad_token_id is None:
        return draws + (draws >= positives[:, None]).long()
    low = positives.clamp(max=pad_token_id)[:, None]
    high = positives.clamp(min=pad_token_id)[:, None]
    draws = draws + (draws >= low).long()
    return draws + (draws >= high).long()


def shared_negatives(
    num_items: int,
    num_negatives: int,
    *,
    pad_token_id: int | None,
    item_counts: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The negatives of a sampled-softmax step, shared by every target of the batch, and their logQ correction.

    Uniform (`item_counts=None`): `num_negatives` ids drawn uniformly with replacement from the real items; when
    `num_negatives` is at least the number of real items, each real item once instead (the sampled softmax is then
    the full softmax). Popularity: `num_negatives` ids drawn with replacement with probability proportional to
    `item_counts + 1` (the training-split counts, plus one so that every real item can be drawn). The padding id is
    never drawn.

    Returns:
        `(ids [K], log_expected [K])`: the ids, and the log of the expected number of times each one appears among
        the `K` draws (`log(K q_i)` for draws with replacement, 0 when every item is taken once). Subtracting it
        from the negative's logit makes `sum_j exp(s_j - log_expected_j)` an unbiased estimate of the sum of
        `exp(s_i)` over all items (docs/scaling.md).
    """
    real = num_items - (pad_token_id is not None)
    if real < 1:
        raise ValueError(f"Sampling negatives needs a real item; num_items={num_items} leaves none.")
    if item_counts is None:
        if num_negatives >= real:
            ids = torch.arange(real, device=device)
            log_expected = torch.zeros(real, device=device)
        else:
            ids = torch.randint(0, real, (num_negatives,), generator=generator, device=device)
            log_expected = torch.full((num_negatives,), math.log(num_negatives / real), device=device)
        # ranks among the real items -> ids, stepping over the padding id
        return (ids if pad_token_id is None else ids + (ids >= pad_token_id).long()), log_expected
    if item_counts.shape != (num_items,):
        raise ValueError(
            f"`item_counts` must be [num_items] = [{num_items}] (the training-split count of every id), got "
            f"{tuple(item_counts.shape)}."
        )
    weights = item_counts.double() + 1.0
    if pad_token_id is not None:
        weights[pad_token_id] = 0.0
    cdf = weights.cumsum(0)
    total = cdf[-1]
    # inverse-CDF draws: the first id whose cumulative weight exceeds a uniform draw (never a zero-weight id)
    draws = torch.rand(num_negatives, generator=generator, device=device, dtype=torch.float64) * total
    ids = torch.searchsorted(cdf.to(draws.device), draws, right=True).clamp_(max=num_items - 1)
    log_expected = torch.log(num_negatives * weights.to(draws.device)[ids] / total).float()
    return ids, log_expected


def sampled_softmax_cross_entropy(
    hidden: torch.Tensor,
    target_features: torch.Tensor,
    targets: torch.Tensor,
    negative_features: torch.Tensor,
    negatives: torch.Tensor,
    log_expected: torch.Tensor,
    *,
    in_batch_negatives: bool = False,
) -> torch.Tensor:
    """Summed cross-entropy of each target under a softmax over itself and the negatives shared by the batch, with
    the logQ correction and accidental hits removed.

    The logit of target `t` is `s_t = h . f_t`; the logit of negative `j` is `h . f_j - log_expected_j`
    (`shared_negatives`); a negative equal to the row's target is masked out (it is already the positive). With
    `in_batch_negatives`, the other rows' targets are negatives too, each corrected by the log of its number of
    occurrences among the batch's targets (so an item counts once), the row's own target item masked. When the
    negatives are every real item once (`log_expected = 0`), this is `full_item_cross_entropy` exactly.

    Args:
        hidden: `[T, hidden]` the hidden states before the targets.
        target_features: `[T, hidden]` the item features of the targets.
        targets: `[T]` the target ids.
        negative_features: `[K, hidden]` the item features of the negatives.
        negatives: `[K]` the negative ids.
        log_expected: `[K]` their logQ correction.
        in_batch_negatives: also use the batch's other targets as negatives.

    Returns:
        The sum over targets, in float32 (float64 when an input is float64).
    """
    if hidden.shape[0] != targets.shape[0] or target_features.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{hidden.shape[0]} hidden states and {target_features.shape[0]} features for {targets.shape[0]} targets."
        )
    dtype = torch.promote_types(torch.promote_types(hidden.dtype, negative_features.dtype), torch.float32)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        hidden, target_features = hidden.to(dtype), target_features.to(dtype)
        positive = (hidden * target_features).sum(dim=1, keepdim=True)
        logits = hidden @ negative_features.to(dtype).T - log_expected.to(dtype)
        hits = negatives[None, :] == targets[:, None]
        if in_batch_negatives:
            same = targets[None, :] == targets[:, None]  # [T, T]: row i's target is column j's item
            batch_logits = hidden @ target_features.T - torch.log(same.sum(dim=0).to(dtype))
            logits, hits = torch.cat([logits, batch_logits], dim=1), torch.cat([hits, same], dim=1)
        logits = logits.masked_fill(hits, float("-inf"))
        return (torch.logsumexp(torch.cat([positive, logits], dim=1), dim=1) - positive[:, 0]).sum()


__all__ = [
    "LOSS_SETTINGS_DOC",
    "LOSS_TYPES",
    "NEGATIVE_SAMPLERS",
    "check_loss_settings",
    "document_loss_settings",
    "full_item_cross_entropy",
    "sample_negatives",
    "sampled_binary_cross_entropy",
    "sampled_softmax_cross_entropy",
    "shared_negatives",
]
