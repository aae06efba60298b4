"""A slow, obviously-correct TTT layer: the oracle the fast dual form is tested against.

It shares no math with `modeling_ttt4rec/ttt.py`: each token's inner gradient is taken with `torch.autograd.grad`
on the literal inner loss, the mini-batch rule is applied token by token, the rotary embedding uses complex numbers
and the LayerNorm is torch's.
"""

import torch
import torch.nn.functional as F

from modeling_ttt4rec import TTTLayer


def rotate(x: torch.Tensor, theta: float, mini_batch_size: int) -> torch.Tensor:
    """Interleaved RoPE of `x` `[batch, seq, heads, dim]` at position (t mod mini_batch_size), with complex numbers."""
    batch, seq, heads, dim = x.shape
    position = torch.arange(seq) % mini_batch_size
    freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    rotation = torch.polar(torch.ones(seq, dim // 2, dtype=torch.float64), position[:, None] * freq[None, :])
    pairs = torch.view_as_complex(x.double().reshape(batch, seq, heads, dim // 2, 2).contiguous())
    return torch.view_as_real(pairs * rotation[None, :, None, :]).reshape(x.shape).to(x.dtype)


def inner_model(layer: TTTLayer, x: torch.Tensor, weights: dict[str, torch.Tensor], head: int) -> torch.Tensor:
    """`f(x; W) = x + LN(g(x; W))` for one token of one head."""
    if layer.layer_type == "linear":
        z = x @ weights["W1"] + weights["b1"][0]
    else:
        z = F.gelu(x @ weights["W1"] + weights["b1"][0], approximate="tanh") @ weights["W2"] + weights["b2"][0]
    normed = F.layer_norm(z, (z.shape[-1],), layer.ttt_norm_weight[head], layer.ttt_norm_bias[head], layer.eps)
    return x + normed


def reference_ttt(
    layer: TTTLayer, hidden_states: torch.Tensor, XQ: torch.Tensor, XK: torch.Tensor, XV: torch.Tensor
) -> torch.Tensor:
    """Outputs `[batch, seq, heads, head_dim]` of the TTT layer, one token at a time."""
    batch, seq, heads, _ = XQ.shape
    b = layer.mini_batch_size
    XQ, XK = rotate(XQ, layer.rope_theta, b), rotate(XK, layer.rope_theta, b)
    outputs = [[[None] * heads for _ in range(seq)] for _ in range(batch)]
    for row in range(batch):
        for head in range(heads):
            weights = {name: getattr(layer, name)[head] for name in layer.weight_names}
            for start in range(0, seq, b):
                # every gradient in this mini-batch is taken at the weights from its start
                start_weights = weights
                grad_sums = {name: torch.zeros_like(w) for name, w in start_weights.items()}
                for t in range(start, min(start + b, seq)):
                    i = t - start
                    loss = 0.5 * ((inner_model(layer, XK[row, t, head], start_weights, head) - XV[row, t, head]) ** 2)
                    grads = torch.autograd.grad(loss.sum(), list(start_weights.values()), create_graph=True)
                    gate = hidden_states[row, t] @ layer.learnable_ttt_lr_weight[head, 0]
                    lr = (
                        layer.ttt_base_lr * torch.sigmoid(gate + layer.learnable_ttt_lr_bias[head, 0]) / layer.head_dim
                    )
                    token_eta = torch.clamp_min(1.0 / (i + 1) + layer.learnable_token_idx[i], 0.0)
                    grad_sums = {name: grad_sums[name] + lr * g for name, g in zip(start_weights, grads, strict=True)}
                    token_weights = {name: start_weights[name] - token_eta * grad_sums[name] for name in start_weights}
                    outputs[row][t][head] = inner_model(layer, XQ[row, t, head], token_weights, head)
                if min(start + b, seq) - start == b:
                    weights = token_weights
    return torch.stack([torch.stack([torch.stack(per_head) for per_head in per_t]) for per_t in outputs])
