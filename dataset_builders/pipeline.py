"""The pipeline of docs/protocol.md sections 2-5: raw interactions -> k-core -> ordered, dense-id sequences -> splits.

:func:`build_dataset` does everything from a raw file; :func:`prepare_sequences` starts from interactions that
are already read. Ids follow RecBole: after filtering, items get dense ids 1..N and users 0..M-1 in order of
first appearance in the file (0 is the item padding id), and each user's interactions are sorted by time with a
stable sort, so ties keep file order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import EmptyDatasetError
from .filtering import kcore_filter
from .format import SPLIT_NAMES, config_name
from .readers import RawInteractions, read_interactions
from .registry import DEFAULT_RATIOS, DatasetSpec, get_dataset_spec
from .splitting import parse_ratios, split_tables

__all__ = ["BuiltDataset", "DataStats", "Sequences", "SplitConfig", "build_dataset", "prepare_sequences"]

logger = logging.getLogger(__name__)


@dataclass
class DataStats:
    """Counts like the paper's Table 1."""

    users: int
    items: int
    interactions: int

    @property
    def avg_length(self) -> float:
        """Mean interactions per user."""
        return self.interactions / self.users if self.users else 0.0

    @property
    def density(self) -> float:
        """Interactions / (users x items)."""
        return self.interactions / (self.users * self.items) if self.users and self.items else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "users": self.users,
            "items": self.items,
            "interactions": self.interactions,
            "avg_length": round(self.avg_length, 2),
            "density": self.density,
        }


@dataclass
class Sequences:
    """Filtered, ordered, renumbered interactions (PROTOCOL 2-3).

    Attributes:
        seq_items: Every user's dense item ids in time order, concatenated (users in dense order).
        seq_times: Their times (``None`` when the raw data has none).
        user_offsets: ``M + 1`` offsets: user ``u``'s sequence is ``seq_items[user_offsets[u]:user_offsets[u+1]]``.
        item_map: Original id of each dense item id; index 0 (padding) is null.
        user_map: Original id of each dense user id 0..M-1.
        raw: Statistics of the raw interactions (after dropping bad lines).
        filtered: Statistics after k-core filtering.
        kcore_rounds: Rounds of k-core filtering that removed something.
    """

    seq_items: np.ndarray
    seq_times: np.ndarray | None
    user_offsets: np.ndarray
    item_map: pa.Array
    user_map: pa.Array
    raw: DataStats
    filtered: DataStats
    kcore_rounds: int


@dataclass
class SplitConfig:
    """One split ratio's published rows.

    Attributes:
        name: The configuration name, e.g. ``split-3-2-5``.
        ratios: The (train, validation, test) ratio.
        tables: ``{"train": pa.Table, "validation": ..., "test": ...}`` in the published row schema.
        samples: Windowed samples (targets) per split.
    """

    name: str
    ratios: tuple[float, float, float]
    tables: dict[str, pa.Table]
    samples: dict[str, int]

    @property
    def rows(self) -> dict[str, int]:
        """Rows (users with at least one target) per split."""
        return {split: table.num_rows for split, table in self.tables.items()}


@dataclass
class BuiltDataset:
    """A data set after the whole pipeline, ready to publish.

    Attributes:
        spec: Its registry entry (``spec.name`` is the data set's name).
        user_min, item_min, max_length: The settings used.
        source: The raw file read.
        layout: Its layout.
        has_time: Whether timestamps are published.
        sequences: The filtered, ordered, renumbered interactions.
        configs: The split configurations, by name.
        skipped_lines: Bad lines skipped while reading (``skip_bad_lines``).
        skipped_examples: Up to five ``(line, reason)`` of the skipped lines.
        seconds: Wall time of each step.
    """

    spec: DatasetSpec
    user_min: int
    item_min: int
    max_length: int
    source: str
    layout: str
    has_time: bool
    sequences: Sequences
    configs: dict[str, SplitConfig]
    skipped_lines: int = 0
    skipped_examples: list[tuple[int, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_items(self) -> int:
        """Size of the item vocabulary, padding id 0 included (N + 1): a model's ``num_items``."""
        return len(self.sequences.item_map)


def _first_appearance_codes(values: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Integer codes in order of first appearance, and the distinct values (code -> value)."""
    encoded = pc.dictionary_encode(values)
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary


def _dense_by_first_appearance(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber ``codes`` 0..K-1 in order of first appearance; return (new codes, old code of each new code)."""
    unique, first = np.unique(codes, return_index=True)
    old_of_new = unique[np.argsort(first, kind="stable")]
    new_of_old = np.empty(int(unique.max()) + 1 if unique.size else 0, dtype=np.int64)
    new_of_old[old_of_new] = np.arange(old_of_new.size)
    return new_of_old[codes], old_of_new


def prepare_sequences(
    raw: RawInteractions,
    user_min: int,
    item_min: int,
    progress: bool = False,
) -> Sequences:
    """k-core filter, order and renumber interactions (PROTOCOL 2-3).

    Raises:
        EmptyDatasetError: Nothing is left after filtering.
    """
    frame = raw.frame
    user_codes, user_values = _first_appearance_codes(frame["user"].to_arrow())
    item_codes, item_values = _first_appearance_codes(frame["item"].to_arrow())
    times = frame["time"].to_numpy() if raw.has_time else None
    raw_stats = DataStats(len(user_values), len(item_values), len(user_codes))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="k-core rounds", unit=" round", leave=False, position=1)

    def on_round(rounds: int, left: int) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(interactions=f"{left:,}")

    result = kcore_filter(user_codes, item_codes, user_min, item_min, on_round=on_round)
    if bar is not None:
        bar.close()
    keep = result.keep
    if not keep.any():
        raise EmptyDatasetError(
            f"nothing is left after k-core filtering with user minimum {user_min} and item minimum {item_min} "
            f"(raw data: {raw_stats.users:,} users, {raw_stats.items:,} items, {raw_stats.interactions:,} "
            "interactions); lower --user_min / --item_min"
        )
    user_codes, item_codes = user_codes[keep], item_codes[keep]
    times = times[keep] if times is not None else None
    users, user_old = _dense_by_first_appearance(user_codes)
    items, item_old = _dense_by_first_appearance(item_codes)
    items += 1  # 0 is padding

    # Stable chronological order per user: np.lexsort is stable, so equal (user, time) keep file order.
    order = np.lexsort((times, users)) if times is not None else np.argsort(users, kind="stable")
    counts = np.bincount(users)
    offsets = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    item_map = pa.concat_arrays([pa.nulls(1, pa.string()), item_values.take(pa.array(item_old)).cast(pa.string())])
    return Sequences(
        seq_items=items[order],
        seq_times=times[order] if times is not None else None,
        user_offsets=offsets,
        item_map=item_map,
        user_map=user_values.take(pa.array(user_old)).cast(pa.string()),
        raw=raw_stats,
        filtered=DataStats(int(counts.size), int(item_old.size), int(keep.sum())),
        kcore_rounds=result.rounds,
    )


def _named_ratios(ratios: Sequence[Sequence[float] | str]) -> dict[str, tuple[float, float, float]]:
    """The ratios, normalised, by configuration name; the same ratio twice is an error."""
    parsed = [parse_ratios(r) for r in ratios]
    names = [config_name(r) for r in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"the same split ratio is asked for twice: {names}")
    return dict(zip(names, parsed, strict=True))


def _split_configs(seq: Sequences, ratios: dict[str, tuple[float, float, float]]) -> dict[str, SplitConfig]:
    """One configuration per named ratio: its published tables and samples per split (none may be empty)."""
    configs: dict[str, SplitConfig] = {}
    for name, r in ratios.items():
        tables, counts = split_tables(seq.seq_items, seq.user_offsets, seq.user_map, r, seq_times=seq.seq_times)
        samples = {split: int(counts[:, k].sum()) for k, split in enumerate(SPLIT_NAMES)}
        empty = [split for split in SPLIT_NAMES if samples[split] == 0]
        if empty:
            raise EmptyDatasetError(
                f"configuration {name}: the {' and '.join(empty)} split has no samples ({seq.filtered.users:,} users "
                "after filtering); an empty split cannot be published or loaded. Raise --user_min / user_min "
                "(each user needs enough interactions to reach every split) or change the ratios"
            )
        configs[name] = SplitConfig(name, r, tables, samples)
    return configs


def build_dataset(
    dataset: str,
    raw_path: str | Path,
    *,
    user_min: int | None = None,
    item_min: int | None = None,
    max_length: int | None = None,
    ratios: Sequence[Sequence[float] | str] = DEFAULT_RATIOS,
    skip_bad_lines: bool = False,
    layout: str | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = "timestamp",
    separator: str = ",",
    progress: bool = False,
) -> BuiltDataset:
    """Run docs/protocol.md sections 1-5 on a raw file: read, k-core filter, order, renumber and split.

    Args:
        dataset: A registry name (see :data:`dataset_builders.DATASETS`); it sets the layout and the defaults.
        raw_path: The raw file (plain or gzip).
        user_min, item_min, max_length: Override the data set's defaults (PROTOCOL 2 and 4).
        ratios: One configuration per ratio; default ``(0.3, 0.2, 0.5)`` and ``(0.6, 0.2, 0.2)``.
        skip_bad_lines: Skip (and count) unreadable lines instead of raising.
        layout: Read the file as this layout instead of the data set's own.
        user_col, item_col, time_col, separator: Column names for the ``csv`` / ``parquet`` layouts.
        progress: Show tqdm progress bars.

    Raises:
        UnknownDatasetError: ``dataset`` is not in the registry (the message lists the choices).
        BadLineError: A raw line cannot be read and ``skip_bad_lines`` is off.
        EmptyDatasetError: Nothing is left after filtering, or a split of some configuration has no samples.
    """
    spec = get_dataset_spec(dataset)
    user_min = spec.user_min if user_min is None else int(user_min)
    item_min = spec.item_min if item_min is None else int(item_min)
    max_length = spec.max_length if max_length is None else int(max_length)
    for name, value in (("max_length", max_length), ("user_min", user_min), ("item_min", item_min)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value} (--{name}).")
    named_ratios = _named_ratios(ratios)
    seconds: dict[str, float] = {}
    from tqdm.auto import tqdm

    steps = tqdm(total=3, desc=f"building {spec.name}", unit=" step", disable=not progress)
    steps.set_postfix_str("reading")

    start = time.perf_counter()
    raw = read_interactions(
        raw_path,
        layout or spec.layout,
        skip_bad_lines=skip_bad_lines,
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        separator=separator,
    )
    seconds["read"] = time.perf_counter() - start
    logger.info(
        "read %s: %s interactions (%s bad lines skipped)", raw_path, f"{raw.frame.height:,}", raw.skipped_lines
    )

    steps.update()
    steps.set_postfix_str("k-core, order, ids")
    start = time.perf_counter()
    seq = prepare_sequences(raw, user_min, item_min, progress=progress)
    seconds["filter_and_order"] = time.perf_counter() - start
    filtered = seq.filtered
    logger.info(
        "k-core (user >= %d, item >= %d) in %d rounds: %s users, %s items, %s interactions",
        *(user_min, item_min, seq.kcore_rounds, f"{filtered.users:,}", f"{filtered.items:,}"),
        f"{filtered.interactions:,}",
    )

    steps.update()
    steps.set_postfix_str("splitting")
    start = time.perf_counter()
    configs = _split_configs(seq, named_ratios)
    seconds["split"] = time.perf_counter() - start
    steps.update()
    steps.close()

    return BuiltDataset(
        spec=spec,
        user_min=user_min,
        item_min=item_min,
        max_length=max_length,
        source=str(raw_path),
        layout=raw.layout,
        has_time=raw.has_time,
        sequences=seq,
        configs=configs,
        skipped_lines=raw.skipped_lines,
        skipped_examples=raw.skipped_examples,
        seconds=seconds,
    )
