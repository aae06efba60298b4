"""The protocol's exact counts on the real Video.txt (RecBole 1.2.1 and an independent implementation agree).

Runs when ``../shared/data`` (next to the repository) has the file, and skips otherwise: CI has no real data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dataset_builders import WindowedSamples, build_dataset

DATA = Path(os.environ.get("TTT4REC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
VIDEO = DATA / "amazon-video-games" / "Video.txt"
MOVIELENS = DATA / "movielens-100k" / "u.data"


@pytest.mark.skipif(not VIDEO.is_file(), reason=f"{VIDEO} not present")
def test_video_games_sasrec_counts() -> None:
    built = build_dataset("sasrec", VIDEO)
    seq = built.sequences
    assert (seq.raw.users, seq.raw.items, seq.raw.interactions) == (31_013, 23_715, 287_107)
    assert (seq.filtered.users, seq.filtered.items, seq.filtered.interactions) == (24_303, 10_672, 231_780)
    assert built.configs["split-3-2-5"].samples == {"train": 70_497, "validation": 38_221, "test": 98_759}
    assert built.num_items == 10_673 and built.max_length == 50
    test = WindowedSamples(built.configs["split-3-2-5"].tables["test"], built.max_length)
    assert len(test) == 98_759 and int(test.history_lengths.max()) == 50


@pytest.mark.skipif(not MOVIELENS.is_file(), reason=f"{MOVIELENS} not present")
def test_movielens_100k_builds() -> None:
    built = build_dataset("movielens-100k", MOVIELENS)
    assert (built.sequences.raw.users, built.sequences.raw.items, built.sequences.raw.interactions) == (
        943,
        1_682,
        100_000,
    )
    for cfg in built.configs.values():
        assert sum(cfg.samples.values()) == built.sequences.filtered.interactions - built.sequences.filtered.users
