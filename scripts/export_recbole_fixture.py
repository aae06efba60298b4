#!/usr/bin/env python
"""Export RecBole 1.2.1's SASRec, GRU4Rec, NARM and BERT4Rec on a tiny catalog as test fixtures
(tests/fixtures/recbole_*.safetensors): their weights, a fixed ragged batch and RecBole's outputs for it, so that
tests/test_baselines_parity.py can load the weights into this project's models and compare.

Runs in a separate environment with RecBole (never a dependency of this project), and imports nothing of it:

    python3 -m venv /tmp/recbole-venv
    /tmp/recbole-venv/bin/pip install -c constraints.txt torch==2.13.0 recbole==1.2.1 safetensors
    /tmp/recbole-venv/bin/python scripts/export_recbole_fixture.py --output tests/fixtures

Each file holds, for one model in eval mode (no dropout):

* `weight.NAME`: RecBole's `state_dict()` (its parameter names are this project's);
* `item_seq` `[B, T]` right-padded histories, `item_seq_len` `[B]`, `pos_items` `[B]` the item after each history;
* `hidden` `[B, T, H]`: RecBole's `forward` of every prefix of length k (its first k items, then padding) at
  position k - 1 (zero beyond a row's length);
* `scores` `[B, n_items]`: RecBole's `full_sort_predict` after each whole history;
* `loss`: the summed cross-entropy of every (prefix, next item) pair of the batch, over RecBole's logits with the
  padding column excluded from the softmax (this project's loss; RecBole's own CE also gives padding a probability);
* `grad.NAME`: the gradient of that loss with respect to every parameter;

and, as metadata, the RecBole settings (`settings`, JSON) and the RecBole version. BERT4Rec's file differs where
BERT4Rec does (`export_bert4rec`): its `hidden` is RecBole's test-time representation of each prefix, and its loss
that of a batch of masked histories, exported with them.
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

# a tiny catalog: 12 items + the padding id 0, histories of at most 8 items
NUM_ITEMS = 13
MAX_LENGTH = 8
SETTINGS = {
    "SASRec": {
        "n_layers": 2,
        "n_heads": 2,
        "hidden_size": 16,
        "inner_size": 32,
        "hidden_dropout_prob": 0.5,
        "attn_dropout_prob": 0.5,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
    },
    "GRU4Rec": {"embedding_size": 16, "hidden_size": 24, "num_layers": 2, "dropout_prob": 0.2},
    "NARM": {"embedding_size": 16, "hidden_size": 24, "n_layers": 2, "dropout_probs": [0.25, 0.5]},
    "BERT4Rec": {
        "n_layers": 2,
        "n_heads": 2,
        "hidden_size": 16,
        "inner_size": 32,
        "hidden_dropout_prob": 0.2,
        "attn_dropout_prob": 0.2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
        # int(0.3 * MAX_LENGTH) = 2 masked items per history are targets at most
        "mask_ratio": 0.3,
        "ft_ratio": 0.5,
    },
}
ITEM_SEQ = [
    [3, 7, 1, 9, 4, 4, 2, 8],
    [2, 5, 11, 0, 0, 0, 0, 0],
    [12, 0, 0, 0, 0, 0, 0, 0],
    [6, 6, 10, 3, 1, 0, 0, 0],
]
POS_ITEMS = [5, 12, 1, 7]
# BERT4Rec's fixed mask: RecBole's transform reads these as its `random.random()` draws, one per item (row by row,
# padding excluded); an item is masked where its draw is below `mask_ratio`. Row 0 masks 4 items (its last 2 are
# targets), row 1 only its first (never a target), row 2 none, row 3 two.
MASK_DRAWS = [
    [0.1, 0.9, 0.2, 0.9, 0.9, 0.05, 0.25, 0.9],
    [0.1, 0.9, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0],
    [0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    [0.9, 0.2, 0.9, 0.9, 0.1, 1.0, 1.0, 1.0],
]


class _Dataset:
    """The one thing RecBole's sequential models read from a data set: the number of item ids."""

    def num(self, field: str) -> int:
        return NUM_ITEMS


def build(name: str) -> torch.nn.Module:
    """RecBole's model `name` with `SETTINGS[name]` and CE loss, seeded, in eval mode."""
    from recbole.data.transform import MaskItemSequence
    from recbole.model.sequential_recommender import NARM, BERT4Rec, GRU4Rec, SASRec

    config = {
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "LIST_SUFFIX": "_list",
        "ITEM_LIST_LENGTH_FIELD": "item_length",
        "NEG_PREFIX": "neg_",
        "MAX_ITEM_LIST_LENGTH": MAX_LENGTH,
        "device": "cpu",
        "loss_type": "CE",
        **SETTINGS[name],
    }
    if name == "BERT4Rec":  # name the fields of the masked samples in `config`, as RecBole's data loader does
        MaskItemSequence(config)
    torch.manual_seed(0)
    model = {"SASRec": SASRec, "GRU4Rec": GRU4Rec, "NARM": NARM, "BERT4Rec": BERT4Rec}[name](config, _Dataset())
    with torch.no_grad():  # trained-looking weights: move every parameter off its initial value
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def export(name: str, output: Path) -> Path:
    """Write `recbole_{name.lower()}.safetensors` into `output`."""
    model = build(name)
    item_seq = torch.tensor(ITEM_SEQ)
    item_seq_len = (item_seq > 0).sum(dim=1)
    pos_items = torch.tensor(POS_ITEMS)
    batch, length = item_seq.shape
    # every (prefix, next item) pair: the hidden state after the first k items and the item after them
    hidden = torch.zeros(batch, length, model.item_embedding.embedding_dim)
    loss = torch.zeros(())
    for k in range(1, length + 1):
        rows = (item_seq_len >= k).nonzero().flatten()
        # a prefix sample as RecBole's data loader builds it: the first k items, then padding (NARM's attention
        # reads every non-padding position of its input)
        prefix = item_seq[rows].masked_fill(torch.arange(length) >= k, 0)
        out = model(prefix, torch.full((len(rows),), k))
        hidden[rows, k - 1] = out.detach()
        # the next item inside the history, or the item after it for the whole history
        targets = torch.where(item_seq_len[rows] > k, item_seq[rows, min(k, length - 1)], pos_items[rows])
        logits = out @ model.item_embedding.weight.T
        logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], dim=1)
        loss = loss + F.cross_entropy(logits, targets, reduction="sum")
    loss.backward()
    with torch.no_grad():
        scores = model.full_sort_predict({"item_id_list": item_seq, "item_length": item_seq_len})
    tensors = {"item_seq": item_seq, "item_seq_len": item_seq_len, "pos_items": pos_items, "hidden": hidden}
    return save(name, model, output, {**tensors, "scores": scores.contiguous(), "loss": loss.detach()})


def save(name: str, model: torch.nn.Module, output: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Write `recbole_{name.lower()}.safetensors` into `output`: `tensors`, the model's weights and gradients, and the
    settings and versions as metadata."""
    import recbole
    from safetensors.torch import save_file

    tensors = {f"weight.{k}": v.detach().contiguous() for k, v in model.state_dict().items()} | tensors
    tensors |= {f"grad.{k}": p.grad.contiguous() for k, p in model.named_parameters()}
    metadata = {"settings": json.dumps(SETTINGS[name]), "recbole": recbole.__version__, "torch": torch.__version__}
    path = output / f"recbole_{name.lower()}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


def masked_samples(fine_tune: bool) -> dict:
    """RecBole's training transform of BERT4Rec (`MaskItemSequence`) on the fixed histories: a fine-tuning batch, or
    the batch masked by `MASK_DRAWS`."""
    import random

    from recbole.data.interaction import Interaction
    from recbole.data.transform import MaskItemSequence

    config = {"ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list", "ITEM_LIST_LENGTH_FIELD": "item_length"}
    transform = MaskItemSequence({**config, "MAX_ITEM_LIST_LENGTH": MAX_LENGTH, **SETTINGS["BERT4Rec"]})
    transform.ft_ratio = SETTINGS["BERT4Rec"]["ft_ratio"]  # RecBole reads it from its Config object, not a dict
    item_seq = torch.tensor(ITEM_SEQ)
    # the batch's fine-tuning draw, then one draw per item
    item_draws = [d for row, seq in zip(MASK_DRAWS, ITEM_SEQ, strict=True) for d, i in zip(row, seq, strict=True) if i]
    draws = [0.0 if fine_tune else 1.0, *item_draws]
    real_random, random.random = random.random, iter(draws).__next__
    try:
        out = transform(_Dataset(), Interaction({"item_id_list": item_seq, "item_length": (item_seq > 0).sum(1)}))
    finally:
        random.random = real_random
    return {key: out[key] for key in ("Mask_item_id_list", "Pos_item_id", "MASK_INDEX")}


def export_bert4rec(output: Path) -> Path:
    """Write `recbole_bert4rec.safetensors` into `output`: weights, `item_seq`, `item_seq_len` and `scores` as
    `export` does, `hidden` RecBole's test-time representation of every prefix (`reconstruct_test_data`: the prefix
    without its first item, the mask token appended, the output there), and RecBole's masked training samples:
    `mask_draws`, `masked_item_seq` / `masked_index` / `masked_pos_items` (masked by the draws) and `ft_item_seq` /
    `ft_index` / `ft_pos_items` (a fine-tuning batch). `loss` and `grad.NAME` are those of the masked batch: the
    summed cross-entropy of its targets (`masked_index > 0`) over RecBole's logits (`output_bias` included), the
    padding column excluded."""
    model = build("BERT4Rec")
    item_seq = torch.tensor(ITEM_SEQ)
    item_seq_len = (item_seq > 0).sum(dim=1)
    batch, length = item_seq.shape
    hidden = torch.zeros(batch, length, model.hidden_size)
    with torch.no_grad():
        for k in range(1, length + 1):
            rows = (item_seq_len >= k).nonzero().flatten()
            prefix = item_seq[rows].masked_fill(torch.arange(length) >= k, 0)
            lengths = torch.full((len(rows),), k)
            hidden[rows, k - 1] = model.forward(model.reconstruct_test_data(prefix, lengths))[:, k - 1]
        scores = model.full_sort_predict({"item_id_list": item_seq, "item_length": item_seq_len})
    masked, fine_tune = masked_samples(fine_tune=False), masked_samples(fine_tune=True)
    # the loss of the masked batch (RecBole's `calculate_loss` with this project's padding rule), and its gradients
    index, targets = masked["MASK_INDEX"], masked["Pos_item_id"]
    seq_output = model.forward(masked["Mask_item_id_list"])
    seq_output = seq_output[torch.arange(batch)[:, None], index][index > 0]
    logits = seq_output @ model.item_embedding.weight[: model.n_items].T + model.output_bias
    logits[:, 0] = float("-inf")
    loss = F.cross_entropy(logits, targets[index > 0], reduction="sum")
    loss.backward()
    tensors = {
        "item_seq": item_seq,
        "item_seq_len": item_seq_len,
        "hidden": hidden,
        "scores": scores.contiguous(),
        "loss": loss.detach(),
        "mask_draws": torch.tensor(MASK_DRAWS),
        "masked_item_seq": masked["Mask_item_id_list"],
        "masked_index": index,
        "masked_pos_items": targets,
        "ft_item_seq": fine_tune["Mask_item_id_list"],
        "ft_index": fine_tune["MASK_INDEX"],
        "ft_pos_items": fine_tune["Pos_item_id"],
    }
    return save("BERT4Rec", model, output, tensors)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="tests/fixtures", help="Folder to write the fixtures to")
    parser.add_argument("--models", default=",".join(SETTINGS), help="Comma-separated RecBole models to export")
    args = parser.parse_args(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        path = export_bert4rec(output) if name == "BERT4Rec" else export(name, output)
        print(f"{path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
