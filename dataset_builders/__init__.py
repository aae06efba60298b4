"""Raw interaction data -> the filtered, chronologically split Hub datasets of docs/protocol.md (sections 1-5).

Build (see ``scripts/build_dataset.py`` for the command line)::

    from dataset_builders import build_dataset, write_hub_folder
    built = build_dataset("sasrec", "Video.txt")            # read, k-core, order, split 3:2:5 and 6:2:2
    write_hub_folder(built, "video-games")                  # Parquet + dataset card + id maps + metadata.json

Use (a trainer / evaluator)::

    from datasets import load_dataset
    from dataset_builders import WindowedSamples, load_item_map, load_metadata

    meta = load_metadata("video-games")                     # num_items (with padding), max_length, ...
    ds = load_dataset("video-games", "split-3-2-5")         # rows: user_id, item_ids, target_start[, timestamps]
    train = WindowedSamples(ds["train"], meta["max_length"])  # the paper's (history, target) samples
    batch = train.batch([0, 1, 2])                          # padded input_ids / attention_mask / labels
"""

from .errors import BadLineError, DataError, DatasetBuildError, EmptyDatasetError, UnknownDatasetError
from .filtering import KCoreResult, kcore_filter
from .format import SPLIT_NAMES, config_name
from .item_ids import ItemIdMap, UnknownItemError
from .pipeline import BuiltDataset, DataStats, Sequences, SplitConfig, build_dataset, prepare_sequences
from .publish import (
    load_item_map,
    load_metadata,
    load_splits,
    load_user_map,
    push_folder_to_hub,
    render_card,
    write_hub_folder,
)
from .readers import LAYOUTS, RawInteractions, read_interactions
from .registry import DATASETS, DEFAULT_RATIOS, DatasetSpec, get_dataset_spec
from .samples import WindowedSamples, history_start, sample_positions, windowed_samples
from .splitting import parse_ratios, split_counts, split_counts_array, split_tables

__all__ = [
    "ItemIdMap",
    "UnknownItemError",
    "DATASETS",
    "DEFAULT_RATIOS",
    "LAYOUTS",
    "SPLIT_NAMES",
    "BadLineError",
    "BuiltDataset",
    "DataError",
    "DataStats",
    "DatasetBuildError",
    "DatasetSpec",
    "EmptyDatasetError",
    "KCoreResult",
    "RawInteractions",
    "Sequences",
    "SplitConfig",
    "UnknownDatasetError",
    "WindowedSamples",
    "build_dataset",
    "config_name",
    "get_dataset_spec",
    "history_start",
    "kcore_filter",
    "load_item_map",
    "load_metadata",
    "load_splits",
    "load_user_map",
    "parse_ratios",
    "prepare_sequences",
    "push_folder_to_hub",
    "read_interactions",
    "render_card",
    "sample_positions",
    "split_counts",
    "split_counts_array",
    "split_tables",
    "windowed_samples",
    "write_hub_folder",
]
