"""The settings of a training run and the command lines of the scripts.

* `MODELS` registers the recommenders the trainer can build (`--model_type`, default `ttt4rec`); `register_model`
  adds one (its config class and its model class).
* The model settings are generated from the registered config class (`model_arguments`): one command-line option per
  dataclass field of the config, with its type and default and the help text of the config docstring's `Args:`
  section, less the fields that are not user settings (`NOT_SETTINGS` and the `PreTrainedConfig` base fields).
* `DataArguments` and `TrainerArguments` are the data and the training settings; `parse_args` reads all three from
  the command line over an optional JSON/YAML `--config_file`.
* Every option of the scripts is snake_case, with the kebab-case spelling accepted as an alias (`add_option`).
"""

import argparse
import dataclasses
import json
import os
import re
import sys
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import PreTrainedConfig, PreTrainedModel

from ..baselines import (
    BERT4RecConfig,
    BERT4RecForNextItemPrediction,
    GRU4RecConfig,
    GRU4RecForNextItemPrediction,
    NARMConfig,
    NARMForNextItemPrediction,
    SASRecConfig,
    SASRecForNextItemPrediction,
)
from ..configuration_ttt4rec import TTT4RecConfig
from ..modeling_ttt4rec import TTT4RecForNextItemPrediction
from ..recommender_head import check_item_chunk_size
from .data import DEFAULT_CONFIG_NAME
from .evaluation import DEFAULT_ITEM_CHUNK_SIZE

# name (`--model_type`) -> (config class, model class)
MODELS: dict[str, tuple[type[PreTrainedConfig], type[PreTrainedModel]]] = {
    "ttt4rec": (TTT4RecConfig, TTT4RecForNextItemPrediction),
    # the baselines, as RecBole 1.2.1 builds them (modeling_ttt4rec/baselines)
    "sasrec": (SASRecConfig, SASRecForNextItemPrediction),
    "gru4rec": (GRU4RecConfig, GRU4RecForNextItemPrediction),
    "narm": (NARMConfig, NARMForNextItemPrediction),
    "bert4rec": (BERT4RecConfig, BERT4RecForNextItemPrediction),
}
DEFAULT_MODEL_TYPE = "ttt4rec"
# config fields that the data set or the runtime sets, not the user (`max_position_embeddings`: the data set's `L`)
NOT_SETTINGS = ("num_items", "pad_token_id", "use_cache", "max_position_embeddings")
SECTIONS = ("model", "data", "training")
#: `--item_chunk_size` of train.py, evaluate.py and recommend.py
ITEM_CHUNK_HELP = (
    "Items scored at a time when ranking or recommending, a multiple of 64: the scores held are rows x this many "
    f"whatever the catalog, with the same results (default: {DEFAULT_ITEM_CHUNK_SIZE:,} when ranking for an "
    "evaluation, blocks that stay in the CPU cache; the whole catalog at once when recommending)"
)


def check_item_chunk_option(item_chunk_size: int | None) -> None:
    """Raise a `ValueError` naming `--item_chunk_size` unless it is unset or a positive multiple of 64."""
    try:
        check_item_chunk_size(item_chunk_size)
    except ValueError as err:
        raise ValueError(f"--item_chunk_size: {err}") from err


def register_model(name: str, config_class: type[PreTrainedConfig], model_class: type[PreTrainedModel]) -> None:
    """Make `--model_type name` build `model_class(config_class(num_items=..., **settings))`.

    The model must offer the recommender interface, which is all the trainer and the evaluator use:

    - `config.num_items` (padding included) and `config.pad_token_id`;
    - `model(input_ids, attention_mask, labels, num_items_in_batch=..., return_logits=False, check_inputs=False)`
      returning `.loss` (its own loss, summed over the targets of `labels` and divided by `num_items_in_batch`) and
      `.last_hidden_state` `[batch, seq, hidden]`;
    - `item_features()` `[num_items, hidden]`, `score_items(hidden, item_features=None)` `[..., num_items]` (the
      padding id scoring lowest) and `score_candidates(hidden, candidate_ids, check_inputs=False)`;
    - `save_pretrained` / `from_pretrained`;
    - optionally `set_item_counts(counts)` (the popularity sampler's training-split counts) and `seed_negatives(seed)`
      (the sampled losses' negatives, seeded alike on every process each epoch);
    - optionally, `training_batch(batch, generator) -> batch`: the trainer passes each collated training batch
      (`input_ids`, `attention_mask`, `target_mask`, `targets`) through it before the loss, and the targets it
      returns are the ones the loss is normalised by (a model trained on other samples than the next items, e.g.
      BERT4Rec's masked items; `generator` is the trainer's `torch.Generator`, seeded per epoch and process). A
      model without it trains on the batch as it is;
    - optionally, `newest_hidden_state(input_ids, attention_mask, check_inputs=False)` `[batch, hidden]`: the hidden
      state after each row's newest item, computed alone, for a model that cannot share one pass among a user's
      samples (its hidden state after an item is computed from the history ending there alone, e.g. BERT4Rec's
      bidirectional attention). Defining it is what says so: the `window` evaluation then gives the model one window
      per sample (batched by length) and reads only this (`evaluation.reads_each_sample`). A causal model leaves it
      out, and one pass over a user's prefix serves all of its samples;
    - for the `stream` evaluation mode only, a cache: `init_cache(batch_size)` (a model without it has no cache) and
      `model(..., cache_params=cache, use_cache=True)` returning `.cache_params` with `select(rows)` (and
      `config.mini_batch_size`, if reading in chunks of its multiples is fastest); a model whose cache holds at most
      `config.max_position_embeddings` items sets the class attribute `bounded_cache = True` and is evaluated in
      the `window` mode only.

    `recommender_head.RecommenderHeadMixin` gives a model all of this but its encoder (and `recommend`).
    """
    if not (dataclasses.is_dataclass(config_class) and issubclass(config_class, PreTrainedConfig)):
        raise TypeError(f"{config_class.__name__} must be a dataclass PreTrainedConfig (its fields are the settings).")
    MODELS[name] = (config_class, model_class)


def model_classes(model_type: str) -> tuple[type[PreTrainedConfig], type[PreTrainedModel]]:
    """The registered (config class, model class) of `model_type`."""
    if model_type not in MODELS:
        raise ValueError(f"Unknown --model_type {model_type!r}; choose one of {sorted(MODELS)} (or register_model).")
    return MODELS[model_type]


def config_docs(config_class: type) -> dict[str, str]:
    """The help text of each argument of a config docstring's `Args:` section (Hugging Face docstring style:
    `name (`type`, *optional*, defaults to X):` then the indented description)."""
    doc = config_class.__doc__ or ""
    section = re.split(r"\n\s*Args:\s*\n", doc, maxsplit=1)
    if len(section) < 2:
        return {}
    docs: dict[str, list[str]] = {}
    name, indent = None, None
    for line in section[1].splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        entry = re.match(r"\s*(\w+) \(.*\):\s*$", line)
        if entry and (indent is None or depth == indent):
            name, indent = entry.group(1), depth
            docs[name] = []
        elif indent is not None and depth <= indent:  # the end of the section (e.g. `Example:`)
            break
        elif name is not None:
            docs[name].append(line.strip())
    # argparse formats help with %: a literal % is %%
    return {key: " ".join(lines).replace("%", "%%") for key, lines in docs.items()}


def model_settings(config_class: type[PreTrainedConfig]) -> list[dataclasses.Field]:
    """The config's fields that are user settings (not `NOT_SETTINGS`, not the `PreTrainedConfig` base fields)."""
    base = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    return [f for f in dataclasses.fields(config_class) if f.name not in base and f.name not in NOT_SETTINGS]


def _resolved_type(f: dataclasses.Field, config_class: type):
    """The type of a config field, evaluated in its module if written as a string (`from __future__ import
    annotations`)."""
    if not isinstance(f.type, str):
        return f.type
    return eval(f.type, vars(sys.modules[config_class.__module__]))  # noqa: S307 - a type annotation of the class


def model_arguments(model_type: str = DEFAULT_MODEL_TYPE) -> type:
    """The `ModelArguments` dataclass of a registered model: `model_type`, `model_name_or_path` and one field per
    setting of its config (type, default, help from the config)."""
    config_class, _ = model_classes(model_type)
    helps = config_docs(config_class)
    fields = [
        ("model_type", str, field(default=model_type, metadata={"help": f"The recommender: one of {sorted(MODELS)}"})),
        (
            "model_name_or_path",
            str | None,
            field(default=None, metadata={"help": "Start from this checkpoint (folder or Hub id), not a new model"}),
        ),
    ]
    for f in model_settings(config_class):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        fields.append(
            (f.name, _resolved_type(f, config_class), field(default=default, metadata={"help": helps.get(f.name, "")}))
        )
    return dataclasses.make_dataclass(
        "ModelArguments", fields, namespace={"__doc__": f"Settings of the {model_type} model (from its config)."}
    )


def config_kwargs(model_args) -> dict:
    """The values of `model_args` that are fields of the model's config (what the config is built from)."""
    config_class, _ = model_classes(model_args.model_type)
    return {f.name: getattr(model_args, f.name) for f in model_settings(config_class)}


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
    ignore_item_map_mismatch: bool = field(
        default=False,
        metadata={"help": "Fine-tune --model_name_or_path even if this data set numbers its items otherwise"},
    )


@dataclass
class TrainerArguments:
    """Training, evaluation, checkpointing and Hub settings (the defaults are the paper's protocol)."""

    output_dir: str = field(default="outputs/ttt4rec", metadata={"help": "Where everything of the run is written"})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    batch_targets: int = field(
        default=2048, metadata={"help": "Targets per batch; an optimizer step takes gradient_accumulation_steps"}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step"})
    max_epochs: int = field(default=300, metadata={"help": "Maximum number of epochs"})
    patience: int = field(default=5, metadata={"help": "Stop after this many epochs without a better val metric"})
    early_stopping_metric: str = field(default="NDCG@10", metadata={"help": "Validation metric to select on"})
    seed: int = field(default=2020, metadata={"help": "Random seed (model init, shuffling, dropout)"})
    mixed_precision: str | None = field(
        default=None, metadata={"help": "no, bf16 or fp16 (default: what `accelerate launch` was given)"}
    )
    cpu: bool = field(default=False, metadata={"help": "Train on the CPU even if a GPU is there"})
    train_units: str = field(
        default="prefix",
        metadata={
            "help": "prefix: one pass per user prefix of up to L items serves all its samples (fast; the samples of a "
            "pass share its dropout masks); sample: one pass per sample, RecBole's way (dropout drawn per sample)"
        },
    )
    batching: str = field(
        default="length",
        metadata={
            "help": "length: batches of units of about the same length (little padding); random: batches of random "
            "units, RecBole's way (more padding)"
        },
    )
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
    item_chunk_size: int | None = field(default=None, metadata={"help": ITEM_CHUNK_HELP})
    eval_every: int = field(default=1, metadata={"help": "Evaluate on validation every N epochs"})
    save_steps: int = field(
        default=0,
        metadata={"help": "Also checkpoint every N optimizer steps inside an epoch (0: only after each epoch)"},
    )
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
        # a test hook (tests interrupt runs there), not a user setting: hidden from --help
        default=0.0,
        metadata={"help": argparse.SUPPRESS},
    )
    torch_threads: int | None = field(default=None, metadata={"help": "torch.set_num_threads on CPU"})


@dataclass
class RunConfig:
    """All settings of a run: `model` is a `model_arguments(...)` instance."""

    model: typing.Any
    data: DataArguments
    training: TrainerArguments

    def to_dict(self) -> dict:
        """All settings, as written to `run_config.json` (a Hub token is never written)."""
        training = asdict(self.training)
        if training["hub_token"] is not None:
            training["hub_token"] = "<HUB_TOKEN>"
        return {"model": asdict(self.model), "data": asdict(self.data), "training": training}

    def flat(self) -> dict:
        """All settings in one mapping (every setting has one name across the sections)."""
        return {name: value for section in self.to_dict().values() for name, value in section.items()}


# Settings that change what a run computes: a resumed run must have the same ones (the others, such as
# `max_epochs`, `patience`, output, speed and Hub options, may change between sessions). Every model setting does.
RESUME_FIXED = {
    "data": ["dataset", "dataset_config", "dataset_revision", "num_items", "max_length"],
    "training": [
        "learning_rate",
        "weight_decay",
        "batch_targets",
        "gradient_accumulation_steps",
        "early_stopping_metric",
        "seed",
        "train_units",
        "batching",
        "eval_mode",
        "eval_protocol",
        "eval_num_negatives",
        "candidate_seed",
        "eval_every",
    ],
}


def resume_settings(run: RunConfig) -> dict:
    """The settings a resumed run must share with the run it continues (stored in the training state)."""
    values = run.to_dict()
    names = {"model": [f.name for f in dataclasses.fields(run.model)], **RESUME_FIXED}
    return {section: {name: values[section][name] for name in names[section]} for section in SECTIONS}


def check_resume_settings(saved: dict | None, current: dict) -> None:
    """Raise a `ValueError` naming every setting that differs from the run being resumed.

    Settings are matched by name whatever their section (a setting may have moved between sections); one the saved
    run did not record (it predates the setting) is not checked."""
    if saved is None:  # a state written before the settings were stored
        return
    before = {name: value for section in saved.values() for name, value in section.items()}
    changed = [
        f"--{name}: {before[name]!r} -> {value!r}"
        for section in current.values()
        for name, value in section.items()
        if name in before and before[name] != value
    ]
    if changed:
        raise ValueError(
            "The run to resume was trained with other settings (" + "; ".join(changed) + "). Resume with the same "
            "settings (only --max_epochs, --patience, output, speed and Hub options may change), or start a new run "
            "in another --output_dir."
        )


# ----------------------------------------------------------------------------------------------------------------
# Command lines
# ----------------------------------------------------------------------------------------------------------------


def add_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, **kwargs) -> None:
    """`parser.add_argument("--name", **kwargs)`, also accepting the kebab-case spelling `--na-me`."""
    flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*flags, **kwargs)


def find_option(argv: list[str], name: str) -> tuple[int, int, str | None] | None:
    """Where `--name VALUE` / `--name=VALUE` (or its kebab-case spelling) is in `argv`: (index, number of items,
    value), or None."""
    spellings = {f"--{name}", f"--{name.replace('_', '-')}"}
    for i, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if flag in spellings:
            if equals:
                return i, 1, value
            return i, 2, argv[i + 1] if i + 1 < len(argv) else None
    return None


def parse_args(argv: list[str] | None = None) -> RunConfig:
    """Parse `argv`: `--config_file FILE` (JSON or YAML, flat or with `model`/`data`/`training` sections) gives
    defaults, the other flags override them. `--model_type` (command line or file) chooses the model whose settings
    are offered."""
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    file_values: dict = {}
    found = find_option(argv, "config_file")
    if found:
        i, width, path = found
        if not path:
            raise SystemExit("--config_file needs a path")
        file_values = read_config_file(path)
        del argv[i : i + width]
    found = find_option(argv, "model_type")
    model_type = (found[2] if found else None) or file_values.get("model_type", DEFAULT_MODEL_TYPE)
    try:
        model_args_class = model_arguments(model_type)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    classes = (model_args_class, DataArguments, TrainerArguments)
    parser = HfArgumentParser(classes)
    fields = {f.name: f for cls in classes for f in dataclasses.fields(cls)}
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
        if key in SECTIONS and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


__all__ = [
    "MODELS",
    "DataArguments",
    "RunConfig",
    "TrainerArguments",
    "add_option",
    "check_resume_settings",
    "config_docs",
    "find_option",
    "model_arguments",
    "model_classes",
    "parse_args",
    "read_config_file",
    "register_model",
    "resume_settings",
]
