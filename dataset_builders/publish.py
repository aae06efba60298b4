"""Publishing: write a built data set as a Hub dataset repository folder, push it, and read it back.

The folder (:func:`write_hub_folder`) is exactly what goes to the Hub::

    README.md                                   dataset card: YAML `configs`, statistics, how built, citations
    metadata.json                               settings and counts a trainer reads (see load_metadata)
    item_map.parquet                            item_index (dense id, 0 = padding) -> item_id (original)
    user_map.parquet                            user_index (dense id) -> user_id (original)
    split-3-2-5/{train,validation,test}-00000-of-00001.parquet
    split-6-2-2/...

``datasets.load_dataset(folder_or_repo_id, "split-3-2-5")`` gives the ``DatasetDict``; the card's ``configs``
section is what tells ``datasets`` which Parquet files form which split (no loading script).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import DatasetBuildError
from .format import (
    CARD_FILE,
    DATASET_NAME,
    FORMAT_VERSION,
    FORMAT_VERSION_KEY,
    ITEM_ID,
    ITEM_IDS,
    ITEM_INDEX,
    ITEM_MAP_FILE,
    MAX_LENGTH,
    METADATA_FILE,
    NUM_ITEMS,
    SPLIT_NAMES,
    TARGET_START,
    TIMESTAMPS,
    USER_ID,
    USER_INDEX,
    USER_MAP_FILE,
    is_config_folder,
    read_metadata,
    split_file,
    split_file_pattern,
)
from .hub_access import hub_errors
from .item_ids import ItemIdMap
from .pipeline import BuiltDataset, DataStats
from .resolve import resolve_folder

__all__ = [
    "FORMAT_VERSION",
    "ITEM_MAP_FILE",
    "METADATA_FILE",
    "USER_MAP_FILE",
    "load_item_map",
    "load_metadata",
    "load_splits",
    "load_user_map",
    "push_folder_to_hub",
    "render_card",
    "write_hub_folder",
]

logger = logging.getLogger(__name__)

_ROWS_PER_GROUP = 10_000

_TTT4REC_CITATION = """@article{yang2024ttt4rec,
  title = {TTT4Rec: A Test-Time Training Approach for Rapid Adaption in Sequential Recommendation},
  author = {Yang, Zhaoqi and Wang, Yanan and Ge, Yong},
  journal = {arXiv preprint arXiv:2409.19142},
  year = {2024}
}"""
_RECBOLE_CITATION = """@inproceedings{zhao2021recbole,
  title = {RecBole: Towards a Unified, Comprehensive and Efficient Framework for Recommendation Algorithms},
  author = {Zhao, Wayne Xin and others},
  booktitle = {Proceedings of the 30th ACM International Conference on Information and Knowledge Management},
  year = {2021}
}"""


def _features(has_time: bool) -> list[dict[str, str]]:
    features = [
        {"name": USER_ID, "dtype": "string"},
        {"name": ITEM_IDS, "list": "int64"},
        {"name": TARGET_START, "dtype": "int64"},
    ]
    if has_time:
        features.append({"name": TIMESTAMPS, "list": "int64"})
    return features


def _size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    bounds += [(10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    bounds += [(10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"), (1_000_000_000_000, "100B<n<1T")]
    return next((label for bound, label in bounds if n < bound), "n>1T")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _stats_row(label: str, stats: DataStats) -> str:
    return (
        f"| {label} | {stats.users:,} | {stats.items:,} | {stats.interactions:,} | {stats.avg_length:.2f} "
        f"| {stats.density * 100:.4f}% |"
    )


def _metadata(built: BuiltDataset, command: str | None, source_sha256: str | None) -> dict[str, Any]:
    seq = built.sequences
    return {
        FORMAT_VERSION_KEY: FORMAT_VERSION,
        DATASET_NAME: built.name,
        "pretty_name": built.spec.pretty_name,
        "layout": built.layout,
        "source_file": Path(built.source).name,
        "source_sha256": source_sha256,
        NUM_ITEMS: built.num_items,
        "num_users": seq.filtered.users,
        "padding_item_id": 0,
        MAX_LENGTH: built.max_length,
        "user_min": built.user_min,
        "item_min": built.item_min,
        "has_timestamps": built.has_time,
        "kcore_rounds": seq.kcore_rounds,
        "skipped_lines": built.skipped_lines,
        "raw": seq.raw.as_dict(),
        "filtered": seq.filtered.as_dict(),
        "configs": {
            name: {
                "ratios": list(cfg.ratios),
                "samples": cfg.samples,
                "rows": cfg.rows,
                "default": index == 0,
            }
            for index, (name, cfg) in enumerate(built.configs.items())
        },
        "default_config": next(iter(built.configs)),
        "protocol": "recbole",
        "build_command": command,
    }


def render_card(built: BuiltDataset, metadata: dict[str, Any] | None = None) -> str:
    """The dataset card (README.md): YAML front matter with ``configs``, then statistics and build notes."""
    metadata = metadata or _metadata(built, None, None)
    body = _card_overview(built) + _card_row_format(built) + _card_build_notes(built, metadata)
    return f"---\n{_card_data(built).to_yaml()}\n---\n{body}"


def _card_data(built: BuiltDataset) -> Any:
    """The card's YAML front matter: the configurations' data files, features and split sizes, tags, licence."""
    from huggingface_hub import DatasetCardData

    spec = built.spec
    seq = built.sequences
    names = list(built.configs)
    return DatasetCardData(
        pretty_name=f"{spec.pretty_name} (TTT4Rec protocol)",
        license="other",
        **({"license_name": f"{spec.name}-terms", "license_link": spec.homepage} if spec.homepage else {}),
        size_categories=_size_category(seq.filtered.interactions),
        tags=["recommendation", "sequential-recommendation", "ttt4rec"],
        configs=[
            {
                "config_name": name,
                **({"default": True} if i == 0 else {}),
                "data_files": [{"split": split, "path": split_file_pattern(name, split)} for split in SPLIT_NAMES],
            }
            for i, name in enumerate(names)
        ],
        dataset_info=[
            {
                "config_name": name,
                "features": _features(built.has_time),
                "splits": [
                    {"name": split, "num_bytes": cfg.tables[split].nbytes, "num_examples": cfg.rows[split]}
                    for split in SPLIT_NAMES
                ],
            }
            for name, cfg in built.configs.items()
        ],
    )


def _card_overview(built: BuiltDataset) -> str:
    """The card's title, description, statistics and samples per split."""
    spec = built.spec
    seq = built.sequences
    ratio_rows = "\n".join(
        f"| `{name}`{' (default)' if i == 0 else ''} | {':'.join(f'{r:g}' for r in cfg.ratios)} | "
        + " | ".join(f"{cfg.samples[s]:,}" for s in SPLIT_NAMES)
        + " | "
        + " | ".join(f"{cfg.rows[s]:,}" for s in SPLIT_NAMES)
        + " |"
        for i, (name, cfg) in enumerate(built.configs.items())
    )
    return f"""
# {spec.pretty_name} for sequential recommendation (TTT4Rec protocol)

{spec.description}

Built by `dataset_builders` of the `ttt4rec` project exactly as the TTT4Rec paper's RecBole 1.2 pipeline
prepared its data (the project's docs/protocol.md sections 1-5): iterated k-core filtering, stable chronological order,
dense ids, and a per-user chronological ratio split of each user's next-item samples.

## Statistics

Like Table 1 of the TTT4Rec paper (density = interactions / (users x items)).

| data | users | items | interactions | avg. sequence length | density |
|---|---|---|---|---|---|
{_stats_row("raw", seq.raw)}
{_stats_row("after k-core filtering", seq.filtered)}

Item vocabulary for a model: `num_items` = {built.num_items:,} (the {seq.filtered.items:,} items plus padding id 0).
Maximum context length `L` = {built.max_length}.

## Samples per split

A user with `n` interactions gives `n - 1` samples (targets `s_1 .. s_(n-1)`), split in order by the ratio.
Rows are users with at least one target in the split.

| configuration | ratio | train samples | validation samples | test samples | train rows | validation rows | test \
rows |
|---|---|---|---|---|---|---|---|
{ratio_rows}
"""


def _card_row_format(built: BuiltDataset) -> str:
    """The card's row format, a usage example and the list of files."""
    first = next(iter(built.configs))
    time_note = (
        "`timestamps` (list of int64, the raw time of each item in `item_ids`: Unix seconds, or the raw file's own "
        "integer time unit)"
        if built.has_time
        else "no `timestamps` column: the raw file has no times, its line order is the time order"
    )
    return f"""
## Row format

One row per user per split:

- `user_id` (string): the user's original id;
- `item_ids` (list of int64): the user's dense item ids from the first interaction through the last target of this
  split, in time order (1..{built.num_items - 1:,}; 0 is padding and never appears);
- `target_start` (int64): index in `item_ids` of this split's first target; the split's targets are
  `item_ids[target_start:]` and each target's history is everything before it (histories cross split borders);
- {time_note}.

A user with no target in a split has no row in it. The paper's windowed samples (history = the last `L` items
before the target, right-padded) come from `dataset_builders.WindowedSamples(rows, max_length={built.max_length})`;
whole rows serve streaming evaluation.

```python
from datasets import load_dataset
from dataset_builders import WindowedSamples, load_item_map, load_metadata

ds = load_dataset("<this repo or folder>", "{first}")
meta = load_metadata("<this repo or folder>")
test = WindowedSamples(ds["test"], max_length=meta["max_length"])
batch = test.batch(range(8))   # input_ids (8, L), attention_mask, labels
item_map = load_item_map("<this repo or folder>")   # item_map[dense_id] -> original id
```

## Files

- `{ITEM_MAP_FILE}`: `item_index` (dense id) -> `item_id` (original id, string); row 0 is the padding id (null).
- `{USER_MAP_FILE}`: `user_index` (dense user id, the order of rows) -> `user_id` (original id).
- `{METADATA_FILE}`: data set name, `num_items` (padding included), `max_length`, `user_min`, `item_min`, the
  ratios and the counts above, for a trainer to read.
"""


def _card_build_notes(built: BuiltDataset, metadata: dict[str, Any]) -> str:
    """The card's build steps, licence and citations."""
    spec = built.spec
    seq = built.sequences
    skipped = (
        f"- {built.skipped_lines:,} unreadable raw lines were skipped (`--skip_bad_lines`).\n"
        if built.skipped_lines
        else ""
    )
    command = metadata.get("build_command")
    sha = metadata.get("source_sha256")
    citations = "\n\n".join(c for c in (spec.citation, _TTT4REC_CITATION, _RECBOLE_CITATION) if c)
    return f"""
## How it was built

1. Read `{Path(built.source).name}` (layout `{built.layout}`{f", sha256 `{sha}`" if sha else ""}); every line is
   an interaction, nothing de-duplicated, no rating threshold.
{skipped}2. Iterated k-core: users with fewer than {built.user_min} and items with fewer than {built.item_min}
   interactions, found at the same time in each round, dropped until nothing changes
   ({seq.kcore_rounds} removing round{"" if seq.kcore_rounds == 1 else "s"}).
3. Each user's interactions sorted by time, ties kept in file order (stable sort); items renumbered 1..N and users
   0..M-1 in order of first appearance in the file.
4. Per user, the `t = n - 1` samples split in order by `c = floor(r * t)`, `c[0] = t - c[1] - c[2]`, then a part
   that rounded down to zero gets one sample from train while train keeps more than one (test checked first),
   RecBole's rule.
{f"{chr(10)}Command: `{command}`{chr(10)}" if command else ""}
## Licence

{spec.licence or "The licence of the raw data applies; check it before sharing this dataset."} This card and the
build code are Apache-2.0; the data keeps the licence of its source.

## Citation

```bibtex
{citations}
```
"""


def _is_ours(folder: Path) -> bool:
    try:
        return FORMAT_VERSION_KEY in json.loads((folder / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return False


def write_hub_folder(
    built: BuiltDataset, output_dir: str | Path, *, command: str | None = None, progress: bool = False
) -> Path:
    """Write ``built`` as a Hub dataset repository folder (Parquet per configuration and split, card, maps).

    An existing folder is replaced only if it holds a dataset written here before (it has our
    ``metadata.json``); any other non-empty folder is refused.

    Args:
        built: The output of :func:`dataset_builders.build_dataset`.
        output_dir: The folder to write.
        command: The command line that built it, recorded in the card and the metadata.
        progress: Show a tqdm progress bar over the Parquet files.

    Returns:
        The folder's path.
    """
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        if not _is_ours(out):
            raise DatasetBuildError(f"output folder {out} is not empty and was not written by dataset_builders")
        for child in out.iterdir():
            if is_config_folder(child):
                shutil.rmtree(child)
            elif child.name in (METADATA_FILE, ITEM_MAP_FILE, USER_MAP_FILE, CARD_FILE):
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    files = [(name, split) for name in built.configs for split in SPLIT_NAMES]
    for name, split in tqdm(files, desc="writing Parquet", unit=" file", disable=not progress):
        (out / name).mkdir(exist_ok=True)
        table = built.configs[name].tables[split]
        pq.write_table(table, out / split_file(name, split), row_group_size=_ROWS_PER_GROUP)
    seq = built.sequences
    item_index = pa.array(np.arange(len(seq.item_map), dtype=np.int64))
    pq.write_table(pa.table({ITEM_INDEX: item_index, ITEM_ID: seq.item_map}), out / ITEM_MAP_FILE)
    user_index = pa.array(np.arange(len(seq.user_map), dtype=np.int64))
    pq.write_table(pa.table({USER_INDEX: user_index, USER_ID: seq.user_map}), out / USER_MAP_FILE)
    sha = _sha256(built.source) if Path(built.source).is_file() else None
    metadata = _metadata(built, command, sha)
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    (out / CARD_FILE).write_text(render_card(built, metadata))
    return out


def push_folder_to_hub(
    folder: str | Path, repo_id: str, *, token: str | None = None, private: bool | None = None
) -> str:
    """Upload a folder written by :func:`write_hub_folder` to the Hub dataset repository ``repo_id``.

    Creates the repository if needed, uploads everything and deletes stale ``split-*`` Parquet files.

    Returns:
        The URL of the commit.

    Raises:
        HubError: the Hub is unreachable, refuses the upload, or offline mode is on.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with hub_errors(f"push the data set {repo_id!r} (the folder {folder} is written and can be pushed again)"):
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(folder),
            commit_message="Upload dataset built by ttt4rec dataset_builders",
            delete_patterns=["split-*/*.parquet"],
        )
    return str(getattr(info, "commit_url", info))


def _data_set_file(path_or_repo: str | Path, filename: str, revision: str | None, token: str | None) -> Path:
    """A file of a local data set folder, or of a Hub dataset repository (downloaded / from the cache)."""
    folder = resolve_folder(
        path_or_repo,
        "dataset",
        what="data set",
        marker=CARD_FILE,
        revision=revision,
        token=token,
        allow_patterns=[filename],
    )
    path = folder / filename
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {filename}; was it written by dataset_builders?")
    return path


def load_metadata(
    path_or_repo: str | Path, *, revision: str | None = None, token: str | None = None
) -> dict[str, Any]:
    """The ``metadata.json`` of a published dataset (folder or Hub repo id).

    Keys include ``dataset``, ``num_items`` (padding included: a model's vocabulary size), ``max_length``,
    ``user_min``, ``item_min``, ``has_timestamps``, ``configs`` (per name: ``ratios``, ``samples``, ``rows``) and
    ``default_config``.
    """
    folder = _data_set_file(path_or_repo, METADATA_FILE, revision, token).parent
    return read_metadata(folder)


def load_item_map(
    path_or_repo: str | Path, *, revision: str | None = None, token: str | None = None
) -> list[str | None]:
    """The item id map: ``item_map[dense_id]`` is the original item id (a string); ``item_map[0]`` is ``None``
    (read by ``ItemIdMap``, which also converts in both directions)."""
    return ItemIdMap.from_file(_data_set_file(path_or_repo, ITEM_MAP_FILE, revision, token)).original_ids


def load_user_map(path_or_repo: str | Path, *, revision: str | None = None, token: str | None = None) -> list[str]:
    """The user id map: ``user_map[dense_user_id]`` is the original user id."""
    table = pq.read_table(_data_set_file(path_or_repo, USER_MAP_FILE, revision, token))
    order = np.argsort(table.column(USER_INDEX).to_numpy())
    return table.column(USER_ID).take(pa.array(order)).to_pylist()


def load_splits(
    path_or_repo: str | Path, config: str | None = None, *, revision: str | None = None, token: str | None = None
) -> Any:
    """``datasets.load_dataset`` of a published dataset, which also works offline for a cached Hub repo.

    A Hub repository id is resolved to its local snapshot first (``datasets`` alone does not find a Hub dataset in
    the hub cache when ``HF_HUB_OFFLINE=1``).

    Args:
        path_or_repo: A folder written by :func:`write_hub_folder` or a Hub dataset repository id.
        config: The configuration (e.g. ``"split-6-2-2"``); ``None`` gives the card's default (``split-3-2-5``).
    """
    from datasets import load_dataset

    folder = resolve_folder(path_or_repo, "dataset", what="data set", marker=CARD_FILE, revision=revision, token=token)
    return load_dataset(str(folder), config)
