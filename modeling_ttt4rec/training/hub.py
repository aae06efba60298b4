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

from .metrics import metric_names
from .reports import split_metrics_table

# the repository's model_card.md (linked into the package, so an installed wheel has it too)
DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"


class HubError(RuntimeError):
    """The Hub cannot be used (no token, unreachable, offline mode): the message says what to do."""


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
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    checkpoint_dir = Path(checkpoint_dir)
    template_path = Path(template_path) if template_path else DEFAULT_TEMPLATE
    if not template_path.is_file():
        raise FileNotFoundError(f"Model card template {template_path} not found.")
    config = json.loads((checkpoint_dir / "config.json").read_text())
    info_path = checkpoint_dir / "training_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    dataset = results.get("dataset", info.get("dataset", "unknown"))
    dataset_config = results.get("dataset_config", info.get("dataset_config"))
    dataset_name = results.get("dataset_name", info.get("dataset_name", dataset))
    eval_results = []
    for row in results.get("rows", []):
        if row["split"] != "test":
            continue
        for metric in metric_names(results.get("eval_protocol", "full")):
            eval_results.append(
                EvalResult(
                    task_type="recommendation",
                    task_name="Sequential recommendation (next item)",
                    dataset_type=dataset,
                    dataset_name=dataset_name,
                    dataset_config=dataset_config,
                    dataset_split="test",
                    metric_type=metric.lower().replace("@", "_at_"),
                    metric_name=f"{metric} ({row['mode']} eval)",
                    metric_value=round(float(row[metric]), 4),
                    metric_config=row["mode"],
                )
            )
    is_local_dataset = Path(str(dataset)).exists()
    card_data = ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        tags=["ttt4rec", "recommendation", "sequential-recommendation", "test-time-training", "custom_code"],
        datasets=None if is_local_dataset else [dataset],
        pipeline_tag=None,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
    )
    training = training or {}
    note = (
        f"Item ids are the data set's dense ids; `{ITEM_MAP_FILE}` in this repository maps them back to the original "
        "item ids."
        if (checkpoint_dir / ITEM_MAP_FILE).is_file()
        else "Item ids are the data set's dense ids (1 .. num_items - 1)."
    )
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
    scoring = config.get("item_scoring", "embedding")
    scoring_note = (
        "the tied item embedding (`h . e_i`)" if scoring == "embedding" else "a target MLP tower (`h . MLP(e_i)`)"
    )
    return ModelCard.from_template(
        card_data,
        protocol_description=protocol,
        item_scoring=scoring_note,
        template_path=str(template_path),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        backbone=config.get("backbone"),
        ttt_layer_type=config.get("ttt_layer_type"),
        hidden_size=config.get("hidden_size"),
        num_hidden_layers=config.get("num_hidden_layers"),
        num_attention_heads=config.get("num_attention_heads"),
        mini_batch_size=config.get("mini_batch_size"),
        num_items=config.get("num_items"),
        max_length=info.get("max_length", "?"),
        dataset=dataset,
        dataset_config=dataset_config,
        results_table=split_metrics_table(
            results.get("rows", []), results.get("eval_protocol", "full"), samples=False
        ),
        best_epoch=results.get("best_epoch", "?"),
        epochs=results.get("epochs", "?"),
        learning_rate=training.get("learning_rate", 1e-3),
        batch_targets=training.get("batch_targets", 2048),
        patience=training.get("patience", 5),
        max_epochs=training.get("max_epochs", 300),
        early_stopping_metric=training.get("early_stopping_metric", "NDCG@10"),
        loss_description=_loss_description(
            results.get("loss_type", training.get("loss_type", "full_ce")), training, config
        ),
        item_id_map_note=note,
    )


def _loss_description(loss_type: str, training: dict, config: dict) -> str:
    if loss_type == "sampled_softmax":
        in_batch = " and the batch's other targets" if config.get("in_batch_negatives") else ""
        return (
            f"Sampled softmax: each target against {config.get('num_negatives', 4)} negatives shared by the batch, "
            f"drawn by {config.get('negative_sampler', 'uniform')}{in_batch}, logQ-corrected, accidental hits masked"
        )
    if loss_type == "sampled_bce":
        negatives = training.get("num_negatives", 4)
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
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if constants.HF_HUB_OFFLINE:
        raise HubError("Cannot push to the Hub: offline mode is on (HF_HUB_OFFLINE=1). Unset it to upload.")
    token = token or get_token()
    if not token:
        raise HubError("Cannot push to the Hub: no token. Run `hf auth login`, set HF_TOKEN, or pass --hub_token.")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(upload_dir), commit_message="Upload TTT4Rec model", repo_type="model"
        )
    except OfflineModeIsEnabled as err:
        raise HubError("Cannot push to the Hub: offline mode is on (HF_HUB_OFFLINE=1).") from err
    except HfHubHTTPError as err:
        raise HubError(f"The Hub refused the upload to {repo_id!r}: {err}") from err
    except Exception as err:  # connection errors of the HTTP client (httpx2) are not OSErrors
        raise HubError(
            f"Cannot reach the Hub at {constants.ENDPOINT} to push {repo_id!r} ({type(err).__name__}: {err}). "
            "Check the network connection or HF_ENDPOINT; the upload folder is kept and can be pushed later."
        ) from err
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


__all__ = ["HubError", "build_model_card", "prepare_hub_folder", "push_best_model", "push_folder"]
