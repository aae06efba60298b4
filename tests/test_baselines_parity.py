"""The baselines equal RecBole 1.2.1's models: RecBole's weights (tests/fixtures/recbole_*.safetensors, written by
scripts/export_recbole_fixture.py in an environment with RecBole) load into this project's models as they are, and
the hidden state after every prefix, the full-sort scores, the loss and every gradient agree to float32 round-off."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from modeling_ttt4rec.baselines import (
    BERT4RecConfig,
    BERT4RecForNextItemPrediction,
    GRU4RecConfig,
    GRU4RecForNextItemPrediction,
    NARMConfig,
    NARMForNextItemPrediction,
    SASRecConfig,
    SASRecForNextItemPrediction,
)
from modeling_ttt4rec.baselines.modeling_bert4rec import mask_histories

FIXTURES = Path(__file__).parent / "fixtures"


def sasrec_config(settings: dict, num_items: int, max_length: int, config_class=SASRecConfig, **extra) -> SASRecConfig:
    """SASRec's settings (or BERT4Rec's, `config_class=BERT4RecConfig`) from RecBole's."""
    return config_class(
        num_items=num_items,
        max_position_embeddings=max_length,
        hidden_size=settings["hidden_size"],
        num_hidden_layers=settings["n_layers"],
        num_attention_heads=settings["n_heads"],
        intermediate_size=settings["inner_size"],
        hidden_act=settings["hidden_act"],
        hidden_dropout_prob=settings["hidden_dropout_prob"],
        attention_probs_dropout_prob=settings["attn_dropout_prob"],
        layer_norm_eps=settings["layer_norm_eps"],
        initializer_range=settings["initializer_range"],
        **extra,
    )


def sasrec(settings: dict, num_items: int, max_length: int) -> SASRecForNextItemPrediction:
    return SASRecForNextItemPrediction(sasrec_config(settings, num_items, max_length))


def gru4rec(settings: dict, num_items: int, max_length: int) -> GRU4RecForNextItemPrediction:
    config = GRU4RecConfig(
        num_items=num_items,
        embedding_size=settings["embedding_size"],
        hidden_size=settings["hidden_size"],
        num_hidden_layers=settings["num_layers"],
        dropout_prob=settings["dropout_prob"],
    )
    return GRU4RecForNextItemPrediction(config)


def narm(settings: dict, num_items: int, max_length: int) -> NARMForNextItemPrediction:
    config = NARMConfig(
        num_items=num_items,
        embedding_size=settings["embedding_size"],
        hidden_size=settings["hidden_size"],
        num_hidden_layers=settings["n_layers"],
        embedding_dropout_prob=settings["dropout_probs"][0],
        context_dropout_prob=settings["dropout_probs"][1],
    )
    return NARMForNextItemPrediction(config)


def read_fixture(name: str) -> tuple[dict, dict]:
    with safe_open(FIXTURES / f"recbole_{name}.safetensors", framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize(("name", "build"), [("sasrec", sasrec), ("gru4rec", gru4rec), ("narm", narm)])
def test_outputs_and_gradients_equal_recboles(name, build):
    tensors, metadata = read_fixture(name)
    assert metadata["recbole"] == "1.2.1"
    item_seq, lengths = tensors["item_seq"], tensors["item_seq_len"]
    weights = {k.removeprefix("weight."): v for k, v in tensors.items() if k.startswith("weight.")}
    model = build(json.loads(metadata["settings"]), weights["item_embedding.weight"].shape[0], item_seq.shape[1])
    model.load_state_dict(weights, strict=True)  # RecBole's parameter names are the model's
    model.eval()

    # the next item after every prefix: inside the history, then the item after the whole history
    labels = torch.full_like(item_seq, -100)
    labels[:, :-1] = torch.where(item_seq[:, 1:] > 0, item_seq[:, 1:], -100)
    labels[torch.arange(len(lengths)), lengths - 1] = tensors["pos_items"]
    out = model(item_seq, labels=labels, num_items_in_batch=1)
    valid = item_seq > 0
    tol = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(out.last_hidden_state[valid], tensors["hidden"][valid], **tol)
    # RecBole scores the padding id too; here it scores lowest (it is never recommended)
    torch.testing.assert_close(out.logits[:, 1:], tensors["scores"][:, 1:], **tol)
    assert (out.logits[:, 0] == torch.finfo(out.logits.dtype).min).all()
    torch.testing.assert_close(out.loss, tensors["loss"], **tol)
    out.loss.backward()
    for key, param in model.named_parameters():
        torch.testing.assert_close(param.grad, tensors[f"grad.{key}"], **tol, msg=key)


def test_bert4rec_outputs_samples_and_gradients_equal_recboles():
    tensors, metadata = read_fixture("bert4rec")
    assert metadata["recbole"] == "1.2.1"
    settings = json.loads(metadata["settings"])
    item_seq, lengths = tensors["item_seq"], tensors["item_seq_len"]
    weights = {k.removeprefix("weight."): v for k, v in tensors.items() if k.startswith("weight.")}
    num_items, ratios = weights["output_bias"].shape[0], {k: settings[k] for k in ("mask_ratio", "ft_ratio")}
    config = sasrec_config(settings, num_items, item_seq.shape[1], BERT4RecConfig, **ratios)
    model = BERT4RecForNextItemPrediction(config)
    model.load_state_dict(weights, strict=True)  # RecBole's parameter names are the model's
    model.eval()
    tol = {"rtol": 1e-5, "atol": 1e-5}

    # reading histories: RecBole's test-time representation of every prefix ([h, 1]) and its full-sort scores
    with torch.no_grad():
        out = model(item_seq)
    valid = item_seq > 0
    torch.testing.assert_close(out.last_hidden_state[valid][:, :-1], tensors["hidden"][valid], **tol)
    assert (out.last_hidden_state[valid][:, -1] == 1).all()
    torch.testing.assert_close(out.logits[:, 1:], tensors["scores"][:, 1:], **tol)
    assert (out.logits[:, 0] == torch.finfo(out.logits.dtype).min).all()

    # the training samples: RecBole's transform with the same draws, and a fine-tuning batch
    def recbole_targets(index: torch.Tensor) -> torch.Tensor:
        target_mask = torch.zeros_like(item_seq, dtype=torch.bool)
        target_mask[torch.arange(len(index))[:, None].expand_as(index)[index > 0], index[index > 0]] = True
        return target_mask

    rule = (config.mask_token_id, config.mask_ratio, config.max_masked_targets)
    masked, target_mask = mask_histories(item_seq, lengths, tensors["mask_draws"], *rule)
    torch.testing.assert_close(masked, tensors["masked_item_seq"])
    torch.testing.assert_close(target_mask, recbole_targets(tensors["masked_index"]))
    index = tensors["masked_index"]
    assert item_seq[target_mask].tolist() == tensors["masked_pos_items"][index > 0].tolist()
    ft_masked, ft_targets = mask_histories(item_seq, lengths, None, *rule)
    torch.testing.assert_close(ft_masked, tensors["ft_item_seq"])
    torch.testing.assert_close(ft_targets, recbole_targets(tensors["ft_index"]))

    # the loss of the masked batch (padding excluded) and every gradient
    labels = torch.where(target_mask, item_seq, -100)
    out = model(masked, attention_mask=valid.long(), labels=labels, num_items_in_batch=1)
    torch.testing.assert_close(out.loss, tensors["loss"], **tol)
    out.loss.backward()
    for key, param in model.named_parameters():
        torch.testing.assert_close(param.grad, tensors[f"grad.{key}"], **tol, msg=key)


def test_fixtures_are_small():
    assert all(p.stat().st_size < 200_000 for p in FIXTURES.glob("recbole_*.safetensors"))
