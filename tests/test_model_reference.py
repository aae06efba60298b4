"""The whole model against a slow, literal reference forward (`model_reference.py`): hidden states, the newest
item's scores and the gradients of the training loss with respect to every parameter.

Every parameter is moved far from its initial value, and every epsilon is set to a distinct, large value, so that
each term of the architecture (each norm's epsilon and scale, the gate's GELU, the convolutions' taps, ...) changes
the result well beyond the tolerance.

Both run in float64, so the tolerances are tight (round-off of differently ordered float64 sums); the mutations
these tests must catch change the results by many orders of magnitude more.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import perturbed
from model_reference import reference_hidden_states, reference_item_features, reference_scores

from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction

NUM_ITEMS, SEQ_LEN = 13, 11  # mini_batch_size 4: two full mini-batches and a partial one
LENGTHS = (11, 7, 2)  # right padding of different lengths (7: ends inside a mini-batch)
# the four variants, each backbone and each inner model once with each item scoring (the reference is slow)
CASES = [
    ("transformer", "linear", "embedding"),
    ("transformer", "mlp", "target_mlp"),
    ("mamba", "linear", "target_mlp"),
    ("mamba", "mlp", "embedding"),
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors and thousands of small operations: one intra-op thread is several times faster than a pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturbed_model(backbone: str, ttt_layer_type: str, item_scoring: str) -> TTT4RecForNextItemPrediction:
    config = TTT4RecConfig(
        num_items=NUM_ITEMS,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        backbone=backbone,
        ttt_layer_type=ttt_layer_type,
        mini_batch_size=4,
        item_scoring=item_scoring,
        target_mlp_size=8,
        ttt_base_lr=1.5,
        # distinct and large: each epsilon matters, and one used in place of another shows
        rms_norm_eps=1e-2,
        layer_norm_eps=2e-2,
        ttt_norm_eps=3e-2,
    )
    torch.manual_seed(0)
    return perturbed(TTT4RecForNextItemPrediction(config).double().eval(), 0.3)


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    mask = torch.arange(SEQ_LEN)[None, :] < torch.tensor(LENGTHS)[:, None]
    input_ids = torch.randint(1, NUM_ITEMS, (len(LENGTHS), SEQ_LEN), generator=generator).masked_fill(~mask, 0)
    labels = torch.randint(1, NUM_ITEMS, (len(LENGTHS), SEQ_LEN), generator=generator).masked_fill(~mask, -100)
    return input_ids, mask, labels


@pytest.mark.parametrize(("backbone", "ttt_layer_type", "item_scoring"), CASES)
def test_model_matches_reference(backbone, ttt_layer_type, item_scoring):
    model = perturbed_model(backbone, ttt_layer_type, item_scoring)
    input_ids, mask, labels = batch()

    # the model reads the right-padded batch; the reference reads each row alone, without its padding
    out = model(input_ids, attention_mask=mask.long(), labels=labels, use_cache=False, output_hidden_states=True)
    per_row = [reference_hidden_states(model, input_ids[row : row + 1, :length]) for row, length in enumerate(LENGTHS)]
    # [valid positions, hidden], in the order of `tensor[mask]`
    ref_hidden = torch.cat([hidden[0] for hidden, _ in per_row])
    # (a) hidden states at valid positions: after the embeddings, after each block, after the final norm
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    for i, got in enumerate(out.hidden_states):
        want = torch.cat([layers[i][0] for _, layers in per_row])
        where = f"hidden_states[{i}]"
        torch.testing.assert_close(got[mask], want, rtol=1e-9, atol=1e-9, msg=lambda m, where=where: f"{where}: {m}")
    torch.testing.assert_close(out.last_hidden_state[mask], ref_hidden, rtol=1e-9, atol=1e-9)

    # the newest item's scores; padding gets the lowest value
    ref_logits = reference_scores(model, torch.cat([hidden[0, -1:] for hidden, _ in per_row]))
    pad = model.config.pad_token_id
    assert (out.logits[:, pad] == torch.finfo(out.logits.dtype).min).all()
    real = torch.arange(NUM_ITEMS) != pad
    assert out.logits.dtype == torch.float64  # a float64 model is never rounded down to float32
    torch.testing.assert_close(out.logits[:, real], ref_logits[:, real], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.item_features(), reference_item_features(model), rtol=1e-12, atol=1e-12)

    # (b) gradients of the training loss (cross-entropy of every labelled position) w.r.t. every parameter
    ref_loss = F.cross_entropy(reference_scores(model, ref_hidden), labels[mask])
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-9, atol=1e-9)
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(out.loss, params)
    ref_grads = torch.autograd.grad(ref_loss, params)
    scale = max(g.abs().max() for g in ref_grads)
    for name, got, want in zip(names, grads, ref_grads, strict=True):
        if name == "target_mlp.fc2.bias":
            # its term h . b2 shifts every item's score equally: the softmax loss cannot see it (zero gradient)
            assert want.abs().max() < 1e-12 * scale
        else:
            assert want.abs().max() > 1e-3 * scale, f"the reference gradient of {name} is ~0: no test of it"
        message = f"gradient of {name}"
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11 * scale, msg=lambda m, w=message: f"{w}: {m}")
