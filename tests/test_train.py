"""The trainer end to end on tiny data: outputs, config file, resume after a kill, bf16, fused loss; the model
settings generated from the config; any registered recommender."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from helpers import random_sequences, write_split_dataset
from huggingface_hub.dataclasses import strict
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from dataset_builders.format import ITEM_MAP_FILE
from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction
from modeling_ttt4rec.training.arguments import MODELS, check_resume_settings, model_arguments, register_model
from modeling_ttt4rec.training.trainer import Trainer, parse_args, train

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--hidden_size", "16", "--intermediate_size", "32", "--mini_batch_size", "4", "--num_attention_heads", "2"]
FAST = ["--batch_targets", "64", "--disable_tqdm", "true", "--torch_threads", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "tiny"
    return write_split_dataset(folder, random_sequences(60, 30, 3, 20, seed=7), num_items=30, max_length=8)


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """`AcceleratorState` is a process-wide singleton; each in-process run starts from a clean one."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def subprocess_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    return env


def test_train_end_to_end_outputs(data, tmp_path):
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({"model": {"backbone": "mamba", "ttt_layer_type": "linear"}, "max_epochs": 3}))
    out = tmp_path / "run"
    argv = ["--config_file", str(config_file), "--dataset", str(data), "--output_dir", str(out), *TINY, *FAST]
    results = train(parse_args([*argv, "--max_epochs", "2", "--test_eval_modes", "window,stream"]))
    names = {p.name for p in out.iterdir()}
    assert {"run_config.json", "best_model", "checkpoint", "log.jsonl", "tensorboard", "training_curves.png"} <= names
    assert {"results.md", "results.json"} <= names
    resolved = json.loads((out / "run_config.json").read_text())
    assert resolved["model"]["backbone"] == "mamba" and resolved["model"]["config"]["ttt_layer_type"] == "linear"
    assert resolved["training"]["max_epochs"] == 2  # the command line overrides the file
    assert resolved["data"]["num_items"] == 30 and resolved["data"]["max_length"] == 8
    best = {p.name for p in (out / "best_model").iterdir()}
    assert {"config.json", "model.safetensors", "modeling_ttt4rec.py", ITEM_MAP_FILE} <= best
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "epoch" in r] == [1, 2] and log[-1]["final"]
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "| test | stream |" in (out / "results.md").read_text()
    assert results["epochs"] == 2 and len(results["rows"]) == 3
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(parse_args(argv))


def test_early_stopping_patience(data, tmp_path):
    out = tmp_path / "run"
    # lr 0: the validation metric never improves after epoch 1
    argv = ["--dataset", str(data), "--output_dir", str(out), "--learning_rate", "0", "--patience", "2", *TINY, *FAST]
    results = train(parse_args([*argv, "--max_epochs", "10", "--test_eval_modes", "window"]))
    assert results["epochs"] == 3 and results["best_epoch"] == 1


FIXED_WEIGHTS = ["--learning_rate", "0", "--hidden_dropout_prob", "0", "--max_epochs", "1"]


def test_train_units_and_batching_change_how_the_same_samples_are_read(data, tmp_path):
    """`--train_units sample` (one pass per sample) and `--batching random` (batches of random units), RecBole's
    ways, train on the same samples as the whole-prefix passes in length-sorted batches: with the weights fixed
    (lr 0) and no dropout, the epoch's loss is the same."""
    runs = {}
    for units, batching in (("prefix", "length"), ("sample", "length"), ("sample", "random")):
        out = tmp_path / f"{units}-{batching}"
        argv = ["--dataset", str(data), "--output_dir", str(out), "--train_units", units, "--batching", batching]
        argv += [*FIXED_WEIGHTS, "--test_eval_modes", "window"]
        runs[out.name] = trainer = Trainer(parse_args([*argv, *TINY, *FAST]))
        trainer.fit()
    prefix, sample = runs["prefix-length"], runs["sample-length"]
    assert len(sample.units) == int(sample.units.num_targets.sum()) == int(prefix.units.num_targets.sum())
    assert len(sample.units) > len(prefix.units)  # (one pass per sample: more passes, same samples)
    loss = {name: json.loads((tmp_path / name / "log.jsonl").read_text().splitlines()[0]) for name in runs}
    assert loss["sample-length"]["train_loss"] == pytest.approx(loss["prefix-length"]["train_loss"], rel=1e-5)
    assert loss["sample-random"]["train_loss"] == pytest.approx(loss["prefix-length"]["train_loss"], rel=1e-5)
    for option, value in (("train_units", "window"), ("batching", "sorted")):
        with pytest.raises(ValueError, match=f"Unknown --{option} '{value}'"):
            train(parse_args(["--dataset", str(data), "--output_dir", str(tmp_path / "bad"), f"--{option}", value]))


def test_bf16_steps_on_cpu(data, tmp_path):
    out = tmp_path / "bf16"
    argv = ["--dataset", str(data), "--output_dir", str(out), "--mixed_precision", "bf16", "--max_epochs", "1"]
    results = train(
        parse_args([*argv, "--gradient_accumulation_steps", "2", "--test_eval_modes", "window", *TINY, *FAST])
    )
    assert results["mixed_precision"] == "bf16"
    log = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert torch.isfinite(torch.tensor(log["train_loss"])) and log["steps"] >= 2


def run_train_process(argv, **kw):
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *argv]
    return subprocess.Popen(
        cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> int:
    """The exit status of `proc`; a generous limit against a hang (2 shared cores are slow), never a speed test."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def test_resume_after_kill_gives_the_same_final_metrics(data, tmp_path):
    common = ["--dataset", str(data), "--max_epochs", "4", "--patience", "10", "--test_eval_modes", "window"]
    common += [*TINY, *FAST]
    full = tmp_path / "full"
    proc = run_train_process([*common, "--output_dir", str(full)])
    assert finish(proc) == 0, proc.stdout.read()
    # the same run, killed (SIGKILL) once its first epoch is checkpointed, then resumed
    part = tmp_path / "part"
    proc = run_train_process([*common, "--output_dir", str(part), "--sleep_after_epoch", "3"])
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and not (part / "log.jsonl").exists():
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (part / "log.jsonl").exists(), "no epoch was checkpointed within 600 s:\n" + proc.stdout.read()
    state = json.loads((part / "checkpoint" / "trainer_state.json").read_text())
    assert 1 <= state["epoch"] < 4 and not state["done"]
    assert not (part / "results.json").exists()
    proc = run_train_process([*common, "--output_dir", str(part), "--resume_from_checkpoint", "latest"])
    assert finish(proc) == 0, proc.stdout.read()
    a = json.loads((full / "results.json").read_text())
    b = json.loads((part / "results.json").read_text())
    assert a["rows"][1]["split"] == "test"
    for key in ("HR@10", "HR@50", "NDCG@10", "NDCG@50"):
        assert a["rows"][1][key] == b["rows"][1][key]
    assert [
        h["train_loss"] for h in json.loads((full / "checkpoint" / "trainer_state.json").read_text())["history"]
    ] == [h["train_loss"] for h in json.loads((part / "checkpoint" / "trainer_state.json").read_text())["history"]]


def test_resume_errors(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="No training state"):
        train(
            parse_args(
                ["--dataset", str(data), "--output_dir", str(tmp_path), "--resume_from_checkpoint", str(tmp_path)]
            )
        )
    with pytest.raises(ValueError, match="Unknown --eval_mode"):
        train(parse_args(["--dataset", str(data), "--output_dir", str(tmp_path / "x"), "--eval_mode", "full"]))
    with pytest.raises(ValueError, match="--eval_every must be at least 1, got 0"):
        train(parse_args(["--dataset", str(data), "--output_dir", str(tmp_path / "x"), "--eval_every", "0"]))
    with pytest.raises(SystemExit):
        parse_args(["--output_dir", str(tmp_path)])


def test_resume_refuses_changed_settings_and_continues_with_more_epochs(data, tmp_path):
    out = tmp_path / "run"
    common = ["--dataset", str(data), "--output_dir", str(out), "--patience", "10", "--test_eval_modes", "window"]
    common += [*TINY, *FAST]
    first = train(parse_args([*common, "--max_epochs", "1", "--hub_token", "hf_SECRET"]))
    assert first["epochs"] == 1
    assert "hf_SECRET" not in (out / "run_config.json").read_text()  # a token is never written
    resume = [*common, "--resume_from_checkpoint", "latest"]
    with pytest.raises(ValueError, match=r"--learning_rate: 0.001 -> 0.5.*Resume with the same settings"):
        train(parse_args([*resume, "--max_epochs", "3", "--learning_rate", "0.5"]))
    with pytest.raises(ValueError, match=r"--hidden_size: 16 -> 32"):
        train(parse_args([*resume, "--max_epochs", "3", "--hidden_size", "32"]))
    more = train(parse_args([*resume, "--max_epochs", "3"]))  # the finished run goes on: only max_epochs changed
    assert more["epochs"] == 3
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "epoch" in r] == [1, 2, 3]


def test_resume_from_a_run_killed_between_the_two_renames(data, tmp_path):
    out = tmp_path / "run"
    common = ["--dataset", str(data), "--output_dir", str(out), "--test_eval_modes", "window", *TINY, *FAST]
    train(parse_args([*common, "--max_epochs", "1"]))
    (out / "checkpoint").rename(out / "checkpoint.old")  # the state of the window where only `.old` exists
    assert train(parse_args([*common, "--max_epochs", "2", "--resume_from_checkpoint", "latest"]))["epochs"] == 2


def test_overwrite_output_dir_starts_from_nothing(data, tmp_path):
    out = tmp_path / "run"
    common = ["--dataset", str(data), "--output_dir", str(out), "--test_eval_modes", "window", *TINY, *FAST]
    train(parse_args([*common, "--max_epochs", "1"]))
    (out / "checkpoint" / "marker").write_text("old run")
    train(parse_args([*common, "--max_epochs", "1", "--overwrite_output_dir", "true", "--seed", "3"]))
    assert not (out / "checkpoint" / "marker").exists()
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["settings"]["training"]["seed"] == 3


def test_a_diverged_run_stops_with_a_clear_error_and_nan_ranks_last(data, tmp_path, monkeypatch):
    from modeling_ttt4rec.training.metrics import ranks_from_scores

    scores = torch.tensor([[0.5, float("nan"), 0.2], [float("nan"), 1.0, 2.0], [0.1, float("inf"), 0.3]])
    assert ranks_from_scores(scores, torch.tensor([0, 0, 1])).tolist() == [0, 3, 3]

    def nan_loss(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    original = TTT4RecForNextItemPrediction.forward
    monkeypatch.setattr(TTT4RecForNextItemPrediction, "forward", nan_loss)
    argv = ["--dataset", str(data), "--output_dir", str(tmp_path / "run"), "--max_epochs", "2", *TINY, *FAST]
    with pytest.raises(FloatingPointError, match="The training loss is nan in epoch 1: training diverged"):
        train(parse_args(argv))
    assert not (tmp_path / "run" / "best_model").exists()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", '{"max_epochs": 3,', "cannot be parsed"),
        ("bad.yaml", "model: [unclosed", "cannot be parsed"),
        ("types.json", '{"batch_targets": 12.5}', "batch_targets must be of type int, got 12.5"),
        ("bool.json", '{"patience": true}', "patience must be of type int, got True"),
    ],
)
def test_bad_config_files_are_clear_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SystemExit, match=message):
        parse_args(["--config_file", str(path), "--dataset", "x"])


def test_config_file_with_equals_sign(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  max_epochs: 7\n  learning_rate: 0.01\n")
    run = parse_args([f"--config_file={path}", "--dataset", "x"])
    assert run.training.max_epochs == 7 and run.training.learning_rate == 0.01


def test_model_settings_are_the_config_fields_with_their_docstring_help():
    settings = {f.name: f for f in fields(model_arguments("ttt4rec"))}
    config_fields = {f.name: f for f in fields(TTT4RecConfig)}
    for name in ("hidden_size", "ttt_layer_type", "mini_batch_size", "layer_norm_eps", "target_mlp_size"):
        assert (
            settings[name].default == config_fields[name].default and settings[name].type == config_fields[name].type
        )
    assert settings["hidden_size"].metadata["help"].startswith("Dimension of the item embeddings and hidden states")
    # set by the data set or the runtime, or PreTrainedConfig's own fields: not settings
    assert not {"num_items", "pad_token_id", "use_cache", "architectures", "dtype", "id2label"} & set(settings)
    assert {"model_type", "model_name_or_path", "loss_type", "num_negatives"} <= set(settings)
    # every option also in kebab case
    run = parse_args(["--dataset", "x", "--hidden-size", "16", "--ttt-layer-type", "linear", "--rms-norm-eps", "1e-5"])
    assert (run.model.hidden_size, run.model.ttt_layer_type, run.model.rms_norm_eps) == (16, "linear", 1e-5)
    with pytest.raises(SystemExit, match="Unknown --model_type 'nope'"):
        parse_args(["--dataset", "x", "--model_type", "nope"])


def test_resume_settings_are_matched_by_name_across_sections():
    saved = {"model": {"hidden_size": 16}, "training": {"loss_type": "full_ce"}}
    with pytest.raises(ValueError, match=r"--loss_type: 'full_ce' -> 'sampled_bce'"):
        check_resume_settings(saved, {"model": {"hidden_size": 16, "loss_type": "sampled_bce"}, "training": {}})
    # a setting the saved run did not record (it predates it) is not checked
    check_resume_settings(saved, {"model": {"hidden_size": 16, "loss_type": "full_ce", "rms_norm_eps": 1e-5}})


@strict
class PrefixMeanConfig(PreTrainedConfig):
    r"""
    A minimal recommender for the tests: the user is the mean embedding of the items read so far.

    Args:
        num_items (`int`, *optional*, defaults to 10):
            Item ids incl. padding.
        hidden_size (`int`, *optional*, defaults to 8):
            Width of the item embeddings.
        pad_token_id (`int`, *optional*, defaults to 0):
            The padding item id.
    """

    model_type = "prefix-mean-test"
    num_items: int = 10
    hidden_size: int = 8
    pad_token_id: int | None = 0


@dataclass
class PrefixMeanOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


class PrefixMeanModel(PreTrainedModel):
    """The recommender interface the trainer uses, on the smallest model there is (mean of the prefix)."""

    config_class = PrefixMeanConfig

    def __init__(self, config: PrefixMeanConfig):
        super().__init__(config)
        self.items = nn.Embedding(config.num_items, config.hidden_size, padding_idx=config.pad_token_id)
        self.post_init()

    def item_features(self) -> torch.Tensor:
        return self.items.weight

    def score_items(self, hidden: torch.Tensor, item_features: torch.Tensor | None = None) -> torch.Tensor:
        scores = hidden @ (self.item_features() if item_features is None else item_features).T
        scores[..., self.config.pad_token_id] = torch.finfo(scores.dtype).min
        return scores

    def score_candidates(self, hidden: torch.Tensor, candidate_ids: torch.Tensor, check_inputs=True) -> torch.Tensor:
        return (hidden.unsqueeze(-2) * self.items(candidate_ids)).sum(-1)

    def forward(
        self, input_ids, attention_mask=None, labels=None, num_items_in_batch=None, return_logits=True, **unused
    ) -> PrefixMeanOutput:
        mask = (input_ids != self.config.pad_token_id) if attention_mask is None else attention_mask.bool()
        summed = (self.items(input_ids) * mask.unsqueeze(-1)).cumsum(dim=1)
        hidden = summed / mask.cumsum(dim=1).clamp(min=1).unsqueeze(-1)
        loss = None
        if labels is not None:
            targets = labels != -100
            loss_sum = F.cross_entropy(self.score_items(hidden[targets]), labels[targets], reduction="sum")
            loss = loss_sum / (num_items_in_batch if num_items_in_batch is not None else targets.sum())
        logits = self.score_items(hidden) if return_logits else None
        return PrefixMeanOutput(loss=loss, logits=logits, last_hidden_state=hidden)


@pytest.fixture
def prefix_mean_registered(monkeypatch):
    monkeypatch.setitem(MODELS, "prefix-mean", MODELS["ttt4rec"])  # restored after the test
    register_model("prefix-mean", PrefixMeanConfig, PrefixMeanModel)


def test_a_registered_model_offers_its_own_settings(prefix_mean_registered):
    run = parse_args(["--dataset", "x", "--model_type", "prefix-mean", "--hidden_size", "4"])
    assert set(run.to_dict()["model"]) == {"model_type", "model_name_or_path", "hidden_size"}
    assert run.model.hidden_size == 4
    with pytest.raises(ValueError, match=r"not used by the HfArgumentParser: \['--ttt_layer_type'"):
        parse_args(["--dataset", "x", "--model_type", "prefix-mean", "--ttt_layer_type", "linear"])


def test_train_runs_any_registered_recommender(prefix_mean_registered, data, tmp_path):
    out = tmp_path / "run"
    argv = ["--model_type", "prefix-mean", "--hidden_size", "8", "--dataset", str(data), "--output_dir", str(out)]
    results = train(parse_args([*argv, "--max_epochs", "2", "--test_eval_modes", "window", *FAST]))
    assert results["epochs"] == 2 and results["model"] == {"hidden_size": 8}
    assert {"results.md", "results.json", "training_curves.png"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "best_model" / "config.json").read_text())["model_type"] == "prefix-mean-test"
    assert isinstance(PrefixMeanModel.from_pretrained(out / "best_model"), PrefixMeanModel)


@pytest.mark.parametrize(
    "model",
    [
        TINY,
        [*TINY, "--loss_type", "sampled_softmax", "--num_negatives", "8"],
        # BERT4Rec's training samples (`training_batch`) come from a generator of each process
        ["--model_type", "bert4rec", "--hidden_size", "16", "--intermediate_size", "32", "--num_attention_heads", "2"],
    ],
    ids=["full_ce", "sampled_softmax", "bert4rec"],
)
def test_a_checkpoint_inside_an_epoch_resumes_exactly(data, tmp_path, monkeypatch, model):
    """`--save_steps`: a run interrupted in the middle of an epoch and resumed ends exactly as the uninterrupted run
    (the same losses, the same weights): the resumed epoch skips the steps done, with their random state (dropout's,
    the sampled negatives' and the model's training samples')."""
    common = ["--dataset", str(data), "--max_epochs", "2", "--patience", "10", "--test_eval_modes", "window", *model]
    common += [*FAST, "--batch_targets", "16", "--save_steps", "2"]
    full = tmp_path / "full"
    train(parse_args([*common, "--output_dir", str(full)]))
    full_state = json.loads((full / "checkpoint" / "trainer_state.json").read_text())
    assert full_state["history"][0]["steps"] >= 6 and "step_in_epoch" not in full_state

    steps = []
    real_step = Trainer._training_step

    def interrupted_step(self, batch, group_targets):
        steps.append(len(steps))
        if len(steps) == full_state["history"][0]["steps"] + 5:  # in the middle of epoch 2, after a checkpoint
            raise KeyboardInterrupt
        return real_step(self, batch, group_targets)

    part = tmp_path / "part"
    monkeypatch.setattr(Trainer, "_training_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train(parse_args([*common, "--output_dir", str(part)]))
    saved = json.loads((part / "checkpoint" / "trainer_state.json").read_text())
    assert saved["epoch"] == 1 and saved["step_in_epoch"] == 4
    monkeypatch.setattr(Trainer, "_training_step", real_step)
    AcceleratorState._reset_state(reset_partial_state=True)
    train(parse_args([*common, "--output_dir", str(part), "--resume_from_checkpoint", "latest"]))
    part_state = json.loads((part / "checkpoint" / "trainer_state.json").read_text())
    assert [h["train_loss"] for h in part_state["history"]] == [h["train_loss"] for h in full_state["history"]]
    a = load_file(full / "best_model" / "model.safetensors")
    b = load_file(part / "best_model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_steps_must_not_be_negative(data, tmp_path):
    with pytest.raises(ValueError, match="--save_steps must be 0"):
        train(parse_args(["--dataset", str(data), "--output_dir", str(tmp_path / "r"), "--save_steps", "-1", *FAST]))


def test_a_mid_epoch_checkpoint_refuses_another_number_of_processes():
    trainer = Trainer.__new__(Trainer)  # only the resume rule, no run
    trainer.state, trainer.world = {"step_in_epoch": 4, "epoch_world_size": 2}, 1
    with pytest.raises(ValueError, match="same `accelerate launch --num_processes`"):
        trainer._epoch_resume_step(3)
    trainer.state = {"step_in_epoch": 4, "epoch_world_size": 1}
    assert trainer._epoch_resume_step(3) == 4 and trainer.state == {}
