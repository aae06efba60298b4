"""Publishing a trained model to the Hugging Face Hub: the model card and the upload.

`prepare_hub_folder` writes exactly what would be uploaded (the best checkpoint's files and a `README.md` rendered
from the repository's `model_card.md` template, with `model-index` metadata holding the test metrics) into a
folder; `push_folder` uploads such a folder. `push_best_model` does both. Errors are explicit: no token, the Hub
unreachable or offline mode on.
"""

import json
import os
import shutil
from pathlib import Path

from dataset_builders.format import ITEM_MAP_FILE
from dataset_builders.hub_access import HubError, check_hub_access, hub_errors
from dataset_builders.resolve import looks_like_a_path

from .metrics import metric_names
from .reports import split_metrics_table

# the repository's model_card.md (linked into the package, so an installed wheel has it too)
DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"

# What the card says of each model type (`config.json`'s `model_type`): what the model is and where it comes from,
# its architecture line (a format string over the config's fields), extra tags, its incremental use and the papers
# to cite. A model type not listed here gets a plain description.
_TTT4REC_CITATION = """\
@article{yang2024ttt4rec,
  title   = {TTT4Rec: A Test-Time Training Approach for Rapid Adaption in Sequential Recommendation},
  author  = {Yang, Zhaoqi and Wang, Yanan and Ge, Yong},
  journal = {arXiv preprint arXiv:2409.19142},
  year    = {2024}
}

@inproceedings{zhan2025preliminary,
  title     = {Preliminary Evaluation of the Test-Time Training Layers in Recommendation System (Student Abstract)},
  author    = {Zhan, Tianyu and Lv, Zheqi and Zhang, Shengyu and Li, Jiwei},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year      = {2025}
}"""
_RECBOLE_CITATION = """\
@inproceedings{zhao2021recbole,
  title     = {RecBole: Towards a Unified, Comprehensive and Efficient Framework for Recommendation Algorithms},
  author    = {Zhao, Wayne Xin and others},
  booktitle = {Proceedings of the 30th ACM International Conference on Information and Knowledge Management},
  year      = {2021}
}"""
_BASELINE_TEXT = (
    "sequential recommender for next-item prediction, its architecture exactly RecBole 1.2.1's (the baseline of the "
    "TTT4Rec papers). Implemented as a Hugging Face Transformers model (remote code, `trust_remote_code=True`)."
)
# the incremental use of a model that has a cache (TTT4Rec's cache also saves to a file)
_CACHE_USAGE = """\
Incremental recommendation: keep one cache per user and feed each new interaction as it happens, without re-reading
the history (exactly the same scores as re-reading it).

```python
with torch.no_grad():
    out = model(history, use_cache=True)  # read the history once
    cache = out.cache_params
    out = model(torch.tensor([[88]]), cache_params=cache, use_cache=True)  # the user interacts with item 88
    top10 = out.logits.topk(10).indices{save}
```"""
_NO_CACHE = "This model has no cache: each call reads the user's history whole (at most its newest items)."
_BOUNDED_CACHE = (
    "The cache (`model.init_cache(batch_size)`) keeps each layer's keys and values, so new interactions are read\n"
    "without re-reading the history, up to `max_position_embeddings` items in all; then read the newest items whole."
)
MODEL_CARD_TEXTS = {
    "ttt4rec": {
        "description": (
            "A TTT4Rec (Yang, Wang and Ge, 2024; [official code](https://github.com/ZhaoqiZachYang/TTT4Rec)) "
            "sequential\nrecommender: next-item prediction whose sequence layer is a\nTest-Time Training (TTT) "
            "layer, a small model trained by gradient descent on a self-supervised loss while it reads\nthe user's "
            "interactions, at training and at serving time. Implemented as a Hugging Face Transformers model "
            "(remote\ncode, `trust_remote_code=True`)."
        ),
        "architecture": (
            "**Backbone / inner model:** `{backbone}` / TTT-`{ttt_layer_type}`, hidden size {hidden_size},\n"
            "  {num_hidden_layers} block(s), {num_attention_heads} heads, inner mini-batch {mini_batch_size}; items\n"
            "  scored through {item_scoring}"
        ),
        "tags": ["test-time-training"],
        "cache_usage": _CACHE_USAGE.format(
            save='\n    cache.save("user_42.safetensors")  # keep the state between sessions'
        ),
        "citation": _TTT4REC_CITATION,
    },
    "sasrec": {
        "description": "A SASRec (Kang and McAuley, 2018) " + _BASELINE_TEXT,
        "architecture": (
            "**Architecture:** {num_hidden_layers} self-attention layer(s), {num_attention_heads} heads, hidden size "
            "{hidden_size}, at most\n  {max_position_embeddings} items read; items scored through {item_scoring}"
        ),
        "tags": [],
        "cache_usage": _BOUNDED_CACHE,
        "citation": """\
@inproceedings{kang2018sasrec,
  title     = {Self-Attentive Sequential Recommendation},
  author    = {Kang, Wang-Cheng and McAuley, Julian},
  booktitle = {IEEE International Conference on Data Mining (ICDM)},
  year      = {2018}
}

"""
        + _RECBOLE_CITATION,
    },
    "gru4rec": {
        "description": "A GRU4Rec (Hidasi et al., 2016; Tan, Xu and Liu, 2016) " + _BASELINE_TEXT,
        "architecture": (
            "**Architecture:** {num_hidden_layers} GRU layer(s) of width {hidden_size} over item embeddings of size "
            "{embedding_size};\n  items scored through {item_scoring}"
        ),
        "tags": [],
        "cache_usage": _CACHE_USAGE.format(save=""),
        "citation": """\
@inproceedings{hidasi2016gru4rec,
  title     = {Session-based Recommendations with Recurrent Neural Networks},
  author    = {Hidasi, Bal{\\'a}zs and Karatzoglou, Alexandros and Baltrunas, Linas and Tikk, Domonkos},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2016}
}

"""
        + _RECBOLE_CITATION,
    },
    "narm": {
        "description": "A NARM (Li et al., 2017) " + _BASELINE_TEXT,
        "architecture": (
            "**Architecture:** {num_hidden_layers} GRU layer(s) of width {hidden_size} over item embeddings of size "
            "{embedding_size},\n  attention over the prefix, a bilinear projection; items scored through "
            "{item_scoring}"
        ),
        "tags": [],
        "cache_usage": _NO_CACHE,
        "citation": """\
@inproceedings{li2017narm,
  title     = {Neural Attentive Session-based Recommendation},
  author    = {Li, Jing and Ren, Pengjie and Chen, Zhumin and Ren, Zhaochun and Lian, Tao and Ma, Jun},
  booktitle = {ACM International Conference on Information and Knowledge Management (CIKM)},
  year      = {2017}
}

"""
        + _RECBOLE_CITATION,
    },
    "bert4rec": {
        "description": "A BERT4Rec (Sun et al., 2019) " + _BASELINE_TEXT,
        "architecture": (
            "**Architecture:** {num_hidden_layers} bidirectional self-attention layer(s), {num_attention_heads} "
            "heads, hidden size\n  {hidden_size}, at most {max_position_embeddings} items read; trained on masked "
            "items as RecBole does (mask ratio\n  {mask_ratio}); items scored through the item embedding and an "
            "output bias (`h . e_i + b_i`)"
        ),
        "tags": [],
        "cache_usage": _NO_CACHE
        + (
            "\nIt reads a history as RecBole does at test time: its items without the first one, then its mask "
            "token, whose\noutput is the history's representation."
        ),
        "citation": """\
@inproceedings{sun2019bert4rec,
  title     = {BERT4Rec: Sequential Recommendation with Bidirectional Encoder Representations from Transformer},
  author    = {Sun, Fei and Liu, Jun and Wu, Jian and Pei, Changhua and Lin, Xiao and Ou, Wenwu and Jiang, Peng},
  booktitle = {ACM International Conference on Information and Knowledge Management (CIKM)},
  year      = {2019}
}

"""
        + _RECBOLE_CITATION,
    },
}


def build_model_card(
    checkpoint_dir: str | os.PathLike,
    repo_id: str,
    results: dict,
    template_path: str | os.PathLike | None = None,
    training: dict | None = None,
):
    """A `huggingface_hub.ModelCard` for the checkpoint: YAML metadata (library, tags, data set, license,
    `model-index` with the test metrics of every evaluation mode) and the template's text filled in. `training` is
    the run's settings in one mapping (`RunConfig.flat()`: learning rate, batch, patience, loss, ...)."""
    from huggingface_hub import ModelCard, ModelCardData

    checkpoint_dir = Path(checkpoint_dir)
    template_path = Path(template_path) if template_path else DEFAULT_TEMPLATE
    if not template_path.is_file():
        raise FileNotFoundError(f"Model card template {template_path} not found.")
    config = json.loads((checkpoint_dir / "config.json").read_text())
    model_type = config.get("model_type", "ttt4rec")
    texts = _model_texts(model_type)
    info_path = checkpoint_dir / "training_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    dataset = results.get("dataset", info.get("dataset", "unknown"))
    dataset_config = results.get("dataset_config", info.get("dataset_config"))
    dataset_name = results.get("dataset_name", info.get("dataset_name", dataset))
    # a data set given as a local folder has no Hub id to link to: the card says so instead of showing a path
    is_local_dataset = Path(str(dataset)).exists() or looks_like_a_path(str(dataset)) or dataset == "unknown"
    eval_results = _eval_results(results, "local" if is_local_dataset else dataset, dataset_name, dataset_config)
    card_data = ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        tags=[model_type, "recommendation", "sequential-recommendation", *texts["tags"], "custom_code"],
        datasets=None if is_local_dataset else [dataset],
        pipeline_tag=None,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
    )
    training = training or {}
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        max_length=info.get("max_length", "?"),
        dataset=f"local data set {dataset_name}" if is_local_dataset else dataset,
        dataset_config=dataset_config,
        **_model_fields(config, checkpoint_dir, texts),
        **_training_fields(results, training, config),
    )


def _eval_results(results: dict, dataset_type: str, dataset_name: str, dataset_config: str | None) -> list:
    """The `model-index` entries: every test metric of every evaluation mode."""
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type="recommendation",
            task_name="Sequential recommendation (next item)",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_config=dataset_config,
            dataset_split="test",
            metric_type=metric.lower().replace("@", "_at_"),
            metric_name=f"{metric} ({row['mode']} eval)",
            metric_value=round(float(row[metric]), 4),
            metric_config=row["mode"],
        )
        for row in results.get("rows", [])
        if row["split"] == "test"
        for metric in metric_names(results.get("eval_protocol", "full"))
    ]


def _model_texts(model_type: str) -> dict:
    """`MODEL_CARD_TEXTS[model_type]`, or for a model type not listed there a plain description."""
    if model_type in MODEL_CARD_TEXTS:
        return MODEL_CARD_TEXTS[model_type]
    return {
        "description": f"A `{model_type}` sequential recommender for next-item prediction. Implemented as a Hugging "
        "Face Transformers model (remote code, `trust_remote_code=True`).",
        "architecture": "**Architecture:** `{model_type}`, hidden size {hidden_size}; items scored through "
        "{item_scoring}",
        "tags": [],
        "cache_usage": "",
        "citation": "",
    }


def _model_fields(config: dict, checkpoint_dir: Path, texts: dict) -> dict:
    """The template's fields about the model: what it is, its architecture and item scoring, its cache, item ids."""
    scoring = config.get("item_scoring", "embedding")
    item_scoring = (
        "the tied item embedding (`h . e_i`)" if scoring == "embedding" else "a target MLP tower (`h . MLP(e_i)`)"
    )
    return {
        "model_description": texts["description"],
        "architecture": texts["architecture"].format_map(_MissingAsUnknown(config, item_scoring=item_scoring)),
        "cache_usage": texts["cache_usage"],
        "citation": texts["citation"],
        "num_items": config.get("num_items"),
        "item_id_map_note": (
            f"Item ids are the data set's dense ids; `{ITEM_MAP_FILE}` in this repository maps them back to the "
            "original item ids."
            if (checkpoint_dir / ITEM_MAP_FILE).is_file()
            else "Item ids are the data set's dense ids (1 .. num_items - 1)."
        ),
    }


class _MissingAsUnknown(dict):
    """Format mapping that shows a field the config lacks as `?`."""

    def __missing__(self, key: str) -> str:
        return "?"


def _training_fields(results: dict, training: dict, config: dict) -> dict:
    """The template's fields about training and evaluation: protocol, results, schedule, loss."""
    if results.get("eval_protocol", "full") == "sampled":
        protocol = (
            "Sampled ranking (Zhan, Lv, Zhang and Li, 2025): each test target against 99 fixed random negatives "
            "(ties count against the target), means over all samples of the split"
        )
    else:
        protocol = (
            "Full ranking over all items (no sampled negatives, seen items not masked), means over all samples of "
            "the split"
        )
    return {
        "protocol_description": protocol,
        "results_table": split_metrics_table(
            results.get("rows", []), results.get("eval_protocol", "full"), samples=False
        ),
        "best_epoch": results.get("best_epoch", "?"),
        "epochs": results.get("epochs", "?"),
        "learning_rate": training.get("learning_rate", 1e-3),
        "batch_targets": training.get("batch_targets", 2048),
        "patience": training.get("patience", 5),
        "max_epochs": training.get("max_epochs", 300),
        "early_stopping_metric": training.get("early_stopping_metric", "NDCG@10"),
        "loss_description": _loss_description(
            results.get("loss_type", training.get("loss_type", "full_ce")), training, config
        ),
    }


def _loss_description(loss_type: str, training: dict, config: dict) -> str:
    if loss_type == "sampled_softmax":
        in_batch = " and the batch's other targets" if config.get("in_batch_negatives") else ""
        return (
            f"Sampled softmax: each target against {config.get('num_negatives', 4)} negatives shared by the batch, "
            f"drawn by {config.get('negative_sampler', 'uniform')}{in_batch}, logQ-corrected, accidental hits masked"
        )
    if loss_type == "sampled_bce":
        negatives = config.get("num_negatives", training.get("num_negatives", 4))
        return f"Binary cross-entropy of each target against {negatives} uniformly sampled negatives"
    return "Cross-entropy over all items"


def prepare_hub_folder(
    checkpoint_dir: str | os.PathLike,
    upload_dir: str | os.PathLike,
    repo_id: str,
    results: dict,
    template_path: str | os.PathLike | None = None,
    training: dict | None = None,
) -> list[str]:
    """Write the exact upload (checkpoint files + `README.md`) into `upload_dir`; returns the file names."""
    checkpoint_dir, upload_dir = Path(checkpoint_dir), Path(upload_dir)
    for required in ("config.json", "model.safetensors"):
        if not (checkpoint_dir / required).is_file():
            raise FileNotFoundError(f"{checkpoint_dir} is not a complete checkpoint: {required} is missing.")
    source, target = checkpoint_dir.resolve(), upload_dir.resolve()
    if target == source or target in source.parents or source in target.parents:
        raise ValueError(
            f"`upload_dir` ({upload_dir}) must be a folder apart from the checkpoint ({checkpoint_dir}), neither it "
            "nor inside it nor around it: it is replaced by a fresh copy of the upload."
        )
    if upload_dir.exists():
        if any(upload_dir.iterdir()) and not (upload_dir / "config.json").is_file():
            raise ValueError(
                f"`upload_dir` ({upload_dir}) is a non-empty folder that does not hold an earlier upload; it would be "
                "replaced. Choose a new folder."
            )
        shutil.rmtree(upload_dir)
    shutil.copytree(checkpoint_dir, upload_dir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    card = build_model_card(checkpoint_dir, repo_id, results, template_path, training)
    card.save(upload_dir / "README.md")
    return sorted(p.relative_to(upload_dir).as_posix() for p in upload_dir.rglob("*") if p.is_file())


def push_folder(upload_dir: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Create `repo_id` (if needed) and upload `upload_dir` to it; returns the commit URL."""
    from huggingface_hub import HfApi

    token = check_hub_access(repo_id, token)
    api = HfApi(token=token)
    with hub_errors(f"push {repo_id!r} (the upload folder is kept and can be pushed later)"):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(upload_dir), commit_message="Upload TTT4Rec model", repo_type="model"
        )
    return str(getattr(info, "commit_url", info))


def push_best_model(
    checkpoint_dir: str | os.PathLike,
    upload_dir: str | os.PathLike,
    repo_id: str,
    results: dict,
    token: str | None = None,
    private: bool = False,
    dry_run: bool = False,
    training: dict | None = None,
) -> list[str]:
    """Prepare the upload folder and (unless `dry_run`) push it. Returns the uploaded file names."""
    files = prepare_hub_folder(checkpoint_dir, upload_dir, repo_id, results, training=training)
    if not dry_run:
        push_folder(upload_dir, repo_id, token=token, private=private)
    return files


def push_run(
    run_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    dry_run: bool = False,
) -> list[str]:
    """Push the best model of a finished training run (`scripts/train.py --output_dir RUN_DIR`) with its model card:
    `RUN_DIR/best_model`, the results of `results.json` and the settings of `run_config.json`, prepared in
    `RUN_DIR/hub_upload`. The Hub access is checked first (`check_hub_access`). Returns the uploaded file names."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"No such run folder {str(run_dir)!r}: pass the --output_dir of a training run.")
    for name in ("results.json", "run_config.json", "best_model"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(
                f"{run_dir} holds no finished run ({name} is missing): finish it first (scripts/train.py "
                "--resume_from_checkpoint latest with the same settings)."
            )
    check_hub_access(repo_id, token, dry_run=dry_run)
    results = json.loads((run_dir / "results.json").read_text())
    settings = json.loads((run_dir / "run_config.json").read_text())
    training = {k: v for section in ("model", "data", "training") for k, v in settings.get(section, {}).items()}
    return push_best_model(
        run_dir / "best_model",
        run_dir / "hub_upload",
        repo_id,
        results,
        token=token,
        private=private,
        dry_run=dry_run,
        training=training,
    )


__all__ = [
    "HubError",
    "build_model_card",
    "check_hub_access",
    "push_run",
    "prepare_hub_folder",
    "push_best_model",
    "push_folder",
]
