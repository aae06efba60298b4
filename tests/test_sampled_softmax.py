"""`loss_type="sampled_softmax"`: the full softmax when the negatives are every item, a logQ-corrected gradient that
matches the full softmax's on average, accidental hits masked, the same negatives from the same seed, the popularity
sampler and its counts from the trainer."""

import numpy as np
import pytest
import torch
from helpers import random_sequences, write_split_dataset

from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction
from modeling_ttt4rec.losses import sampled_softmax_cross_entropy, shared_negatives

TINY = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, mini_batch_size=4, hidden_dropout_prob=0.0)


def _model(num_items: int = 30, pad: int | None = 0, **kwargs) -> TTT4RecForNextItemPrediction:
    torch.manual_seed(0)
    config = TTT4RecConfig(num_items=num_items, pad_token_id=pad, loss_type="sampled_softmax", **TINY, **kwargs)
    return TTT4RecForNextItemPrediction(config).double()


def _batch(num_items: int, pad: int | None, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, num_items, (4, 9), generator=g)
    labels = torch.randint(0, num_items, (4, 9), generator=g)
    if pad is not None:
        ids[ids == pad] = (pad + 1) % num_items
        labels[labels == pad] = (pad + 1) % num_items
    labels[0, :3] = -100
    return ids, labels


def _loss_and_grads(model, ids, labels):
    loss = model(ids, labels=labels).loss
    return loss, torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])


def assert_the_full_softmax(model, ids, labels) -> None:
    """The model's `config.loss_type` loss and every gradient equal the full cross-entropy's (float64 model)."""
    loss, grads = _loss_and_grads(model, ids, labels)
    loss_type, model.config.loss_type = model.config.loss_type, "full_ce"
    full_loss, full_grads = _loss_and_grads(model, ids, labels)
    model.config.loss_type = loss_type
    torch.testing.assert_close(loss, full_loss, rtol=1e-12, atol=1e-12)
    for g, f in zip(grads, full_grads, strict=True):
        torch.testing.assert_close(g, f, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pad", [0, 7, None])
@pytest.mark.parametrize("item_scoring", ["embedding", "target_mlp"])
def test_all_items_as_negatives_is_the_full_softmax(pad, item_scoring):
    """With `num_negatives` at least the number of real items, the uniform sampler takes every item once and the
    loss and every gradient are the full cross-entropy's."""
    model = _model(pad=pad, item_scoring=item_scoring, num_negatives=30)
    assert_the_full_softmax(model, *_batch(30, pad))


def test_logq_corrected_gradient_matches_the_full_softmax_on_average():
    """A hand case: 6 items scored `s = (2, 1, 0, 0, -1, -2)`, target item 2, 64 negatives drawn by popularity
    (weights `counts + 1 = (20, 10, 5, 5, 2, 1)`, far from the softmax's). The average over many draws of the
    corrected sampled-softmax gradient of the scores matches the exact full-softmax gradient
    `softmax(s) - onehot(target)`; without the logQ correction it is off by about 0.2.

    Tolerance: the estimate is a ratio (sum of `exp(s_i) / (K q_i)` over the draws in the denominator), whose bias is
    O(1/K): at most 1/K = 0.016 (measured: about 0.001 here); on top, 4 standard errors of the mean of the draws
    (measured, about 0.01 with 500 draws). (The bias is larger when a high-scoring item is rarely drawn:
    docs/scaling.md.)"""
    scores = torch.tensor([2.0, 1.0, 0.0, 0.0, -1.0, -2.0], dtype=torch.float64)
    num_items, target, k, draws = 6, 2, 64, 500
    counts = torch.tensor([19, 9, 4, 4, 1, 0])
    exact = torch.softmax(scores, 0) - torch.nn.functional.one_hot(torch.tensor(target), num_items)
    features = torch.eye(num_items, dtype=torch.float64)  # item i's score is hidden[i]
    generator = torch.Generator().manual_seed(0)
    corrected, uncorrected = [], []
    for _ in range(draws):
        negatives, log_expected = shared_negatives(
            num_items, k, pad_token_id=None, item_counts=counts, generator=generator
        )
        for store, offset in ((corrected, log_expected), (uncorrected, torch.zeros_like(log_expected))):
            hidden = scores.clone()[None].requires_grad_(True)
            loss = sampled_softmax_cross_entropy(
                hidden, features[[target]], torch.tensor([target]), features[negatives], negatives, offset
            )
            store.append(torch.autograd.grad(loss, hidden)[0][0])
    corrected, uncorrected = torch.stack(corrected), torch.stack(uncorrected)
    tolerance = 4 * corrected.std(0) / draws**0.5 + 1 / k
    assert ((corrected.mean(0) - exact).abs() <= tolerance).all()
    assert (uncorrected.mean(0) - exact).abs().max() > 5 * tolerance.max()


def test_accidental_hits_never_count():
    """Negatives equal to the row's target are masked: the loss is that of the other negatives alone, with or
    without in-batch negatives (where the rows sharing a target item are not each other's negatives)."""
    torch.manual_seed(0)
    hidden, features = torch.randn(3, 4, dtype=torch.float64), torch.randn(10, 4, dtype=torch.float64)
    targets = torch.tensor([1, 5, 1])
    negatives, offsets = torch.tensor([1, 2, 5, 1, 3]), torch.tensor([0.1, -0.2, 0.3, 0.1, 0.0], dtype=torch.float64)
    for in_batch in (False, True):
        loss = sampled_softmax_cross_entropy(
            hidden, features[targets], targets, features[negatives], negatives, offsets, in_batch_negatives=in_batch
        )
        expected = 0.0
        for row, t in enumerate(targets.tolist()):
            logits = [hidden[row] @ features[t]]
            logits += [
                hidden[row] @ features[n] - o for n, o in zip(negatives.tolist(), offsets, strict=True) if n != t
            ]
            if in_batch:
                # another row's target, corrected by the log of its count in the batch (item 1 twice, item 5 once)
                logits += [
                    hidden[row] @ features[u] - np.log((targets == u).sum().item()) for u in targets.tolist() if u != t
                ]
            expected += torch.logsumexp(torch.stack(logits), 0) - logits[0]
        torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("counts", [None, torch.arange(12) % 4])
def test_the_same_seed_gives_the_same_negatives(counts):
    """Every process seeded alike draws the same negatives; the padding id is never drawn."""
    draw = [
        shared_negatives(12, 10, pad_token_id=3, item_counts=counts, generator=torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    assert torch.equal(draw[0][0], draw[1][0]) and torch.equal(draw[0][1], draw[1][1])
    assert not (draw[0][0] == 3).any()
    other = shared_negatives(12, 10, pad_token_id=3, item_counts=counts, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(draw[0][0], other[0])
    # through the model: the global generator, as the trainer seeds it
    model = _model(num_negatives=8, negative_sampler="uniform" if counts is None else "popularity")
    model.set_item_counts(None if counts is None else torch.arange(30) % 4)
    ids, labels = _batch(30, 0)
    losses = []
    for _ in range(2):
        torch.manual_seed(11)
        losses.append(model(ids, labels=labels).loss)
    assert torch.equal(losses[0], losses[1])


def test_popularity_sampler_follows_the_counts_plus_one():
    counts = torch.tensor([0, 0, 9, 4, 1])  # padding id 0
    ids, log_expected = shared_negatives(
        5, 200_000, pad_token_id=0, item_counts=counts, generator=torch.Generator().manual_seed(0)
    )
    frequencies = torch.bincount(ids, minlength=5).double() / ids.numel()
    expected = torch.tensor([0, 1, 10, 5, 2], dtype=torch.float64) / 18
    torch.testing.assert_close(frequencies, expected, atol=0.005, rtol=0)
    torch.testing.assert_close(log_expected, torch.log(200_000 * expected[ids]).float())


def test_uniform_sampler_logq_is_the_expected_count():
    ids, log_expected = shared_negatives(101, 10, pad_token_id=0, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (10,) and (ids >= 1).all()
    torch.testing.assert_close(log_expected, torch.full((10,), float(np.log(10 / 100))))


def test_popularity_needs_the_counts_and_checks_them():
    model = _model(num_negatives=8, negative_sampler="popularity")
    ids, labels = _batch(30, 0)
    with pytest.raises(ValueError, match=r"set_item_counts"):
        model(ids, labels=labels)
    with pytest.raises(ValueError, match=r"\[num_items\] = \[30\]"):
        model.set_item_counts(torch.ones(29))
    with pytest.raises(ValueError, match="Unknown `negative_sampler`"):
        TTT4RecConfig(num_items=30, negative_sampler="zipf")


def test_in_batch_negatives_train_and_save(tmp_path):
    model = _model(num_negatives=8, in_batch_negatives=True)
    ids, labels = _batch(30, 0)
    loss, grads = _loss_and_grads(model, ids, labels)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    model.set_item_counts(torch.ones(30))
    model.save_pretrained(tmp_path)  # the counts belong to the training data: not saved
    loaded = TTT4RecForNextItemPrediction.from_pretrained(tmp_path)
    assert loaded.item_counts is None and loaded.config.in_batch_negatives is True


def test_trainer_gives_the_popularity_sampler_the_train_counts(tmp_path):
    from accelerate.state import AcceleratorState

    from modeling_ttt4rec.training.data import load_sequences, sample_targets
    from modeling_ttt4rec.training.trainer import Trainer, parse_args

    data = write_split_dataset(tmp_path / "tiny", random_sequences(40, 25, 3, 12, seed=3), num_items=25, max_length=8)
    AcceleratorState._reset_state(reset_partial_state=True)
    argv = ["--dataset", str(data), "--output_dir", str(tmp_path / "run"), "--hidden_size", "16"]
    argv += ["--intermediate_size", "32", "--num_attention_heads", "2", "--mini_batch_size", "4", "--max_epochs", "1"]
    argv += ["--loss_type", "sampled_softmax", "--num_negatives", "16", "--negative_sampler", "popularity"]
    argv += ["--batch_targets", "64", "--disable_tqdm", "true", "--torch_threads", "1", "--test_eval_modes", "window"]
    trainer = Trainer(parse_args(argv))
    results = trainer.fit()
    AcceleratorState._reset_state(reset_partial_state=True)
    train = load_sequences(data)[0]["train"]
    assert torch.equal(trainer.model.item_counts, torch.from_numpy(np.bincount(sample_targets(train), minlength=25)))
    assert results["epochs"] == 1 and trainer.model.config.negative_sampler == "popularity"
