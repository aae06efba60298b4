"""Cross-entropy over all items, fused with the scoring matmul (the training loss of PROTOCOL.md 6).

`full_item_cross_entropy(hidden, item_weight, targets)` equals
`F.cross_entropy(model.score_items(hidden), targets, reduction="sum")` (softmax over items `1 .. N`, the padding id
never gets probability) but never materialises the `[targets, num_items]` score matrix for the backward pass: it
computes the loss and both gradients chunk by chunk in the forward pass, so each chunk of scores is written once and
read while it is still in cache. On a CPU this is the difference between memory-bound and compute-bound training.
"""

import torch
from torch import nn


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


class NextItemTrainingModule(nn.Module):
    """What `accelerate` wraps for training: the model plus the fused loss over the targeted positions.

    `forward` returns the loss to back-propagate (`sum of CE * loss_scale`) and the detached sum of CE. Wrapping this
    module (not only the model) in DDP keeps gradient synchronisation working although the loss does not go through
    `model.forward`.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 256):
        super().__init__()
        self.model = model
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
        weight = self.model.get_output_embeddings().weight
        loss_sum = full_item_cross_entropy(hidden[target_mask], weight, targets, self.chunk_size)
        return loss_sum * loss_scale, loss_sum.detach()


__all__ = ["NextItemTrainingModule", "full_item_cross_entropy"]
