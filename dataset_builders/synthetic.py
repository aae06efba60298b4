"""Synthetic raw files in the Gowalla (SNAP) layout, for scale benchmarks.

The real ``loc-gowalla_totalCheckins.txt.gz`` has 6,442,890 check-ins of 107,092 users at 1,280,969 locations,
with the usual long tails: a few users check in thousands of times, most a handful; a few places are very
popular, most are visited once. :func:`write_synthetic_gowalla` draws a file of the same size and shape
(log-normal user activity, Zipf-like location popularity) so the builders can be timed without the real file.
:func:`rows_for_catalog` sizes a file whose catalog keeps a given number of items through the builders' item filter
(a million-item catalog: ``scripts/make_synthetic_gowalla.py --catalog 1000000``).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import polars as pl

__all__ = ["rows_for_catalog", "write_synthetic_gowalla"]


def rows_for_catalog(num_items: int, min_count: int = 10, zipf_exponent: float = 0.5) -> int:
    """The number of check-ins at which the least popular of ``num_items`` locations (popularity
    ``rank ** -zipf_exponent``) expects ``min_count`` of them: about every location then passes an item filter of
    half that count (Gowalla's is 5), so the built catalog has about ``num_items`` items. With the default
    exponent 0.5 (flatter than Gowalla's 0.9, which would need 76 M rows for a million items), a million items
    need 20 M rows."""
    weights = np.arange(1, num_items + 1, dtype=np.float64) ** -zipf_exponent
    return int(np.ceil(min_count * weights.sum() / weights[-1]))


def write_synthetic_gowalla(
    path: str | Path,
    num_rows: int = 6_400_000,
    num_users: int = 107_000,
    num_items: int = 1_280_000,
    zipf_exponent: float = 0.9,
    seed: int = 0,
    compresslevel: int = 1,
) -> Path:
    """Write ``num_rows`` synthetic check-ins in the SNAP Gowalla layout and return the path.

    Each line is ``user<TAB>YYYY-MM-DDTHH:MM:SSZ<TAB>latitude<TAB>longitude<TAB>location_id``; like the real
    file, each user's lines are contiguous and newest first. User activity is log-normal (median about 20
    check-ins, heavy right tail); a check-in's location is drawn with probability proportional to
    ``rank ** -zipf_exponent``. The file is gzip-compressed when ``path`` ends in ``.gz``.

    Args:
        path: Where to write the file.
        num_rows: Number of check-ins (lines).
        num_users: Number of distinct users.
        num_items: Number of candidate locations (not all are drawn).
        zipf_exponent: Exponent of the location popularity law.
        seed: Seed of the random generator; the same arguments give the same file.
        compresslevel: gzip level for ``.gz`` output (1 is fast and still small enough).

    Raises:
        ValueError: ``num_rows`` is smaller than ``num_users``.
    """
    if num_rows < num_users:
        raise ValueError(
            f"num_rows ({num_rows:,}) must be at least num_users ({num_users:,}): every user has a check-in; "
            "ask for fewer users (--users)"
        )
    rng = np.random.default_rng(seed)
    # User activity: log-normal weights, scaled so that the counts sum to num_rows and every user has one.
    weights = rng.lognormal(mean=0.0, sigma=1.3, size=num_users)
    counts = np.floor(weights / weights.sum() * (num_rows - num_users)).astype(np.int64) + 1
    counts[: num_rows - counts.sum()] += 1  # hand out the rounding remainder
    users = np.repeat(np.arange(num_users, dtype=np.int64), counts)
    # Location popularity: Zipf-like over a random permutation of ids, sampled by inverse CDF.
    cdf = np.cumsum(np.arange(1, num_items + 1, dtype=np.float64) ** -zipf_exponent)
    ranks = np.searchsorted(cdf, rng.random(num_rows) * cdf[-1])
    items = rng.permutation(num_items)[np.minimum(ranks, num_items - 1)] + 8_900
    # Times: uniform over Feb 2009 - Oct 2010, newest first within each user (as in the SNAP file).
    seconds = rng.integers(1_233_446_400, 1_288_569_600, size=num_rows)
    order = np.lexsort((-seconds, users))
    frame = pl.DataFrame(
        {
            "user": users,
            "time": pl.Series(seconds[order] * 1_000_000).cast(pl.Datetime("us")),
            "lat": np.round(rng.uniform(-60, 70, num_rows), 6),
            "lon": np.round(rng.uniform(-180, 180, num_rows), 6),
            "item": items[order],
        }
    ).with_columns(pl.col("time").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return _write_lines(Path(path), frame.write_csv(separator="\t", include_header=False).encode(), compresslevel)


def _write_lines(path: Path, data: bytes, compresslevel: int) -> Path:
    """Write ``data`` to ``path``, gzip-compressed when it ends in ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb", compresslevel=compresslevel) as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path
