#!/usr/bin/env python
"""Export RecBole 1.2.1's SASRec, GRU4Rec and NARM on a tiny catalog as test fixtures
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

and, as metadata, the RecBole settings (`settings`, JSON) and the RecBole version.
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
}
ITEM_SEQ = [
    [3, 7, 1, 9, 4, 4, 2, 8],
    [2, 5, 11, 0, 0, 0, 0, 0],
    [12, 0, 0, 0, 0, 0, 0, 0],
    [6, 6, 10, 3, 1, 0, 0, 0],
]
POS_ITEMS = [5, 12, 1, 7]


class _Dataset:
    """The one thing RecBole's sequential models read from a data set: the number of item ids."""

    def num(self, field: str) -> int:
        return NUM_ITEMS


def build(name: str) -> torch.nn.Module:
    """RecBole's model `name` with `SETTINGS[name]` and CE loss, seeded, in eval mode."""
    from recbole.model.sequential_recommender import NARM, GRU4Rec, SASRec

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
    torch.manual_seed(0)
    model = {"SASRec": SASRec, "GRU4Rec": GRU4Rec, "NARM": NARM}[name](config, _Dataset())
    with torch.no_grad():  # trained-looking weights: move every parameter off its initial value
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def export(name: str, output: Path) -> Path:
    """Write `recbole_{name.lower()}.safetensors` into `output`."""
    import recbole
    from safetensors.torch import save_file

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
    tensors = {f"weight.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"grad.{k}": p.grad.contiguous() for k, p in model.named_parameters()}
    tensors |= {
        "item_seq": item_seq,
        "item_seq_len": item_seq_len,
        "pos_items": pos_items,
        "hidden": hidden,
        "scores": scores.contiguous(),
        "loss": loss.detach(),
    }
    metadata = {"settings": json.dumps(SETTINGS[name]), "recbole": recbole.__version__, "torch": torch.__version__}
    path = output / f"recbole_{name.lower()}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="tests/fixtures", help="Folder to write the fixtures to")
    args = parser.parse_args(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for name in SETTINGS:
        path = export(name, output)
        print(f"{path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
