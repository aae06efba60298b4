"""Evaluation: full ranking (docs/protocol.md section 7) or sampled 1 + 99 ranking (docs/protocol.md section 9), in two
modes, on one process or many.

* `window` (the paper's): every sample is scored from its history truncated to the last `L` items. Histories that
  start at the user's first item are whole prefixes, so one causal pass over each user's first `L` items scores all
  of them; only targets beyond `L` get a window of their own (`data.prefix_units`). A model that cannot share one
  pass among a user's samples (its hidden state after an item is computed from the history ending there alone, so
  it defines `newest_hidden_state`: BERT4Rec) gets one window per sample instead (`data.sample_units`), batched by
  length, and is asked for the hidden state after each window's newest item only (`reads_each_sample`).
* `stream`: each user's whole history is read once, in chunks, carrying the model's cache from chunk to chunk, and
  every target of the split is scored on the way from the hidden state after the item before it. When no history
  is longer than `L` this is the same computation as `window`, much cheaper; when histories are longer, `stream`
  lets the model see all of them (what a deployed TTT4Rec does).

In the `full` protocol every item is scored as the model's `score_items` scores it, `h . item_features()[i]` (the
padding id never counts), with no masking of seen items, in blocks of rows x items that stay in the CPU cache
(`score_ranks`); in the `sampled` protocol only each sample's target and its 99 fixed negatives, by
`score_candidates` (`sampling.evaluation_candidates`). The rank of a target is the number of candidates
scoring strictly higher (`metrics.ranks_from_scores`). The model is run through its public interface only (`forward`
with `return_logits=False, check_inputs=False`, or `newest_hidden_state`: the data were validated when loaded).
With several processes each process scores a share of the batches and the per-sample ranks are gathered and put
back in sample order, so the metrics are exactly those of one process (every sample counted once; checked).
"""

import contextlib
import functools
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from dataset_builders.format import ITEM_MAP_FILE

from ..recommender_head import check_item_chunk_size
from .data import (
    DEFAULT_CONFIG_NAME,
    SplitSequences,
    Units,
    collate,
    make_batches,
    prefix_units,
    sample_history_lengths,
    sample_targets,
    sample_units,
    stream_units,
)
from .metrics import (
    HISTORY_LENGTH_EDGES,
    PROTOCOL_KS,
    check_history_length_edges,
    metric_names,
    metrics_by_history_length,
    ranking_metrics,
    ranks_from_scores,
)
from .sampling import evaluation_candidates

logger = logging.getLogger(__name__)

EVAL_MODES = ("window", "stream")
EVAL_PROTOCOLS = tuple(PROTOCOL_KS)


def has_cache(model) -> bool:
    """Whether a recommender (a model or its class) has a cache for whole histories, which the `stream` mode needs:
    `init_cache`, and not `bounded_cache` (a cache of at most `max_position_embeddings` items, SASRec's)."""
    return hasattr(model, "init_cache") and not getattr(model, "bounded_cache", False)


def reads_each_sample(model) -> bool:
    """Whether a recommender (a model or its class) computes the hidden state after each item from the history
    ending there alone, so that one pass cannot serve a user's samples: it defines `newest_hidden_state`, and the
    window mode gives it one window per sample (see the module docstring)."""
    return hasattr(model, "newest_hidden_state")


def scoring_matrix(item_features: torch.Tensor) -> torch.Tensor:
    """`[hidden, num_items]`: the float32 `item_features` `[num_items, hidden]` transposed and contiguous, so that
    every block of scores reads the items in order (pass `items_t.T` to `score_items`)."""
    return item_features.float().T.contiguous()


#: Items per block of scores when ranking over the whole catalog (a multiple of 64, `check_item_chunk_size`): a
#: block of 256 rows x 2,048 items of float32 is 2 MiB, which stays in a CPU core's cache while it is compared and
#: counted (scoring whole rows of a 153,886-item catalog streamed each block through memory, 3x slower).
DEFAULT_ITEM_CHUNK_SIZE = 2048
#: Hidden states gathered across encoder batches before they are ranked, so that many rows share the block of their
#: target (`score_ranks` groups them by it); 32,768 x 64 float32 is 8 MiB.
RANK_ROWS = 32768


def score_ranks(
    model,
    hidden: torch.Tensor,
    items_t: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 256,
    item_chunk_size: int | None = None,
) -> torch.Tensor:
    """Ranks of `targets` (item ids) among all items: the number of items scoring strictly higher than the target
    (ties as `metrics.ranks_from_scores`), the padding id never counted, with the float32 scores
    `hidden @ items_t` of `items_t = scoring_matrix(model.item_features())` (the recommender interface's rule
    `h . item_features()[i]`, which `score_items` follows).

    Scores are computed in blocks of `chunk_size` rows x `item_chunk_size` items (default
    `DEFAULT_ITEM_CHUNK_SIZE`) and counted block by block, so memory is one block whatever the catalog. Rows are
    grouped by the item chunk of their target: for each group the chunk holding the targets is computed first and
    the targets' scores are read from it, then every other chunk is computed once for the same rows and its items
    scoring higher are counted. Chunks start at multiples of 64 items (`check_item_chunk_size`), so every score is
    the same float as over the whole catalog at once and exact ties stay ties.
    """
    check_item_chunk_size(item_chunk_size)
    size = item_chunk_size or DEFAULT_ITEM_CHUNK_SIZE
    hidden = hidden.float()
    ranks = torch.empty(hidden.shape[0], dtype=torch.long, device=hidden.device)
    chunk_of = torch.div(targets, size, rounding_mode="floor")
    order = torch.argsort(chunk_of, stable=True)
    chunks, counts = torch.unique_consecutive(chunk_of[order], return_counts=True)
    end = 0
    for chunk, count in zip(chunks.tolist(), counts.tolist(), strict=True):
        begin, end = end, end + count
        for s in range(begin, end, chunk_size):
            rows = order[s : min(s + chunk_size, end)]
            ranks[rows] = _group_ranks(hidden[rows], items_t, targets[rows], model.config.pad_token_id, chunk, size)
    return ranks


def _group_ranks(
    hidden: torch.Tensor, items_t: torch.Tensor, targets: torch.Tensor, pad: int | None, chunk: int, size: int
) -> torch.Tensor:
    """`score_ranks` of rows whose targets are all in item chunk `chunk` (items `chunk * size` on)."""
    num_items = items_t.shape[1]

    def scores(start: int) -> torch.Tensor:
        block = hidden @ items_t[:, start : start + size]
        if pad is not None and start <= pad < start + block.shape[1]:
            block[:, pad - start] = torch.finfo(block.dtype).min
        return block

    own = chunk * size
    block = scores(own)
    target_scores = block.gather(1, (targets - own)[:, None])
    # counting in int32 is ~2x faster on CPU than the default int64 sum of bools
    higher = torch.gt(block, target_scores).sum(dim=1, dtype=torch.int32)
    for start in range(0, num_items, size):
        if start != own:
            higher += torch.gt(scores(start), target_scores).sum(dim=1, dtype=torch.int32)
    # as `ranks_from_scores`: a target score that is not finite ranks last
    return higher.long().masked_fill(~torch.isfinite(target_scores[:, 0]), num_items)


def _window_batch(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Hidden states at every target position of each unit (a prefix or a window), in the order of
    `batch["targets"]`."""
    out = model(
        batch["input_ids"],
        attention_mask=batch["attention_mask"],
        use_cache=False,
        return_logits=False,
        check_inputs=False,
    )
    return out.last_hidden_state[batch["target_mask"]]


def _sample_batch(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Hidden states after each unit's newest item, the target of its one sample (`data.sample_units`), for a model
    that `reads_each_sample`."""
    return model.newest_hidden_state(batch["input_ids"], batch["attention_mask"], check_inputs=False)


def _stream_batch(model, batch: dict[str, torch.Tensor], chunk_size: int) -> torch.Tensor:
    """Hidden states at every target position of each user, reading the histories `chunk_size` items at a time
    with the cache. Rows are sorted longest first, so the rows still reading are always a prefix of the batch."""
    ids, mask, target_mask = batch["input_ids"], batch["attention_mask"], batch["target_mask"]
    width = ids.shape[1]
    if width <= chunk_size:  # every history fits in one chunk: one causal pass, no state to carry
        return _window_batch(model, batch)
    lengths = mask.sum(dim=1).tolist()
    cache = None
    full = None
    for s in range(0, width, chunk_size):
        active = sum(1 for n in lengths if n > s)
        if cache is not None and active < cache.batch_size:
            cache = cache.select(list(range(active)))
        out = model(
            ids[:active, s : s + chunk_size],
            attention_mask=mask[:active, s : s + chunk_size],
            cache_params=cache,
            use_cache=True,
            return_logits=False,
            check_inputs=False,
        )
        cache = out.cache_params
        hidden = out.last_hidden_state
        if full is None:
            full = hidden.new_zeros(ids.shape[0], width, hidden.shape[-1])
        full[:active, s : s + chunk_size] = hidden
    # row-major order of `target_mask`: the order of batch["targets"]
    return full[target_mask]


@torch.inference_mode()
def compute_ranks(
    model,
    split: SplitSequences,
    max_length: int,
    mode: str = "window",
    accelerator=None,
    protocol: str = "full",
    num_negatives: int = 99,
    candidate_seed: int = 0,
    batch_targets: int = 4096,
    batch_tokens: int = 65536,
    stream_chunk_size: int = 64,
    score_chunk_size: int = 256,
    item_chunk_size: int | None = None,
    progress: bool = False,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """The rank of every sample of `split` (in sample order), computed by `model` (a
    `TTT4RecForNextItemPrediction`, unwrapped), among all items (`protocol="full"`) or among the target and
    `num_negatives` negatives drawn with `candidate_seed` (`protocol="sampled"`). With an `accelerate.Accelerator`
    of several processes, each process scores every `num_processes`-th batch and the ranks are gathered; every
    process returns all ranks. Hidden states are gathered over encoder batches (`RANK_ROWS` at a time) and ranked
    by `score_ranks` in blocks of `score_chunk_size` rows x `item_chunk_size` items (default
    `DEFAULT_ITEM_CHUNK_SIZE`; the same ranks whatever the sizes). A `timings` dict receives the seconds spent encoding
    (`encode_seconds`) and scoring and ranking (`score_seconds`) on this process."""
    if mode not in EVAL_MODES:
        raise ValueError(f"Unknown eval mode {mode!r}; choose one of {EVAL_MODES}.")
    if protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"Unknown evaluation protocol {protocol!r}; choose one of {EVAL_PROTOCOLS}.")
    if mode == "stream" and not has_cache(model):
        raise ValueError(
            f"{type(model).__name__} has no cache for whole histories, so it cannot read them in the stream mode: "
            "evaluate it in the window mode (--eval_mode window, --test_eval_modes window)."
        )
    candidates = _sampled_candidates(model, split, num_negatives, candidate_seed) if protocol == "sampled" else None
    # a multiple of the inner mini-batch, so rows that continue always start a mini-batch (fastest path)
    b = getattr(model.config, "mini_batch_size", 1)
    stream_chunk_size = max(b, (stream_chunk_size + b - 1) // b * b)
    if mode == "stream":
        units: Units = stream_units(split)
        read = functools.partial(_stream_batch, chunk_size=stream_chunk_size)
    elif reads_each_sample(model):
        units, read = sample_units(split, max_length), _sample_batch
    else:
        units, read = prefix_units(split, max_length), _window_batch
    batches = make_batches(units, max_targets=batch_targets, max_tokens=batch_tokens)
    rank_id, world = (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)
    device = model.device if accelerator is None else accelerator.device
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    # Only the encoder runs in mixed precision: scores are compared in float32, since in bfloat16 many items tie
    # with the target and the ranks (and metrics) come out wrong.
    full_precision = torch.autocast(device.type, enabled=False)
    was_training = model.training
    model.eval()
    mine = batches[rank_id::world]
    if progress:
        from tqdm.auto import tqdm

        mine = tqdm(mine, desc=f"eval ({mode})", leave=False)
    sample_ids, ranks = [], []
    encoded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (hidden, targets, sample ids) to rank
    encode_seconds = score_seconds = 0.0
    with full_precision:
        items_t = scoring_matrix(model.item_features()) if candidates is None else None
    for number, index in enumerate(mine, start=1):
        batch = collate(units, index, device)
        start = time.perf_counter()
        with autocast():
            hidden = read(model, batch)
        encoded.append((hidden.float(), batch["targets"], batch["sample_ids"]))
        encode_seconds += time.perf_counter() - start
        if number < len(mine) and sum(len(targets) for _, targets, _ in encoded) < RANK_ROWS:
            continue
        start = time.perf_counter()
        hidden, targets, ids = (torch.cat(parts) for parts in zip(*encoded, strict=True))
        encoded.clear()
        with full_precision:
            ranks.append(
                _rank_batch(model, hidden, targets, ids, items_t, candidates, score_chunk_size, item_chunk_size)
            )
        sample_ids.append(ids)
        score_seconds += time.perf_counter() - start
    model.train(was_training)
    if timings is not None:
        timings.update(encode_seconds=encode_seconds, score_seconds=score_seconds)
    return _ranks_in_sample_order(sample_ids, ranks, split.num_samples, device, accelerator)


def _rank_batch(
    model,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    sample_ids: torch.Tensor,
    items_t: torch.Tensor | None,
    candidates: torch.Tensor | None,
    score_chunk_size: int,
    item_chunk_size: int | None = None,
) -> torch.Tensor:
    """Ranks of `targets` (of the samples `sample_ids`) from the float32 hidden states before them: among all items
    (`items_t`, the full protocol) or among each sample's `candidates` (the sampled protocol)."""
    if candidates is None:
        return score_ranks(model, hidden, items_t, targets, score_chunk_size, item_chunk_size)
    # column 0 of every sample's candidates is its target
    sample_candidates = candidates[sample_ids.cpu()].to(hidden.device)
    scores = model.score_candidates(hidden, sample_candidates, check_inputs=False)
    return ranks_from_scores(scores, torch.zeros_like(targets), ties="pessimistic")


def _sampled_candidates(model, split: SplitSequences, num_negatives: int, seed: int) -> torch.Tensor:
    """`[num_samples, 1 + num_negatives]` the sampled protocol's candidates of every sample (target first)."""
    candidates = evaluation_candidates(
        sample_targets(split),
        model.config.num_items,
        num_negatives=num_negatives,
        seed=seed,
        pad_token_id=model.config.pad_token_id,
    )
    return torch.from_numpy(candidates)


def _ranks_in_sample_order(
    sample_ids: list[torch.Tensor], ranks: list[torch.Tensor], num_samples: int, device, accelerator
) -> np.ndarray:
    """The ranks of this process's batches, gathered from every process, in sample order; checks that every
    sample was ranked exactly once."""
    local_ids = torch.cat(sample_ids) if sample_ids else torch.zeros(0, dtype=torch.long, device=device)
    local_ranks = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long, device=device)
    if accelerator is not None and accelerator.num_processes > 1:
        pairs = torch.stack([local_ids, local_ranks], dim=1)
        pairs = accelerator.pad_across_processes(pairs, dim=0, pad_index=-1)
        pairs = accelerator.gather(pairs)
        pairs = pairs[pairs[:, 0] >= 0]
        local_ids, local_ranks = pairs[:, 0], pairs[:, 1]
    ids = local_ids.cpu().numpy()
    out = np.full(num_samples, -1, dtype=np.int64)
    out[ids] = local_ranks.cpu().numpy()
    if len(ids) != num_samples or (out < 0).any():
        raise RuntimeError(
            f"Evaluation produced {len(ids)} ranks for {num_samples} samples: a sample was lost or counted twice."
        )
    return out


def evaluation_options(args) -> dict:
    """The `compute_ranks` options a run's settings choose (`--eval_protocol`, `--eval_num_negatives`,
    `--candidate_seed`, `--eval_batch_targets`, `--eval_batch_tokens`, `--item_chunk_size`), shared by the trainer
    and `evaluate.py`."""
    return {
        "batch_targets": args.eval_batch_targets,
        "batch_tokens": args.eval_batch_tokens,
        "protocol": args.eval_protocol,
        "num_negatives": args.eval_num_negatives,
        "candidate_seed": args.candidate_seed,
        "item_chunk_size": args.item_chunk_size,
    }


def evaluate_split(
    model,
    split: SplitSequences,
    max_length: int,
    mode: str = "window",
    accelerator=None,
    protocol: str = "full",
    digits: int | None = None,
    **kwargs,
) -> dict[str, float]:
    """HR@10, HR@50, NDCG@10, NDCG@50 of `model` on `split` (full protocol, docs/protocol.md section 7) or HR@5, HR@10,
    NDCG@5, NDCG@10 (sampled protocol, docs/protocol.md section 9), plus `num_samples` and `eval_seconds`. Keyword
    arguments go to `compute_ranks`."""
    start = time.perf_counter()
    ranks = compute_ranks(model, split, max_length, mode=mode, accelerator=accelerator, protocol=protocol, **kwargs)
    metrics = ranking_metrics(ranks, ks=PROTOCOL_KS[protocol], digits=digits)
    metrics["eval_seconds"] = time.perf_counter() - start
    return metrics


#: The files of a model repository that using a checkpoint needs (its config, weights, training record, item map).
_CHECKPOINT_FILES = ("*.json", "*.safetensors", ITEM_MAP_FILE)


def checkpoint_folder(path: str | os.PathLike) -> Path:
    """The local folder of a checkpoint given as a folder or a Hub model id (through the Hugging Face cache, also
    offline); a mistyped folder is a one-line error saying so."""
    from dataset_builders.resolve import resolve_folder

    return resolve_folder(path, "model", what="checkpoint", marker="config.json", allow_patterns=_CHECKPOINT_FILES)


def load_checkpoint(path: str, device=None, model_type: str | None = None):
    """Load a registered recommender (`arguments.MODELS`, chosen by the checkpoint's `model_type`) from a
    `save_pretrained` folder or a Hub model id (through the Hugging Face cache, also offline), refusing incomplete
    checkpoints (missing or truncated weights) with a clear error instead of silently re-initialising them. With
    `model_type` (a `--model_type` name), a checkpoint of another model is an error."""
    import json

    from .arguments import MODELS

    local = checkpoint_folder(path)
    if not (local / "config.json").is_file():
        raise ValueError(f"{path} is not a checkpoint: config.json is missing.")
    if not any(local.glob("*.safetensors")):
        raise ValueError(f"{path} has no weights (model.safetensors is missing): the checkpoint is incomplete.")
    saved_type = json.loads((local / "config.json").read_text()).get("model_type")
    names = {config_class.model_type: name for name, (config_class, _) in MODELS.items()}
    if saved_type not in names:
        raise ValueError(
            f"The checkpoint {path} holds a {saved_type!r} model, which is not a registered recommender (model "
            f"types {sorted(names)}, `--model_type` {sorted(MODELS)})."
        )
    if model_type is not None and names[saved_type] != model_type:
        raise ValueError(
            f"The checkpoint {path} is a {names[saved_type]} model but --model_type is {model_type}: pass "
            f"--model_type {names[saved_type]}, or a {model_type} checkpoint."
        )
    model_class = MODELS[names[saved_type]][1]
    try:
        model, info = model_class.from_pretrained(local, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"Could not load the checkpoint {path}: {err}") from err
    except Exception as err:  # e.g. safetensors' header errors for a truncated file
        raise ValueError(f"Could not load the checkpoint {path} (damaged or truncated weights?): {err}") from err
    # a tied item head is the item embedding, not stored separately
    tied = getattr(model.config, "tie_word_embeddings", False)
    missing = [k for k in info.get("missing_keys", []) if not (tied and k == "item_head.weight")]
    if missing or info.get("mismatched_keys"):
        raise ValueError(
            f"The checkpoint {path} is incomplete: missing weights {sorted(missing)[:10]}"
            + (f", mismatched {info['mismatched_keys'][:10]}" if info.get("mismatched_keys") else "")
            + "."
        )
    if device is not None:
        model = model.to(device)
    return model.eval()


#: The best model's record of its training (`trainer.save_best_model`): the data set, its item map, the settings.
TRAINING_INFO_FILE = "training_info.json"
#: The option that evaluates or fine-tunes a checkpoint on a data set of another item map anyway.
IGNORE_ITEM_MAP_MISMATCH = "--ignore_item_map_mismatch"
#: evaluate.py's settings that default to the checkpoint's training (else to these values).
EVALUATION_DEFAULTS = {
    "dataset_config": DEFAULT_CONFIG_NAME,
    "max_length": None,  # the data set's metadata
    "eval_protocol": "full",
    "eval_num_negatives": 99,
    "candidate_seed": 0,
}


def training_info(checkpoint: str | os.PathLike) -> dict:
    """The `training_info.json` of a checkpoint folder (empty for a checkpoint saved otherwise)."""
    import json

    path = Path(checkpoint) / TRAINING_INFO_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def item_map_identity(item_map_file: str | os.PathLike | None, source_sha256: str | None) -> dict:
    """What a checkpoint records of the item map it was trained with: the map's fingerprint
    (`ItemIdMap.fingerprint()`) and the SHA-256 of the data set's raw file."""
    from dataset_builders.item_ids import ItemIdMap

    fingerprint = ItemIdMap.from_file(item_map_file).fingerprint() if item_map_file is not None else None
    return {"item_map_fingerprint": fingerprint, "source_sha256": source_sha256}


def check_item_map(checkpoint: str | os.PathLike, meta, ignore_mismatch: bool = False) -> None:
    """Refuse to use the checkpoint on the data set of `meta` (a `data.DatasetMetadata`) when their item maps differ:
    the same dense id would mean another item, and every metric would be meaningless. The checkpoint's map is the
    fingerprint its `training_info.json` records, else its own `item_map.parquet`; a checkpoint with neither (or a
    data set without a map) is only warned about. With `ignore_mismatch`, a mismatch is a warning too."""
    from dataset_builders.item_ids import ItemIdMap

    checkpoint = Path(checkpoint)
    info = training_info(checkpoint)
    trained = info.get("item_map_fingerprint")
    if trained is None and (checkpoint / ITEM_MAP_FILE).is_file():
        trained = ItemIdMap.from_file(checkpoint).fingerprint()
    if trained is None or meta.item_id_map is None:
        logger.warning(
            "Cannot check that the data set %s has the item ids of the checkpoint %s (%s records no item map).",
            meta.source,
            checkpoint,
            "the checkpoint" if trained is None else "the data set",
        )
        return
    given = item_map_identity(meta.item_id_map, meta.extra.get("source_sha256"))
    if given["item_map_fingerprint"] == trained:
        return
    message = (
        f"The data set {meta.source} (raw file sha256 {given['source_sha256'] or 'unknown'}) numbers its items "
        f"differently from the one the checkpoint {checkpoint} was trained on ({info.get('dataset', 'unknown')}, raw "
        f"file sha256 {info.get('source_sha256') or 'unknown'}): the same dense id means another item, so the "
        f"results would be meaningless. Use the data set the checkpoint was trained on (or one built from it), or "
        f"pass {IGNORE_ITEM_MAP_MISMATCH} if you know the ids agree."
    )
    if not ignore_mismatch:
        raise ValueError(message)
    logger.warning("%s (ignored: %s)", message, IGNORE_ITEM_MAP_MISMATCH)


def check_evaluation_arguments(args) -> None:
    """Raise a `ValueError` naming the first evaluation setting of `args` (evaluate.py's or the trainer's) that is
    meaningless; warn that `--eval_num_negatives` does nothing in the full protocol."""
    from .arguments import check_item_chunk_option

    if args.eval_protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"Unknown --eval_protocol {args.eval_protocol!r}; choose one of {EVAL_PROTOCOLS}.")
    for name in ("eval_num_negatives", "eval_batch_targets", "eval_batch_tokens", "stream_chunk_size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}.")
    check_item_chunk_option(getattr(args, "item_chunk_size", None))
    if args.candidate_seed < 0:
        raise ValueError(f"--candidate_seed must be >= 0 (a seed of numpy's generator), got {args.candidate_seed}.")
    if args.eval_protocol == "full" and args.eval_num_negatives != EVALUATION_DEFAULTS["eval_num_negatives"]:
        logger.warning(
            "--eval_num_negatives %s is ignored: the full protocol ranks every item (use --eval_protocol sampled).",
            args.eval_num_negatives,
        )


def evaluation_settings(args, info: dict) -> dict[str, tuple[object, str]]:
    """evaluate.py's settings that a checkpoint's training fixes (`EVALUATION_DEFAULTS`), each with where its value
    comes from: given on the command line, the checkpoint's training, or the default."""
    settings = {}
    for name, default in EVALUATION_DEFAULTS.items():
        given = getattr(args, name, None)
        if given is not None:
            trained = info.get(name)
            note = "given" if trained in (None, given) else f"given; the checkpoint was trained with {trained}"
            settings[name] = (given, note)
        elif info.get(name) is not None:
            settings[name] = (info[name], "as trained")
        else:
            settings[name] = (default, "default")
    return settings


def run_evaluation(args) -> dict:
    """`scripts/evaluate.py`: evaluate a checkpoint on one split, in one or both modes, on any number of
    processes. Prints and returns `{mode: metrics}` (and writes `--output_json`)."""
    import json

    from accelerate import Accelerator

    from .data import load_sequences

    edges = history_length_edges(getattr(args, "history_length_edges", None))
    if getattr(args, "torch_threads", None):
        torch.set_num_threads(args.torch_threads)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.cpu)
    if not accelerator.is_main_process:  # one set of progress bars: the main process's
        import datasets

        datasets.disable_progress_bars()
    folder = checkpoint_folder(args.model_name_or_path)
    model = load_checkpoint(str(folder), accelerator.device)
    settings = evaluation_settings(args, training_info(folder))
    for name, (value, _) in settings.items():
        setattr(args, name, value)
    if accelerator.is_main_process:
        print("settings: " + ", ".join(f"{name} {value} ({note})" for name, (value, note) in settings.items()))
    check_evaluation_arguments(args)
    sequences, meta = load_sequences(
        args.dataset, args.dataset_config, max_length=args.max_length, splits=(args.split,)
    )
    if meta.num_items != model.config.num_items:
        raise ValueError(
            f"The model scores {model.config.num_items} item ids but the data set {meta.name} has {meta.num_items}: "
            "its item ids are not the model's. Evaluate a model trained on this data set."
        )
    check_item_map(folder, meta, getattr(args, "ignore_item_map_mismatch", False))
    modes = list(EVAL_MODES) if args.eval_mode == "both" else [args.eval_mode]
    split = sequences[args.split]
    results, by_length = {}, {}
    for mode in modes:
        start = time.perf_counter()
        ranks = compute_ranks(
            model,
            split,
            meta.max_length,
            mode=mode,
            accelerator=accelerator,
            stream_chunk_size=args.stream_chunk_size,
            progress=accelerator.is_main_process,
            **evaluation_options(args),
        )
        metrics = ranking_metrics(ranks, ks=PROTOCOL_KS[args.eval_protocol])
        metrics["eval_seconds"] = time.perf_counter() - start
        results[mode] = metrics
        if args.by_history_length:
            ks = PROTOCOL_KS[args.eval_protocol]
            by_length[mode] = metrics_by_history_length(ranks, sample_history_lengths(split), edges, ks=ks)
        if accelerator.is_main_process:
            values = "  ".join(f"{k} {metrics[k]:.4f}" for k in metric_names(args.eval_protocol))
            print(
                f"{args.split} ({mode}): {values}  samples {metrics['num_samples']}  "
                f"time {metrics['eval_seconds']:.2f} s"
            )
    if args.output_json and accelerator.is_main_process:
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=2)
    if args.by_history_length and accelerator.is_main_process:
        write_history_length_report(by_length, args.by_history_length, args.eval_protocol, meta.max_length)
    return results


def history_length_edges(text: str | None) -> tuple[int, ...]:
    """`--history_length_edges` ("1,11,51,101": the lower ends of the groups) as integers; the default groups when
    unset."""
    if not text:
        return HISTORY_LENGTH_EDGES
    try:
        return tuple(check_history_length_edges(text.split(",")))
    except ValueError:
        raise ValueError(
            f"--history_length_edges {text!r}: expected increasing non-negative integers separated by commas, "
            "e.g. 1,11,51,101."
        ) from None


def write_history_length_report(by_length: dict[str, list[dict]], folder, protocol: str, max_length: int) -> None:
    """`metrics_by_history_length.{json,md,png}` in `folder` (the PNG plots NDCG@10)."""
    import json
    from pathlib import Path

    from .reports import history_length_table, plot_metrics_by_history_length

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics_by_history_length.json").write_text(json.dumps(by_length, indent=2))
    (folder / "metrics_by_history_length.md").write_text(history_length_table(by_length, protocol) + "\n")
    plot_metrics_by_history_length(
        by_length, "NDCG@10", folder / "metrics_by_history_length.png", max_length=max_length
    )
    print(history_length_table(by_length, protocol))


__all__ = [
    "EVAL_MODES",
    "EVAL_PROTOCOLS",
    "compute_ranks",
    "evaluate_split",
    "evaluation_options",
    "check_item_map",
    "checkpoint_folder",
    "has_cache",
    "load_checkpoint",
    "reads_each_sample",
    "run_evaluation",
    "score_ranks",
    "scoring_matrix",
]
