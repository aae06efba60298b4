"""The baselines (SASRec, GRU4Rec, NARM, BERT4Rec): RecBole's parameter counts, causality and padding invariance, the
caches, NARM's and BERT4Rec's per-prefix readouts, BERT4Rec's one window per sample in the window evaluation and one
readout per row in `recommend`, BERT4Rec's training samples and the trainer's hook for them,
save/load with the Auto classes and remote code in a fresh process, training and evaluation through the project's
scripts, and clear errors for bad input. (Parity with RecBole itself: test_baselines_parity.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_train
import torch
from helpers import logits_in_fresh_process, perturbed
from test_save_load import REMOTE_SCRIPT
from transformers import AutoConfig, AutoModel

import modeling_ttt4rec.baselines as baselines
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
from modeling_ttt4rec.training.arguments import parse_args
from modeling_ttt4rec.training.evaluation import compute_ranks, load_checkpoint
from modeling_ttt4rec.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
FAST = test_train.FAST
# the tiny data set of the training tests, and a clean accelerator state for every test (pytest fixtures)
data = test_train.data
fresh_accelerator_state = test_train.fresh_accelerator_state
IDS = torch.tensor(
    [[3, 7, 1, 9, 4, 4, 2, 8, 5, 6, 1], [2, 2, 5, 0, 0, 0, 0, 0, 0, 0, 0], [11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]
)


def tiny(model_type: str, num_items: int = 12, **settings):
    torch.manual_seed(0)
    if model_type == "sasrec":
        config = SASRecConfig(
            num_items=num_items, max_position_embeddings=16, hidden_size=8, intermediate_size=16, **settings
        )
        return perturbed(SASRecForNextItemPrediction(config).eval(), 0.1)
    if model_type == "bert4rec":
        config = BERT4RecConfig(
            num_items=num_items, max_position_embeddings=16, hidden_size=8, intermediate_size=16, **settings
        )
        return perturbed(BERT4RecForNextItemPrediction(config).eval(), 0.1)
    if model_type == "narm":
        config = NARMConfig(num_items=num_items, embedding_size=8, hidden_size=6, num_hidden_layers=2, **settings)
        return perturbed(NARMForNextItemPrediction(config).eval(), 0.1)
    config = GRU4RecConfig(num_items=num_items, embedding_size=8, hidden_size=6, num_hidden_layers=2, **settings)
    return perturbed(GRU4RecForNextItemPrediction(config).eval(), 0.1)


MODEL_TYPES = ["sasrec", "gru4rec", "narm", "bert4rec"]
# the models without a cache (evaluated in the window mode only)
WITHOUT_CACHE = ("sasrec", "narm", "bert4rec")


def test_parameter_counts_equal_recboles_on_video_games():
    # RecBole 1.2.1 with the paper-run settings on Video.txt's 10,672 items (+ padding), measured with RecBole
    num_params = {
        "sasrec": SASRecForNextItemPrediction(SASRecConfig(num_items=10673)).num_parameters(),
        "gru4rec": GRU4RecForNextItemPrediction(GRU4RecConfig(num_items=10673)).num_parameters(),
        "narm": NARMForNextItemPrediction(NARMConfig(num_items=10673)).num_parameters(),
        "bert4rec": BERT4RecForNextItemPrediction(BERT4RecConfig(num_items=10673)).num_parameters(),
    }
    assert num_params == {"sasrec": 786_368, "gru4rec": 711_808, "narm": 724_096, "bert4rec": 801_393}


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_causal_and_padding_invariant(model_type):
    model = tiny(model_type)
    with torch.no_grad():
        hidden = model(IDS, return_logits=False).last_hidden_state
        # a later item never changes an earlier hidden state; padding never changes an item's
        changed = IDS.clone()
        changed[0, 6:] = 10
        torch.testing.assert_close(model(changed).last_hidden_state[0, :6], hidden[0, :6], rtol=0, atol=1e-6)
        for row in range(IDS.shape[0]):
            n = int((IDS[row] > 0).sum())
            alone = model(IDS[row : row + 1, :n]).last_hidden_state[0]
            torch.testing.assert_close(alone, hidden[row, :n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", ["gru4rec", "sasrec"])
def test_cache_equals_the_full_forward_at_every_position_on_ragged_batches(model_type):
    model = tiny(model_type)
    with torch.no_grad():
        full = model(IDS).last_hidden_state
        lengths = (IDS > 0).sum(dim=1)
        for chunk in (1, 3, 4):
            cache = model.init_cache(IDS.shape[0])
            pieces = []
            for s in range(0, IDS.shape[1], chunk):
                out = model(IDS[:, s : s + chunk], cache_params=cache, use_cache=True, check_inputs=False)
                pieces.append(out.last_hidden_state)
                # the cache's hidden state is each row's newest item's
                newest = (lengths.clamp(max=s + chunk) - 1).clamp(min=0)
                torch.testing.assert_close(cache.last_hidden_state, full[torch.arange(3), newest], atol=1e-6, rtol=0)
                torch.testing.assert_close(out.logits, model.score_items(cache.last_hidden_state))
            streamed = torch.cat(pieces, dim=1)
            mask = IDS > 0
            torch.testing.assert_close(streamed[mask], full[mask], rtol=1e-5, atol=1e-6)
            assert cache.seen.tolist() == lengths.tolist()
        selected = cache.select([2, 0])
        assert selected.seen.tolist() == [1, 11]
        if model_type == "gru4rec":
            assert selected.hidden.shape == (2, 2, 6)
        else:  # keys and values per layer, in the slots of the history positions
            assert len(selected.keys) == len(selected.values) == 2
            assert selected.keys[0].shape == (2, 16, 2, 4)
            torch.testing.assert_close(selected.values[1][1], cache.values[1][0], rtol=0, atol=0)


def test_gru4rec_stream_and_window_evaluation_agree(data):
    from modeling_ttt4rec.training.data import load_sequences

    sequences, meta = load_sequences(str(data), "split-3-2-5")
    model = GRU4RecForNextItemPrediction(GRU4RecConfig(num_items=meta.num_items, embedding_size=8, hidden_size=8))
    test = sequences["test"]
    # histories are at most L = 8 items long in window mode: read whole in stream mode they differ beyond L only
    window = compute_ranks(model, test, 64, mode="window")
    stream = compute_ranks(model, test, 64, mode="stream", stream_chunk_size=3)
    assert (window == stream).all()


def test_the_stream_mode_reads_with_forward_also_for_a_model_that_reads_each_sample(data, monkeypatch):
    # `newest_hidden_state` changes the window mode only: a model with a cache streams as before
    from modeling_ttt4rec.training.data import load_sequences

    sequences, meta = load_sequences(str(data), "split-3-2-5")
    model = GRU4RecForNextItemPrediction(GRU4RecConfig(num_items=meta.num_items, embedding_size=8, hidden_size=8))
    test = sequences["test"]
    expected = {size: compute_ranks(model, test, 64, mode="stream", stream_chunk_size=size) for size in (3, 64)}
    monkeypatch.setattr(model, "newest_hidden_state", lambda *args, **kwargs: pytest.fail("read"), raising=False)
    for size, ranks in expected.items():  # chunks, and one chunk for the whole history (one forward pass)
        assert (compute_ranks(model, test, 64, mode="stream", stream_chunk_size=size) == ranks).all()


def test_sasrec_cache_is_bounded_by_its_positions_and_not_for_the_stream_mode(data):
    from modeling_ttt4rec.training.data import load_sequences
    from modeling_ttt4rec.training.evaluation import has_cache

    model = tiny("sasrec")
    with pytest.raises(ValueError, match="at most 16 items"):
        model(torch.ones(1, 17, dtype=torch.long))
    cache = model(IDS, use_cache=True).cache_params
    assert cache.seen.tolist() == [11, 3, 1]
    # row 0 would reach 17 items: a clear error, and the cache is left as it was
    with pytest.raises(ValueError, match="cache holds at most 16 items per row .* would reach 17"):
        model(IDS[:, :6], cache_params=cache, use_cache=True)
    assert cache.seen.tolist() == [11, 3, 1]
    with pytest.raises(ValueError, match="has 2 rows but the cache holds 3"):
        model(IDS[:2, :1], cache_params=cache, use_cache=True)
    # the cache serves step by step within max_position_embeddings; the stream mode reads whole histories
    assert not has_cache(model) and not has_cache(SASRecForNextItemPrediction)
    sequences, meta = load_sequences(str(data), "split-3-2-5")
    with pytest.raises(ValueError, match="has no cache for whole histories, so it cannot read them in the stream"):
        compute_ranks(model, sequences["test"], meta.max_length, mode="stream")


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_bad_inputs_are_clear_errors(model_type):
    model = tiny(model_type)
    with pytest.raises(ValueError, match=r"`input_ids` must be item ids in \[0, 12\)"):
        model(torch.tensor([[1, 13]]))
    with pytest.raises(ValueError, match="right-padded"):
        model(torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="the padding id 0 is never a target"):
        model(torch.tensor([[1, 3]]), labels=torch.tensor([[0, -100]]))
    with pytest.raises(ValueError, match="`labels` must have shape"):
        model(torch.tensor([[1, 3]]), labels=torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="candidate_ids"):
        model.score_candidates(torch.zeros(1, 8), torch.tensor([[1, 99]]))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_save_load_ships_exactly_the_models_files(tmp_path, model_type):
    model = tiny(model_type)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == model_type
    name = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "narm": "NARM", "bert4rec": "BERT4Rec"}[model_type]
    assert config["auto_map"] == {
        "AutoConfig": f"configuration_{model_type}.{name}Config",
        "AutoModel": f"modeling_{model_type}.{name}ForNextItemPrediction",
    }
    # each model ships exactly its own files (BERT4Rec SASRec's too, whose layers it uses); losses.py and
    # recommender_head.py are the package's one loss module and one next-item head (links to them)
    shipped = {p.name for p in tmp_path.glob("*.py")}
    shared = {"losses.py", "recommender_head.py"}
    own = {f"configuration_{model_type}.py", f"modeling_{model_type}.py", "recommender.py", *shared}
    assert shipped == own | ({"configuration_sasrec.py", "modeling_sasrec.py"} if model_type == "bert4rec" else set())
    for name in shared:
        assert (tmp_path / name).read_text() == (ROOT / "modeling_ttt4rec" / name).read_text()
    assert shipped <= {p.name for p in Path(baselines.__file__).parent.glob("*.py")}
    assert type(AutoConfig.from_pretrained(tmp_path)) is type(model.config)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits, rtol=0, atol=0)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_remote_code_in_fresh_process(tmp_path, model_type):
    model = tiny(model_type)
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    loaded = logits_in_fresh_process(checkpoint, IDS, tmp_path, REMOTE_SCRIPT)
    assert loaded["module"].startswith("transformers_modules."), loaded["module"]
    with torch.no_grad():
        expected = model(IDS, use_cache=False).logits
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=0, atol=0)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_train_and_evaluate_with_the_scripts(data, tmp_path, model_type):
    out = tmp_path / "run"
    argv = ["--model_type", model_type, "--dataset", str(data), "--output_dir", str(out), "--max_epochs", "2", *FAST]
    results = train(parse_args(argv))
    modes = [r["mode"] for r in results["rows"] if r["split"] == "test"]
    # SASRec and NARM have no cache: their test skips the stream mode
    assert modes == (["window"] if model_type in WITHOUT_CACHE else ["window", "stream"])
    model = load_checkpoint(str(out / "best_model"))
    assert model.config.model_type == model_type
    if model_type in ("sasrec", "bert4rec"):
        assert model.config.max_position_embeddings == 8  # the data set's L
    cmd = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--model_name_or_path", str(out / "best_model")]
    cmd += ["--dataset", str(data), "--torch_threads", "1", "--output_json", str(tmp_path / "eval.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    window = next(r for r in results["rows"] if r["split"] == "test" and r["mode"] == "window")
    assert json.loads((tmp_path / "eval.json").read_text())["window"]["NDCG@10"] == pytest.approx(window["NDCG@10"])

    # a checkpoint of one model given with another model's type, and a catalog that differs: clear errors
    other = "gru4rec" if model_type == "sasrec" else "sasrec"
    with pytest.raises(ValueError, match=f"is a {model_type} model but --model_type is {other}"):
        load_checkpoint(str(out / "best_model"), model_type=other)
    again = ["--model_type", model_type, "--model_name_or_path", str(out / "best_model"), "--num_items", "40"]
    with pytest.raises(ValueError, match="has num_items=30 but the data set has 40"):
        train(parse_args([*again, "--dataset", str(data), "--output_dir", str(tmp_path / "again"), *FAST]))


def test_unknown_model_type_is_a_clear_error():
    with pytest.raises(SystemExit, match="Unknown --model_type 'caser'"):
        parse_args(["--dataset", "x", "--model_type", "caser"])


def test_narm_after_each_position_is_narm_on_that_prefix_alone():
    # RecBole's NARM reads a history and represents its newest item; position t here is that for the prefix ending
    # at t: the GRU state there and the attention over positions <= t, written out for one prefix at a time
    model = tiny("narm")
    with torch.no_grad():
        hidden = model(IDS, return_logits=False).last_hidden_state
        for row in range(IDS.shape[0]):
            for t in range(int((IDS[row] > 0).sum())):
                states = model.gru(model.item_embedding(IDS[row : row + 1, : t + 1]))[0][0]  # h_0 .. h_t
                alpha = model.v_t(torch.sigmoid(model.a_1(states) + model.a_2(states[-1])))  # [t + 1, 1]
                expected = model.b(torch.cat([(alpha * states).sum(dim=0), states[-1]]))
                torch.testing.assert_close(hidden[row, t], expected, rtol=1e-5, atol=1e-6)


def test_narm_attention_blocks_give_the_same_states(monkeypatch):
    from modeling_ttt4rec.baselines import modeling_narm

    model = tiny("narm")
    with torch.no_grad():
        whole = model(IDS).last_hidden_state
        # a block of 1 or 4 positions at a time instead of all 11 at once
        for elements in (1, 4 * IDS.numel() * model.config.hidden_size):
            monkeypatch.setattr(modeling_narm, "ATTENTION_BLOCK_ELEMENTS", elements)
            torch.testing.assert_close(model(IDS).last_hidden_state, whole, rtol=1e-6, atol=1e-7)


def test_narm_has_no_cache_and_a_clear_error():
    with pytest.raises(ValueError, match="NARM has no cache"):
        tiny("narm")(IDS, use_cache=True)
    with pytest.raises(ValueError, match="`context_dropout_prob` must be in"):
        NARMConfig(context_dropout_prob=1.0)


def test_bert4rec_after_each_item_is_recboles_test_sequence_of_that_prefix():
    # the hidden state after item t is BERT4Rec's output at the mask token of the prefix's items 1..t (RecBole drops
    # the first), the mask token appended: read as masked input, and the prefix read alone as a history
    model = tiny("bert4rec")
    mask = model.config.mask_token_id
    with torch.no_grad():
        hidden = model(IDS, return_logits=False).last_hidden_state
        for row in range(IDS.shape[0]):
            for t in range(int((IDS[row] > 0).sum())):
                recbole = torch.cat([IDS[row, 1 : t + 1], torch.tensor([mask])])[None]
                torch.testing.assert_close(model(recbole).last_hidden_state[0, -1], hidden[row, t])
                alone = model(IDS[row : row + 1, : t + 1])
                torch.testing.assert_close(alone.logits[0], model.score_items(hidden[row, t]))
    # the scores are h . e_i + b_i: [h, 1] against [e_i, b_i]
    assert (hidden[IDS > 0][:, -1] == 1).all()
    expected = hidden[0, 3, :-1] @ model.item_embedding.weight[5] + model.output_bias[5]
    torch.testing.assert_close(model.score_items(hidden[0, 3])[5], expected)
    torch.testing.assert_close(model.score_candidates(hidden[:1, 3], torch.tensor([[5]]))[0, 0], expected)


def test_bert4rec_prefix_blocks_give_the_same_states(monkeypatch):
    from modeling_ttt4rec.baselines import modeling_bert4rec

    model = tiny("bert4rec")
    with torch.no_grad():
        whole = model(IDS).last_hidden_state
        for elements in (1, 5 * IDS.shape[1] * model.config.hidden_size):  # 1 or 5 prefixes at a time
            monkeypatch.setattr(modeling_bert4rec, "PREFIX_BLOCK_ELEMENTS", elements)
            # (blocks pad to their own longest prefix: float32 round-off)
            torch.testing.assert_close(model(IDS).last_hidden_state, whole, rtol=1e-5, atol=1e-6)


def test_bert4rec_training_samples_are_recboles():
    model = tiny("bert4rec")
    config = model.config  # at most int(0.2 * 16) = 3 masked targets per history
    ids = IDS[:, :8]
    target_mask = (ids > 0) & (torch.arange(8) >= 1)  # targets after positions 1..
    batch = {"input_ids": ids, "attention_mask": (ids > 0).long(), "target_mask": target_mask}
    batch["targets"] = torch.arange(int(target_mask.sum()))
    rows, ends = target_mask.nonzero(as_tuple=True)
    for ft_ratio in (0.0, 1.0):
        config.ft_ratio = ft_ratio
        out = model.training_batch(batch, torch.Generator().manual_seed(0))
        again = model.training_batch(batch, torch.Generator().manual_seed(0))
        assert all(torch.equal(out[k], again[k]) for k in out)  # the generator decides everything
        # one history per target of the batch: the items up to the target's position
        assert out["input_ids"].shape == (len(rows), 8)
        assert out["attention_mask"].sum(1).tolist() == (ends + 1).tolist()
        histories = ids[rows].masked_fill(out["attention_mask"] == 0, 0)
        masked = out["input_ids"] == config.mask_token_id
        assert torch.equal(out["input_ids"][~masked], histories[~masked])
        assert torch.equal(out["targets"], histories[out["target_mask"]])
        assert not out["target_mask"][:, 0].any() and not (out["target_mask"] & ~masked).any()
        if ft_ratio == 1.0:  # fine-tuning samples: the newest item of each history masked, and its target
            assert torch.equal(masked, torch.arange(8) == ends[:, None])
        else:
            assert masked.any() and (out["target_mask"].sum(1) <= config.max_masked_targets).all()
    # the loss of masked input reads it as it is; masked input passes the input checks, masked targets do not
    loss = model(out["input_ids"], out["attention_mask"], torch.where(out["target_mask"], histories, -100)).loss
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"`labels` must be item ids in \[1, 12\)"):
        model(out["input_ids"], labels=torch.full_like(out["input_ids"][:, 0], config.mask_token_id))
    with pytest.raises(ValueError, match=r"`candidate_ids` must be item ids in \[0, 12\)"):
        model.score_candidates(torch.zeros(1, 9), torch.tensor([[config.mask_token_id]]))


def test_bert4rec_has_no_cache_and_clear_errors():
    with pytest.raises(ValueError, match="BERT4Rec has no cache"):
        tiny("bert4rec")(IDS, use_cache=True)
    with pytest.raises(ValueError, match=r"item ids in \[0, 12\) .* or the mask token 12; got values in \[1, 13\]"):
        tiny("bert4rec")(torch.tensor([[1, 13]]))
    # recommend() reads histories of items (it appends the mask token itself)
    with pytest.raises(ValueError, match="`recommend` reads histories of items, but `input_ids` holds the mask token"):
        tiny("bert4rec").recommend(torch.tensor([[1, 2, 12]]), exclude_seen=True)
    with pytest.raises(ValueError, match="leave at least one target per history"):
        BERT4RecConfig(max_position_embeddings=4, mask_ratio=0.2)
    with pytest.raises(ValueError, match="`ft_ratio` must be in"):
        BERT4RecConfig(ft_ratio=1.5)


def _count_sequences(monkeypatch, model) -> list[int]:
    """Record how many sequences each encoder pass of `model` (BERT4Rec's `_bert`) reads."""
    passes, bert = [], model._bert
    monkeypatch.setattr(model, "_bert", lambda ids: passes.append(ids.shape[0]) or bert(ids))
    return passes


def _recbole_readout(model, history: list[int]) -> torch.Tensor:
    """Slow reference: RecBole's test-time sequence of one history read alone (its items without the first, the
    mask token appended, no padding), `[h, 1]` at the mask token."""
    sequence = torch.tensor([history[1:] + [model.config.mask_token_id]])
    h = model._bert(sequence)[0, -1]
    return torch.cat([h, h.new_ones(1)])


@pytest.mark.parametrize("elements", [None, 1, 3 * 8 * 8])  # blocks: the default, 1 and a few sequences at a time
def test_bert4rec_window_evaluation_reads_each_sample_alone_on_ragged_data(monkeypatch, elements):
    from modeling_ttt4rec.baselines import modeling_bert4rec
    from modeling_ttt4rec.training.data import SplitSequences, collate, make_batches, prefix_units, sample_units
    from modeling_ttt4rec.training.evaluation import _sample_batch, reads_each_sample, score_ranks, scoring_matrix
    from modeling_ttt4rec.training.metrics import ranking_metrics, ranks_from_scores

    if elements is not None:
        monkeypatch.setattr(modeling_bert4rec, "PREFIX_BLOCK_ELEMENTS", elements)
    L, model = 8, tiny("bert4rec", num_items=30)
    assert reads_each_sample(model) and not reads_each_sample(tiny("sasrec"))
    rng = torch.Generator().manual_seed(3)
    seqs = [
        torch.randint(1, 30, (int(n),), generator=rng).tolist() for n in torch.randint(2, 20, (40,), generator=rng)
    ]
    starts = [1 + k % (len(s) - 1) for k, s in enumerate(seqs)]
    split = SplitSequences.from_rows(seqs, starts)
    samples = [(s[max(0, j - L) : j], s[j]) for s, ts in zip(seqs, starts, strict=True) for j in range(ts, len(s))]
    with torch.no_grad():
        reference = torch.stack([_recbole_readout(model, history) for history, _ in samples])
        # the evaluator's path: one window per sample, batched by length (several batches), one readout each
        units = sample_units(split, L)
        passes = _count_sequences(monkeypatch, model)
        fast = torch.zeros_like(reference)
        for index in make_batches(units, max_targets=16, max_tokens=64):
            batch = collate(units, index)
            fast[batch["sample_ids"]] = _sample_batch(model, batch)
        assert sum(passes) == len(samples)
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)
        # the ranks and metrics equal the reference's and those of reading every prefix through `forward` (the
        # evaluation before per-sample windows)
        targets = torch.tensor([target for _, target in samples])
        expected = ranks_from_scores(model.score_items(reference), targets, ties="pessimistic").numpy()
        ranks = compute_ranks(model, split, L, batch_targets=16, batch_tokens=64)
        assert (ranks == expected).all()
        prefixes = prefix_units(split, L)
        every_prefix = torch.zeros_like(reference)
        for index in make_batches(prefixes, max_targets=16):
            batch = collate(prefixes, index)
            every_prefix[batch["sample_ids"]] = model(batch["input_ids"]).last_hidden_state[batch["target_mask"]]
        before = score_ranks(model, every_prefix, scoring_matrix(model.item_features()), targets).numpy()
        assert (ranks == before).all() and ranking_metrics(ranks) == ranking_metrics(before)


def test_bert4rec_recommend_reads_only_the_newest_readout(monkeypatch):
    model = tiny("bert4rec")
    with torch.no_grad():
        logits = model(IDS).logits  # every prefix read, the newest one scored
        passes = _count_sequences(monkeypatch, model)
        whole = model.recommend(IDS, top_k=5)
        assert sum(passes) == IDS.shape[0]  # one sequence per row
        chunked = model.recommend(IDS, top_k=5, item_chunk_size=64)
        newest = model.newest_hidden_state(IDS)
    scores, item_ids = logits.topk(5, dim=1)
    for got in (whole, chunked):
        assert torch.equal(got.item_ids, item_ids)
        torch.testing.assert_close(got.scores, scores)
    lengths = (IDS > 0).sum(dim=1)
    torch.testing.assert_close(newest, model(IDS).last_hidden_state[torch.arange(3), lengths - 1])
    with pytest.raises(ValueError, match="`newest_hidden_state` reads histories of items, but `input_ids` holds"):
        model.newest_hidden_state(torch.tensor([[1, 2, 12]]))
    with pytest.raises(ValueError, match="contain no items"):
        model.newest_hidden_state(torch.tensor([[1, 2], [0, 0]]))


class _DropEveryOtherTarget(torch.nn.Module):
    """A model with the trainer's `training_batch` hook: it keeps every other target of a batch."""

    def training_batch(self, batch: dict, generator: torch.Generator) -> dict:
        keep = torch.zeros_like(batch["targets"], dtype=torch.bool)
        keep[::2] = True
        target_mask = batch["target_mask"].clone()
        target_mask[target_mask.clone()] = keep
        return {**batch, "target_mask": target_mask, "targets": batch["targets"][keep]}


def test_trainer_passes_batches_through_the_models_training_batch_hook(data):
    from types import SimpleNamespace

    from accelerate import Accelerator

    from modeling_ttt4rec.training.data import collate, load_sequences, make_batches, prefix_units
    from modeling_ttt4rec.training.trainer import Trainer

    sequences, meta = load_sequences(str(data), "split-3-2-5")
    units = prefix_units(sequences["train"], meta.max_length)
    indices = make_batches(units, 64)[:2]
    generator = torch.Generator().manual_seed(0)
    trainer = SimpleNamespace(units=units, rank=0, world=1, accelerator=Accelerator(cpu=True))
    # a model without the hook trains on the collated batches as they are, normalised by their targets
    trainer.model = torch.nn.Linear(1, 1)
    batches, targets = Trainer._step_batches(trainer, indices, generator)
    for batch, index in zip(batches, indices, strict=True):
        expected = collate(units, index)
        assert batch.keys() == expected.keys() and all(torch.equal(batch[k], expected[k]) for k in batch)
    assert targets == sum(int(units.num_targets[index].sum()) for index in indices)
    # a model with it trains on what it returns, normalised by the targets it keeps
    trainer.model = _DropEveryOtherTarget()
    batches, hooked_targets = Trainer._step_batches(trainer, indices, generator)
    assert hooked_targets == sum((int(units.num_targets[index].sum()) + 1) // 2 for index in indices)
    assert [b["targets"].numel() for b in batches] == [(int(units.num_targets[i].sum()) + 1) // 2 for i in indices]
