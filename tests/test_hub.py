"""Hub publishing without a network: the exact upload and card, clear errors, loading by repo id from the cache."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from dataset_builders.format import ITEM_MAP_FILE
from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction
from modeling_ttt4rec.training.hub import HubError, prepare_hub_folder, push_folder

ROOT = Path(__file__).resolve().parent.parent
RESULTS = {
    "dataset": "someone/video-games",
    "dataset_name": "sasrec",
    "dataset_config": "split-3-2-5",
    "rows": [
        {"split": "validation", "mode": "window", "HR@10": 0.1, "HR@50": 0.2, "NDCG@10": 0.05, "NDCG@50": 0.07},
        {"split": "test", "mode": "window", "HR@10": 0.0879, "HR@50": 0.2, "NDCG@10": 0.0425, "NDCG@50": 0.06},
        {"split": "test", "mode": "stream", "HR@10": 0.09, "HR@50": 0.21, "NDCG@10": 0.043, "NDCG@50": 0.061},
    ],
    "epochs": 12,
    "best_epoch": 7,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "best_model"
    torch.manual_seed(0)
    model = TTT4RecForNextItemPrediction(TTT4RecConfig(num_items=40, hidden_size=16, num_attention_heads=2))
    model.save_pretrained(folder)
    (folder / "item_map.parquet").write_bytes(b"PAR1")
    (folder / "training_info.json").write_text(json.dumps({"max_length": 50}))
    return folder


def test_exact_upload_and_model_card(checkpoint, tmp_path):
    files = prepare_hub_folder(checkpoint, tmp_path / "upload", "someone/ttt4rec-video", RESULTS)
    assert files == sorted(
        [
            "README.md",
            "cache.py",
            "config.json",
            "configuration_ttt4rec.py",
            "item_map.parquet",
            "losses.py",
            "model.safetensors",
            "modeling_ttt4rec.py",
            "recommender_head.py",
            "training_info.json",
            "ttt.py",
        ]
    )
    card = (tmp_path / "upload" / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "transformers"
    assert {"ttt4rec", "recommendation", "test-time-training"} <= set(meta["tags"])
    assert meta["datasets"] == ["someone/video-games"]
    results = meta["model-index"][0]["results"]
    assert results[0]["dataset"]["split"] == "test" and results[0]["dataset"]["config"] == "split-3-2-5"
    values = {(m["type"], m["config"]): m["value"] for r in results for m in r["metrics"]}
    assert values[("hr_at_10", "window")] == 0.0879 and values[("ndcg_at_10", "stream")] == 0.043
    assert len(values) == 8
    assert 'AutoModel.from_pretrained("someone/ttt4rec-video", trust_remote_code=True)' in body
    assert "cache_params=cache" in body and "item_map.parquet" in body
    assert "TTT4Rec: A Test-Time Training Approach" in body and "Preliminary Evaluation of the Test-Time" in body
    assert "| test | window | 0.0879 | 0.2000 | 0.0425 | 0.0600 |" in body
    assert "Full ranking over all items" in body and "the tied item embedding" in body
    assert "{{" not in card
    # the card text of TTT4Rec, word for word (rendered before the template described every model type)
    assert card == (ROOT / "tests" / "fixtures" / "ttt4rec_model_card.md").read_text()


@pytest.mark.parametrize("model_type", ["sasrec", "gru4rec", "narm", "bert4rec"])
def test_model_card_of_a_baseline_names_the_model_and_its_origin(tmp_path, model_type):
    from modeling_ttt4rec.training.arguments import model_classes

    config_class, model_class = model_classes(model_type)
    model_class(config_class(num_items=40)).save_pretrained(tmp_path / "best_model")
    prepare_hub_folder(tmp_path / "best_model", tmp_path / "upload", f"someone/{model_type}-video", RESULTS)
    _, front, body = (tmp_path / "upload" / "README.md").read_text().split("---\n", 2)
    assert yaml.safe_load(front)["tags"] == [model_type, "recommendation", "sequential-recommendation", "custom_code"]
    name = {
        "sasrec": "A SASRec (Kang and McAuley, 2018)",
        "gru4rec": "A GRU4Rec (Hidasi et al., 2016",
        "narm": "A NARM (Li et al., 2017)",
        "bert4rec": "A BERT4Rec (Sun et al., 2019)",
    }[model_type]
    assert name in body and "exactly RecBole 1.2.1's" in body and "zhao2021recbole" in body
    assert "TTT" not in body.replace("TTT4Rec papers", "").replace("`ttt4rec` project", "") and "{{" not in body
    # the incremental use where the model has a cache (GRU4Rec; SASRec's up to its positions), a note where none
    assert ("cache_params=cache" in body) == (model_type == "gru4rec")
    assert ("up to `max_position_embeddings` items" in body) == (model_type == "sasrec")
    assert ("has no cache" in body) == (model_type in ("narm", "bert4rec"))
    # BERT4Rec's own scoring and training, not the tied embedding's
    if model_type == "bert4rec":
        assert "`h . e_i + b_i`" in body and "mask ratio\n  0.2" in body and "sun2019bert4rec" in body
        assert "tied item embedding" not in body


def test_model_card_of_the_sampled_protocol(tmp_path):
    torch.manual_seed(0)
    config = TTT4RecConfig(num_items=40, hidden_size=16, num_attention_heads=2, item_scoring="target_mlp")
    TTT4RecForNextItemPrediction(config).save_pretrained(tmp_path / "best_model")
    row = {"HR@5": 0.31, "HR@10": 0.45, "NDCG@5": 0.2, "NDCG@10": 0.25}
    results = {
        **{k: v for k, v in RESULTS.items() if k != "rows"},
        "eval_protocol": "sampled",
        "loss_type": "sampled_bce",
        "rows": [{"split": "test", "mode": "window", **row}],
    }
    training = {"early_stopping_metric": "NDCG@5", "num_negatives": 4, "max_epochs": 10, "patience": 10}
    prepare_hub_folder(
        tmp_path / "best_model", tmp_path / "upload", "someone/ttt4rec-linear", results, training=training
    )
    card = (tmp_path / "upload" / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    metrics = yaml.safe_load(front)["model-index"][0]["results"][0]["metrics"]
    assert {(m["type"], m["value"]) for m in metrics} == {
        ("hr_at_5", 0.31),
        ("hr_at_10", 0.45),
        ("ndcg_at_5", 0.2),
        ("ndcg_at_10", 0.25),
    }
    assert "| test | window | 0.3100 | 0.4500 | 0.2000 | 0.2500 |" in body
    assert "99 fixed random negatives" in body and "target MLP tower" in body
    assert "Full ranking" not in body and "{{" not in card
    assert "Binary cross-entropy of each target against 4 uniformly sampled negatives" in body
    assert "Cross-entropy over all items" not in body
    assert "early stopping on\nvalidation NDCG@5 with patience 10 (at most 10 epochs)" in body


def test_model_card_of_a_local_data_set_names_no_path(checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "ml100k").mkdir(parents=True)
    results = {**RESULTS, "dataset": "data/ml100k", "dataset_name": "movielens-100k"}
    prepare_hub_folder(checkpoint, tmp_path / "upload", "someone/ttt4rec-ml", results)
    _, front, body = (tmp_path / "upload" / "README.md").read_text().split("---\n", 2)
    meta = yaml.safe_load(front)
    assert "datasets" not in meta and "data/ml100k" not in front + body
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "local"
    assert "**Training data:** `local data set movielens-100k`" in body


def test_model_card_of_the_sampled_softmax(tmp_path):
    config = TTT4RecConfig(
        num_items=40,
        hidden_size=16,
        num_attention_heads=2,
        loss_type="sampled_softmax",
        num_negatives=1024,
        negative_sampler="popularity",
    )
    TTT4RecForNextItemPrediction(config).save_pretrained(tmp_path / "best_model")
    results = {**RESULTS, "loss_type": "sampled_softmax"}
    prepare_hub_folder(tmp_path / "best_model", tmp_path / "upload", "someone/ttt4rec-sampled", results)
    body = (tmp_path / "upload" / "README.md").read_text()
    assert "Sampled softmax: each target against 1024 negatives shared by the batch, drawn by popularity" in body
    assert "Cross-entropy over all items" not in body


def test_incomplete_checkpoint_is_refused(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        prepare_hub_folder(tmp_path / "ckpt", tmp_path / "up", "a/b", RESULTS)


def test_push_errors_offline_and_without_token(checkpoint, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="offline mode"):
        push_folder(checkpoint, "someone/x", token="hf_fake")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # `get_token()` reads both variables (and the token files, moved away below): with offline mode off, a real
    # token would make a real upload
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(HubError, match="no token"):
        push_folder(checkpoint, "someone/x")


def test_push_error_when_the_hub_is_unreachable(checkpoint, tmp_path):
    script = textwrap.dedent(
        f"""
        from modeling_ttt4rec.training.hub import HubError, push_folder
        try:
            push_folder({str(checkpoint)!r}, "someone/x", token="hf_fake")
        except HubError as err:
            print("HubError:", err)
        """
    )
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="0", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert "HubError: Cannot reach the Hub at http://127.0.0.1:9" in proc.stdout, proc.stdout + proc.stderr


def make_hub_cache(checkpoint: Path, cache: Path, repo_id: str) -> None:
    """Lay out `checkpoint` in `cache` as `huggingface_hub` stores a downloaded model repository."""
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(checkpoint, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.mark.parametrize("import_package", [False, True])
def test_load_by_repo_id_from_the_cache_offline_in_a_fresh_process(checkpoint, tmp_path, import_package):
    hf_home = tmp_path / "hf"
    make_hub_cache(checkpoint, hf_home / "hub", "someone/ttt4rec-tiny")
    ids = [[3, 7, 1, 9, 4], [2, 5, 0, 0, 0]]
    with torch.no_grad():
        model = TTT4RecForNextItemPrediction.from_pretrained(checkpoint).eval()
        expected = model(torch.tensor(ids), use_cache=False).logits
    script = textwrap.dedent(
        f"""
        import json, sys, torch
        {"import modeling_ttt4rec" if import_package else ""}
        from transformers import AutoModel
        model = AutoModel.from_pretrained("someone/ttt4rec-tiny", trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(torch.tensor({ids}), use_cache=False).logits
        print(json.dumps({{"module": type(model).__module__, "logits": logits.tolist()}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    if import_package:
        env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not import_package:
        assert out["module"].startswith("transformers_modules")
    torch.testing.assert_close(torch.tensor(out["logits"]), expected)


def test_train_push_to_hub_dry_run_and_offline_error(tmp_path):
    from accelerate.state import AcceleratorState
    from helpers import random_sequences, write_split_dataset

    from modeling_ttt4rec.training.trainer import parse_args, train

    data = write_split_dataset(tmp_path / "data", random_sequences(30, 30, 3, 12, seed=2), num_items=30, max_length=6)
    argv = ["--dataset", str(data), "--max_epochs", "1", "--hidden_size", "16", "--num_attention_heads", "2"]
    argv += ["--disable_tqdm", "true", "--test_eval_modes", "window", "--push_to_hub", "--hub_model_id", "me/tiny"]
    AcceleratorState._reset_state(reset_partial_state=True)
    train(parse_args([*argv, "--output_dir", str(tmp_path / "dry"), "--hub_dry_run", "--hub_token", "hf_fake"]))
    upload = tmp_path / "dry" / "hub_upload"
    assert {"README.md", "model.safetensors", "config.json", ITEM_MAP_FILE} <= {p.name for p in upload.iterdir()}
    assert "me/tiny" in (upload / "README.md").read_text()
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(HubError, match="offline mode"):
        train(parse_args([*argv, "--output_dir", str(tmp_path / "real"), "--hub_token", "hf_fake"]))
    AcceleratorState._reset_state(reset_partial_state=True)
    assert not (tmp_path / "real").exists()  # refused before training


def test_upload_folder_never_replaces_the_checkpoint_or_a_foreign_folder(checkpoint, tmp_path):
    for upload_dir in (checkpoint, checkpoint / "upload", checkpoint.parent):
        with pytest.raises(ValueError, match="must be a folder apart from the checkpoint"):
            prepare_hub_folder(checkpoint, upload_dir, "me/ttt4rec", RESULTS)
    assert (checkpoint / "model.safetensors").is_file()
    foreign = tmp_path / "my-notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="does not hold an earlier upload"):
        prepare_hub_folder(checkpoint, foreign, "me/ttt4rec", RESULTS)
    assert (foreign / "notes.txt").read_text() == "keep"
    prepare_hub_folder(checkpoint, tmp_path / "upload", "me/ttt4rec", RESULTS)
    assert "model.safetensors" in prepare_hub_folder(checkpoint, tmp_path / "upload", "me/ttt4rec", RESULTS)


def test_the_wheel_ships_the_model_card_template_and_the_metric_module(tmp_path):
    """An installed wheel has no repository around it: the model card template (linked into the package) and the
    `evaluate` metric module must be inside it (package data). Builds the wheel from a copy of the sources, unpacks
    it, and uses it from a process that does not see this checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "model_card.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("modeling_ttt4rec", "dataset_builders"):
        # symlinks=True: the template is a link to ../model_card.md, as in the repository
        shutil.copytree(ROOT / package, source / package, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    proc = subprocess.run([*build, "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("ttt4rec-*.whl")
    installed = tmp_path / "installed"
    shutil.unpack_archive(wheel, installed, format="zip")
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        sys.path.insert(0, sys.argv[1])  # the unpacked wheel, ahead of the editable install of this checkout
        import evaluate
        import modeling_ttt4rec
        import modeling_ttt4rec.baselines  # a subpackage, with its link to the one loss module
        from modeling_ttt4rec.training.hub import DEFAULT_TEMPLATE
        assert Path(modeling_ttt4rec.__file__).is_relative_to(sys.argv[1]), modeling_ttt4rec.__file__
        print(DEFAULT_TEMPLATE.read_text(), end="")
        metric = evaluate.load(str(Path(modeling_ttt4rec.__file__).parent / "training" / "ranking_metrics"))
        assert metric.compute(predictions=[0, 20, 60])["HR@50"] == 2 / 3
        """
    )
    # -I: neither PYTHONPATH nor the working directory reaches the import path
    proc = subprocess.run([sys.executable, "-I", "-c", script, str(installed)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (ROOT / "model_card.md").read_text()
