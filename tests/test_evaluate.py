"""Full-ranking evaluation: window and stream modes against a brute-force reference, errors, the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import random_sequences, tiny_model, write_split_dataset

from modeling_ttt4rec.training.data import SplitSequences, load_sequences
from modeling_ttt4rec.training.evaluation import compute_ranks, evaluate_split, load_checkpoint
from modeling_ttt4rec.training.metrics import ranking_metrics

ROOT = Path(__file__).resolve().parent.parent


def brute_force_ranks(model, split: SplitSequences, max_length: int | None) -> list[int]:
    """Each sample on its own through `model.forward`, rank from its logits (docs/protocol.md section 7 literally)."""
    ranks = []
    for r in range(split.num_rows):
        seq = split.values[split.offsets[r] : split.offsets[r + 1]]
        for j in range(int(split.target_start[r]), len(seq)):
            start = 0 if max_length is None else max(0, j - max_length)
            with torch.no_grad():
                logits = model(torch.tensor(seq[start:j])[None], use_cache=False).logits[0]
            scores = logits[1:]
            ranks.append(int((scores > scores[seq[j] - 1]).sum()))
    return ranks


@pytest.mark.parametrize("backbone, layer", [("transformer", "mlp"), ("mamba", "linear")])
def test_window_and_stream_match_brute_force_and_agree_without_long_histories(backbone, layer):
    seqs = random_sequences(12, 40, 2, 9, seed=3)  # every history <= 8 = L
    split = SplitSequences.from_rows(seqs, [max(1, len(s) // 2) for s in seqs])
    model = tiny_model(backbone=backbone, ttt_layer_type=layer)
    reference = brute_force_ranks(model, split, 8)
    # scores 3 rows at a time: every batch of 7 targets is scored in several chunks
    window = compute_ranks(model, split, 8, mode="window", batch_targets=7, score_chunk_size=3)
    stream = compute_ranks(model, split, 8, mode="stream", batch_targets=7, stream_chunk_size=4, score_chunk_size=3)
    assert window.tolist() == reference
    assert stream.tolist() == reference
    window_metrics = evaluate_split(model, split, 8, "window")
    stream_metrics = evaluate_split(model, split, 8, "stream")
    for name in ("HR@10", "HR@50", "NDCG@10", "NDCG@50", "num_samples"):
        assert window_metrics[name] == stream_metrics[name]


def test_long_histories_window_truncates_stream_reads_everything():
    seqs = random_sequences(6, 40, 14, 30, seed=4)
    split = SplitSequences.from_rows(seqs, [len(s) // 2 for s in seqs])
    model = tiny_model()
    window = compute_ranks(model, split, 5, mode="window", batch_targets=9, batch_tokens=40, score_chunk_size=4)
    stream = compute_ranks(model, split, 5, mode="stream", batch_targets=9, stream_chunk_size=8, score_chunk_size=4)
    assert window.tolist() == brute_force_ranks(model, split, 5)
    assert stream.tolist() == brute_force_ranks(model, split, None)
    assert window.tolist() != stream.tolist()


def test_unknown_mode():
    split = SplitSequences.from_rows([[1, 2, 3]], [1])
    with pytest.raises(ValueError, match="Unknown eval mode"):
        compute_ranks(tiny_model(), split, 5, mode="full")


def test_checkpoint_errors(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "ok")
    assert load_checkpoint(str(tmp_path / "ok")).config.num_items == 40
    with pytest.raises(ValueError, match="config.json is missing"):
        load_checkpoint(str(tmp_path))
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    with pytest.raises(ValueError, match="no weights"):
        load_checkpoint(str(tmp_path / "noweights"))
    # truncated weights file
    import shutil

    shutil.copytree(tmp_path / "ok", tmp_path / "truncated")
    data = (tmp_path / "ok" / "model.safetensors").read_bytes()
    (tmp_path / "truncated" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="probably truncated or corrupted"):
        load_checkpoint(str(tmp_path / "truncated"))
    # a weights file with a tensor missing
    from safetensors.torch import load_file, save_file

    shutil.copytree(tmp_path / "ok", tmp_path / "missing")
    tensors = load_file(tmp_path / "ok" / "model.safetensors")
    dropped = next(k for k in tensors if "q_proj" in k)
    del tensors[dropped]
    save_file(tensors, tmp_path / "missing" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="incomplete"):
        load_checkpoint(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no such checkpoint folder"):
        load_checkpoint("./typo-of-a-folder")
    # an untied item head is a weight of its own: without it the checkpoint is incomplete
    untied = tiny_model(tie_word_embeddings=False)
    untied.save_pretrained(tmp_path / "untied")
    assert load_checkpoint(str(tmp_path / "untied")).config.tie_word_embeddings is False
    tensors = load_file(tmp_path / "untied" / "model.safetensors")
    del tensors["item_head.weight"]
    save_file(tensors, tmp_path / "untied" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"incomplete: missing weights \['item_head.weight'\]"):
        load_checkpoint(str(tmp_path / "untied"))


def test_mixed_precision_encodes_in_bf16_but_scores_in_float32(monkeypatch):
    """In bfloat16 many items tie with the target, which changes the ranks: scoring must run in float32."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    import modeling_ttt4rec.training.evaluation as evaluation

    seen = []
    original = evaluation.score_ranks

    def recording(model, hidden, items_t, targets, *args):
        seen.append((torch.is_autocast_enabled("cpu"), hidden.dtype, items_t.dtype))
        return original(model, hidden, items_t, targets, *args)

    monkeypatch.setattr(evaluation, "score_ranks", recording)
    seqs = random_sequences(12, 40, 2, 9, seed=3)
    split = SplitSequences.from_rows(seqs, [max(1, len(s) // 2) for s in seqs])
    model = tiny_model()
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        accelerator = Accelerator(mixed_precision="bf16", cpu=True)
        ranks = compute_ranks(model, split, 8, mode="window", accelerator=accelerator, batch_targets=7)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert seen and all(entry == (False, torch.float32, torch.float32) for entry in seen)
    assert len(ranks) == split.num_samples


def test_evaluate_script_refuses_a_model_of_another_data_set(tmp_path):
    seqs = random_sequences(20, 40, 3, 12, seed=5)
    proc, _ = run_evaluate_script(tmp_path, tiny_model(num_items=60), seqs, succeed=False)
    assert "The model scores 60 item ids but the data set" in proc.stderr and "has 40" in proc.stderr


def run_evaluate_script(
    tmp_path, model, seqs, *args: str, succeed: bool = True
) -> tuple[subprocess.CompletedProcess, Path]:
    """Save `model`, write `seqs` as a data set, run `scripts/evaluate.py` on them with `args`; returns the
    finished process (checked to have succeeded, or failed with `succeed=False`) and the data set folder."""
    data = write_split_dataset(tmp_path / "data", seqs, num_items=40, max_length=6)
    model.save_pretrained(tmp_path / "model")
    cmd = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--model_name_or_path", str(tmp_path / "model")]
    cmd += ["--dataset", str(data), *args, "--cpu"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # this checkout, not an installed copy
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert (proc.returncode == 0) == succeed, proc.stderr
    return proc, data


def test_evaluate_script(tmp_path):
    model = tiny_model()
    out = tmp_path / "metrics.json"
    seqs = random_sequences(20, 40, 3, 12, seed=5)
    proc, data = run_evaluate_script(tmp_path, model, seqs, "--eval_mode", "both", "--output_json", str(out))
    assert "test (window): HR@10" in proc.stdout
    result = json.loads(out.read_text())
    sequences, meta = load_sequences(data, "split-3-2-5")
    expected = evaluate_split(model, sequences["test"], meta.max_length, "window")
    assert result["window"]["NDCG@10"] == expected["NDCG@10"]
    assert result["window"]["num_samples"] == sequences["test"].num_samples
    assert set(result) == {"window", "stream"}
    assert result["stream"]["num_samples"] == result["window"]["num_samples"]


def test_evaluate_script_by_history_length(tmp_path):
    model = tiny_model()
    report = tmp_path / "by_length"
    seqs = random_sequences(25, 40, 3, 16, seed=6)
    proc, data = run_evaluate_script(tmp_path, model, seqs, "--eval_mode", "both", "--by_history_length", str(report))
    assert "| eval mode | history length | samples |" in proc.stdout
    result = json.loads((report / "metrics_by_history_length.json").read_text())
    assert set(result) == {"window", "stream"}
    assert (report / "metrics_by_history_length.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| window | 1-3 |" in (report / "metrics_by_history_length.md").read_text()
    # each group's metrics are those of its samples' ranks, grouped here by a literal reading of the split
    sequences, meta = load_sequences(data, "split-3-2-5")
    split = sequences["test"]
    history = [j for n, ts in zip(split.lengths, split.target_start, strict=True) for j in range(ts, n)]
    for mode in ("window", "stream"):
        ranks = compute_ranks(model, split, meta.max_length, mode)
        assert sum(row["num_samples"] for row in result[mode]) == len(ranks) == len(history)
        for row in result[mode]:
            high = row["max"] if row["max"] is not None else 10**9
            mine = [r for r, n in zip(ranks, history, strict=True) if row["min"] <= n <= high]
            assert row["NDCG@10"] == pytest.approx(ranking_metrics(mine)["NDCG@10"])
            assert row["HR@50"] == pytest.approx(ranking_metrics(mine)["HR@50"])


def test_evaluate_script_history_length_edges(tmp_path):
    model = tiny_model()
    seqs = random_sequences(25, 40, 3, 16, seed=6)
    report = tmp_path / "by_length"
    run_evaluate_script(tmp_path, model, seqs, "--by_history_length", str(report), "--history_length_edges", "1,8")
    rows = json.loads((report / "metrics_by_history_length.json").read_text())["window"]
    assert [row["history"] for row in rows] == ["1-7", "8+"]
    proc, _ = run_evaluate_script(
        tmp_path / "bad",
        model,
        seqs,
        "--by_history_length",
        str(report),
        "--history_length_edges",
        "8,1",
        succeed=False,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --history_length_edges '8,1': expected increasing non-negative integers separated by commas, "
        "e.g. 1,11,51,101."
    ]


def test_evaluate_script_sampled_protocol(tmp_path):
    model = tiny_model(item_scoring="target_mlp", target_mlp_size=8)
    out = tmp_path / "metrics.json"
    # the kebab-case spelling of an option works as well
    args = ["--eval-protocol", "sampled", "--eval_num_negatives", "25", "--candidate_seed", "3"]
    args += ["--output_json", str(out)]
    proc, data = run_evaluate_script(tmp_path, model, random_sequences(20, 40, 3, 12, seed=5), *args)
    assert "test (window): HR@5" in proc.stdout
    result = json.loads(out.read_text())["window"]
    sequences, meta = load_sequences(data, "split-3-2-5")
    kwargs = dict(protocol="sampled", num_negatives=25, candidate_seed=3)
    expected = evaluate_split(model, sequences["test"], meta.max_length, "window", **kwargs)
    for name in ("HR@5", "HR@10", "NDCG@5", "NDCG@10", "num_samples"):
        assert result[name] == expected[name]
