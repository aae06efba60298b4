"""Test helpers: tiny data sets in the published split format, written by the tests themselves (no downloads),
small models, and models moved away from their initialisation."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from dataset_fixtures import reference_split_counts

from dataset_builders.format import ITEM_ID, ITEM_INDEX, ITEM_MAP_FILE, METADATA_FILE

SPLIT_RATIOS = {"split-3-2-5": (0.3, 0.2, 0.5), "split-6-2-2": (0.6, 0.2, 0.2)}


def random_sequences(num_users: int, num_items: int, min_len: int, max_len: int, seed: int = 0) -> list[list[int]]:
    """Sequences with some structure (users drift through item ranges), so a model can learn something."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(num_users):
        n = int(rng.integers(min_len, max_len + 1))
        start = int(rng.integers(1, num_items))
        steps = rng.integers(1, 4, size=n)
        seqs.append([int((start + s - 1) % (num_items - 1) + 1) for s in np.cumsum(steps)])
    return seqs


def split_rows(seqs: list[list[int]], ratios: tuple[float, float, float]) -> dict[str, list[dict]]:
    rows = {"train": [], "validation": [], "test": []}
    for u, s in enumerate(seqs):
        c = reference_split_counts(len(s) - 1, ratios)
        bounds = {"train": (1, c[0] + 1), "validation": (c[0] + 1, c[0] + c[1] + 1), "test": (c[0] + c[1] + 1, len(s))}
        for name, (ts, end) in bounds.items():
            if end > ts:
                rows[name].append({"user_id": f"u{u}", "item_ids": s[:end], "target_start": ts})
    return rows


def write_split_dataset(
    folder: str | Path,
    seqs: list[list[int]],
    num_items: int,
    max_length: int,
    configs: tuple[str, ...] = ("split-3-2-5", "split-6-2-2"),
    with_metadata: bool = True,
    drop_column: str | None = None,
) -> Path:
    """Write `folder` as dataset_builders publish a data set: parquet per config/split, README.md with `configs`,
    metadata.json and the item id map."""
    from datasets import Dataset

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    yaml = ["---", "configs:"]
    for k, name in enumerate(configs):
        rows = split_rows(seqs, SPLIT_RATIOS[name])
        yaml.append(f"- config_name: {name}")
        if k == 0:
            yaml.append("  default: true")
        yaml.append("  data_files:")
        for split, split_rows_ in rows.items():
            if drop_column:
                split_rows_ = [{k2: v for k2, v in r.items() if k2 != drop_column} for r in split_rows_]
            (folder / name).mkdir(exist_ok=True)
            Dataset.from_list(split_rows_).to_parquet(str(folder / name / f"{split}-00000-of-00001.parquet"))
            yaml.append(f"  - {{split: {split}, path: {name}/{split}-*.parquet}}")
    yaml.append("---")
    (folder / "README.md").write_text("\n".join(yaml) + "\n\n# A tiny test data set\n")
    if with_metadata:
        meta = {"name": "tiny", "num_items": num_items, "max_length": max_length}
        (folder / METADATA_FILE).write_text(json.dumps(meta))
    item_ids = pa.array([None] + [f"item-{i}" for i in range(1, num_items)], type=pa.string())
    item_map = pa.table({ITEM_INDEX: pa.array(np.arange(num_items, dtype=np.int64)), ITEM_ID: item_ids})
    pq.write_table(item_map, folder / ITEM_MAP_FILE)
    return folder


TINY_CONFIG = {
    "num_items": 40,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_attention_heads": 2,
    "mini_batch_size": 4,
}


def tiny_model(perturb: float = 0.0, dtype: torch.dtype | None = None, **overrides):
    """A small `TTT4RecForNextItemPrediction` in eval mode, built after `torch.manual_seed(0)`: `TINY_CONFIG` with
    `overrides`, cast to `dtype`, and with `perturb * N(0, 1)` added to every parameter when `perturb` > 0."""
    from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction

    torch.manual_seed(0)
    model = TTT4RecForNextItemPrediction(TTT4RecConfig(**{**TINY_CONFIG, **overrides})).eval()
    if dtype is not None:
        model = model.to(dtype)
    return perturbed(model, perturb) if perturb else model


def perturbed(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    """`model` with `scale * N(0, 1)` added to every parameter (from torch's global generator): away from their
    often symmetric initial values (ones, zeros), so that every term of the architecture shows in a comparison."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn_like(param))
    return model


def logits_in_fresh_process(checkpoint: Path, ids: torch.Tensor, tmp_path: Path, script: str) -> dict:
    """Run `script` (it loads `checkpoint` with `trust_remote_code=True` and prints `{"module", "logits"}` for
    `ids`) in a fresh Python process that cannot import this project (HF_HOME `tmp_path / "hf_home"`); its printed
    JSON."""
    import os
    import subprocess
    import sys

    path = tmp_path / "load_remote.py"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HOME"] = str(tmp_path / "hf_home")
    result = subprocess.run(
        [sys.executable, str(path), str(checkpoint), json.dumps(ids.tolist())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
