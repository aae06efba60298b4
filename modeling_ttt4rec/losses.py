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
from torch import nn

from .sampling import sample_negatives

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


class NextItemTrainingModule(nn.Module):
    """What `accelerate` wraps for training: the model plus the loss over the targeted positions.

    `forward` returns the loss to back-propagate (`sum of per-target losses * loss_scale`) and the detached sum.
    Wrapping this module (not only the model) in DDP keeps gradient synchronisation working although the loss does
    not go through `model.forward`.

    Args:
        model: a `TTT4RecForNextItemPrediction`.
        loss_type: `"full_ce"` (softmax cross-entropy over all items, the first paper's) or `"sampled_bce"` (binary
            cross-entropy against `num_negatives` uniform negatives per target, the second paper's).
        num_negatives: negatives per target for `"sampled_bce"`.
        chunk_size: rows scored at a time by the fused full cross-entropy.
    """

    def __init__(self, model: nn.Module, loss_type: str = "full_ce", num_negatives: int = 4, chunk_size: int = 256):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"Unknown loss {loss_type!r}; choose one of {LOSS_TYPES}.")
        if num_negatives < 1:
            raise ValueError(f"`num_negatives` must be >= 1, got {num_negatives}.")
        self.model = model
        self.loss_type = loss_type
        self.num_negatives = num_negatives
        self.chunk_size = chunk_size

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        target_mask: torch.Tensor,
        targets: torch.Tensor,
        loss_scale: float = 1.0,
        **unused,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model.model(input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        hidden = hidden[target_mask]
        if self.loss_type == "full_ce":
            features = self.model.item_features()  # the tied embedding, or its image through the target tower
            loss_sum = full_item_cross_entropy(hidden, features, targets, self.chunk_size)
        else:
            negatives = sample_negatives(targets, self.model.config.num_items, self.num_negatives)
            scores = self.model.score_candidates(hidden, torch.cat([targets[:, None], negatives], dim=1))
            loss_sum = sampled_binary_cross_entropy(scores[:, 0], scores[:, 1:])
        return loss_sum * loss_scale, loss_sum.detach()


__all__ = ["LOSS_TYPES", "NextItemTrainingModule", "full_item_cross_entropy", "sampled_binary_cross_entropy"]
