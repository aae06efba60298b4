"""The next-item head every recommender shares (`recommender_head.RecommenderHeadMixin`): the baselines' sampled
losses (the full softmax when every item is a negative, trained from the command line), their `recommend` (the
top-k of `score_items`, with GRU4Rec's cache and an item map), item chunks scored through `score_items`, and the
negatives' own generator (`seed_negatives`)."""

import pytest
import test_train
import torch
from test_baselines import IDS, MODEL_TYPES
from test_baselines import tiny as baseline
from test_sampled_softmax import assert_the_full_softmax

from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction
from modeling_ttt4rec.baselines import GRU4RecConfig, SASRecConfig
from modeling_ttt4rec.training.trainer import Trainer, parse_args

FAST = test_train.FAST
# the tiny data set of the training tests, and a clean accelerator state for every test (pytest fixtures)
data = test_train.data
fresh_accelerator_state = test_train.fresh_accelerator_state


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_baseline_sampled_softmax_with_every_item_is_the_full_softmax(model_type):
    model = baseline(model_type, loss_type="sampled_softmax", num_negatives=11).double()
    labels = torch.where(IDS > 0, (IDS % 11) + 1, -100)
    assert_the_full_softmax(model, IDS, labels)
    # the other sampled loss trains too, and the loss settings are checked as TTT4Rec's are
    model.config.loss_type = "sampled_bce"
    assert torch.isfinite(model(IDS, labels=labels).loss)
    with pytest.raises(ValueError, match="Unknown `loss_type`"):
        GRU4RecConfig(loss_type="bpr")
    with pytest.raises(ValueError, match="`num_negatives` must be >= 1"):
        SASRecConfig(num_negatives=0)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_baseline_trains_with_the_sampled_softmax_from_the_command_line(data, tmp_path, model_type):
    argv = ["--model_type", model_type, "--dataset", str(data), "--output_dir", str(tmp_path / "run"), *FAST]
    argv += ["--loss_type", "sampled_softmax", "--num_negatives", "8", "--negative_sampler", "popularity"]
    argv += ["--max_epochs", "1", "--test_eval_modes", "window"]
    trainer = Trainer(parse_args(argv))
    results = trainer.fit()
    assert results["epochs"] == 1 and trainer.model.config.loss_type == "sampled_softmax"
    assert trainer.model.item_counts is not None and int(trainer.model.item_counts.sum()) > 0


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("item_chunk_size", [None, 64])
def test_baseline_recommend_is_the_top_k_of_score_items(model_type, item_chunk_size):
    model = baseline(model_type, num_items=200)
    ids = IDS * 17  # ids up to 187, right-padded
    with torch.no_grad():
        out = model(ids, use_cache=False)
        last = (ids != 0).sum(dim=1) - 1
        scores = model.score_items(out.last_hidden_state[torch.arange(3), last])
        rec = model.recommend(ids, top_k=7, item_chunk_size=item_chunk_size)
        expected = scores.topk(7, dim=1)
        # whole catalog: the same product, bit for bit; in item blocks: another matrix product, equal to round-off
        exact = {"rtol": 0, "atol": 0} if item_chunk_size is None else {}
        torch.testing.assert_close(rec.scores, expected.values, **exact)
        assert torch.equal(rec.item_ids, expected.indices)
        # the filters of TTT4Rec's recommend: never an item of the history
        seen = model.recommend(ids, top_k=7, exclude_seen=True, item_chunk_size=item_chunk_size)
        for row, items in zip(ids.tolist(), seen.item_ids.tolist(), strict=True):
            assert not set(row) & set(items)


@pytest.mark.parametrize("model_type", ["gru4rec", "sasrec"])
def test_recommend_with_a_cache_and_an_item_map(model_type):
    model = baseline(model_type)
    item_map = [f"item-{i}" for i in range(12)]
    with torch.no_grad():
        whole = model.recommend(IDS, top_k=4, item_map=item_map)
        cache = model.init_cache(3)
        model.recommend(IDS[:, :4], cache_params=cache, top_k=4)
        pieces = model.recommend(IDS[:, 4:], cache_params=cache, top_k=4, item_map=item_map)
        again = model.recommend(cache_params=cache, top_k=4)
    assert pieces.cache_params is cache and cache.seen.tolist() == [11, 3, 1]
    for rec in (pieces, again):
        assert torch.equal(rec.item_ids, whole.item_ids)
        torch.testing.assert_close(rec.scores, whole.scores)
    assert pieces.original_ids == [[f"item-{i}" for i in row] for row in whole.item_ids.tolist()]
    with pytest.raises(ValueError, match="have read no item yet"):
        model.recommend(cache_params=model.init_cache(2))


def test_sasrec_recommend_refuses_another_cache_and_every_row_needs_an_item():
    model = baseline("sasrec")
    with pytest.raises(ValueError, match="must be a SASRecCache"):
        model.recommend(IDS, cache_params=object())
    with pytest.raises(ValueError, match=r"Row\(s\) \[1\] contain no items"):
        model.recommend(torch.tensor([[3, 4], [0, 0]]))


def test_recommend_scores_item_chunks_through_score_items(monkeypatch):
    model = baseline("gru4rec", num_items=200, pad_token_id=70)
    firsts = []
    score_items = model.score_items

    def recording(hidden, item_features=None, *, first_item=0):
        firsts.append(first_item)
        return score_items(hidden, item_features, first_item=first_item)

    monkeypatch.setattr(model, "score_items", recording)
    ids = torch.tensor([[3, 71, 150], [5, 9, 70]])
    with torch.no_grad():
        model.recommend(ids, top_k=5, item_chunk_size=64)
        assert firsts == [0, 64, 128, 192]
        # a chunk's scores are the whole catalog's columns, the padding id (70, in the second chunk) lowest
        hidden = torch.randn(2, 8)
        whole = score_items(hidden)
        chunk = score_items(hidden, model.item_features()[64:128], first_item=64)
    assert torch.equal(chunk, whole[:, 64:128]) and chunk[:, 70 - 64].eq(torch.finfo(chunk.dtype).min).all()
    assert (whole[:, :64] > torch.finfo(whole.dtype).min).all()


@pytest.mark.parametrize("loss_type", ["sampled_softmax", "sampled_bce"])
def test_seed_negatives_draws_from_a_generator_of_its_own(loss_type):
    torch.manual_seed(0)
    config = TTT4RecConfig(
        num_items=30, hidden_size=16, intermediate_size=32, num_attention_heads=2, loss_type=loss_type
    )
    model = TTT4RecForNextItemPrediction(config).eval()  # no dropout: the negatives are the only draws
    ids = torch.tensor([[3, 7, 1, 9, 4, 4, 2, 8], [2, 2, 5, 0, 0, 0, 0, 0]])
    labels = torch.where(ids > 0, ids % 29 + 1, -100)

    def loss_with(seed: int | None) -> torch.Tensor:
        model.seed_negatives(seed)
        with torch.no_grad():
            return model(ids, labels=labels, use_cache=False).loss

    global_state = torch.get_rng_state()
    first = loss_with(5)
    assert torch.equal(torch.get_rng_state(), global_state)  # the global generator is left alone
    assert torch.equal(loss_with(5), first) and not torch.equal(loss_with(6), first)
    # without a seed (the default, a plain forward): torch's global generator, as before
    torch.manual_seed(11)
    unseeded = loss_with(None)
    assert not torch.equal(torch.get_rng_state(), torch.manual_seed(11).get_state())
    assert torch.equal(loss_with(None), unseeded)
