"""The fast TTT layer (dual form, one Python step per mini-batch) against the per-token autograd reference."""

import pytest
import torch
from ttt_reference import reference_ttt

from modeling_ttt4rec import TTT4RecConfig, TTTLayer


def make_layer(layer_type: str, mini_batch_size: int, heads: int = 3, head_dim: int = 4) -> TTTLayer:
    config = TTT4RecConfig(
        num_items=10,
        hidden_size=heads * head_dim,
        num_attention_heads=heads,
        ttt_layer_type=layer_type,
        mini_batch_size=mini_batch_size,
        ttt_base_lr=2.0,
    )
    layer = TTTLayer(config).double()
    generator = torch.Generator().manual_seed(mini_batch_size)
    with torch.no_grad():
        # Non-trivial values everywhere, so that every parameter matters
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.5)
        layer.ttt_norm_weight.add_(1.0)
    return layer


@pytest.mark.parametrize("layer_type", ["linear", "mlp"])
@pytest.mark.parametrize("mini_batch_size", [1, 3, 8])
@pytest.mark.parametrize("seq_len", [8, 9, 24])
def test_dual_form_matches_reference(layer_type, mini_batch_size, seq_len):
    layer = make_layer(layer_type, mini_batch_size)
    batch, heads, dim = 2, layer.num_heads, layer.head_dim
    generator = torch.Generator().manual_seed(seq_len)
    inputs = [
        torch.randn(batch, seq_len, heads * dim, generator=generator, dtype=torch.float64, requires_grad=True),
        *(
            torch.randn(batch, seq_len, heads, dim, generator=generator, dtype=torch.float64, requires_grad=True)
            for _ in range(3)
        ),
    ]
    readout = torch.randn(batch, seq_len, heads, dim, generator=generator, dtype=torch.float64)

    fast, _ = layer(*inputs)
    slow = reference_ttt(layer, *inputs)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-10)

    tensors = [*inputs, *layer.parameters()]
    fast_grads = torch.autograd.grad((fast * readout).sum(), tensors)
    slow_grads = torch.autograd.grad((slow * readout).sum(), tensors)
    names = ["hidden_states", "XQ", "XK", "XV", *(name for name, _ in layer.named_parameters())]
    for name, fast_grad, slow_grad in zip(names, fast_grads, slow_grads, strict=True):
        assert slow_grad.abs().max() > 0, f"reference gradient of {name} is zero: the test would not see a bug"
        torch.testing.assert_close(fast_grad, slow_grad, rtol=1e-8, atol=1e-10, msg=f"gradient of {name}")


@pytest.mark.parametrize("layer_type", ["linear", "mlp"])
def test_float32_matches_reference(layer_type):
    """The model's own precision: float32 dual form against the float64 reference, tight tolerance."""
    layer = make_layer(layer_type, 8, heads=4, head_dim=16)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 19, 64, generator=generator, dtype=torch.float64)
    views = [torch.randn(2, 19, 4, 16, generator=generator, dtype=torch.float64) for _ in range(3)]
    slow = reference_ttt(layer, hidden, *views)
    fast, _ = layer.float()(hidden.float(), *(v.float() for v in views))
    torch.testing.assert_close(fast.double(), slow, rtol=1e-5, atol=1e-5)
