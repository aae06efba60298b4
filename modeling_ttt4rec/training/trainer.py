"""Training TTT4Rec with Accelerate, following the paper's protocol (PROTOCOL.md 6).

`train(args)` runs the whole thing: load the split data set, build the model, train with Adam on the full
cross-entropy over all items (or, `--loss_type sampled_bce`, binary cross-entropy against sampled negatives as in the
second paper, PROTOCOL.md 9), evaluate on validation after every epoch (full ranking, or `--eval_protocol sampled`),
stop early on validation NDCG@10, keep the best model as a `save_pretrained` folder, evaluate it on test, write
logs, curves and a results table, and optionally push the best model to the Hub. The same code runs on one CPU,
one GPU or several processes (DDP) and with mixed precision, depending on how `accelerate` launches it.

Output folder layout (`args.output_dir`):

    run_config.json          every setting of the run, resolved (model, data, training)
    best_model/              the best model: save_pretrained (safetensors + config + remote code) + item id map
    checkpoint/              Accelerate training state of the last finished epoch (model, optimizer, RNG) and
                             trainer_state.json; `--resume_from_checkpoint` continues from it
    log.jsonl                one JSON record per epoch (and one for the final test)
    tensorboard/             TensorBoard scalars
    training_curves.png      training loss and validation metrics by epoch
    results.md, results.json the final table: best validation and test metrics, epochs, times, memory

Training reads whole train prefixes: one forward pass over the first `min(n - 1, L)` items of a user with a loss
at every target position, plus a separate window for each target beyond `L` (see `data.prefix_units`), so the
(history, target) pairs are exactly the protocol's. Batches hold about `batch_targets` targets (2048, the paper's
batch of 2048 samples), grouped by length to avoid padding.
"""

import contextlib
import dataclasses
import json
import logging
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..configuration_ttt4rec import TTT4RecConfig
from ..losses import LOSS_TYPES
from ..modeling_ttt4rec import TTT4RecForNextItemPrediction
from .data import DEFAULT_CONFIG_NAME, collate, load_sequences, make_batches, prefix_units
from .evaluation import EVAL_MODES, EVAL_PROTOCOLS, evaluate_split
from .metrics import metric_names

logger = logging.getLogger("ttt4rec.training")

MODEL_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "backbone",
    "ttt_layer_type",
    "ttt_mlp_expansion",
    "mini_batch_size",
    "ttt_base_lr",
    "rope_theta",
    "conv_kernel",
    "hidden_dropout_prob",
    "initializer_range",
    "item_scoring",
    "target_mlp_size",
)
STATE_FILE = "trainer_state.json"


@dataclass
class ModelArguments:
    """Model settings (the defaults are the paper's TTT4Rec: Transformer backbone, TTT-MLP)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from this checkpoint (folder or Hub id) instead of a new model."}
    )
    backbone: str = field(default="transformer", metadata={"help": "transformer or mamba"})
    ttt_layer_type: str = field(default="mlp", metadata={"help": "Inner model: linear or mlp"})
    mini_batch_size: int = field(default=8, metadata={"help": "TTT inner mini-batch size"})
    hidden_size: int = field(default=64, metadata={"help": "Embedding / hidden size"})
    intermediate_size: int = field(default=256, metadata={"help": "SwiGLU feed-forward width"})
    num_hidden_layers: int = field(default=1, metadata={"help": "Residual blocks"})
    num_attention_heads: int = field(default=4, metadata={"help": "TTT heads"})
    ttt_mlp_expansion: int = field(default=4, metadata={"help": "TTT-MLP inner width / head dim"})
    ttt_base_lr: float = field(default=1.0, metadata={"help": "Base inner learning rate"})
    rope_theta: float = field(default=1000.0, metadata={"help": "Rotary base"})
    conv_kernel: int = field(default=4, metadata={"help": "Convolution kernel (mamba backbone)"})
    hidden_dropout_prob: float = field(default=0.2, metadata={"help": "Dropout on the item embeddings"})
    initializer_range: float = field(default=0.02, metadata={"help": "Std of the weight initialisation"})
    item_scoring: str = field(
        default="embedding", metadata={"help": "embedding (h . e_i) or target_mlp (h . MLP(e_i), the second paper's)"}
    )
    target_mlp_size: int = field(default=128, metadata={"help": "Inner width of the target_mlp tower"})


@dataclass
class DataArguments:
    """Which data set and split configuration to train on."""

    dataset: str = field(
        default=None, metadata={"help": "A local data set folder from dataset_builders, or a Hub dataset repo id."}
    )
    dataset_config: str = field(default=DEFAULT_CONFIG_NAME, metadata={"help": "Split configuration name"})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of the data set"})
    num_items: int | None = field(
        default=None, metadata={"help": "Item ids incl. padding (unset: the data set's metadata)"}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Maximum history length L (unset: the data set's metadata)"}
    )


@dataclass
class TrainingArguments:
    """Training, evaluation, checkpointing and Hub settings (the defaults are the paper's protocol)."""

    output_dir: str = field(default="outputs/ttt4rec", metadata={"help": "Where everything of the run is written"})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    batch_targets: int = field(
        default=2048, metadata={"help": "Targets per batch; an optimizer step takes gradient_accumulation_steps"}
    )
    loss_type: str = field(
        default="full_ce", metadata={"help": "full_ce (softmax over all items) or sampled_bce (the second paper's)"}
    )
    num_negatives: int = field(default=4, metadata={"help": "Negatives per target for sampled_bce (1:4)"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step"})
    max_epochs: int = field(default=300, metadata={"help": "Maximum number of epochs"})
    patience: int = field(default=5, metadata={"help": "Stop after this many epochs without a better val metric"})
    early_stopping_metric: str = field(default="NDCG@10", metadata={"help": "Validation metric to select on"})
    seed: int = field(default=2020, metadata={"help": "Random seed (model init, shuffling, dropout)"})
    mixed_precision: str | None = field(
        default=None, metadata={"help": "no, bf16 or fp16 (default: what `accelerate launch` was given)"}
    )
    cpu: bool = field(default=False, metadata={"help": "Train on the CPU even if a GPU is there"})
    eval_mode: str = field(default="window", metadata={"help": "window (the paper's) or stream"})
    eval_protocol: str = field(
        default="full", metadata={"help": "full (rank all items) or sampled (rank the target among 1 + N)"}
    )
    eval_num_negatives: int = field(default=99, metadata={"help": "Negatives per sample, sampled protocol (1:99)"})
    candidate_seed: int = field(default=0, metadata={"help": "Seed of the sampled evaluation candidates"})
    test_eval_modes: str = field(
        default="window,stream", metadata={"help": "Comma-separated modes for the final test evaluation"}
    )
    eval_batch_targets: int = field(default=4096, metadata={"help": "Targets per evaluation batch"})
    eval_batch_tokens: int = field(default=65536, metadata={"help": "Padded tokens per evaluation batch"})
    eval_every: int = field(default=1, metadata={"help": "Evaluate on validation every N epochs"})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint folder, or 'latest' for OUTPUT_DIR/checkpoint"}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow a new run in a used output_dir"})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the best model with a model card"})
    hub_model_id: str | None = field(default=None, metadata={"help": "USER/NAME of the model repository"})
    hub_private: bool = field(default=False, metadata={"help": "Create the repository as private"})
    hub_token: str | None = field(default=None, metadata={"help": "Token (default: HF_TOKEN / hf auth login)"})
    hub_dry_run: bool = field(
        default=False, metadata={"help": "Prepare the upload folder and model card, upload nothing"}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars"})
    sleep_after_epoch: float = field(
        default=0.0, metadata={"help": "Seconds to sleep after each checkpoint (tests interrupt runs there)"}
    )
    torch_threads: int | None = field(default=None, metadata={"help": "torch.set_num_threads on CPU"})


@dataclass
class RunConfig:
    """All settings of a run."""

    model: ModelArguments
    data: DataArguments
    training: TrainingArguments

    def to_dict(self) -> dict:
        """All settings, as written to `run_config.json` (a Hub token is never written)."""
        training = asdict(self.training)
        if training["hub_token"] is not None:
            training["hub_token"] = "<HUB_TOKEN>"
        return {"model": asdict(self.model), "data": asdict(self.data), "training": training}


# Settings that change what a run computes: a resumed run must have the same ones (the others, such as
# `max_epochs`, `patience`, output, speed and Hub options, may change between sessions).
RESUME_FIXED = {
    "model": [f.name for f in dataclasses.fields(ModelArguments)],
    "data": ["dataset", "dataset_config", "dataset_revision", "num_items", "max_length"],
    "training": [
        "learning_rate",
        "weight_decay",
        "batch_targets",
        "loss_type",
        "num_negatives",
        "gradient_accumulation_steps",
        "early_stopping_metric",
        "seed",
        "eval_mode",
        "eval_protocol",
        "eval_num_negatives",
        "candidate_seed",
        "eval_every",
    ],
}


def resume_settings(run: "RunConfig") -> dict:
    """The settings a resumed run must share with the run it continues (stored in the training state)."""
    values = run.to_dict()
    return {section: {name: values[section][name] for name in names} for section, names in RESUME_FIXED.items()}


def check_resume_settings(saved: dict | None, current: dict) -> None:
    """Raise a `ValueError` naming every setting that differs from the run being resumed."""
    if saved is None:  # a state written before the settings were stored
        return
    changed = [
        f"--{name}: {saved[section].get(name)!r} -> {value!r}"
        for section, names in current.items()
        for name, value in names.items()
        if saved.get(section, {}).get(name) != value
    ]
    if changed:
        raise ValueError(
            "The run to resume was trained with other settings (" + "; ".join(changed) + "). Resume with the same "
            "settings (only --max_epochs, --patience, output, speed and Hub options may change), or start a new run "
            "in another --output_dir."
        )


# ----------------------------------------------------------------------------------------------------------------
# Argument parsing: command line over an optional JSON/YAML file
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> RunConfig:
    """Parse `argv`: `--config_file FILE` (JSON or YAML, flat or with `model`/`data`/`training` sections) gives
    defaults, the other flags override them."""
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    file_values: dict = {}
    for i, arg in enumerate(argv):
        if arg == "--config_file" or arg.startswith("--config_file="):
            path = arg.partition("=")[2] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else None)
            if not path:
                raise SystemExit("--config_file needs a path")
            file_values = read_config_file(path)
            del argv[i : i + (1 if "=" in arg else 2)]
            break
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    fields = {f.name: f for cls in (ModelArguments, DataArguments, TrainingArguments) for f in dataclasses.fields(cls)}
    unknown = sorted(set(file_values) - set(fields))
    if unknown:
        raise SystemExit(f"Unknown setting(s) in the config file: {unknown}")
    for name, value in file_values.items():
        _check_file_value(name, value, fields[name].type)
    parser.set_defaults(**file_values)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if not data_args.dataset:
        raise SystemExit("--dataset is required (a data set folder from dataset_builders or a Hub dataset repo id)")
    return RunConfig(model_args, data_args, training_args)


def _check_file_value(name: str, value, annotation) -> None:
    """A config-file value must have its setting's type (argparse converts only command-line strings)."""
    kinds = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    allowed = tuple(t for part in text.replace(" ", "").split("|") for t in kinds.get(part, ()))
    if value is None and "None" in text:
        return
    if allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
        raise SystemExit(f"Config file: {name} must be of type {text}, got {value!r}")


def read_config_file(path: str | os.PathLike) -> dict:
    """Settings from a JSON or YAML file, flattened (sections `model`, `data`, `training` are merged)."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"Config file {path} not found")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as err:  # json.JSONDecodeError, yaml.YAMLError
        raise SystemExit(f"Config file {path} cannot be parsed: {err}") from err
    if not isinstance(values, dict):
        raise SystemExit(f"Config file {path} must hold a mapping of settings")
    flat = {}
    for key, value in values.items():
        if key in ("model", "data", "training") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: GPU allocator peak on CUDA, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_model(model_args: ModelArguments, num_items: int) -> TTT4RecForNextItemPrediction:
    """A new model with the given settings, or the checkpoint `model_name_or_path`."""
    if model_args.model_name_or_path:
        from .evaluation import load_checkpoint

        model = load_checkpoint(model_args.model_name_or_path)
        if model.config.num_items != num_items:
            raise ValueError(
                f"The checkpoint {model_args.model_name_or_path} has num_items={model.config.num_items} but the "
                f"data set has {num_items}."
            )
        return model
    values = {name: getattr(model_args, name) for name in MODEL_FIELDS}
    config = TTT4RecConfig(num_items=num_items, **values)
    return TTT4RecForNextItemPrediction(config)


def _atomic_replace(tmp: Path, final: Path) -> None:
    """Move the finished folder `tmp` to `final`, so a killed run never leaves a half-written `final`."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def save_best_model(model, folder: Path, item_id_map: Path | None, extra: dict) -> None:
    """`save_pretrained` (safetensors, config, remote code) + the item id map + `training_info.json`."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    if item_id_map is not None:
        shutil.copy2(item_id_map, tmp / item_id_map.name)
    (tmp / "training_info.json").write_text(json.dumps(extra, indent=2, default=str))
    _atomic_replace(tmp, folder)


def plot_curves(history: list[dict], path: Path, names: tuple[str, ...]) -> None:
    """PNG of the training loss and the validation metrics by epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("Training loss")
    for name in names:
        points = [(h["epoch"], h[f"val_{name}"]) for h in history if f"val_{name}" in h]
        if points:
            ax_val.plot(*zip(*points, strict=True), marker="o", label=name)
    ax_val.set_xlabel("epoch")
    ax_val.set_title("Validation metrics")
    ax_val.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def results_table(results: dict) -> str:
    """Markdown table of the final results."""
    names = metric_names(results.get("eval_protocol", "full"))
    header = "| split | eval mode | " + " | ".join(names) + " | samples |"
    lines = [header, "|---" * (len(names) + 3) + "|"]
    for row in results["rows"]:
        values = " | ".join(f"{row[m]:.4f}" for m in names)
        lines.append(f"| {row['split']} | {row['mode']} | {values} | {row['num_samples']} |")
    lines.append("")
    lines.append(
        f"epochs: {results['epochs']} (best {results['best_epoch']}), time per epoch: "
        f"{results['seconds_per_epoch']:.1f} s (training only), total: {results['total_seconds']:.1f} s, "
        f"peak memory: {results['peak_memory_mb']:.0f} MiB"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------------------------


def train(run: RunConfig) -> dict:
    """Train, select, test, report (and push). Returns the results dict (also written to `results.json`)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    args, data_args, model_args = run.training, run.data, run.model
    if args.eval_mode not in EVAL_MODES:
        raise ValueError(f"Unknown --eval_mode {args.eval_mode!r}; choose one of {EVAL_MODES}.")
    if args.eval_protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"Unknown --eval_protocol {args.eval_protocol!r}; choose one of {EVAL_PROTOCOLS}.")
    if args.loss_type not in LOSS_TYPES:
        raise ValueError(f"Unknown --loss_type {args.loss_type!r}; choose one of {LOSS_TYPES}.")
    names = metric_names(args.eval_protocol)
    if args.early_stopping_metric not in names:
        raise ValueError(
            f"--early_stopping_metric {args.early_stopping_metric!r} is not reported by the {args.eval_protocol} "
            f"protocol; choose one of {names}."
        )
    test_modes = [m.strip() for m in args.test_eval_modes.split(",") if m.strip()]
    for mode in test_modes:
        if mode not in EVAL_MODES:
            raise ValueError(f"Unknown test eval mode {mode!r}; choose from {EVAL_MODES}.")
    for name in ("max_epochs", "patience", "eval_every", "batch_targets", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id USER/NAME.")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    output_dir = Path(args.output_dir)
    checkpoint_dir = output_dir / "checkpoint"
    resume_dir = None
    if args.resume_from_checkpoint:
        resume_dir = checkpoint_dir if args.resume_from_checkpoint == "latest" else Path(args.resume_from_checkpoint)
        previous = resume_dir.with_name(resume_dir.name + ".old")  # a run killed between the two renames
        if not (resume_dir / STATE_FILE).is_file() and (previous / STATE_FILE).is_file():
            resume_dir = previous
        if not (resume_dir / STATE_FILE).is_file():
            raise FileNotFoundError(
                f"No training state to resume from in {resume_dir} (expected {STATE_FILE} written by a previous run)."
            )
    elif (output_dir / "log.jsonl").exists() and not args.overwrite_output_dir:
        raise FileExistsError(
            f"{output_dir} already holds a run. Pass --resume_from_checkpoint latest to continue it, "
            "--overwrite_output_dir to start over, or another --output_dir."
        )

    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        cpu=args.cpu,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "tensorboard")),
    )
    main = accelerator.is_main_process
    logging.basicConfig(level=logging.INFO if main else logging.WARNING, format="%(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    # `save_state` warns on every checkpoint that the tied item head shares the embedding's tensor: it is meant to
    # (the weights are tied) and `load_state` restores it; the resume test checks the restored run
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    if args.disable_tqdm:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if args.disable_tqdm or not main:  # one set of progress bars: the main process's
        import datasets

        datasets.disable_progress_bars()
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if not resume_dir and args.overwrite_output_dir:
            for name in ("log.jsonl", "results.json", "results.md", "run_config.json", "training_curves.png"):
                (output_dir / name).unlink(missing_ok=True)
            for name in ("checkpoint", "checkpoint.tmp", "checkpoint.old", "best_model", "tensorboard", "hub_upload"):
                shutil.rmtree(output_dir / name, ignore_errors=True)
    accelerator.wait_for_everyone()

    sequences, meta = load_sequences(
        data_args.dataset,
        data_args.dataset_config,
        num_items=data_args.num_items,
        max_length=data_args.max_length,
        revision=data_args.dataset_revision,
        token=args.hub_token,
    )
    data_args.num_items, data_args.max_length = meta.num_items, meta.max_length
    L = meta.max_length
    torch.manual_seed(args.seed)
    model = build_model(model_args, meta.num_items)
    # the model computes the training loss from its config
    model.config.loss_type, model.config.num_negatives = args.loss_type, args.num_negatives
    model.config.check_arguments()
    resolved = run.to_dict()
    resolved["model"]["config"] = model.config.to_diff_dict()
    resolved["data"]["resolved_dir"] = str(meta.local_dir)
    resolved["data"]["name"] = meta.name
    resolved["runtime"] = {
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "distributed_type": str(accelerator.distributed_type),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if main:
        (output_dir / "run_config.json").write_text(json.dumps(resolved, indent=2, default=str))

    units = prefix_units(sequences["train"], L)
    if len(units) == 0:
        raise ValueError("The train split has no training samples.")
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    world, rank = accelerator.num_processes, accelerator.process_index

    state = {"epoch": 0, "best_metric": -math.inf, "best_epoch": 0, "bad_epochs": 0, "history": [], "done": False}
    state["settings"] = resume_settings(run)
    if resume_dir is not None:
        saved = json.loads((resume_dir / STATE_FILE).read_text())
        check_resume_settings(saved.get("settings"), state["settings"])
        accelerator.load_state(str(resume_dir))
        state = {**saved, "settings": state["settings"]}
        # --max_epochs / --patience may have changed since: is the run finished under the current ones?
        state["done"] = state["bad_epochs"] >= args.patience or state["epoch"] >= args.max_epochs
        logger.info("Resumed from %s after epoch %d", resume_dir, state["epoch"])
    if main:
        accelerator.init_trackers("ttt4rec")

    eval_kwargs = {
        "batch_targets": args.eval_batch_targets,
        "batch_tokens": args.eval_batch_tokens,
        "protocol": args.eval_protocol,
        "num_negatives": args.eval_num_negatives,
        "candidate_seed": args.candidate_seed,
    }
    select = f"val_{args.early_stopping_metric}"
    log_path = output_dir / "log.jsonl"
    best_dir = output_dir / "best_model"
    info = {"dataset": meta.source, "dataset_name": meta.name, "dataset_config": meta.config_name, "max_length": L}
    from tqdm.auto import tqdm

    epoch = state["epoch"]
    while not state["done"] and epoch < args.max_epochs:
        epoch += 1
        t0 = time.perf_counter()
        # dropout and sampled negatives: the same after a resume, different on each process
        torch.manual_seed(args.seed + epoch * world + rank)
        batches = make_batches(units, args.batch_targets, shuffle=True, seed=args.seed + epoch, min_rows=world)
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        steps = len(batches)
        accum = max(1, args.gradient_accumulation_steps)
        bar = tqdm(batches, desc=f"epoch {epoch}", disable=not main or args.disable_tqdm, leave=False)
        for step, index in enumerate(bar):
            group = step // accum
            group_batches = batches[group * accum : min((group + 1) * accum, steps)]
            group_targets = sum(int(units.num_targets[b].sum()) for b in group_batches)
            mine = index[rank::world]
            batch = collate(units, mine, accelerator.device)
            sync = (step + 1) % accum == 0 or step + 1 == steps
            ctx = accelerator.no_sync(model) if not sync and world > 1 else contextlib.nullcontext()
            # the next item after each targeted position, in the row-major order of `targets`
            labels = torch.full_like(batch["input_ids"], -100).masked_scatter_(batch["target_mask"], batch["targets"])
            with ctx:
                loss = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    labels=labels,
                    num_items_in_batch=group_targets,
                    return_logits=False,
                    check_inputs=False,
                ).loss
                # DDP averages the gradients of the processes: scale back to the sum over the group's targets
                accelerator.backward(loss * world)
            ce_sum = loss.detach() * group_targets
            if sync:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += ce_sum.double()
            if main and not args.disable_tqdm:
                bar.set_postfix(loss=f"{ce_sum.item() / max(1, int(batch['targets'].numel())):.4f}")
        train_seconds = time.perf_counter() - t0
        loss_sum = accelerator.reduce(loss_sum, reduction="sum")
        if not torch.isfinite(loss_sum):
            raise FloatingPointError(
                f"The training loss is {float(loss_sum)} in epoch {epoch}: training diverged. Lower --learning_rate "
                "(or use --mixed_precision bf16 instead of fp16); the checkpoint of the last finished epoch is kept."
            )
        record = {
            "epoch": epoch,
            "train_loss": float(loss_sum) / units.total_targets,
            "train_seconds": train_seconds,
            "steps": steps,
        }
        if epoch % args.eval_every == 0 or epoch == args.max_epochs:
            val = evaluate_split(
                raw_model, sequences["validation"], L, mode=args.eval_mode, accelerator=accelerator, **eval_kwargs
            )
            record.update({f"val_{k}": v for k, v in val.items() if k != "num_samples"})
            metric = record[select]
            if metric > state["best_metric"]:
                state.update(best_metric=metric, best_epoch=epoch, bad_epochs=0)
                if main:
                    save_best_model(raw_model, best_dir, meta.item_id_map, {**info, "best_epoch": epoch, **record})
            else:
                state["bad_epochs"] += 1
                if state["bad_epochs"] >= args.patience:
                    state["done"] = True
        record["epoch_seconds"] = time.perf_counter() - t0
        record["peak_memory_mb"] = peak_memory_mb(accelerator.device)
        state["epoch"] = epoch
        state["history"].append(record)
        if epoch >= args.max_epochs:
            state["done"] = True
        # the training state after this epoch, written atomically
        accelerator.wait_for_everyone()
        tmp = checkpoint_dir.with_name("checkpoint.tmp")
        if main and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        # every process writes its own part (its random state) and `save_state` does not wait for the others:
        # move the folder only once all have written
        accelerator.wait_for_everyone()
        if main:
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            _atomic_replace(tmp, checkpoint_dir)
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
            vals = " ".join(f"{k[4:]} {record[k]:.4f}" for k in record if k.startswith("val_") and "@" in k)
            logger.info(
                "epoch %d  loss %.4f  %s  (%.1f s train, %.1f s total)",
                epoch,
                record["train_loss"],
                vals,
                train_seconds,
                record["epoch_seconds"],
            )
        accelerator.wait_for_everyone()
        if args.sleep_after_epoch:
            time.sleep(args.sleep_after_epoch)

    # ------------------------------------------------------------------ final test of the best model
    accelerator.wait_for_everyone()
    if not (best_dir / "model.safetensors").is_file():
        raise RuntimeError(f"No best model was saved in {best_dir}: was validation ever run?")
    best = TTT4RecForNextItemPrediction.from_pretrained(best_dir).to(accelerator.device)
    t_test = time.perf_counter()
    rows = []
    best_record = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
    rows.append(
        {"split": "validation", "mode": args.eval_mode, "num_samples": sequences["validation"].num_samples}
        | {m: best_record[f"val_{m}"] for m in names}
    )
    for mode in test_modes:
        test = evaluate_split(best, sequences["test"], L, mode=mode, accelerator=accelerator, **eval_kwargs)
        rows.append({"split": "test", "mode": mode, **test})
    history = state["history"]
    results = {
        "dataset": meta.source,
        "dataset_name": meta.name,
        "dataset_config": meta.config_name,
        "eval_protocol": args.eval_protocol,
        "loss_type": args.loss_type,
        "model": {name: getattr(best.config, name) for name in MODEL_FIELDS},
        "rows": rows,
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "seconds_per_epoch": float(np.mean([h["train_seconds"] for h in history])),
        "eval_seconds_per_epoch": float(
            np.mean([h["val_eval_seconds"] for h in history if "val_eval_seconds" in h] or [0.0])
        ),
        # over all sessions of a resumed run: every epoch (training + validation) and the final test
        "total_seconds": sum(h["epoch_seconds"] for h in history) + time.perf_counter() - t_test,
        "test_eval_seconds": {r["mode"]: r["eval_seconds"] for r in rows if r["split"] == "test"},
        "peak_memory_mb": max(h["peak_memory_mb"] for h in history),
        "num_processes": world,
        "mixed_precision": accelerator.mixed_precision,
    }
    if main:
        table = results_table(results)
        print(table)
        (output_dir / "results.md").write_text(table + "\n")
        (output_dir / "results.json").write_text(json.dumps(results, indent=2))
        with log_path.open("a") as f:
            f.write(json.dumps({"final": True, **{f"{r['split']}_{r['mode']}": r for r in rows}}) + "\n")
        plot_curves(history, output_dir / "training_curves.png", names)
        info_path = best_dir / "training_info.json"
        (info_path).write_text(json.dumps({**json.loads(info_path.read_text()), "results": results}, indent=2))
        if args.push_to_hub:
            from .hub import push_best_model

            push_best_model(
                best_dir,
                output_dir / "hub_upload",
                args.hub_model_id,
                results,
                token=args.hub_token,
                private=args.hub_private,
                dry_run=args.hub_dry_run,
                training=run.to_dict()["training"],
            )
    # every process waits here before the process group is torn down: a rank that destroys it while another is
    # still writing the results can leave the launcher waiting forever
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


__all__ = ["DataArguments", "ModelArguments", "RunConfig", "TrainingArguments", "parse_args", "train"]
