"""The scripts as a new user meets them: original item ids in and out, no silent item-map mismatch, the checkpoint's
own settings, checks before long work (the Hub), one-line errors, mistyped paths. In process where possible (the
scripts' `main`), with a fake Hub and never the network."""

import importlib.util
import json
import logging
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import random_sequences, write_split_dataset

from dataset_builders.format import ITEM_ID, ITEM_INDEX, ITEM_MAP_FILE
from dataset_builders.hub_access import HubError, check_hub_access
from dataset_builders.item_ids import ItemIdMap
from dataset_builders.resolve import resolve_folder
from modeling_ttt4rec.training.arguments import TrainerArguments
from modeling_ttt4rec.training.cli import run_script
from modeling_ttt4rec.training.data import load_sequences
from modeling_ttt4rec.training.evaluation import (
    check_evaluation_arguments,
    check_item_map,
    evaluate_split,
    load_checkpoint,
    training_info,
)
from modeling_ttt4rec.training.trainer import Trainer, find_resume_dir, parse_args, train

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--hidden_size", "16", "--intermediate_size", "32", "--mini_batch_size", "4", "--num_attention_heads", "2"]
FAST = ["--batch_targets", "64", "--disable_tqdm", "true", "--torch_threads", "1", "--test_eval_modes", "window"]


def script(name: str):
    """`scripts/NAME.py` as a module (its `main` runs in this process)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fails(capsys, name: str, *argv: str) -> str:
    """Run script `name` as its `__main__` does; it must end with one line `error: ...` and status 2: that line."""
    with pytest.raises(SystemExit) as info:
        run_script(script(name).main, list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and err and err[-1].startswith("error: "), err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "tiny"
    return write_split_dataset(folder, random_sequences(40, 30, 3, 16, seed=7), num_items=30, max_length=8)


@pytest.fixture(scope="module")
def renumbered(data, tmp_path_factory) -> Path:
    """The same data set with another item map: dense id `i` is another original item."""
    folder = tmp_path_factory.mktemp("renumbered") / "tiny"
    shutil.copytree(data, folder)
    original = ItemIdMap.from_file(data).original_ids
    ids = pa.array([None, *reversed(original[1:])], type=pa.string())
    pq.write_table(
        pa.table({ITEM_INDEX: pa.array(range(len(original)), pa.int64()), ITEM_ID: ids}), folder / ITEM_MAP_FILE
    )
    return folder


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    """A finished run on split-6-2-2 with max_length 5 (not the data set's defaults)."""
    from accelerate.state import AcceleratorState

    out = tmp_path_factory.mktemp("run") / "run"
    AcceleratorState._reset_state(reset_partial_state=True)
    argv = ["--dataset", str(data), "--output_dir", str(out), "--max_epochs", "1", *TINY, *FAST]
    train(parse_args([*argv, "--dataset_config", "split-6-2-2", "--max_length", "5"]))
    AcceleratorState._reset_state(reset_partial_state=True)
    return out


# ------------------------------------------------------------------------------------------------ original item ids
def test_recommend_reads_and_prints_original_ids(run, capsys):
    best = run / "best_model"
    recommend = script("recommend")
    recommend.main(["--checkpoint", str(best), "--history", "item-3", "item-9", "item-4", "--top_k", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    model, item_map = load_checkpoint(str(best)), ItemIdMap.from_file(best)
    for step, line in enumerate(lines, start=1):
        dense = torch.tensor([[3, 9, 4][:step]])
        expected = item_map.to_original(model.recommend(dense, top_k=3).item_ids[0].tolist())
        assert line.startswith(f"after item {step:>4} ({['item-3', 'item-9', 'item-4'][step - 1]:>6}): top-3 ")
        assert f"[{', '.join(expected)}]" in line
    recommend.main(["--checkpoint", str(best), "--history", "3", "9", "--top_k", "3", "--dense_ids"])
    dense_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert str(model.recommend(torch.tensor([[3, 9]]), top_k=3).item_ids[0].tolist()) in dense_line


def test_recommend_names_unknown_ids_and_never_reads_padding(run, capsys):
    best = str(run / "best_model")
    line = fails(capsys, "recommend", "--checkpoint", best, "--history", "item-3", "B00005", "12")
    assert line.startswith("error: Unknown item id(s) 'B00005', '12': not in the item map of 29 items")
    assert line.endswith("(--dense_ids reads the model's dense ids instead)")
    line = fails(capsys, "recommend", "--checkpoint", best, "--dense_ids", "--history", "3", "0")
    assert "['0'] are not dense item ids (integers 1 .. num_items - 1; 0 is the padding id)" in line


def test_mistyped_paths_say_no_such_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    line = fails(capsys, "recommend", "--checkpoint", "./typo", "--history", "3")
    assert "'./typo': no such checkpoint folder" in line and "scripts/train.py --output_dir RUN_DIR" in line
    with pytest.raises(
        ValueError, match=r"'data/ml100k': no such data set folder.*build it with .*--output data/ml100k"
    ):
        resolve_folder("data/ml100k", "dataset", what="data set", marker="README.md")


# ------------------------------------------------------------------------------------------------ item map identity
def test_training_records_the_item_map_and_its_evaluation(run, data):
    info = training_info(run / "best_model")
    assert info["item_map_fingerprint"] == ItemIdMap.from_file(data).fingerprint()
    assert "source_sha256" in info
    expected = {"dataset_config": "split-6-2-2", "max_length": 5, "eval_protocol": "full", "candidate_seed": 0}
    assert expected.items() <= info.items()


def test_evaluate_refuses_another_item_map_unless_told(run, renumbered, capsys):
    args = ["--model_name_or_path", str(run / "best_model"), "--dataset", str(renumbered), "--cpu"]
    line = fails(capsys, "evaluate", *args)
    assert f"The data set {renumbered} (raw file sha256 unknown) numbers its items differently" in line
    assert "--ignore_item_map_mismatch" in line
    results = script("evaluate").main([*args, "--ignore_item_map_mismatch"])
    assert results["window"]["num_samples"] > 0


def test_a_checkpoint_without_an_item_map_is_warned_about(run, data, tmp_path, caplog):
    bare = tmp_path / "bare"
    load_checkpoint(str(run / "best_model")).save_pretrained(bare)  # no training_info.json, no item map
    _, meta = load_sequences(data)
    with caplog.at_level(logging.WARNING):
        check_item_map(bare, meta)
    assert "Cannot check that the data set" in caplog.text and "the checkpoint records no item map" in caplog.text
    shutil.copy2(run / "best_model" / ITEM_MAP_FILE, bare)  # an older checkpoint: its own map is compared
    check_item_map(bare, meta)


def test_fine_tuning_refuses_another_item_map_and_conflicting_architecture(run, data, renumbered, tmp_path):
    best = str(run / "best_model")
    base = ["--model_name_or_path", best, "--max_epochs", "1", *FAST]
    with pytest.raises(ValueError, match="numbers its items differently"):
        train(parse_args(["--dataset", str(renumbered), "--output_dir", str(tmp_path / "a"), *base]))
    assert not (tmp_path / "a" / "best_model").exists()
    argv = ["--dataset", str(data), "--output_dir", str(tmp_path / "b"), *base, "--hidden_size", "32"]
    with pytest.raises(ValueError, match=r"other settings were given: --hidden_size 32 \(the checkpoint has 16\)"):
        train(parse_args([*argv, "--num_hidden_layers", "1"]))
    # without conflicting flags, the run record holds the checkpoint's architecture, not the defaults
    trainer = Trainer(parse_args(["--dataset", str(data), "--output_dir", str(tmp_path / "c"), *base]))
    trainer._setup()
    trainer._load_data()
    trainer._build_model()
    recorded = json.loads((tmp_path / "c" / "run_config.json").read_text())["model"]
    assert recorded["hidden_size"] == recorded["config"]["hidden_size"] == 16
    assert recorded["intermediate_size"] == 32


# ------------------------------------------------------------------------------------------------ evaluate.py
def test_evaluate_defaults_to_the_checkpoints_training_settings(run, data, capsys):
    best = run / "best_model"
    results = script("evaluate").main(["--model_name_or_path", str(best), "--dataset", str(data), "--cpu"])
    out = capsys.readouterr().out
    assert "dataset_config split-6-2-2 (as trained), max_length 5 (as trained), eval_protocol full (as trained)" in out
    sequences, _ = load_sequences(data, "split-6-2-2")
    expected = evaluate_split(load_checkpoint(str(best)), sequences["test"], 5)
    for name in ("HR@10", "NDCG@10", "num_samples"):
        assert results["window"][name] == expected[name]
    script("evaluate").main(["--model_name_or_path", str(best), "--dataset", str(data), "--max_length", "8", "--cpu"])
    assert "max_length 8 (given; the checkpoint was trained with 5)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"eval_protocol": "sampled", "eval_num_negatives": 0}, "--eval_num_negatives must be at least 1, got 0"),
        ({"stream_chunk_size": 0}, "--stream_chunk_size must be at least 1, got 0"),
        ({"candidate_seed": -1}, r"--candidate_seed must be >= 0 \(a seed of numpy's generator\), got -1"),
        ({"eval_batch_tokens": 0}, "--eval_batch_tokens must be at least 1"),
    ],
)
def test_meaningless_evaluation_settings(setting, message):
    from types import SimpleNamespace

    values = {"eval_protocol": "full", "eval_num_negatives": 99, "candidate_seed": 0, "stream_chunk_size": 64}
    with pytest.raises(ValueError, match=message):
        check_evaluation_arguments(SimpleNamespace(**{**values, "eval_batch_tokens": 1, **setting}))


def test_evaluate_help_has_no_broken_lines(capsys):
    with pytest.raises(SystemExit):
        script("evaluate").build_parser().parse_args(["--help"])
    assert "--eval_mode both \\\n        --by_history_length" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ the Hub
@pytest.fixture
def fake_hub(monkeypatch):
    """The Hub as a mock transport (online mode, no network): `answers["whoami"]` is the status of `whoami`, or
    "down" for a connection error."""
    import httpx2
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    answers = {"whoami": 200}

    def handler(request: httpx2.Request) -> httpx2.Response:
        if answers["whoami"] == "down":
            raise httpx2.ConnectError("connection refused", request=request)
        return httpx2.Response(answers["whoami"], json={"name": "me", "type": "user"}, request=request)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(handler)))
    yield answers
    set_client_factory(default_client_factory)


def test_hub_access_is_checked_with_the_hub(fake_hub):
    assert check_hub_access("me/x", token="hf_fake") == "hf_fake"
    fake_hub["whoami"] = 401
    with pytest.raises(HubError, match="The Hub refused to check the token for 'me/x'"):
        check_hub_access("me/x", token="hf_fake")
    fake_hub["whoami"] = "down"
    with pytest.raises(HubError, match="Cannot reach the Hub at .* to check the token for 'me/x' \\(ConnectError"):
        check_hub_access("me/x", token="hf_fake")
    check_hub_access("me/x", token="hf_fake", dry_run=True)  # a dry run does not ask the Hub
    with pytest.raises(HubError, match="is not a Hub repository id"):
        check_hub_access("a/b/c", token="hf_fake")


def test_training_checks_the_hub_before_it_starts(data, tmp_path, fake_hub):
    argv = ["--dataset", str(data), "--max_epochs", "1", *TINY, *FAST, "--push_to_hub", "--hub_model_id", "me/x"]
    with pytest.raises(HubError, match="no token"):
        train(parse_args([*argv, "--output_dir", str(tmp_path / "a")]))
    fake_hub["whoami"] = "down"
    with pytest.raises(HubError, match="Cannot reach the Hub"):
        train(parse_args([*argv, "--output_dir", str(tmp_path / "b"), "--hub_token", "hf_fake"]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing was trained


def test_push_a_finished_run(run, tmp_path, capsys):
    push = script("push_to_hub")
    files = push.main([str(run), "--hub_model_id", "me/tiny", "--hub_dry_run", "--hub_token", "hf_fake"])
    assert {"README.md", "model.safetensors", ITEM_MAP_FILE} <= set(files)
    assert "me/tiny" in (run / "hub_upload" / "README.md").read_text()
    assert "prepared (dry run, nothing uploaded)" in capsys.readouterr().out
    line = fails(capsys, "push_to_hub", str(tmp_path / "nothing"), "--hub_model_id", "me/tiny")
    assert "No such run folder" in line
    line = fails(capsys, "push_to_hub", str(run), "--hub_model_id", "me/tiny")  # no token
    assert "Cannot push to the Hub: no token" in line


def test_build_dataset_checks_the_hub_first_and_reports_once(tmp_path, capsys):
    from dataset_builders.cli import main

    raw = tmp_path / "my.csv"
    raw.write_text(
        "user_id,item_id,timestamp\n" + "".join(f"u{u},i{(u + k) % 7},{k}\n" for u in range(8) for k in range(12))
    )
    args = ["--dataset", "csv", "--raw", str(raw), "--output", str(tmp_path / "out"), "-q", "--no_progress"]
    assert main([*args, "--push_to_hub", "me/x", "--token", "hf_fake"]) == 2  # offline mode is on in the tests
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: Cannot push to the Hub: offline mode is on (HF_HUB_OFFLINE=1). Unset it to upload."]
    assert not (tmp_path / "out").exists()  # nothing was built
    assert main([*args, "--user_min", "-3"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: user_min must be at least 1, got -3 (--user_min)."]


def test_a_failed_dataset_push_still_prints_the_summary(tmp_path, capsys, monkeypatch):
    import dataset_builders.cli as cli

    def unreachable(*args, **kwargs):
        raise HubError("Cannot reach the Hub at https://huggingface.co to push the data set 'me/x'")

    monkeypatch.setattr(cli, "check_hub_access", lambda repo_id, token: "hf_fake")
    monkeypatch.setattr(cli, "push_folder_to_hub", unreachable)
    raw = tmp_path / "my.csv"
    raw.write_text(
        "user_id,item_id,timestamp\n" + "".join(f"u{u},i{(u + k) % 7},{k}\n" for u in range(8) for k in range(12))
    )
    args = ["--dataset", "csv", "--raw", str(raw), "--output", str(tmp_path / "out"), "-q", "--no_progress"]
    assert cli.main([*args, "--push_to_hub", "me/x"]) == 2
    captured = capsys.readouterr()
    assert "after k-core" in captured.out and (tmp_path / "out" / "metadata.json").is_file()
    assert captured.err.strip().splitlines() == [
        "error: Cannot reach the Hub at https://huggingface.co to push the data set 'me/x'"
    ]


# ------------------------------------------------------------------------------------------------ one-line errors
def test_user_errors_are_one_line_bugs_keep_their_traceback(capsys):
    def main(argv):
        raise {"user": ValueError, "bug": TypeError}[argv[0]]("bad\n  value")

    with pytest.raises(SystemExit) as info:
        run_script(main, ["user"])
    assert info.value.code == 2 and capsys.readouterr().err == "error: bad value\n"
    with pytest.raises(TypeError):
        run_script(main, ["bug"])
    with pytest.raises(ValueError):
        run_script(main, ["user", "--debug"])
    with pytest.raises(SystemExit) as info:
        run_script(lambda argv: sys.exit("--config_file needs a path"), [])
    assert info.value.code == 2 and capsys.readouterr().err == "error: --config_file needs a path\n"


def test_ctrl_c_says_how_to_resume(capsys):
    def main(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        run_script(main, [], interrupted=script("train").INTERRUPTED)
    assert info.value.code == 130
    assert "--resume_from_checkpoint latest" in capsys.readouterr().err


def test_train_script_errors_are_one_line(data, tmp_path, capsys):
    line = fails(capsys, "train", "--dataset", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o"))
    assert "no such data set folder" in line
    line = fails(capsys, "train", "--dataset", str(data), "--output_dir", str(tmp_path / "o"), "--eval_every", "0")
    assert line == "error: --eval_every must be at least 1, got 0."


def test_resume_latest_without_a_checkpoint_starts_a_new_run(tmp_path, caplog):
    args = TrainerArguments(output_dir=str(tmp_path), resume_from_checkpoint="latest")
    with caplog.at_level(logging.WARNING):
        assert find_resume_dir(args) is None
    assert "No checkpoint in" in caplog.text and "starting a new run" in caplog.text
    (tmp_path / "log.jsonl").write_text("{}\n")  # a run is there but its checkpoint is not: refuse
    with pytest.raises(FileNotFoundError, match="No training state"):
        find_resume_dir(args)


def test_careless_training_settings_are_said_or_refused(data, tmp_path, caplog, capsys):
    from modeling_ttt4rec.training.trainer import check_arguments

    with pytest.raises(ValueError, match=r"--output_dir .* is \(inside\) the data set folder"):
        check_arguments(parse_args(["--dataset", str(data), "--output_dir", str(data)]))
    with pytest.raises(ValueError, match=r"is \(inside\) the data set folder"):
        check_arguments(parse_args(["--dataset", str(data), "--output_dir", str(data / "runs" / "a")]))
    with caplog.at_level(logging.WARNING):
        argv = ["--dataset", str(data), "--output_dir", str(tmp_path), "--hub_model_id", "me/x"]
        check_arguments(parse_args([*argv, "--eval_num_negatives", "50"]))
    assert "--hub_model_id me/x does nothing without --push_to_hub" in caplog.text
    assert "--eval_num_negatives 50 is ignored: the full protocol ranks every item" in caplog.text
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "--sleep_after_epoch" not in capsys.readouterr().out  # a test hook, not a user setting
