"""A slow, literal forward of the whole `TTT4RecForNextItemPrediction`: the oracle `test_model_reference.py` checks
the model against.

It is written from the architecture as documented (README "The model", the `TTT4RecConfig` docstring, the
official TTT code's conventions), not from the model's modules: it only reads the parameters (by name) and the
config, and recomputes every step with explicit formulas. The one shared piece is the TTT inner loop, taken from
`ttt_reference.py` (itself a per-token `torch.autograd.grad` oracle that shares no math with the fast layer).

    item ids -> embedding E -> dropout (off: eval) -> LayerNorm(layer_norm_eps)
             -> num_hidden_layers x [ (mamba: x + conv(RMSNorm(x))) -> RMSNorm -> sequence block -> +residual
                                      -> RMSNorm -> SwiGLU -> +residual ]
             -> RMSNorm -> scores h . e_i (or h . fc2(relu(fc1(e_i))) with item_scoring="target_mlp")

Only causal computations are involved, so right padding cannot change a valid position: the reference runs every
row at full length and the caller compares valid positions only.
"""

import math

import torch
from ttt_reference import reference_ttt


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`x * rsqrt(mean(x^2) + eps) * weight` (the normalisation of a half-precision input is computed in float32, as
    the official code's `RMSNorm` does; float32 and float64 inputs are normalised in their own dtype)."""
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    normalized = wide * torch.rsqrt(wide.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * normalized.to(x.dtype)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """`(x - mean) / sqrt(var + eps) * weight + bias` over the last dimension (biased variance)."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x W^T (+ b)` with a PyTorch-layout weight `[out, in]`."""
    out = x @ weight.T
    return out if bias is None else out + bias


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU (the official code's gate: "use 'tanh' approximation for matching JAX")."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`out[t, c] = bias[c] + sum_j weight[c, 0, j] * x[t - (kernel - 1) + j, c]`, with `x` zero before the start.

    `x` `[batch, seq, channels]`, `weight` `[channels, 1, kernel]` (a depthwise `nn.Conv1d`'s layout): the last tap
    multiplies the current item, so position `t` only reads positions `<= t`.
    """
    kernel = weight.shape[-1]
    outputs = []
    for t in range(x.shape[1]):
        acc = bias.expand(x.shape[0], -1)
        for j in range(kernel):
            source = t - (kernel - 1) + j
            if source >= 0:
                acc = acc + weight[:, 0, j] * x[:, source]
        outputs.append(acc)
    return torch.stack(outputs, dim=1)


def sequence_block(model, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """The sequence-modeling block on its (normalised) input `x` `[batch, seq, hidden]`."""
    config = model.config
    p = dict(model.named_parameters())
    batch, seq, width = x.shape
    heads, head_dim = config.num_attention_heads, width // config.num_attention_heads
    if config.backbone == "mamba":
        # one shared Q/K projection, then a causal depthwise convolution each
        shared = linear(x, p[f"{prefix}.q_proj.weight"])
        XQ = causal_depthwise_conv(shared, p[f"{prefix}.conv_q.weight"], p[f"{prefix}.conv_q.bias"])
        XK = causal_depthwise_conv(shared, p[f"{prefix}.conv_k.weight"], p[f"{prefix}.conv_k.bias"])
    else:
        XQ, XK = linear(x, p[f"{prefix}.q_proj.weight"]), linear(x, p[f"{prefix}.k_proj.weight"])
    XV = linear(x, p[f"{prefix}.v_proj.weight"])
    views = [v.reshape(batch, seq, heads, head_dim) for v in (XQ, XK, XV)]
    # the inner loop, token by token (the learning-rate gate reads the block input x)
    ttt_out = reference_ttt(model.get_submodule(f"{prefix}.ttt"), x, *views).reshape(batch, seq, width)
    # LayerNorm over the whole width (all heads), eps = ttt_norm_eps (the official code's post_norm)
    out = layer_norm(ttt_out, p[f"{prefix}.post_norm.weight"], p[f"{prefix}.post_norm.bias"], config.ttt_norm_eps)
    if config.backbone == "mamba":
        out = gelu_tanh(linear(x, p[f"{prefix}.g_proj.weight"])) * out
    return linear(out, p[f"{prefix}.o_proj.weight"])


def reference_hidden_states(model, input_ids: torch.LongTensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Hidden states `[batch, seq, hidden]` after the final norm, and the list of the embeddings' and each block's
    outputs (the model's `hidden_states`). Valid positions are exact; padded ones are not meaningful."""
    config = model.config
    assert config.hidden_act == "silu", "the reference writes out SiLU only"
    assert not model.training, "the reference has no dropout: compare in eval mode"
    p = dict(model.named_parameters())
    rms_eps = config.rms_norm_eps

    # item embedding -> (dropout: identity in eval) -> LayerNorm
    h = p["model.item_embeddings.weight"][input_ids]
    ln_weight, ln_bias = p["model.embedding_layer_norm.weight"], p["model.embedding_layer_norm.bias"]
    h = layer_norm(h, ln_weight, ln_bias, config.layer_norm_eps)
    per_layer = [h]

    for i in range(config.num_hidden_layers):
        block = f"model.layers.{i}"
        if config.backbone == "mamba":
            # the input convolution (the TTT code's pre_conv): x + conv(RMSNorm(x))
            normed = rms_norm(h, p[f"{block}.conv_norm.weight"], rms_eps)
            h = h + causal_depthwise_conv(normed, p[f"{block}.conv.weight"], p[f"{block}.conv.bias"])
        x = rms_norm(h, p[f"{block}.seq_norm.weight"], rms_eps)
        h = h + sequence_block(model, f"{block}.seq_modeling_block", x)
        # SwiGLU: down(silu(gate(x)) * up(x))
        x = rms_norm(h, p[f"{block}.ffn_norm.weight"], rms_eps)
        gate, up = linear(x, p[f"{block}.mlp.gate_proj.weight"]), linear(x, p[f"{block}.mlp.up_proj.weight"])
        h = h + linear(silu(gate) * up, p[f"{block}.mlp.down_proj.weight"])
        per_layer.append(h)

    return rms_norm(h, p["model.norm.weight"], rms_eps), per_layer


def reference_item_features(model) -> torch.Tensor:
    """`[num_items, hidden]`: the vectors hidden states are scored against (the tied embedding, or its image through
    the target tower `fc2(relu(fc1(e)))`)."""
    p = dict(model.named_parameters())
    embedding = p["model.item_embeddings.weight"]
    if model.config.item_scoring == "embedding":
        return embedding
    inner = torch.relu(linear(embedding, p["target_mlp.fc1.weight"], p["target_mlp.fc1.bias"]))
    return linear(inner, p["target_mlp.fc2.weight"], p["target_mlp.fc2.bias"])


def reference_scores(model, hidden_states: torch.Tensor) -> torch.Tensor:
    """Scores `[..., num_items]` of every item; the padding id gets the dtype's lowest value."""
    scores = hidden_states @ reference_item_features(model).T
    pad = model.config.pad_token_id
    if pad is not None:
        lowest = torch.full_like(scores[..., pad], torch.finfo(scores.dtype).min)
        scores = torch.cat([scores[..., :pad], lowest[..., None], scores[..., pad + 1 :]], dim=-1)
    return scores
