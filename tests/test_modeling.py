"""The TTT4Rec model: architecture parity, causality, padding, batch independence, loss and bad input."""

import pytest
import torch
from helpers import tiny_model

from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction, TTT4RecModel

VARIANTS = [(b, t) for b in ("transformer", "mamba") for t in ("linear", "mlp")]


def small_model(
    backbone="transformer", ttt_layer_type="mlp", mini_batch_size=3, **kwargs
) -> TTT4RecForNextItemPrediction:
    return tiny_model(
        perturb=0.05,
        intermediate_size=24,
        num_hidden_layers=2,
        backbone=backbone,
        ttt_layer_type=ttt_layer_type,
        mini_batch_size=mini_batch_size,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------------------------
# Parameter counts: parity with the official implementation
# ---------------------------------------------------------------------------------------------------------------


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_matches_official_implementation():
    """Official code, hidden 64, 1 block, 4 heads, transformer + TTT-MLP, mini-batch 8, 10,673 items: 757,964."""
    model = TTT4RecForNextItemPrediction(TTT4RecConfig(num_items=10673))
    embedding = model.model.item_embeddings.weight.numel()
    assert embedding == 683_072
    assert count(model) == 757_964
    assert count(model) - embedding == 74_892
    # tied: the head adds no parameter
    assert model.item_head.weight.data_ptr() == model.model.item_embeddings.weight.data_ptr()


@pytest.mark.parametrize(
    ("backbone", "ttt_layer_type", "rest"),
    [
        ("transformer", "linear", 67_468),
        ("transformer", "mlp", 74_892),
        ("mamba", "linear", 68_492),
        ("mamba", "mlp", 75_916),
    ],
)
def test_parameter_count_per_variant(backbone, ttt_layer_type, rest):
    model = TTT4RecForNextItemPrediction(
        TTT4RecConfig(num_items=10673, backbone=backbone, ttt_layer_type=ttt_layer_type)
    )
    assert count(model) - 683_072 == rest


def test_untied_head_has_its_own_weights():
    model = TTT4RecForNextItemPrediction(TTT4RecConfig(num_items=100, tie_word_embeddings=False))
    assert model.item_head.weight.data_ptr() != model.model.item_embeddings.weight.data_ptr()


# ---------------------------------------------------------------------------------------------------------------
# Sequence semantics
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backbone", "ttt_layer_type"), VARIANTS)
def test_causal(backbone, ttt_layer_type):
    model = small_model(backbone, ttt_layer_type)
    ids = torch.randint(1, 40, (2, 11), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[:, 6] = (ids[:, 6] % 39) + 1
    with torch.no_grad():
        a = model.model(ids, use_cache=False).last_hidden_state
        b = model.model(changed, use_cache=False).last_hidden_state
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-4


@pytest.mark.parametrize(("backbone", "ttt_layer_type"), VARIANTS)
def test_right_padding_and_row_independence(backbone, ttt_layer_type):
    model = small_model(backbone, ttt_layer_type)
    generator = torch.Generator().manual_seed(2)
    lengths = [10, 4, 7]
    rows = [torch.randint(1, 40, (n,), generator=generator) for n in lengths]
    batch = torch.zeros(3, 10, dtype=torch.long)
    for i, row in enumerate(rows):
        batch[i, : len(row)] = row
    with torch.no_grad():
        together = model(batch, use_cache=False)
        for i, row in enumerate(rows):
            alone = model(row[None], use_cache=False)
            torch.testing.assert_close(together.last_hidden_state[i, : len(row)], alone.last_hidden_state[0])
            torch.testing.assert_close(together.logits[i], alone.logits[0])


def test_padding_is_never_predicted_and_loss_matches_manual_cross_entropy():
    model = small_model()
    ids = torch.tensor([[3, 5, 7, 0], [4, 9, 0, 0]])
    labels = torch.tensor([[5, 7, 11, -100], [9, 2, -100, -100]])
    out = model(ids, labels=labels, use_cache=False)
    assert out.logits.shape == (2, 40)
    assert (out.logits.argmax(-1) != 0).all()
    assert (out.logits[:, 0] < out.logits[:, 1:].min(dim=1).values).all()
    scores = model.item_head(out.last_hidden_state)  # [2, 4, 40]
    scores[..., 0] = float("-inf")
    manual = torch.stack(
        [
            torch.nn.functional.cross_entropy(scores[r, p][None], labels[r, p][None])
            for r, p in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
        ]
    ).mean()
    torch.testing.assert_close(out.loss, manual)
    # one target per row: the item after each row's last item
    per_row = model(ids, labels=torch.tensor([11, 2]), use_cache=False)
    manual_row = torch.nn.functional.cross_entropy(scores[[0, 1], [2, 1]], torch.tensor([11, 2]))
    torch.testing.assert_close(per_row.loss, manual_row)


def test_model_without_padding_id_treats_every_id_as_an_item():
    model = small_model(pad_token_id=None)
    ids = torch.tensor([[3, 0, 7], [0, 9, 4]])
    out = model(ids, use_cache=False)
    # no position is padding: the output after each row's last id, and id 0 can be predicted and be a target
    alone = model(ids[1:], attention_mask=torch.ones_like(ids[1:]), use_cache=False)
    torch.testing.assert_close(out.logits[1], alone.logits[0])
    assert torch.isfinite(out.logits[:, 0]).all() and out.logits[:, 0].gt(torch.finfo(out.logits.dtype).min).all()
    loss = model(ids, labels=torch.tensor([0, 5]), use_cache=False).loss
    expected = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 5]))
    torch.testing.assert_close(loss, expected)
    cache = model(ids[:, :2], use_cache=True).cache_params
    torch.testing.assert_close(model(ids[:, 2:], cache_params=cache).logits, out.logits, rtol=1e-4, atol=1e-5)


def test_training_reduces_loss():
    model = small_model(mini_batch_size=2).train()
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 40, (8, 9), generator=generator)
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = -100
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


# ---------------------------------------------------------------------------------------------------------------
# Configuration and bad input
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 66, "num_attention_heads": 4}, "divisible by `num_attention_heads`"),
        ({"mini_batch_size": 0}, "`mini_batch_size` must be >= 1"),
        ({"backbone": "lstm"}, "Unknown `backbone` 'lstm'"),
        ({"ttt_layer_type": "conv"}, "Unknown `ttt_layer_type` 'conv'"),
        ({"num_items": 1}, "`num_items` counts the padding id"),
        ({"hidden_dropout_prob": 1.5}, "`hidden_dropout_prob`"),
        ({"hidden_size": 12, "num_attention_heads": 4}, "must be even"),
        ({"item_scoring": "dot"}, "Unknown `item_scoring` 'dot'"),
        ({"target_mlp_size": 0}, "`target_mlp_size` must be >= 1"),
        ({"hidden_act": "foo"}, "Unknown `hidden_act` 'foo'"),
        ({"rope_theta": 0.0}, "`rope_theta` must be > 0"),
        ({"ttt_norm_eps": -1e-6}, "`ttt_norm_eps` must be > 0"),
        ({"ttt_base_lr": 0.0}, "`ttt_base_lr` must be > 0"),
        ({"item_scoring": "target_mlp", "tie_word_embeddings": False}, "needs `tie_word_embeddings=True`"),
    ],
)
def test_config_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TTT4RecConfig(**kwargs)


def test_settings_changed_after_the_config_was_made_are_checked_when_a_model_is_built():
    config = TTT4RecConfig(num_items=40, hidden_size=16, num_attention_heads=2)
    config.num_attention_heads = 3
    with pytest.raises(ValueError, match="divisible by `num_attention_heads`"):
        TTT4RecForNextItemPrediction(config)


def test_config_defaults_are_the_papers():
    config = TTT4RecConfig()
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.num_attention_heads) == (
        64,
        256,
        1,
        4,
    )
    assert (config.backbone, config.ttt_layer_type, config.mini_batch_size) == ("transformer", "mlp", 8)
    assert (config.ttt_base_lr, config.rope_theta, config.hidden_dropout_prob) == (1.0, 1000.0, 0.2)
    assert config.pad_token_id == 0 and config.tie_word_embeddings


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda: (torch.tensor([[1, 2, 40]]), None), r"Item id 40 is outside \[0, 40\)"),
        (lambda: (torch.tensor([[1, -3, 2]]), None), r"Item id -3 is outside"),
        (lambda: (torch.tensor([[1.0, 2.0]]), None), "must hold integer item ids"),
        (lambda: (torch.zeros(1, 0, dtype=torch.long), None), "is empty"),
        (lambda: (torch.tensor([1, 2, 3]), None), r"must have shape \(batch_size, sequence_length\)"),
        (lambda: (torch.tensor([[1, 2, 3]]), torch.ones(1, 2)), "`attention_mask` has shape"),
        (lambda: (torch.tensor([[1, 2, 3]]), torch.tensor([[0, 1, 1]])), "must be right-padded"),
        (lambda: (torch.tensor([[1, 2], [0, 0]]), None), r"Row\(s\) \[1\] contain no items"),
        (lambda: (torch.tensor([[1, 0, 3]]), torch.ones(1, 3)), "padding id 0 appears"),
        (lambda: (torch.tensor([[1, 0, 3]]), None), r"padding id 0 appears before an item in row 0 of `input_ids`"),
        (lambda: ([[1, 2]], None), "must be a torch.LongTensor"),
    ],
)
@pytest.mark.parametrize("use_cache", [False, None])  # None: the default, which returns a cache in eval mode
def test_bad_input_raises_clear_value_error(make_input, message, use_cache):
    model = small_model().eval()
    input_ids, attention_mask = make_input()
    with pytest.raises(ValueError, match=message):
        model(input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_rows_without_items_need_a_cache_to_start_from():
    model = small_model().eval()
    with pytest.raises(ValueError, match=r"model.init_cache\(batch_size\)"):
        model(torch.tensor([[1, 2], [0, 0]]), use_cache=True)
    out = model(torch.tensor([[1, 2], [0, 0]]), cache_params=model.init_cache(2))
    assert out.cache_params.seen.tolist() == [2, 0]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.tensor([[2, 0, 4]]), "padding id 0 is never a target"),
        (torch.tensor([[2, 3, 41]]), r"must be item ids in \[1, 40\)"),
        (torch.tensor([[-100, -100, -100]]), "holds no target"),
        (torch.tensor([[1, 2]]), "`labels` must have shape"),
        (torch.tensor([[2, 3, 4], [5, 6, 7]]), "`labels` has a target at a padding position"),
    ],
)
def test_bad_labels_raise_clear_value_error(labels, message):
    with pytest.raises(ValueError, match=message):
        ids = torch.tensor([[1, 2, 3]]) if len(labels) == 1 else torch.tensor([[1, 2, 3], [4, 0, 0]])
        small_model()(ids, labels=labels, use_cache=False)


def test_base_model_has_no_head():
    model = TTT4RecModel(TTT4RecConfig(num_items=20, hidden_size=8, num_attention_heads=2, intermediate_size=8))
    out = model(torch.tensor([[1, 2, 3]]), use_cache=False)
    assert out.last_hidden_state.shape == (1, 3, 8)


def test_resize_token_embeddings_grows_the_catalogue():
    """New items: `resize_token_embeddings` sets `num_items` (as `vocab_size`), and caches and checkpoints follow."""
    model = small_model()
    model.resize_token_embeddings(50, mean_resizing=False)
    assert model.config.num_items == model.config.vocab_size == 50
    out = model(torch.tensor([[3, 45]]), use_cache=True)
    assert out.logits.shape == (1, 50)
    model(torch.tensor([[47]]), cache_params=out.cache_params)  # the cache of the resized model is accepted
    assert model.init_cache(1).config_dict["num_items"] == 50


def test_mamba_convolutions_start_from_pytorchs_default_as_the_official_code():
    """The official code re-initialises only linear and embedding layers; its convolutions keep PyTorch's
    uniform(+-1/sqrt(fan_in)) start (fan_in = kernel size 4 for these depthwise convolutions: bound 0.5)."""
    torch.manual_seed(0)
    model = TTT4RecForNextItemPrediction(TTT4RecConfig(num_items=40, hidden_size=64, backbone="mamba"))
    conv = model.model.layers[0].seq_modeling_block.conv_q
    for tensor in (conv.weight, conv.bias):
        assert 0.4 < tensor.abs().max() <= 0.5 and tensor.std() > 0.2  # not N(0, 0.02), not zero


def test_one_step_of_the_transformers_trainer(tmp_path):
    """The HF `Trainer` trains the model from a plain list of examples with a collator."""
    from transformers import Trainer, TrainingArguments

    model = small_model().train()
    examples = [{"input_ids": [1 + (i + j) % 39 for j in range(6)]} for i in range(8)]

    def collate(batch):
        ids = torch.tensor([example["input_ids"] for example in batch])
        labels = torch.cat([ids[:, 1:], torch.full((len(batch), 1), -100)], dim=1)
        return {"input_ids": ids, "labels": labels, "use_cache": False}

    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, report_to=[], use_cpu=True
    )
    before = model.model.item_embeddings.weight.detach().clone()
    result = Trainer(model=model, args=args, train_dataset=examples, data_collator=collate).train()
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(before, model.model.item_embeddings.weight)


# ---------------------------------------------------------------------------------------------------------------
# The recommender interface: the model's own loss, padding ids, no validation on the trainer's hot path
# ---------------------------------------------------------------------------------------------------------------

PAD_IDS = [0, None, 39, 17]  # the default, no padding id, the last id, one in the middle


def padded_batch(pad):
    """Right-padded ids (padding = `pad`, or 1 with no padding id: then only the mask says so), per-position labels
    with -100 where there is no target, and no id equal to `pad` anywhere else."""
    generator = torch.Generator().manual_seed(3)
    real = torch.tensor([i for i in range(40) if i != pad])
    ids = real[torch.randint(0, len(real), (4, 9), generator=generator)]
    labels = real[torch.randint(0, len(real), (4, 9), generator=generator)]
    mask = torch.ones_like(ids)
    ids[2, 5:], mask[2, 5:] = 1 if pad is None else pad, 0
    labels[:, :3] = -100
    labels[2, 4:] = -100
    return ids, mask, labels


@pytest.mark.parametrize("pad", PAD_IDS)
@pytest.mark.parametrize("item_scoring", ["embedding", "target_mlp"])
def test_loss_and_gradients_equal_cross_entropy_over_the_non_padding_items(pad, item_scoring):
    """The fused full cross-entropy of `forward` against `F.cross_entropy` over the columns of `score_items` that
    are not the padding id: same loss, same gradient for every parameter."""
    model = small_model(pad_token_id=pad, item_scoring=item_scoring, hidden_dropout_prob=0.0)
    ids, mask, labels = padded_batch(pad)
    model.zero_grad()
    out = model(ids, attention_mask=mask, labels=labels, use_cache=False, return_logits=False)
    assert out.logits is None
    out.loss.backward()
    fused = {name: param.grad.clone() for name, param in model.named_parameters()}
    model.zero_grad()
    targeted = labels != -100
    hidden = model.model(ids, attention_mask=mask, use_cache=False).last_hidden_state[targeted]
    scores, targets = model.score_items(hidden), labels[targeted]
    if pad is not None:  # drop the padding column; the targets' columns move down past it
        keep = torch.arange(40) != pad
        scores, targets = scores[:, keep], targets - (targets > pad).long()
    reference = torch.nn.functional.cross_entropy(scores, targets)
    reference.backward()
    torch.testing.assert_close(out.loss, reference)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, fused[name], atol=1e-6, rtol=1e-5, msg=name)
    if pad is not None:
        assert model.score_items(hidden)[:, pad].eq(torch.finfo(torch.float32).min).all()


def test_num_items_in_batch_divides_the_summed_loss():
    model = small_model(hidden_dropout_prob=0.0)
    ids, mask, labels = padded_batch(0)
    mean = model(ids, attention_mask=mask, labels=labels, use_cache=False).loss
    summed = model(ids, attention_mask=mask, labels=labels, use_cache=False, num_items_in_batch=1).loss
    scaled = model(ids, attention_mask=mask, labels=labels, use_cache=False, num_items_in_batch=100).loss
    count = int((labels != -100).sum())
    torch.testing.assert_close(summed, mean * count)
    torch.testing.assert_close(scaled, summed / 100)


def test_one_label_per_row_is_the_loss_of_the_newest_positions_scores():
    model = small_model(pad_token_id=39)
    ids = torch.tensor([[3, 5, 7, 39], [1, 2, 3, 4]])
    labels = torch.tensor([8, 9])
    out = model(ids, labels=labels, use_cache=False)
    expected = torch.nn.functional.cross_entropy(out.logits, labels)
    torch.testing.assert_close(out.loss, expected)
    with pytest.raises(ValueError, match=r"item ids in \[0, 40\) other than 39"):
        model(ids, labels=torch.tensor([39, 2]), use_cache=False)


@pytest.mark.parametrize("pad", [None, 39])
def test_training_negatives_and_evaluation_candidates_never_hold_the_padding_id(pad):
    from modeling_ttt4rec.losses import sample_negatives
    from modeling_ttt4rec.training.sampling import evaluation_candidates

    real = [i for i in range(40) if i != pad]
    positives = torch.tensor(real * 200)
    negatives = sample_negatives(positives, 40, 6, torch.Generator().manual_seed(0), pad_token_id=pad)
    assert (negatives != positives[:, None]).all()
    # uniform over the other real items: every one of them is drawn, the padding id never
    assert sorted(set(negatives.flatten().tolist())) == real
    candidates = evaluation_candidates(positives.numpy(), 40, num_negatives=len(real) - 1, seed=1, pad_token_id=pad)
    for row in candidates[:50].tolist():
        assert sorted(row) == real  # the target and every other real item once


def count_validations(monkeypatch) -> list[str]:
    """Record each call of the validation that reads tensor values (and synchronises with the device)."""
    calls = []
    for name in ("validate_inputs", "_check_targets"):
        cls = TTT4RecModel if name == "validate_inputs" else TTT4RecForNextItemPrediction
        original = getattr(cls, name)

        def recording(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, recording)
    return calls


def test_user_calls_are_validated_and_check_inputs_false_skips_it(monkeypatch):
    calls = count_validations(monkeypatch)
    model = small_model()
    ids, mask, labels = padded_batch(0)
    model(ids, attention_mask=mask, labels=labels, use_cache=False)
    assert calls == ["validate_inputs", "_check_targets"]
    calls.clear()
    model(ids, attention_mask=mask, labels=labels, use_cache=False, return_logits=False, check_inputs=False)
    assert calls == []
    bad = [
        (torch.tensor([[1, 45]]), None, None, "Item id 45 is outside"),
        (torch.tensor([[0, 3]]), None, None, "appears before an item"),
        (torch.tensor([[2, 3, 4]]), None, torch.tensor([[3, 0, 5]]), "padding id 0 is never a target"),
    ]
    for input_ids, attention_mask, bad_labels, message in bad:  # ... and the default still gets the clear errors
        with pytest.raises(ValueError, match=message):
            model(input_ids, attention_mask=attention_mask, labels=bad_labels, use_cache=False)


def test_a_trainer_step_and_an_evaluation_batch_do_not_validate_values(monkeypatch, tmp_path):
    from accelerate.state import AcceleratorState
    from helpers import random_sequences, write_split_dataset

    from modeling_ttt4rec.training.data import SplitSequences
    from modeling_ttt4rec.training.evaluation import compute_ranks
    from modeling_ttt4rec.training.trainer import parse_args, train

    calls = count_validations(monkeypatch)
    seqs = random_sequences(12, 40, 2, 20, seed=3)
    split = SplitSequences.from_rows(seqs, [max(1, len(s) // 2) for s in seqs])
    model = small_model()
    compute_ranks(model, split, 8, mode="window", batch_targets=7)
    compute_ranks(model, split, 8, mode="stream", batch_targets=7, stream_chunk_size=3)
    compute_ranks(model, split, 8, protocol="sampled", num_negatives=10)
    data = write_split_dataset(tmp_path / "data", random_sequences(20, 30, 3, 10, seed=1), num_items=30, max_length=8)
    argv = ["--dataset", str(data), "--output_dir", str(tmp_path / "run"), "--max_epochs", "1", "--disable_tqdm"]
    argv += ["true", "--hidden_size", "8", "--intermediate_size", "8", "--num_attention_heads", "2"]
    argv += ["--batch_targets", "32", "--test_eval_modes", "window,stream"]
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        train(parse_args(argv))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert calls == []


@pytest.mark.parametrize("pad", [None, 29])
def test_train_and_evaluate_with_another_padding_id(pad, tmp_path):
    """A model whose padding id is not 0 (or that has none) trains a step and evaluates, with both losses and both
    protocols (the data's own padding is the attention mask)."""
    from accelerate.state import AcceleratorState
    from helpers import random_sequences, write_split_dataset

    from modeling_ttt4rec.training.data import load_sequences
    from modeling_ttt4rec.training.evaluation import compute_ranks
    from modeling_ttt4rec.training.trainer import parse_args, train

    seqs = [[(i % 28) + 1 for i in s] for s in random_sequences(20, 30, 3, 10, seed=1)]  # ids 1 .. 28: never 29
    data = write_split_dataset(tmp_path / "data", seqs, num_items=30, max_length=8)
    sequences, _ = load_sequences(data)
    config = TTT4RecConfig(num_items=30, hidden_size=8, intermediate_size=8, num_attention_heads=2, pad_token_id=pad)
    torch.manual_seed(0)
    model = TTT4RecForNextItemPrediction(config)
    model.save_pretrained(tmp_path / "start")
    for loss_type, protocol in (("full_ce", "full"), ("sampled_bce", "sampled")):
        argv = ["--dataset", str(data), "--output_dir", str(tmp_path / loss_type), "--max_epochs", "1"]
        argv += ["--model_name_or_path", str(tmp_path / "start"), "--disable_tqdm", "true", "--batch_targets", "32"]
        argv += ["--loss_type", loss_type, "--eval_protocol", protocol, "--eval_num_negatives", "20"]
        AcceleratorState._reset_state(reset_partial_state=True)
        try:
            results = train(parse_args([*argv, "--test_eval_modes", "window"]))
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
        assert all(torch.isfinite(torch.tensor(v)) for r in results["rows"] for k, v in r.items() if "@" in k)
    ranks = compute_ranks(model, sequences["test"], 8, mode="stream", stream_chunk_size=3)
    assert (ranks >= 0).all() and (ranks < 30 - (pad is not None)).all()
