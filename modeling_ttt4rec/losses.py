"""The training losses: cross-entropy over all items (PROTOCOL.md 6) and sampled binary cross-entropy (PROTOCOL.md 9).

The full cross-entropy is fused with the scoring matmul.

`full_item_cross_entropy(hidden, item_weight, targets)` equals
`F.cross_entropy(model.score_items(hidden), targets, reduction="sum")` (softmax over items `1 .. N`, the padding id
never gets probability) but never materialises the `[targets, num_items]` score matrix for the backward pass: it
computes the loss and both gradients chunk by chunk in the forward pass, so each chunk of scores is written once and
read while it is still in cache. On a CPU this is the difference between memory-bound and compute-bound training.
"""

import torch
import torch.nn.functional as F

LOSS_TYPES = ("full_ce", "sampled_bce")


class _FullItemCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, item_weight: torch.Tensor, targets: torch.Tensor, chunk_size: int):
        weight = item_weight[1:]
        columns = targets - 1
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(item_weight)
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
            grad_weight[1:].addmm_(probs.T, h)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None


def full_item_cross_entropy(
    hidden: torch.Tensor, item_weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 256
) -> torch.Tensor:
    """Summed cross-entropy of `targets` (item ids `>= 1`) under a softmax over items `1 .. N`.

    Args:
        hidden: `[T, hidden]` final hidden states at the target positions.
        item_weight: `[num_items, hidden]` the (tied) item embedding matrix; row 0 is the padding id.
        targets: `[T]` the target item ids.
        chunk_size: rows scored at a time (keep `chunk_size * num_items * 4` bytes within the CPU cache).

    Returns:
        The sum (not the mean) of the per-target losses, in float32, computed without autocast.
    """
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"{hidden.shape[0]} hidden states for {targets.shape[0]} targets.")
    if targets.numel() == 0:
        return hidden.sum() * 0.0
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        return _FullItemCrossEntropy.apply(hidden.float(), item_weight.float(), targets.long(), chunk_size)


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
    positives: torch.Tensor, num_items: int, num_negatives: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`[T, num_negatives]` item ids drawn uniformly (with replacement) from `1 .. num_items - 1` minus each
    row's positive.

    Args:
        positives: `[T]` the positive item ids (`>= 1`).
        num_items: the vocabulary size, padding id 0 included.
        num_negatives: negatives per positive.
        generator: the random generator (default: torch's global one).
    """
    if num_items < 3:
        raise ValueError(f"Sampling negatives needs at least 2 real items (num_items >= 3), got {num_items}.")
    # uniform over the num_items - 2 ids that are neither padding nor the positive: draw from 1 .. num_items - 2
    # and move the draws at or above the positive one up
    draws = torch.randint(
        1, num_items - 1, (positives.shape[0], num_negatives), generator=generator, device=positives.device
    )
    return draws + (draws >= positives[:, None]).long()


__all__ = ["LOSS_TYPES", "full_item_cross_entropy", "sample_negatives", "sampled_binary_cross_entropy"]
