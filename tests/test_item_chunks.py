"""Full ranking and `recommend()` with memory bounded by a chunk of items: the same ranks (ties included) and the
same top-k as scoring the whole catalog at once."""

import runpy
from pathlib import Path

import pytest
import torch
from helpers import random_sequences, write_split_dataset

from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction
from modeling_ttt4rec.training import evaluation
from modeling_ttt4rec.training.data import SplitSequences
from modeling_ttt4rec.training.evaluation import compute_ranks, evaluation_options, score_ranks, scoring_matrix
from modeling_ttt4rec.training.metrics import ranks_from_scores
from modeling_ttt4rec.training.trainer import check_arguments, parse_args

ROOT = Path(__file__).resolve().parents[1]


def _model(num_items: int = 37, pad: int | None = 0, **kwargs) -> TTT4RecForNextItemPrediction:
    torch.manual_seed(0)
    config = TTT4RecConfig(
        num_items=num_items, pad_token_id=pad, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        mini_batch_size=4, **kwargs,
    )  # fmt: skip
    return TTT4RecForNextItemPrediction(config).eval()


@pytest.mark.parametrize("pad", [0, 200, None])
@pytest.mark.parametrize("item_chunk_size", [64, 128, 320])
def test_item_chunked_ranks_equal_the_whole_catalog(pad, item_chunk_size):
    model = _model(num_items=300, pad=pad)
    with torch.no_grad():
        weight = model.item_head.weight
        weight[9] = weight[5]  # an exact tie with target 5
        weight[130] = weight[5]
        weight[299] = weight[5]
    items_t = scoring_matrix(model.item_features().detach())
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(50, 16, generator=generator)
    hidden[3] = float("nan")  # a diverged row ranks last
    targets = torch.randint(1, 300, (50,), generator=generator)
    if pad is not None:
        targets[targets == pad] = 5
    targets[:10] = 5
    # the slow reference: every item's score at once, `ranks_from_scores` (the protocol's rule)
    whole = ranks_from_scores(model.score_items(hidden, items_t.T), targets)
    for chunk_size in (8, 256):
        assert torch.equal(score_ranks(model, hidden, items_t, targets, chunk_size=chunk_size), whole)
        chunked = score_ranks(model, hidden, items_t, targets, chunk_size=chunk_size, item_chunk_size=item_chunk_size)
        assert torch.equal(chunked, whole)
    assert whole[3] == 300


def test_compute_ranks_with_item_chunks():
    model = _model(num_items=200)
    seqs = random_sequences(12, 200, 2, 9, seed=3)
    split = SplitSequences.from_rows(seqs, [max(1, len(s) // 2) for s in seqs])
    whole = compute_ranks(model, split, 8, batch_targets=7, score_chunk_size=3)
    assert (whole == compute_ranks(model, split, 8, batch_targets=7, score_chunk_size=3, item_chunk_size=64)).all()


def test_compute_ranks_ranks_encoded_batches_together_or_apart(monkeypatch):
    """Hidden states are gathered over encoder batches (`RANK_ROWS`) before they are ranked: the same ranks, in
    sample order, whether each batch is ranked on its own or all together."""
    model = _model(num_items=200)
    seqs = random_sequences(12, 200, 2, 9, seed=3)
    split = SplitSequences.from_rows(seqs, [max(1, len(s) // 2) for s in seqs])
    together = compute_ranks(model, split, 8, batch_targets=7)
    monkeypatch.setattr(evaluation, "RANK_ROWS", 1)
    apart = compute_ranks(model, split, 8, batch_targets=7)
    assert (together == apart).all()
    # the slow reference: one window per sample, every item scored at once
    rows, targets = [], []
    for seq, start in zip(seqs, split.target_start, strict=True):
        for j in range(start, len(seq)):
            out = model(torch.tensor([seq[max(0, j - 8) : j]]), return_logits=False)
            rows.append(out.last_hidden_state[0, -1])
            targets.append(seq[j])
    reference = ranks_from_scores(model.score_items(torch.stack(rows).detach()), torch.tensor(targets))
    assert (together == reference.numpy()).all()


@pytest.mark.parametrize("item_scoring", ["embedding", "target_mlp"])
@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"exclude_seen": True},
        {"candidates": torch.arange(3, 250)},
        {"exclude_items": torch.tensor([[4, 0], [7, 8], [0, 0]]), "exclude_seen": True},
    ],
)
def test_item_chunked_recommend_equals_the_whole_catalog(item_scoring, filters):
    model = _model(num_items=300, item_scoring=item_scoring)
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0], [9, 10, 0, 0]])
    whole = model.recommend(ids, top_k=6, **filters)
    for chunk in (64, 128, 320):
        chunked = model.recommend(ids, top_k=6, item_chunk_size=chunk, **filters)
        assert torch.equal(chunked.item_ids, whole.item_ids)
        torch.testing.assert_close(chunked.scores, whole.scores)


def test_item_chunked_recommend_from_a_cache():
    model = _model(num_items=300)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    whole_cache, chunked_cache = model.init_cache(2), model.init_cache(2)
    whole = model.recommend(ids, cache_params=whole_cache, top_k=4)
    chunked = model.recommend(ids, cache_params=chunked_cache, top_k=4, item_chunk_size=64)
    assert torch.equal(chunked.item_ids, whole.item_ids)
    # from the state alone, and after a step in which one row reads nothing
    step = torch.tensor([[7], [0]])
    whole = model.recommend(step, attention_mask=step != 0, cache_params=whole_cache, top_k=4)
    chunked = model.recommend(step, attention_mask=step != 0, cache_params=chunked_cache, top_k=4, item_chunk_size=64)
    assert torch.equal(chunked.item_ids, whole.item_ids)
    assert torch.equal(
        model.recommend(cache_params=chunked_cache, top_k=4, item_chunk_size=128).item_ids,
        model.recommend(cache_params=whole_cache, top_k=4).item_ids,
    )


def test_item_chunked_recommend_checks_before_reading():
    model = _model()
    ids = torch.tensor([[1, 2, 3]])
    for size in (0, 100):
        with pytest.raises(ValueError, match="`item_chunk_size` must be a positive multiple of 64"):
            model.recommend(ids, item_chunk_size=size)
    with pytest.raises(ValueError, match="`item_chunk_size` must be a positive multiple of 64"):
        score_ranks(model, torch.zeros(1, 16), torch.zeros(16, 37), torch.ones(1, dtype=torch.long), 8, 32)
    with pytest.raises(ValueError, match=r"`top_k` must be in \[1, 2\]"):
        model.recommend(ids, top_k=3, candidates=torch.tensor([1, 5, 9]), exclude_seen=True, item_chunk_size=64)


def test_item_chunk_size_option_reaches_the_ranking(tmp_path, monkeypatch):
    """`--item_chunk_size` of evaluate.py (and train.py, through the same `evaluation_options`) is the item block
    `score_ranks` ranks with; the metrics are the same with and without it."""
    from accelerate.state import AcceleratorState

    seqs = random_sequences(20, 300, 3, 12, seed=5)
    data = write_split_dataset(tmp_path / "data", seqs, num_items=300, max_length=6)
    _model(num_items=300).save_pretrained(tmp_path / "model")
    sizes = []
    original = evaluation.score_ranks

    def recording(*args):
        sizes.append(args[5])
        return original(*args)

    monkeypatch.setattr(evaluation, "score_ranks", recording)
    evaluate = runpy.run_path(str(ROOT / "scripts" / "evaluate.py"))["main"]
    results = []
    for extra in ([], ["--item_chunk_size", "128"]):
        AcceleratorState._reset_state(reset_partial_state=True)
        argv = ["--model_name_or_path", str(tmp_path / "model"), "--dataset", str(data), "--cpu", *extra]
        results.append(evaluate(argv)["window"])
    AcceleratorState._reset_state(reset_partial_state=True)
    assert set(sizes) == {None, 128}
    assert {k: v for k, v in results[0].items() if k != "eval_seconds"} == {
        k: v for k, v in results[1].items() if k != "eval_seconds"
    }
    run = parse_args(["--dataset", str(data), "--item_chunk_size", "128"])
    assert evaluation_options(run.training)["item_chunk_size"] == 128
    run.training.item_chunk_size = 100
    with pytest.raises(ValueError, match="--item_chunk_size: `item_chunk_size` must be a positive multiple of 64"):
        check_arguments(run)
