"""One resolver of local folders and Hub ids (through the Hugging Face cache, offline) for data sets and checkpoints,
and the build command line's option spellings."""

import shutil
from pathlib import Path

import pytest
import torch
from helpers import random_sequences, write_split_dataset

from dataset_builders import DataError, load_metadata, load_splits
from dataset_builders.cli import build_parser
from dataset_builders.resolve import resolve_folder
from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction
from modeling_ttt4rec.training.data import load_sequences
from modeling_ttt4rec.training.evaluation import load_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache of this test's own, with offline mode on."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_repo(cache: Path, folder: Path, repo_id: str, repo_type: str) -> Path:
    """Lay out `folder` in `cache` as `huggingface_hub` stores a downloaded repository; returns the snapshot."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


def test_local_folders_files_and_typos(tmp_path: Path) -> None:
    assert resolve_folder(tmp_path, "dataset", what="data set", marker="README.md") == tmp_path
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match=r"data set .*f\.txt' is a file, not a folder; pass the folder that holds"):
        resolve_folder(tmp_path / "f.txt", "dataset", what="data set", marker="README.md", error=DataError)
    with pytest.raises(ValueError, match=r"no such checkpoint folder: it does not exist"):
        resolve_folder("./no/such/model", "model", what="checkpoint", marker="config.json")


def test_data_sets_and_checkpoints_resolve_through_the_cache(hub_cache: Path, tmp_path: Path) -> None:
    """The data set loaders and `load_checkpoint` take a Hub id and find it in the cache offline, the same way."""
    data = write_split_dataset(tmp_path / "d", random_sequences(12, 30, 3, 10, seed=1), num_items=30, max_length=6)
    snapshot = cache_repo(hub_cache, data, "someone/tiny-rec", "dataset")
    assert load_sequences("someone/tiny-rec")[1].local_dir == snapshot
    assert load_metadata("someone/tiny-rec")["max_length"] == 6
    assert len(load_splits("someone/tiny-rec")["test"]) > 0

    torch.manual_seed(0)
    sizes = {"hidden_size": 16, "intermediate_size": 32, "mini_batch_size": 4, "num_attention_heads": 2}
    config = TTT4RecConfig(num_items=30, **sizes)
    TTT4RecForNextItemPrediction(config).save_pretrained(tmp_path / "ckpt")
    cache_repo(hub_cache, tmp_path / "ckpt", "someone/tiny-model", "model")
    assert load_checkpoint("someone/tiny-model").config.num_items == 30
    # the checks of a local checkpoint apply to a cached one too
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    cache_repo(hub_cache, tmp_path / "ckpt", "someone/no-weights", "model")
    with pytest.raises(ValueError, match=r"has no weights \(model.safetensors is missing\)"):
        load_checkpoint("someone/no-weights")


@pytest.mark.parametrize(
    ("load", "kind"),
    [(load_sequences, "dataset"), (load_metadata, "dataset"), (load_splits, "dataset"), (load_checkpoint, "model")],
)
def test_not_cached_offline(hub_cache: Path, load, kind: str) -> None:
    with pytest.raises(ValueError, match=rf"The {kind} repository 'someone/absent' is not in the Hugging Face cache"):
        load("someone/absent")


def test_build_options_in_snake_case_and_kebab_case() -> None:
    """`--push_to_hub` etc., with the older `--push-to-hub` spellings accepted as aliases of the same options."""
    values = {
        "push_to_hub": "me/x",
        "user_min": "3",
        "item_min": "4",
        "max_length": "7",
        "user_col": "u",
        "item_col": "i",
        "time_col": "t",
    }
    flags = ["skip_bad_lines", "force_download", "no_progress"]
    base = ["--dataset", "csv", "--raw", "r.csv", "--output", "o"]
    for spell in (str, lambda name: name.replace("_", "-")):
        argv = base + [f"--{spell(k)}={v}" for k, v in values.items()] + [f"--{spell(f)}" for f in flags]
        args = vars(build_parser().parse_args(argv))
        assert {k: args[k] for k in values} == {**values, "user_min": 3, "item_min": 4, "max_length": 7}
        assert all(args[f] for f in flags)
