"""Training a recommender with Accelerate, following the paper's protocol (docs/protocol.md section 6).

`train(run)` (a `Trainer`) runs the whole thing in named phases: set-up (checks, accelerator, output folder), data
and model, resume, then per epoch `_train_epoch` (Adam on the model's loss: the full cross-entropy over all items,
or, `--loss_type sampled_bce`, binary cross-entropy against sampled negatives as in the second paper,
docs/protocol.md section 9, or `--loss_type sampled_softmax` for large catalogs, docs/scaling.md), `_valid_epoch`
(full ranking, or `--eval_protocol sampled`; keep the best model, stop early on validation NDCG@10) and
`_save_checkpoint`; then the final test of the best model, the reports (logs, curves, results table) and optionally
the push of the best model to the Hub. The same code runs on one CPU, one GPU or several
processes (DDP) and with mixed precision, depending on how `accelerate` launches it. The model is any registered
recommender (`arguments.MODELS`, `--model_type`, default `ttt4rec`).

Output folder layout (`args.output_dir`):

    run_config.json          every setting of the run, resolved (model, data, training)
    best_model/              the best model: save_pretrained (safetensors + config + remote code) + item id map
    checkpoint/              Accelerate training state of the last finished epoch (model, optimizer, RNG) and
                             trainer_state.json, or of a step inside an epoch with `--save_steps N`;
                             `--resume_from_checkpoint` continues from it
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
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .arguments import (
    DataArguments,
    RunConfig,
    TrainerArguments,
    check_resume_settings,
    config_kwargs,
    model_classes,
    model_settings,
    parse_args,
    resume_settings,
)
from .data import BATCHING, TRAINING_UNITS, collate, load_sequences, make_batches, sample_targets
from .evaluation import (
    EVAL_MODES,
    check_evaluation_arguments,
    check_item_map,
    checkpoint_folder,
    evaluate_split,
    evaluation_options,
    has_cache,
    item_map_identity,
)
from .hub import check_hub_access, push_run
from .metrics import metric_names
from .reports import plot_curves, results_table

logger = logging.getLogger("ttt4rec.training")

STATE_FILE = "trainer_state.json"
# a checkpoint inside an epoch (`--save_steps`) also keeps where the sampled losses' negatives generator stands
NEGATIVES_STATE_FILE = "negatives_generator.pt"
# ... and where each process's generator of the model's training samples (`training_batch`) stands
SAMPLES_STATE_FILE = "samples_generator_{rank}.pt"
# the negatives of epoch `e` come from seed `NEGATIVES_SEED_OFFSET + seed + e` (`seed_negatives`): a stream apart from
# the dropout seeds `seed + e * world + rank`
NEGATIVES_SEED_OFFSET = 1_000_003
# model settings that are this run's (the training loss), not the checkpoint's, when fine-tuning one
RUN_MODEL_SETTINGS = ("loss_type", "num_negatives", "negative_sampler", "in_batch_negatives")
# files and folders of a run in its output folder (what --overwrite_output_dir removes)
RUN_FILES = ("log.jsonl", "results.json", "results.md", "run_config.json", "training_curves.png")
RUN_FOLDERS = ("checkpoint", "checkpoint.tmp", "checkpoint.old", "best_model", "tensorboard", "hub_upload")


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: GPU allocator peak on CUDA, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batch_loss(model: nn.Module, batch: dict[str, torch.Tensor], group_targets: int) -> torch.Tensor:
    """The model's own loss (`config.loss_type`) of a collated training batch, its sum over the targets divided by
    `group_targets` (the targets of the optimizer step on all processes)."""
    # the next item after each targeted position, in the row-major order of `targets`
    labels = torch.full_like(batch["input_ids"], -100).masked_scatter_(batch["target_mask"], batch["targets"])
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=labels,
        num_items_in_batch=group_targets,
        return_logits=False,
        check_inputs=False,
    ).loss


def build_model(model_args, num_items: int, max_length: int | None = None) -> nn.Module:
    """A new model of the registered `model_args.model_type` with the given settings, or the checkpoint
    `model_name_or_path`. A model with learned positions (`max_position_embeddings`) gets one per history item up to
    the data set's `max_length`."""
    config_class, model_class = model_classes(model_args.model_type)
    positions = {f.name for f in dataclasses.fields(config_class)} & {"max_position_embeddings"}
    if model_args.model_name_or_path:
        from .evaluation import load_checkpoint

        path = model_args.model_name_or_path
        # `load_checkpoint` refuses incomplete checkpoints and checkpoints of another model with a clear error
        model = load_checkpoint(path, model_type=model_args.model_type)
        if positions and max_length is not None and max_length > model.config.max_position_embeddings:
            raise ValueError(
                f"The checkpoint {path} reads at most {model.config.max_position_embeddings} items but the data "
                f"set's histories have up to {max_length}: pass --max_length {model.config.max_position_embeddings}."
            )
        if model.config.num_items != num_items:
            raise ValueError(
                f"The checkpoint {path} has num_items={model.config.num_items} but the data set has {num_items}."
            )
        # the training loss is a setting of this run, not of the checkpoint
        for name in RUN_MODEL_SETTINGS:
            if hasattr(model.config, name) and hasattr(model_args, name):
                setattr(model.config, name, getattr(model_args, name))
        adopt_checkpoint_settings(model_args, model.config, path)
        return model
    extra = {"max_position_embeddings": max_length} if positions and max_length is not None else {}
    return model_class(config_class(num_items=num_items, **config_kwargs(model_args), **extra))


def adopt_checkpoint_settings(model_args, config, path: str) -> None:
    """Set `model_args` to the checkpoint's architecture, so the run's record is true; a setting given on the command
    line (a value other than its default) that differs from the checkpoint's is refused, naming every conflict."""
    config_class, _ = model_classes(model_args.model_type)
    conflicts = []
    for f in model_settings(config_class):
        if f.name in RUN_MODEL_SETTINGS or not hasattr(config, f.name):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        given, trained = getattr(model_args, f.name), getattr(config, f.name)
        if given != default and given != trained:
            conflicts.append(f"--{f.name} {given} (the checkpoint has {trained})")
        setattr(model_args, f.name, trained)
    if conflicts:
        raise ValueError(
            f"--model_name_or_path {path} fixes the model's architecture, but other settings were given: "
            + "; ".join(conflicts)
            + ". Leave them out to fine-tune the checkpoint, or train a new model without --model_name_or_path."
        )


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


# ----------------------------------------------------------------------------------------------------------------
# The trainer, in phases
# ----------------------------------------------------------------------------------------------------------------


def check_arguments(run: RunConfig) -> None:
    """Raise a `ValueError` naming the first training setting that cannot be run."""
    args = run.training
    if args.eval_mode not in EVAL_MODES:
        raise ValueError(f"Unknown --eval_mode {args.eval_mode!r}; choose one of {EVAL_MODES}.")
    if args.train_units not in TRAINING_UNITS:
        raise ValueError(f"Unknown --train_units {args.train_units!r}; choose one of {sorted(TRAINING_UNITS)}.")
    if args.batching not in BATCHING:
        raise ValueError(f"Unknown --batching {args.batching!r}; choose one of {sorted(BATCHING)}.")
    check_evaluation_arguments(args)
    if args.eval_mode == "stream" and not has_cache(model_classes(run.model.model_type)[1]):
        raise ValueError(f"--model_type {run.model.model_type} has no cache: validate with --eval_mode window.")
    names = metric_names(args.eval_protocol)
    if args.early_stopping_metric not in names:
        raise ValueError(
            f"--early_stopping_metric {args.early_stopping_metric!r} is not reported by the {args.eval_protocol} "
            f"protocol; choose one of {names}."
        )
    for mode in final_test_modes(args):
        if mode not in EVAL_MODES:
            raise ValueError(f"Unknown test eval mode {mode!r}; choose from {EVAL_MODES}.")
    for name in ("max_epochs", "patience", "eval_every", "batch_targets", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.save_steps < 0:
        raise ValueError(f"--save_steps must be 0 (checkpoint after each epoch only) or more, got {args.save_steps}.")
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id USER/NAME.")
    if args.hub_model_id and not args.push_to_hub:
        logger.warning(
            "--hub_model_id %s does nothing without --push_to_hub (or push the finished run: scripts/push_to_hub.py).",
            args.hub_model_id,
        )
    output, dataset = Path(args.output_dir).resolve(), Path(run.data.dataset).resolve()
    if dataset.is_dir() and (output == dataset or dataset in output.parents):
        raise ValueError(
            f"--output_dir {args.output_dir} is (inside) the data set folder {run.data.dataset}: write the run "
            "elsewhere, e.g. --output_dir outputs/NAME."
        )


def final_test_modes(args: TrainerArguments) -> list[str]:
    """The evaluation modes of the final test (`--test_eval_modes`)."""
    return [m.strip() for m in args.test_eval_modes.split(",") if m.strip()]


def find_resume_dir(args: TrainerArguments) -> Path | None:
    """The checkpoint folder to resume from (None for a new run); refuses a new run in a used output folder."""
    output_dir = Path(args.output_dir)
    if not args.resume_from_checkpoint:
        if (output_dir / "log.jsonl").exists() and not args.overwrite_output_dir:
            raise FileExistsError(
                f"{output_dir} already holds a run. Pass --resume_from_checkpoint latest to continue it, "
                "--overwrite_output_dir to start over, or another --output_dir."
            )
        return None
    latest = args.resume_from_checkpoint == "latest"
    resume_dir = output_dir / "checkpoint" if latest else Path(args.resume_from_checkpoint)
    previous = resume_dir.with_name(resume_dir.name + ".old")  # a run killed between the two renames
    if not (resume_dir / STATE_FILE).is_file() and (previous / STATE_FILE).is_file():
        resume_dir = previous
    if latest and not (resume_dir / STATE_FILE).is_file() and not (output_dir / "log.jsonl").exists():
        # nothing to continue yet (a run stopped before its first epoch ended, or none started): begin it
        logger.warning("No checkpoint in %s yet: starting a new run (--resume_from_checkpoint latest).", output_dir)
        return None
    if not (resume_dir / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"No training state to resume from in {resume_dir} (expected {STATE_FILE} written by a previous run)."
        )
    return resume_dir


class Trainer:
    """One training run: `fit()` runs the phases and returns the results (also written to `results.json`).

    Args:
        run: all settings (`arguments.parse_args`).
    """

    def __init__(self, run: RunConfig):
        self.run = run
        self.args: TrainerArguments = run.training
        self.output_dir = Path(self.args.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoint"
        self.best_dir = self.output_dir / "best_model"
        self.log_path = self.output_dir / "log.jsonl"

    def fit(self) -> dict:
        """Set up, train epoch by epoch (validating, keeping the best, checkpointing), test, report, push."""
        self._setup()
        self._load_data()
        self._build_model()
        self._resume()
        while not self.state["done"] and self.state["epoch"] < self.args.max_epochs:
            epoch = self.state["epoch"] + 1
            start = time.perf_counter()
            record = self._train_epoch(epoch)
            if epoch % self.args.eval_every == 0 or epoch == self.args.max_epochs:
                record.update(self._valid_epoch(epoch, record))
            record["epoch_seconds"] = time.perf_counter() - start
            record["peak_memory_mb"] = peak_memory_mb(self.accelerator.device)
            self.state["epoch"] = epoch
            self.state["history"].append(record)
            if epoch >= self.args.max_epochs:
                self.state["done"] = True
            self._save_checkpoint()
            self._log_epoch(record)
        results = self._test()
        if self.main:
            self._write_reports(results)
            self._push()
        # every process waits here before the process group is torn down: a rank that destroys it while another is
        # still writing the results can leave the launcher waiting forever
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return results

    # ------------------------------------------------------------------------------------------- set-up
    def _setup(self) -> None:
        """Check the settings, find the checkpoint to resume, start the accelerator and logging, prepare the
        output folder."""
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        args = self.args
        check_arguments(self.run)
        if args.push_to_hub:  # before any long work: a token, and the Hub answering unless it is a dry run
            check_hub_access(args.hub_model_id, args.hub_token, dry_run=args.hub_dry_run)
        self.names = metric_names(args.eval_protocol)
        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        self.resume_dir = find_resume_dir(args)
        self.accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            cpu=args.cpu,
            log_with="tensorboard",
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "tensorboard")
            ),
        )
        self.main = self.accelerator.is_main_process
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self._setup_logging()
        if self.main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if not self.resume_dir and args.overwrite_output_dir:
                for name in RUN_FILES:
                    (self.output_dir / name).unlink(missing_ok=True)
                for name in RUN_FOLDERS:
                    shutil.rmtree(self.output_dir / name, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def _setup_logging(self) -> None:
        """INFO logs and progress bars on the main process only (or nowhere with `--disable_tqdm`)."""
        logging.basicConfig(level=logging.INFO if self.main else logging.WARNING, format="%(message)s")
        logging.getLogger("accelerate").setLevel(logging.WARNING)
        # `save_state` warns on every checkpoint that the tied item head shares the embedding's tensor: it is meant
        # to (the weights are tied) and `load_state` restores it; the resume test checks the restored run
        logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
        if self.args.disable_tqdm:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        if self.args.disable_tqdm or not self.main:  # one set of progress bars: the main process's
            import datasets

            datasets.disable_progress_bars()

    # ------------------------------------------------------------------------------------------- data and model
    def _load_data(self) -> None:
        """Load the split data set; resolve `num_items` and `max_length` from its metadata."""
        data_args: DataArguments = self.run.data
        self.sequences, self.meta = load_sequences(
            data_args.dataset,
            data_args.dataset_config,
            num_items=data_args.num_items,
            max_length=data_args.max_length,
            revision=data_args.dataset_revision,
            token=self.args.hub_token,
        )
        data_args.num_items, data_args.max_length = self.meta.num_items, self.meta.max_length
        self.units = TRAINING_UNITS[self.args.train_units](self.sequences["train"], self.meta.max_length)
        if len(self.units) == 0:
            raise ValueError("The train split has no training samples.")

    def _build_model(self) -> None:
        """Build the model (seeded), write `run_config.json`, prepare the model and the optimizer."""
        torch.manual_seed(self.args.seed)
        model = build_model(self.run.model, self.meta.num_items, self.meta.max_length)
        if self.run.model.model_name_or_path:  # fine-tuning: the data set must number its items as the checkpoint's
            folder = checkpoint_folder(self.run.model.model_name_or_path)
            check_item_map(folder, self.meta, self.run.data.ignore_item_map_mismatch)
        if getattr(model.config, "negative_sampler", None) == "popularity" and hasattr(model, "set_item_counts"):
            # the same counts on every process (all read the same train split)
            train_targets = sample_targets(self.sequences["train"])
            model.set_item_counts(torch.from_numpy(np.bincount(train_targets, minlength=self.meta.num_items)))
        if self.main:
            (self.output_dir / "run_config.json").write_text(
                json.dumps(self._resolved_config(model), indent=2, default=str)
            )
        self._prepare_training(model)

    def _resolved_config(self, model: nn.Module) -> dict:
        """Every setting of the run, resolved: the settings, the model's config, the data set and the runtime."""
        resolved = self.run.to_dict()
        resolved["model"]["config"] = model.config.to_diff_dict()
        resolved["data"]["resolved_dir"] = str(self.meta.local_dir)
        resolved["data"]["name"] = self.meta.name
        resolved["runtime"] = {
            "num_processes": self.world,
            "device": str(self.accelerator.device),
            "mixed_precision": self.accelerator.mixed_precision,
            "distributed_type": str(self.accelerator.distributed_type),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
        return resolved

    def _prepare_training(self, model: nn.Module) -> None:
        """Wrap the model for training (DDP, mixed precision) with its Adam optimizer."""
        optimizer = torch.optim.Adam(
            model.parameters(), lr=self.args.learning_rate, weight_decay=self.args.weight_decay
        )
        self.module, self.optimizer = self.accelerator.prepare(model, optimizer)
        # the generator of the model's training samples (`training_batch`), seeded each epoch per process
        self.samples_generator = torch.Generator(self.accelerator.device)
        self.model = self.accelerator.unwrap_model(self.module)

    def _training_step(self, batch: dict[str, torch.Tensor], group_targets: int) -> torch.Tensor:
        """Back-propagate one batch's loss, the model's own (`config.loss_type`), normalised by the `group_targets`
        targets of the optimizer step on all processes; returns the batch's summed loss (detached)."""
        loss = batch_loss(self.module, batch, group_targets)
        # DDP averages the gradients of the processes: scale back to the sum over the group's targets
        self.accelerator.backward(loss * self.world)
        return loss.detach() * group_targets

    def _step_batches(self, indices: list[np.ndarray], generator: torch.Generator) -> tuple[list[dict], int]:
        """The collated batches (this process's rows of units `indices`) of one optimizer step, and the number of
        targets of the step on all processes. A model with a `training_batch(batch, generator)` method (the
        recommender interface, `register_model`) makes each batch its training samples first."""
        units, device = self.units, self.accelerator.device
        batches = [collate(units, index[self.rank :: self.world], device) for index in indices]
        prepare = getattr(self.model, "training_batch", None)
        if prepare is None:
            return batches, sum(int(units.num_targets[index].sum()) for index in indices)
        batches = [prepare(batch, generator) for batch in batches]
        count = torch.tensor(sum(b["targets"].numel() for b in batches), device=device)
        # at least 1: a step whose samples hold no target has a loss of 0
        return batches, max(1, int(self.accelerator.reduce(count, reduction="sum")))

    # ------------------------------------------------------------------------------------------- resume
    def _resume(self) -> None:
        """A fresh training state, or the state of the checkpoint to resume (same settings required)."""
        self.state = {
            "epoch": 0,
            "best_metric": -math.inf,
            "best_epoch": 0,
            "bad_epochs": 0,
            "history": [],
            "done": False,
        }
        self.state["settings"] = resume_settings(self.run)
        if self.resume_dir is not None:
            saved = json.loads((self.resume_dir / STATE_FILE).read_text())
            check_resume_settings(saved.get("settings"), self.state["settings"])
            self.accelerator.load_state(str(self.resume_dir))
            if (self.resume_dir / NEGATIVES_STATE_FILE).is_file():
                self.resumed_negatives_state = torch.load(self.resume_dir / NEGATIVES_STATE_FILE)
            samples_state = self.resume_dir / SAMPLES_STATE_FILE.format(rank=self.rank)
            if samples_state.is_file():
                self.resumed_samples_state = torch.load(samples_state)
            self.state = {**saved, "settings": self.state["settings"]}
            # --max_epochs / --patience may have changed since: is the run finished under the current ones?
            self.state["done"] = (
                self.state["bad_epochs"] >= self.args.patience or self.state["epoch"] >= self.args.max_epochs
            )
            logger.info("Resumed from %s after epoch %d", self.resume_dir, self.state["epoch"])
        if self.main:
            self.accelerator.init_trackers("ttt4rec")

    # ------------------------------------------------------------------------------------------- epochs
    def _train_epoch(self, epoch: int) -> dict:
        """One pass over the training data; the epoch's record (loss per target, time, steps)."""
        from tqdm.auto import tqdm

        args, units, world, rank = self.args, self.units, self.world, self.rank
        start = time.perf_counter()
        first_step = self._epoch_resume_step(epoch)
        if first_step == 0:
            # dropout and the model's training samples (`training_batch`): the same after a resume, different on each
            # process (a resume inside the epoch has the random states of its checkpoint back)
            torch.manual_seed(args.seed + epoch * world + rank)
            self.samples_generator.manual_seed(args.seed + epoch * world + rank)
        else:
            self.samples_generator.set_state(self.resumed_samples_state)
        # the negatives of the sampled losses: the same after a resume and on every process, from a stream of their own
        if hasattr(self.model, "seed_negatives"):
            self.model.seed_negatives(NEGATIVES_SEED_OFFSET + args.seed + epoch)
            if first_step:
                self.model.negatives_generator.set_state(self.resumed_negatives_state)
        batches = make_batches(
            units,
            args.batch_targets,
            shuffle=True,
            seed=args.seed + epoch,
            min_rows=world,
            bucket_batches=BATCHING[args.batching],
        )
        self.module.train()
        # the loss summed so far in this epoch (over every process: kept by the main process), and its targets
        loss_so_far = self.state.pop("epoch_loss_sum", 0.0)
        loss_sum = torch.tensor(loss_so_far if self.main else 0.0, dtype=torch.float64, device=self.accelerator.device)
        total_targets = self.state.pop("epoch_targets", 0)
        steps, accum = len(batches), args.gradient_accumulation_steps
        bar = tqdm(
            batches[first_step:],
            desc=f"epoch {epoch}",
            initial=first_step,
            total=steps,
            disable=not self.main or args.disable_tqdm,
            leave=False,
        )
        for step, _ in enumerate(bar, start=first_step):
            if step % accum == 0:  # the batches of the next optimizer step (an epoch resumes at a step's start)
                group, group_targets = self._step_batches(batches[step : step + accum], self.samples_generator)
                total_targets += group_targets
            batch = group[step % accum]
            sync = (step + 1) % accum == 0 or step + 1 == steps
            no_sync = self.accelerator.no_sync(self.module) if not sync and world > 1 else contextlib.nullcontext()
            with no_sync:
                batch_loss_sum = self._training_step(batch, group_targets)
            loss_sum += batch_loss_sum.double()
            if sync:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if args.save_steps and (step + 1) // accum % args.save_steps == 0 and step + 1 < steps:
                    loss_sum = self._save_checkpoint_in_epoch(step + 1, loss_sum, total_targets)
            if self.main and not args.disable_tqdm:
                bar.set_postfix(loss=f"{batch_loss_sum.item() / max(1, int(batch['targets'].numel())):.4f}")
        train_seconds = time.perf_counter() - start
        loss_sum = self.accelerator.reduce(loss_sum, reduction="sum")
        if not torch.isfinite(loss_sum):
            raise FloatingPointError(
                f"The training loss is {float(loss_sum)} in epoch {epoch}: training diverged. Lower --learning_rate "
                "(or use --mixed_precision bf16 instead of fp16); the checkpoint of the last finished epoch is kept."
            )
        return {
            "epoch": epoch,
            "train_loss": float(loss_sum) / max(1, total_targets),
            "train_seconds": train_seconds,
            "steps": steps,
        }

    def _evaluate(self, model: nn.Module, split: str, mode: str) -> dict:
        """The metrics of `model` on `split` in eval `mode` (the run's protocol and evaluation settings)."""
        return evaluate_split(
            model,
            self.sequences[split],
            self.meta.max_length,
            mode=mode,
            accelerator=self.accelerator,
            **evaluation_options(self.args),
        )

    def _valid_epoch(self, epoch: int, record: dict) -> dict:
        """Validate; save the model if it is the best so far, count the epochs without improvement otherwise.
        Returns the validation metrics as `val_*` entries of the epoch's record."""
        val = self._evaluate(self.model, "validation", self.args.eval_mode)
        metrics = {f"val_{k}": v for k, v in val.items() if k != "num_samples"}
        metric = metrics[f"val_{self.args.early_stopping_metric}"]
        if metric > self.state["best_metric"]:
            self.state.update(best_metric=metric, best_epoch=epoch, bad_epochs=0)
            if self.main:
                info = {**self._data_info(), "best_epoch": epoch, **record, **metrics}
                save_best_model(self.model, self.best_dir, self.meta.item_id_map, info)
        else:
            self.state["bad_epochs"] += 1
            if self.state["bad_epochs"] >= self.args.patience:
                self.state["done"] = True
        return metrics

    def _data_info(self) -> dict:
        """What the best model's `training_info.json` records of the data set."""
        meta, args = self.meta, self.args
        return {
            "dataset": meta.source,
            "dataset_name": meta.name,
            "dataset_config": meta.config_name,
            "max_length": meta.max_length,
            # which item each dense id is (evaluate.py and fine-tuning refuse a data set numbered otherwise)
            **item_map_identity(meta.item_id_map, meta.extra.get("source_sha256")),
            # how the run evaluated (evaluate.py's defaults for this checkpoint)
            "eval_protocol": args.eval_protocol,
            "eval_num_negatives": args.eval_num_negatives,
            "candidate_seed": args.candidate_seed,
        }

    def _epoch_resume_step(self, epoch: int) -> int:
        """The step of `epoch` to start at: 0, or where a checkpoint inside the epoch (`--save_steps`) left it."""
        first_step = self.state.pop("step_in_epoch", 0)
        if first_step:
            if self.state.pop("epoch_world_size") != self.world:
                raise ValueError(
                    f"The checkpoint was written inside epoch {epoch} by a run on a different number of processes "
                    "(its batches are split across them): resume it with the same `accelerate launch "
                    "--num_processes`, or resume from a checkpoint written at the end of an epoch."
                )
            logger.info("Resuming epoch %d at step %d", epoch, first_step)
        return first_step

    def _save_checkpoint_in_epoch(self, step_in_epoch: int, loss_sum: torch.Tensor, targets: int) -> torch.Tensor:
        """A checkpoint after `step_in_epoch` steps of the running epoch (`--save_steps`), whose loss sum is
        `loss_sum` over `targets` targets; `--resume_from_checkpoint` continues the epoch from there exactly. Returns
        the loss sum to continue with (the total so far on the main process, 0 elsewhere)."""
        total = self.accelerator.reduce(loss_sum.clone(), reduction="sum")
        self.state.update(
            step_in_epoch=step_in_epoch,
            epoch_loss_sum=float(total),
            epoch_targets=targets,
            epoch_world_size=self.world,
        )
        self._save_checkpoint()
        for key in ("step_in_epoch", "epoch_loss_sum", "epoch_targets", "epoch_world_size"):
            del self.state[key]
        return total if self.main else torch.zeros_like(total)

    def _save_checkpoint(self) -> None:
        """The training state after this epoch, written atomically (`checkpoint.tmp`, then moved)."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        tmp = self.checkpoint_dir.with_name("checkpoint.tmp")
        if self.main and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if "step_in_epoch" in self.state:
            torch.save(self.samples_generator.get_state(), tmp / SAMPLES_STATE_FILE.format(rank=self.rank))
        # every process writes its own part (its random states) and `save_state` does not wait for the others:
        # move the folder only once all have written
        accelerator.wait_for_everyone()
        if self.main:
            (tmp / STATE_FILE).write_text(json.dumps(self.state, indent=2))
            generator = getattr(self.model, "negatives_generator", None)
            if "step_in_epoch" in self.state and generator is not None:
                torch.save(generator.get_state(), tmp / NEGATIVES_STATE_FILE)
            _atomic_replace(tmp, self.checkpoint_dir)

    def _log_epoch(self, record: dict) -> None:
        """Append the epoch to `log.jsonl`, TensorBoard and the log; then (tests) sleep `--sleep_after_epoch`."""
        if self.main:
            with self.log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            self.accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"])
            vals = " ".join(f"{k[4:]} {record[k]:.4f}" for k in record if k.startswith("val_") and "@" in k)
            logger.info(
                "epoch %d  loss %.4f  %s  (%.1f s train, %.1f s total)",
                record["epoch"],
                record["train_loss"],
                vals,
                record["train_seconds"],
                record["epoch_seconds"],
            )
        self.accelerator.wait_for_everyone()
        if self.args.sleep_after_epoch:
            time.sleep(self.args.sleep_after_epoch)

    # ------------------------------------------------------------------------------------------- test and reports
    def _test(self) -> dict:
        """Evaluate the best model on test in every `--test_eval_modes` mode; the run's results."""
        self.accelerator.wait_for_everyone()
        if not (self.best_dir / "model.safetensors").is_file():
            raise RuntimeError(f"No best model was saved in {self.best_dir}: was validation ever run?")
        _, model_class = model_classes(self.run.model.model_type)
        best = model_class.from_pretrained(self.best_dir).to(self.accelerator.device)
        start = time.perf_counter()
        history = self.state["history"]
        best_record = next(h for h in history if h["epoch"] == self.state["best_epoch"])
        rows = [
            {
                "split": "validation",
                "mode": self.args.eval_mode,
                "num_samples": self.sequences["validation"].num_samples,
            }
            | {m: best_record[f"val_{m}"] for m in self.names}
        ]
        for mode in final_test_modes(self.args):
            if mode == "stream" and not has_cache(best):
                logger.warning("%s has no cache: the test skips the stream mode.", type(best).__name__)
                continue
            rows.append({"split": "test", "mode": mode, **self._evaluate(best, "test", mode)})
        return self._results(best, rows, test_seconds=time.perf_counter() - start)

    def _results(self, best: nn.Module, rows: list[dict], test_seconds: float) -> dict:
        """The results of the run (`results.json`)."""
        history, meta = self.state["history"], self.meta
        return {
            "dataset": meta.source,
            "dataset_name": meta.name,
            "dataset_config": meta.config_name,
            "eval_protocol": self.args.eval_protocol,
            "loss_type": getattr(best.config, "loss_type", "full_ce"),
            "model": {name: getattr(best.config, name) for name in config_kwargs(self.run.model)},
            "rows": rows,
            "epochs": self.state["epoch"],
            "best_epoch": self.state["best_epoch"],
            "seconds_per_epoch": float(np.mean([h["train_seconds"] for h in history])),
            "eval_seconds_per_epoch": float(
                np.mean([h["val_eval_seconds"] for h in history if "val_eval_seconds" in h] or [0.0])
            ),
            # over all sessions of a resumed run: every epoch (training + validation) and the final test
            "total_seconds": sum(h["epoch_seconds"] for h in history) + test_seconds,
            "test_eval_seconds": {r["mode"]: r["eval_seconds"] for r in rows if r["split"] == "test"},
            "peak_memory_mb": max(h["peak_memory_mb"] for h in history),
            "num_processes": self.world,
            "mixed_precision": self.accelerator.mixed_precision,
        }

    def _write_reports(self, results: dict) -> None:
        """`results.md`, `results.json`, the final `log.jsonl` record, the training curves and the best model's
        `training_info.json` (main process)."""
        table = results_table(results)
        print(table)
        (self.output_dir / "results.md").write_text(table + "\n")
        (self.output_dir / "results.json").write_text(json.dumps(results, indent=2))
        with self.log_path.open("a") as f:
            f.write(json.dumps({"final": True, **{f"{r['split']}_{r['mode']}": r for r in results["rows"]}}) + "\n")
        plot_curves(self.state["history"], self.output_dir / "training_curves.png", self.names)
        info_path = self.best_dir / "training_info.json"
        info_path.write_text(json.dumps({**json.loads(info_path.read_text()), "results": results}, indent=2))

    def _push(self) -> None:
        """With `--push_to_hub`: the best model and its model card to the Hub (main process; `hub.push_run`)."""
        args = self.args
        if args.push_to_hub:
            push_run(
                self.output_dir, args.hub_model_id, args.hub_token, private=args.hub_private, dry_run=args.hub_dry_run
            )


def train(run: RunConfig) -> dict:
    """Train, select, test, report (and push). Returns the results dict (also written to `results.json`)."""
    return Trainer(run).fit()


__all__ = ["RunConfig", "Trainer", "parse_args", "train"]
