"""The second paper's model and protocol (docs/protocol.md section 9): the target MLP tower, sampled 1:4 binary
cross-entropy training and sampled 1 + 99 evaluation, each against a slow, literal reference."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import random_sequences, tiny_model, write_split_dataset

from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction
from modeling_ttt4rec.losses import full_item_cross_entropy, sample_negatives, sampled_binary_cross_entropy
from modeling_ttt4rec.training.data import SplitSequences, load_sequences
from modeling_ttt4rec.training.evaluation import compute_ranks, evaluate_split, load_checkpoint
from modeling_ttt4rec.training.grid import run_grid
from modeling_ttt4rec.training.metrics import ranking_metrics
from modeling_ttt4rec.training.sampling import evaluation_candidates
from modeling_ttt4rec.training.trainer import parse_args, train

ROOT = Path(__file__).resolve().parent.parent


def tower_model(num_items=40, dtype=torch.float32, **kw) -> TTT4RecForNextItemPrediction:
    tower = {"ttt_layer_type": "linear", "item_scoring": "target_mlp", "target_mlp_size": 24}
    return tiny_model(perturb=0.3, dtype=dtype, num_items=num_items, **{**tower, **kw})


# ------------------------------------------------------------------------------------------------ negative sampling


def test_training_negatives_never_the_positive_nor_padding_and_cover_the_rest():
    num_items = 7
    positives = torch.tensor([1, 3, 6] * 2000)
    generator = torch.Generator().manual_seed(5)
    negatives = sample_negatives(positives, num_items, 4, generator=generator, pad_token_id=0)
    assert negatives.shape == (6000, 4)
    assert (negatives != positives[:, None]).all()
    assert negatives.min() >= 1 and negatives.max() <= num_items - 1
    for p in (1, 3, 6):
        drawn = negatives[positives == p].flatten()
        counts = torch.bincount(drawn, minlength=num_items)[1:]
        others = [i for i in range(1, num_items) if i != p]
        # uniform over the 5 other items: 8000 draws, about 1600 each
        assert counts[p - 1] == 0
        assert all(1400 < counts[i - 1] < 1800 for i in others), counts.tolist()
    again = sample_negatives(positives, num_items, 4, generator=torch.Generator().manual_seed(5), pad_token_id=0)
    assert torch.equal(negatives, again)


def test_training_negatives_need_two_real_items():
    with pytest.raises(ValueError, match="at least 2 real items"):
        sample_negatives(torch.tensor([1]), 2, 4, pad_token_id=0)


def test_evaluation_candidates_are_distinct_never_the_target_and_repeatable():
    rng = np.random.default_rng(0)
    num_items = 150
    targets = rng.integers(1, num_items, size=3000)
    candidates = evaluation_candidates(targets, num_items, num_negatives=99, seed=3, pad_token_id=0)
    assert candidates.shape == (3000, 100)
    assert (candidates[:, 0] == targets).all()
    negatives = candidates[:, 1:]
    assert (negatives != targets[:, None]).all()
    assert negatives.min() >= 1 and negatives.max() <= num_items - 1
    assert all(len(set(row)) == 99 for row in negatives.tolist())
    assert np.array_equal(
        candidates, evaluation_candidates(targets, num_items, num_negatives=99, seed=3, pad_token_id=0)
    )
    assert not np.array_equal(
        candidates, evaluation_candidates(targets, num_items, num_negatives=99, seed=4, pad_token_id=0)
    )


def test_evaluation_candidates_with_exactly_enough_items_take_all_of_them():
    targets = np.array([1, 5, 3])
    candidates = evaluation_candidates(targets, num_items=7, num_negatives=5, seed=0, pad_token_id=0)
    for row in candidates.tolist():
        assert sorted(row) == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="at least 7 real items"):
        evaluation_candidates(targets, num_items=7, num_negatives=6, pad_token_id=0)


# ------------------------------------------------------------------------------------------------ losses


def test_sampled_binary_cross_entropy_by_hand():
    positive = torch.tensor([2.0, -0.5])
    negatives = torch.tensor([[0.0, -1.0, 1.0, 3.0], [0.5, 0.5, -2.0, 0.0]])

    def bce(score, label):  # -[y log sigmoid(s) + (1 - y) log(1 - sigmoid(s))]
        p = 1.0 / (1.0 + math.exp(-score))
        return -(label * math.log(p) + (1 - label) * math.log(1 - p))

    expected = 0.0
    for s, negs in zip(positive.tolist(), negatives.tolist(), strict=True):
        expected += (bce(s, 1) + sum(bce(n, 0) for n in negs)) / 5
    assert sampled_binary_cross_entropy(positive, negatives).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="must be"):
        sampled_binary_cross_entropy(positive, negatives[0])


def test_candidate_scores_equal_full_scores_for_both_scorings():
    for scoring in ("embedding", "target_mlp"):
        model = tower_model(dtype=torch.float64, item_scoring=scoring)
        hidden = torch.randn(5, 16, dtype=torch.float64)
        candidates = torch.randint(1, 40, (5, 7))
        full = model.score_items(hidden.double())
        torch.testing.assert_close(model.score_candidates(hidden, candidates), full.gather(1, candidates))
    with pytest.raises(ValueError, match="candidate_ids"):
        model.score_candidates(hidden, candidates[0])
    with pytest.raises(ValueError, match=r"item ids in \[0, 40\); got values in \[\d+, 40\]"):
        model.score_candidates(hidden, torch.cat([candidates[:, :-1], torch.full((5, 1), 40)], dim=1))


def test_target_mlp_scores_are_the_paper_formula():
    model = tower_model(dtype=torch.float64)
    hidden = torch.randn(3, 16, dtype=torch.float64)
    embeddings = model.get_input_embeddings().weight
    tower = model.target_mlp
    features = tower.fc2(torch.relu(tower.fc1(embeddings)))  # F_t = MLP(e_y) for every item y
    expected = hidden @ features.T
    logits = model.score_items(hidden)
    torch.testing.assert_close(logits[:, 1:], expected[:, 1:])
    assert (logits[:, 0] == torch.finfo(logits.dtype).min).all()


def test_fused_full_cross_entropy_through_the_target_tower_matches_autograd():
    model = tower_model(dtype=torch.float64)
    hidden = torch.randn(9, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, 40, (9,))
    fused = full_item_cross_entropy(hidden, model.item_features(), targets, pad_token_id=0, chunk_size=4)
    fused.backward()
    fused_grads = [hidden.grad.clone()] + [p.grad.clone() for p in model.target_mlp.parameters()]
    hidden.grad = None
    model.zero_grad()
    reference = F.cross_entropy(model.score_items(hidden), targets, reduction="sum")
    reference.backward()
    reference_grads = [hidden.grad] + [p.grad for p in model.target_mlp.parameters()]
    # the fused loss always scores in float32, the reference in float64: float32 tolerances. (The output bias of
    # the tower shifts every item's score by the same h . b, so its true gradient is 0 and only rounding is left.)
    torch.testing.assert_close(fused.double(), reference, rtol=1e-6, atol=1e-6)
    assert min(g.abs().max() for g in reference_grads[:-1]) > 1e-2
    for a, b in zip(fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_negatives", [4, 2])
def test_model_sampled_loss_matches_a_literal_computation(num_negatives):
    model = tower_model(loss_type="sampled_bce", num_negatives=num_negatives)
    ids = torch.tensor([[3, 5, 7, 9, 0], [2, 4, 6, 8, 10]])
    mask = ids != 0
    target_mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    targets = torch.tensor([5, 7, 9, 6, 8, 10, 11])
    labels = torch.full_like(ids, -100).masked_scatter_(target_mask, targets)
    torch.manual_seed(11)
    loss = model(ids, attention_mask=mask, labels=labels, use_cache=False, return_logits=False).loss
    torch.manual_seed(11)
    summed = model(ids, attention_mask=mask, labels=labels, use_cache=False, num_items_in_batch=1).loss

    torch.manual_seed(11)
    negatives = sample_negatives(targets, 40, num_negatives, pad_token_id=0)
    assert negatives.shape == (7, num_negatives)
    hidden = model.model(ids, attention_mask=mask, use_cache=False).last_hidden_state[target_mask]
    expected = 0.0
    for h, t, negs in zip(hidden, targets, negatives, strict=True):
        positive = torch.dot(h, model.item_features(t))
        negative = model.item_features(negs) @ h
        expected = expected + (F.softplus(-positive) + F.softplus(negative).sum()) / (1 + num_negatives)
    torch.testing.assert_close(summed, expected)
    torch.testing.assert_close(loss, expected / 7)
    with pytest.raises(ValueError, match="Unknown `loss_type`"):
        TTT4RecConfig(loss_type="bpr")
    with pytest.raises(ValueError, match="`num_negatives` must be >= 1"):
        TTT4RecConfig(loss_type="sampled_bce", num_negatives=0)


# ------------------------------------------------------------------------------------------------ evaluation


def brute_force_sampled_ranks(model, split: SplitSequences, max_length: int, num_negatives: int, seed: int):
    """Each sample alone through `model.forward`, ranked among its candidates from the full logits."""
    targets = [
        int(split.values[split.offsets[r] + j])
        for r in range(split.num_rows)
        for j in range(int(split.target_start[r]), int(split.lengths[r]))
    ]
    candidates = evaluation_candidates(
        np.array(targets), model.config.num_items, num_negatives, seed, pad_token_id=model.config.pad_token_id
    )
    ranks, k = [], 0
    for r in range(split.num_rows):
        seq = split.values[split.offsets[r] : split.offsets[r + 1]]
        for j in range(int(split.target_start[r]), len(seq)):
            with torch.no_grad():
                logits = model(torch.tensor(seq[max(0, j - max_length) : j])[None], use_cache=False).logits[0]
            scores = logits[torch.from_numpy(candidates[k])]
            ranks.append(int((scores[1:] >= scores[0]).sum()))  # a tie ranks the negative above the target
            k += 1
    return ranks


@pytest.mark.parametrize("scoring", ["embedding", "target_mlp"])
def test_sampled_evaluation_matches_brute_force_in_both_modes(scoring):
    seqs = random_sequences(12, 40, 2, 9, seed=3)
    split = SplitSequences.from_rows(seqs, [max(1, len(s) // 2) for s in seqs])
    model = tower_model(item_scoring=scoring)
    reference = brute_force_sampled_ranks(model, split, 8, num_negatives=20, seed=7)
    kwargs = dict(protocol="sampled", num_negatives=20, candidate_seed=7)
    window = compute_ranks(model, split, 8, mode="window", batch_targets=5, **kwargs)
    stream = compute_ranks(model, split, 8, mode="stream", batch_targets=7, stream_chunk_size=4, **kwargs)
    assert window.tolist() == reference
    assert stream.tolist() == reference
    metrics = evaluate_split(model, split, 8, "window", **kwargs)
    assert set(metrics) == {"HR@5", "HR@10", "NDCG@5", "NDCG@10", "num_samples", "eval_seconds"}
    expected = ranking_metrics(reference, ks=(5, 10))
    for name in ("HR@5", "HR@10", "NDCG@5", "NDCG@10"):
        assert metrics[name] == pytest.approx(expected[name])
    # another seed, other candidates: the ranks change
    assert compute_ranks(model, split, 8, protocol="sampled", num_negatives=20, candidate_seed=8).tolist() != reference


def test_sampled_evaluation_counts_ties_against_the_target():
    """A model that scores every candidate the same ranks last in the sampled protocol, not first."""
    seqs = random_sequences(6, 40, 3, 8, seed=1)
    split = SplitSequences.from_rows(seqs, [len(s) // 2 for s in seqs])
    model = tower_model()
    with torch.no_grad():
        model.target_mlp.fc2.weight.zero_()  # every item's feature is the bias: all scores equal
    ranks = compute_ranks(model, split, 8, protocol="sampled", num_negatives=20)
    assert (ranks == 20).all()
    # the full protocol keeps docs/protocol.md section 7's "strictly higher"
    assert (compute_ranks(model, split, 8, protocol="full") == 0).all()


def test_unknown_protocol():
    split = SplitSequences.from_rows([[1, 2, 3]], [1])
    with pytest.raises(ValueError, match="Unknown evaluation protocol"):
        compute_ranks(tower_model(), split, 5, protocol="leave-one-out")


# ------------------------------------------------------------------------------------------------ cache and training


def test_cache_and_recommend_with_the_target_tower():
    model = tower_model()
    ids = torch.tensor([[3, 5, 7, 9, 11, 13, 2, 4, 6], [1, 2, 3, 4, 5, 0, 0, 0, 0]])
    mask = ids != 0
    full = model(ids, attention_mask=mask, use_cache=False).logits
    cache = None
    for s in range(0, 9, 2):
        chunk, chunk_mask = ids[:, s : s + 2], mask[:, s : s + 2]
        out = model(chunk, attention_mask=chunk_mask, cache_params=cache, use_cache=True)
        cache = out.cache_params
    torch.testing.assert_close(out.logits, full, rtol=1e-5, atol=1e-5)
    top = model.recommend(cache_params=cache, top_k=5)
    torch.testing.assert_close(top.scores, full.topk(5).values, rtol=1e-5, atol=1e-5)


def test_train_the_second_papers_setting_end_to_end(tmp_path):
    data = write_split_dataset(tmp_path / "data", random_sequences(40, 60, 6, 20, seed=2), num_items=60, max_length=8)
    out = tmp_path / "run"
    args = ["--dataset", str(data), "--output_dir", str(out), "--max_epochs", "2", "--disable_tqdm", "true"]
    args += ["--hidden_size", "16", "--intermediate_size", "32", "--num_attention_heads", "2", "--batch_targets", "64"]
    args += ["--ttt_layer_type", "linear", "--item_scoring", "target_mlp", "--mini_batch_size", "1"]
    args += ["--loss_type", "sampled_bce", "--eval_protocol", "sampled", "--eval_num_negatives", "30"]
    results = train(parse_args(args))
    assert results["eval_protocol"] == "sampled" and results["loss_type"] == "sampled_bce"
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert history[1]["train_loss"] < history[0]["train_loss"] < math.log(2) + 0.05
    assert "val_HR@5" in history[0] and "val_HR@50" not in history[0]
    table = (out / "results.md").read_text()
    assert "| HR@5 | HR@10 | NDCG@5 | NDCG@10 |" in table

    model = load_checkpoint(str(out / "best_model"))
    assert model.config.item_scoring == "target_mlp" and model.config.mini_batch_size == 1
    sequences, meta = load_sequences(data)
    test = evaluate_split(model, sequences["test"], meta.max_length, protocol="sampled", num_negatives=30)
    row = next(r for r in results["rows"] if r["split"] == "test" and r["mode"] == "window")
    for name in ("HR@5", "HR@10", "NDCG@5", "NDCG@10"):
        assert row[name] == pytest.approx(test[name])


def test_early_stopping_metric_must_exist_in_the_protocol(tmp_path):
    data = write_split_dataset(tmp_path / "data", random_sequences(10, 30, 4, 8), num_items=30, max_length=8)
    args = ["--dataset", str(data), "--output_dir", str(tmp_path / "run"), "--eval_protocol", "sampled"]
    with pytest.raises(ValueError, match="HR@50"):
        train(parse_args([*args, "--early_stopping_metric", "HR@50"]))


def test_grid_search_script_writes_table_and_heat_map_and_resumes(tmp_path, capsys):
    import importlib.util

    import matplotlib.image

    spec = importlib.util.spec_from_file_location("grid_search", ROOT / "scripts" / "grid_search.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    grid_main = script.main
    data = write_split_dataset(tmp_path / "data", random_sequences(20, 30, 5, 12, seed=4), num_items=30, max_length=8)
    out = tmp_path / "grid"
    train_args = ["--dataset", str(data), "--max_epochs", "1", "--disable_tqdm", "true", "--hidden_size", "8"]
    train_args += ["--intermediate_size", "16", "--num_attention_heads", "2", "--ttt_layer_type", "linear"]
    train_args += ["--item_scoring", "target_mlp", "--loss_type", "sampled_bce", "--eval_protocol", "sampled"]
    train_args += ["--eval_num_negatives", "20", "--test_eval_modes", "window"]
    argv = ["--output_dir", str(out), "--initializer_range", "0.02,0.2", "--mini_batch_size", "1,4", "--", *train_args]
    rows = grid_main(argv)
    assert [(r["initializer_range"], r["mini_batch_size"]) for r in rows] == [(0.02, 1), (0.02, 4), (0.2, 1), (0.2, 4)]
    for row in rows:
        folder = out / f"init-{row['initializer_range']:g}_mb-{row['mini_batch_size']}"
        config = json.loads((folder / "best_model" / "config.json").read_text())
        assert config["initializer_range"] == row["initializer_range"]
        assert config["mini_batch_size"] == row["mini_batch_size"]
        results = json.loads((folder / "results.json").read_text())
        test = next(r for r in results["rows"] if r["split"] == "test")
        assert row["NDCG@10"] == test["NDCG@10"]
    table = (out / "grid.md").read_text()
    assert "| NDCG@10: initializer_range \\ mini_batch_size | 1 | 4 |" in table
    assert f"{rows[0]['HR@5']:.4f}" in table
    image = matplotlib.image.imread(out / "grid_heatmap.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    capsys.readouterr()
    assert grid_main(argv) == rows
    assert capsys.readouterr().out.count("done before") == 4
    with pytest.raises(SystemExit, match="--metric HR@50 was not computed"):
        grid_main([*argv[: -len(train_args) - 1], "--metric", "HR@50", "--", *train_args])
    with pytest.raises(ValueError, match="--mini_batch_size is set by the grid"):
        grid_main(["--output_dir", str(out), "--", *train_args, "--mini_batch_size", "2"])
    with pytest.raises(ValueError, match="--output_dir is set by the grid"):  # in any spelling
        grid_main(["--output-dir", str(out), "--", *train_args, "--output-dir=elsewhere"])
    with pytest.raises(ValueError, match=r"reports no test metrics in stream mode \(it has \[\('test', 'window'\)"):
        run_grid(train_args, [0.02], [1], out, mode="stream")


def test_forward_with_per_position_labels_runs_the_target_tower_once_and_gives_the_formula_loss():
    model = tower_model(dtype=torch.float64)
    input_ids = torch.tensor([[3, 7, 1, 9, 12], [5, 2, 8, 0, 0]])
    labels = torch.tensor([[7, 1, 9, 12, 4], [2, 8, 6, -100, -100]])
    calls = []
    model.target_mlp.register_forward_hook(lambda *args: calls.append(1))
    out = model(input_ids, labels=labels)
    assert len(calls) == 1  # shared by the logits and the loss
    embeddings = model.get_input_embeddings().weight
    features = model.target_mlp.fc2(torch.relu(model.target_mlp.fc1(embeddings)))
    scores = out.last_hidden_state[labels != -100] @ features.T
    scores[:, 0] = torch.finfo(scores.dtype).min
    expected = F.cross_entropy(scores, labels[labels != -100])
    torch.testing.assert_close(out.loss, expected)
