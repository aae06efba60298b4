"""The TTT layer: a small model per head, trained by gradient descent on a self-supervised loss while it reads.

Notation follows the TTT paper (Sun et al., 2024) and TTT4Rec (Yang et al., 2024). For token `t` of one head:

* `XK_t` is the training view, `XV_t` the label view and `XQ_t` the test view (projections of the input);
* the inner model is `f(x; W) = x + LN(g(x; W))`, with `g` linear (`W1, b1`) or a two-layer MLP
  (`W1, b1, GELU, W2, b2`), and `LN` a LayerNorm with learnable per-head scale and shift;
* the inner loss is `l_t(W) = 0.5 * ||f(XK_t; W) - XV_t||^2`;
* the per-token inner learning rate is `lr_t = ttt_base_lr * sigmoid(x_t w + b) / head_dim`;
* the output at token `t` is `f(XQ_t; W_t)`.

Mini-batch TTT: tokens are grouped into mini-batches of `b = mini_batch_size` positions. All gradients inside a
mini-batch are taken at the weights `W` from the end of the previous mini-batch, and the token at position `i` of
the mini-batch sees

    W_i = W - token_eta_i * G_i,    G_i = sum_{k <= i} lr_k * grad l_k(W),

where `token_eta_i = max(1 / (i + 1) + learnable_token_idx_i, 0)`. At the end of the mini-batch the weights become
`W_{b-1}`. With `b = 1` this is plain online gradient descent.

The "dual form" computes all `f(XQ_i; W_i)` of a mini-batch with matrix products instead of materialising one
weight matrix per token: for one linear map `z = x W + b`,

    x_i W_i + b_i = x_i W + b - sum_{k <= i} token_eta_i lr_k (x_i . xk_k + 1) grad_z_k,

where `grad_z_k` is the gradient of `l_k` with respect to that map's output at token `k`.

The inner-loop state of one sequence is `InnerState`: the weights at the last mini-batch boundary and the gradient
sums `G` of the tokens already read in the current, unfinished mini-batch. Carrying both makes reading a sequence in
chunks of any size exactly equal to reading it at once.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------------------------
# Small pieces of math
# ----------------------------------------------------------------------------------------------------------------


def rotary_cos_sin(num_positions: int, head_dim: int, theta: float, mini_batch_size: int, device, dtype):
    """cos and sin of the rotary angles for slots `0 .. num_positions - 1`, at the position inside the mini-batch.

    Returns two tensors of shape `[num_positions, head_dim // 2]`.
    """
    # float64: the angles are few, and exact angles keep every dtype's rotation as accurate as it can be
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)
    position = torch.arange(num_positions, device=device) % mini_batch_size
    angle = position[:, None].double() * inv_freq[None, :]
    return angle.cos().to(dtype), angle.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of features `(x[2j], x[2j+1])` by the angle of frequency `j` (interleaved RoPE).

    `x` is `[..., seq, head_dim]`; `cos` and `sin` are `[seq, head_dim // 2]`.
    """
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    rotated_even = x_even * cos - x_odd * sin
    rotated_odd = x_even * sin + x_odd * cos
    return torch.stack((rotated_even, rotated_odd), dim=-1).flatten(-2)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last dimension with a per-head scale and shift (`weight`, `bias` broadcast over tokens)."""
    return weight * F.layer_norm(x, x.shape[-1:], eps=eps) + bias


def layer_norm_l2_grad(
    z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """Gradient of `0.5 * ||LN(z) - target||^2` with respect to `z`, in closed form (the LayerNorm backward)."""
    dim = z.shape[-1]
    var, mean = torch.var_mean(z, dim=-1, keepdim=True, unbiased=False)
    std = torch.sqrt(var + eps)
    z_hat = (z - mean) / std
    grad_z_hat = (weight * z_hat + bias - target) * weight
    return (
        dim * grad_z_hat
        - grad_z_hat.sum(dim=-1, keepdim=True)
        - z_hat * (grad_z_hat * z_hat).sum(dim=-1, keepdim=True)
    ) / (dim * std)


def gelu_tanh_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`grad * gelu'(x)` for `F.gelu(x, approximate="tanh")`: PyTorch's own GELU backward, one fused kernel that is
    itself differentiable (the outer training differentiates through the inner gradient)."""
    return torch.ops.aten.gelu_backward(grad, x, approximate="tanh")


def dual_form_linear(
    x_query: torch.Tensor,
    x_key: torch.Tensor,
    grad_z: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eta: torch.Tensor,
    token_eta: torch.Tensor,
    pending_weight: torch.Tensor | None,
    pending_bias: torch.Tensor | None,
) -> torch.Tensor:
    """`x_query_i @ W_i + b_i` for every query `i` of a mini-batch, without materialising `W_i`.

    Shapes: `x_query`, `x_key` `[batch, heads, K, in]`; `grad_z` `[batch, heads, K, out]`; `weight`
    `[batch, heads, in, out]`; `bias` `[batch, heads, 1, out]`; `eta[i, k] = token_eta_i * lr_k` for `k <= i`, else 0,
    `[batch, heads, K, K]`; `token_eta` `[K, 1]`; `pending_*` the gradient sums of earlier tokens of this mini-batch
    (or `None` when there are none), shaped like `weight` / `bias`.
    """
    # [batch, heads, K, K]: the key/query similarity, +1 for the bias
    similarity = x_query @ x_key.transpose(-1, -2) + 1.0
    z = x_query @ weight + bias - (eta * similarity) @ grad_z
    if pending_weight is not None:
        z = z - token_eta * (x_query @ pending_weight + pending_bias)
    return z


def accumulate_gradients(
    x_key: torch.Tensor,
    grad_z: torch.Tensor,
    lr: torch.Tensor,
    pending_weight: torch.Tensor | None,
    pending_bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`G + sum_k lr_k * grad l_k` for one linear map (`grad W = x_k^T grad_z_k`, `grad b = grad_z_k`).

    `lr` is `[batch, heads, K, 1]`; returns tensors shaped like the map's weight and bias.
    """
    weighted = lr * grad_z
    grad_weight = x_key.transpose(-1, -2) @ weighted
    grad_bias = weighted.sum(dim=-2, keepdim=True)
    if pending_weight is not None:
        grad_weight = grad_weight + pending_weight
        grad_bias = grad_bias + pending_bias
    return grad_weight, grad_bias


# ----------------------------------------------------------------------------------------------------------------
# The inner-loop state
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class InnerState:
    """Inner-loop state of one TTT layer for a batch of sequences.

    Attributes:
        weights: `{"W1", "b1"}` (and `{"W2", "b2"}` for the MLP) at the last mini-batch boundary, each
            `[batch, heads, in, out]` or `[batch, heads, 1, out]`.
        pending: the gradient sums `G` of the tokens read since that boundary (same keys and shapes), or `None`
            when no sequence is inside a mini-batch.
    """

    weights: dict[str, torch.Tensor]
    pending: dict[str, torch.Tensor] | None = None


def commit_mini_batch(
    state: InnerState, summed: dict[str, torch.Tensor], last_token_eta: torch.Tensor, finished: torch.Tensor | None
) -> InnerState:
    """State after the last slot of a full mini-batch.

    Rows whose mini-batch is `finished` (they read its last position) take the step `W <- W - token_eta_last * G`
    and start the next mini-batch with no pending gradients. The other rows (their sequence ended inside this
    mini-batch) keep `W` and carry `G` as pending. `finished=None` means every row finished.
    """
    if finished is not None and not torch.compiler.is_compiling():
        # Eager shortcuts (a compiled step cannot branch on data, it takes the general path below)
        if not bool(finished.any()):
            return InnerState(weights=state.weights, pending=summed)  # (most serving steps: no row is at the end)
        if bool(finished.all()):
            finished = None
    stepped = {name: w - last_token_eta * summed[name] for name, w in state.weights.items()}
    if finished is None:
        return InnerState(weights=stepped, pending=None)
    keep = finished.view(-1, 1, 1, 1)
    weights = {name: torch.where(keep, stepped[name], w) for name, w in state.weights.items()}
    pending = {name: torch.where(keep, torch.zeros_like(g), g) for name, g in summed.items()}
    return InnerState(weights=weights, pending=pending)


# ----------------------------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------------------------


class TTTLayer(nn.Module):
    """The TTT layer of one residual block: per-head inner models and their learnable inner learning rates.

    Input: the block's normalised hidden states `X` (for the learning-rate gate) and the views `XQ, XK, XV`,
    `[batch, seq, heads, head_dim]`. Output: `f(XQ_t; W_t)` per token, same shape, and the new `InnerState`.
    """

    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.mini_batch_size = config.mini_batch_size
        self.ttt_base_lr = config.ttt_base_lr
        self.rope_theta = config.rope_theta
        self.eps = config.ttt_norm_eps
        self.layer_type = config.ttt_layer_type
        heads, dim = self.num_heads, self.head_dim

        if self.layer_type == "linear":
            self.W1 = nn.Parameter(torch.empty(heads, dim, dim))
            self.b1 = nn.Parameter(torch.empty(heads, 1, dim))
        else:
            inner = config.ttt_mlp_expansion * dim
            self.W1 = nn.Parameter(torch.empty(heads, dim, inner))
            self.b1 = nn.Parameter(torch.empty(heads, 1, inner))
            self.W2 = nn.Parameter(torch.empty(heads, inner, dim))
            self.b2 = nn.Parameter(torch.empty(heads, 1, dim))
        # LayerNorm of the inner model's output, per head
        self.ttt_norm_weight = nn.Parameter(torch.empty(heads, dim))
        self.ttt_norm_bias = nn.Parameter(torch.empty(heads, dim))
        # lr_t = ttt_base_lr * sigmoid(x_t w_h + b_h) / head_dim
        self.learnable_ttt_lr_weight = nn.Parameter(torch.empty(heads, 1, config.hidden_size))
        self.learnable_ttt_lr_bias = nn.Parameter(torch.empty(heads, 1))
        # token_eta_i = max(1 / (i + 1) + learnable_token_idx_i, 0)
        self.learnable_token_idx = nn.Parameter(torch.empty(self.mini_batch_size))
        # constant rotary tables by (device, dtype), not part of the state dict
        self._rotary_tables: dict = {}

    def rotary_table(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """`rotary_cos_sin` for the `mini_batch_size` positions of a mini-batch, computed once per device and dtype
        (the serving step needs it at every item)."""
        key = (device, dtype)
        if key not in self._rotary_tables:
            self._rotary_tables[key] = rotary_cos_sin(
                self.mini_batch_size, self.head_dim, self.rope_theta, self.mini_batch_size, device, dtype
            )
        return self._rotary_tables[key]

    @property
    def weight_names(self) -> tuple[str, ...]:
        return ("W1", "b1") if self.layer_type == "linear" else ("W1", "b1", "W2", "b2")

    def initial_state(self, batch_size: int) -> InnerState:
        """The learned initial weights, one copy per row (still attached to the parameters' graph)."""
        weights = {
            name: getattr(self, name).unsqueeze(0).expand(batch_size, *getattr(self, name).shape)
            for name in self.weight_names
        }
        return InnerState(weights=weights, pending=None)

    def token_eta(self, num_slots: int, device) -> torch.Tensor:
        """`token_eta_i` for positions `0 .. num_slots - 1` of a mini-batch, `[num_slots, 1]`."""
        position = torch.arange(1, num_slots + 1, device=device, dtype=self.learnable_token_idx.dtype)
        return torch.clamp_min(1.0 / position + self.learnable_token_idx[:num_slots], 0.0)[:, None]

    def inner_lr(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Per-token inner learning rate `[batch, heads, seq]` from the block input `[batch, seq, hidden]`."""
        gate = torch.einsum("blc,hc->bhl", hidden_states, self.learnable_ttt_lr_weight[:, 0])
        gate = gate + self.learnable_ttt_lr_bias
        return self.ttt_base_lr * torch.sigmoid(gate) / self.head_dim

    def views(
        self,
        hidden_states: torch.Tensor,
        XQ: torch.Tensor,
        XK: torch.Tensor,
        XV: torch.Tensor,
        valid: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The views heads first, `[batch, heads, seq, head_dim]`, with the rotary angles `cos, sin` applied to
        `XQ` and `XK`, and the per-token inner learning rate `[batch, heads, seq, 1]` (zero on padding)."""
        XQ, XK, XV = (x.transpose(1, 2) for x in (XQ, XK, XV))
        XQ, XK = apply_rotary(XQ, cos, sin), apply_rotary(XK, cos, sin)
        lr = self.inner_lr(hidden_states)
        if valid is not None:
            lr = lr * valid[:, None, :].to(lr.dtype)
        return XQ, XK, XV, lr.unsqueeze(-1)

    def mini_batch(
        self,
        state: InnerState,
        XQ: torch.Tensor,
        XK: torch.Tensor,
        XV: torch.Tensor,
        lr: torch.Tensor,
        token_eta: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Outputs of one mini-batch of `K` slots and the gradient sums `G` at its last slot.

        `XQ, XK, XV` are `[batch, heads, K, head_dim]`, `lr` is `[batch, heads, K, 1]` (zero on padding),
        `token_eta` is `[K, 1]`.
        """
        weights, pending = state.weights, state.pending or {}
        ln_weight = self.ttt_norm_weight[:, None, :]
        ln_bias = self.ttt_norm_bias[:, None, :]
        # eta[i, k] = token_eta_i * lr_k for k <= i: [batch, heads, K, K]
        eta = torch.tril(token_eta * lr.transpose(-1, -2))
        # f(x) = x + LN(g(x)), so the reconstruction target of g's normalised output is XV - XK
        target = XV - XK

        summed = {}
        if self.layer_type == "linear":
            Z1 = XK @ weights["W1"] + weights["b1"]
            grad_Z1 = layer_norm_l2_grad(Z1, target, ln_weight, ln_bias, self.eps)
            Z1_bar = dual_form_linear(
                XQ, XK, grad_Z1, weights["W1"], weights["b1"], eta, token_eta, pending.get("W1"), pending.get("b1")
            )
            summed["W1"], summed["b1"] = accumulate_gradients(XK, grad_Z1, lr, pending.get("W1"), pending.get("b1"))
            return XQ + layer_norm(Z1_bar, ln_weight, ln_bias, self.eps), summed

        # Two-layer MLP: forward and backward of the inner loss at W, for every key token
        Z1 = XK @ weights["W1"] + weights["b1"]
        X2 = F.gelu(Z1, approximate="tanh")
        Z2 = X2 @ weights["W2"] + weights["b2"]
        grad_Z2 = layer_norm_l2_grad(Z2, target, ln_weight, ln_bias, self.eps)
        grad_Z1 = gelu_tanh_backward(grad_Z2 @ weights["W2"].transpose(-1, -2), Z1)
        # The same two layers for every query token, each at its own updated weights
        Z1_bar = dual_form_linear(
            XQ, XK, grad_Z1, weights["W1"], weights["b1"], eta, token_eta, pending.get("W1"), pending.get("b1")
        )
        X2_bar = F.gelu(Z1_bar, approximate="tanh")
        Z2_bar = dual_form_linear(
            X2_bar, X2, grad_Z2, weights["W2"], weights["b2"], eta, token_eta, pending.get("W2"), pending.get("b2")
        )
        summed["W1"], summed["b1"] = accumulate_gradients(XK, grad_Z1, lr, pending.get("W1"), pending.get("b1"))
        summed["W2"], summed["b2"] = accumulate_gradients(X2, grad_Z2, lr, pending.get("W2"), pending.get("b2"))
        return XQ + layer_norm(Z2_bar, ln_weight, ln_bias, self.eps), summed

    def forward(
        self,
        hidden_states: torch.Tensor,
        XQ: torch.Tensor,
        XK: torch.Tensor,
        XV: torch.Tensor,
        state: InnerState | None = None,
        valid: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, InnerState]:
        """Run the inner loop over new items of each row.

        Args:
            hidden_states: `[batch, seq, hidden]`, the input of the learning-rate gate.
            XQ, XK, XV: `[batch, seq, heads, head_dim]`, before the rotary embedding.
            state: the state to continue from (default: the learned initial weights).
            valid: `[batch, seq]` bool, `False` on padding (right padding). `None` means every slot is an item.
            offsets: `[batch]`, the position inside its current mini-batch at which each row continues (items
                read so far modulo `mini_batch_size`). `None` means every row starts a mini-batch.

        Returns:
            `f(XQ_t; W_t)` `[batch, seq, heads, head_dim]` and the state after the last item of each row.
        """
        if offsets is not None and XQ.shape[1] == 1:
            return self.step(hidden_states, XQ, XK, XV, state, valid, offsets)
        if offsets is None or not bool(offsets.any()):
            return self.scan(hidden_states, XQ, XK, XV, state, valid)
        # Rows continue at different positions of their mini-batch: shift each row right by its offset so that
        # slot j of every row sits at position j mod mini_batch_size; the leading slots are not items.
        seq_len = XQ.shape[1]
        if valid is None:
            valid = torch.ones(XQ.shape[:2], dtype=torch.bool, device=XQ.device)
        index = torch.arange(seq_len, device=XQ.device)[None, :] + offsets[:, None]
        grid_len = seq_len + int(offsets.max())
        shifted = [shift_right(x, index, grid_len) for x in (hidden_states, XQ, XK, XV, valid)]
        output, state = self.scan(*shifted[:4], state, shifted[4])
        return output.gather(1, index.view(*index.shape, 1, 1).expand_as(XQ)), state

    def step(
        self,
        hidden_states: torch.Tensor,
        XQ: torch.Tensor,
        XK: torch.Tensor,
        XV: torch.Tensor,
        state: InnerState,
        valid: torch.Tensor | None,
        offsets: torch.Tensor,
    ) -> tuple[torch.Tensor, InnerState]:
        """One new item per row, each at its own position `offsets` inside its mini-batch (the serving step).

        The same mini-batch math as `scan` with a one-slot mini-batch whose position differs per row, so that no
        row pays for the slots before its position. Arguments as `forward`, with `seq = 1`.
        """
        cos, sin = self.rotary_table(XQ.device, XQ.dtype)
        # [batch, 1, 1, head_dim // 2]: each row's angle at its position
        cos, sin = cos[offsets][:, None, None], sin[offsets][:, None, None]
        # [batch, heads, 1, head_dim] and [batch, heads, 1, 1]
        XQ, XK, XV, lr = self.views(hidden_states, XQ, XK, XV, valid, cos, sin)
        # [batch, 1, 1, 1]: each row's token_eta at its position
        token_eta = self.token_eta(self.mini_batch_size, XQ.device).to(XQ.dtype)[offsets][:, None, None]
        out, summed = self.mini_batch(state, XQ, XK, XV, lr, token_eta)
        finished = offsets == self.mini_batch_size - 1
        if valid is not None:
            finished = finished & valid[:, 0]
        return out.transpose(1, 2), commit_mini_batch(state, summed, token_eta, finished)

    def scan(
        self,
        hidden_states: torch.Tensor,
        XQ: torch.Tensor,
        XK: torch.Tensor,
        XV: torch.Tensor,
        state: InnerState | None,
        valid: torch.Tensor | None,
    ) -> tuple[torch.Tensor, InnerState]:
        """The inner loop over mini-batches; slot 0 starts a mini-batch in every row. Arguments as `forward`."""
        batch_size, seq_len = XQ.shape[:2]
        if state is None:
            state = self.initial_state(batch_size)
        cos, sin = rotary_cos_sin(seq_len, self.head_dim, self.rope_theta, self.mini_batch_size, XQ.device, XQ.dtype)
        # [batch, heads, seq, head_dim] and [batch, heads, seq, 1]
        XQ, XK, XV, lr = self.views(hidden_states, XQ, XK, XV, valid, cos, sin)
        full_token_eta = self.token_eta(self.mini_batch_size, XQ.device).to(XQ.dtype)

        outputs = []
        for start in range(0, seq_len, self.mini_batch_size):
            end = min(start + self.mini_batch_size, seq_len)
            token_eta = full_token_eta[: end - start]
            out, summed = self.mini_batch(
                state, XQ[:, :, start:end], XK[:, :, start:end], XV[:, :, start:end], lr[:, :, start:end], token_eta
            )
            outputs.append(out)
            if end - start == self.mini_batch_size:
                finished = None if valid is None else valid[:, end - 1]
                state = commit_mini_batch(state, summed, token_eta[-1], finished)
            else:
                state = InnerState(weights=state.weights, pending=summed)
        # [batch, seq, heads, head_dim]
        return torch.cat(outputs, dim=2).transpose(1, 2), state


def shift_right(x: torch.Tensor, index: torch.Tensor, length: int) -> torch.Tensor:
    """Place `x[:, t]` at slot `index[:, t]` of a zero tensor with `length` slots (dimension 1)."""
    shape = (x.shape[0], length, *x.shape[2:])
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.new_zeros(shape).scatter(1, index, x)
