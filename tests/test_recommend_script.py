"""`scripts/recommend.py` replays a history one item at a time and prints what a full re-read would recommend."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "recommend.py"
LINE = re.compile(r"after item +(\d+) \( *(\d+)\): top-(\d+) \[([\d, ]+)\]  \[(\d+\.\d+) ms\](  \(.*\))?")


def script_env() -> dict[str, str]:
    """The script imports `modeling_ttt4rec` from this checkout, not from an installed copy."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = TTT4RecConfig(
        num_items=50, hidden_size=16, intermediate_size=24, num_attention_heads=2, mini_batch_size=3
    )
    folder = tmp_path_factory.mktemp("ckpt")
    TTT4RecForNextItemPrediction(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("extra", [[], ["--exclude_seen", "--compile"], ["--item_chunk_size", "64"]])
def test_replay_prints_the_full_history_recommendations(checkpoint, extra):
    history = [3, 5, 7, 9, 11, 13, 5, 2]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--model_name_or_path", str(checkpoint), "--top_k", "4", "--history"]
        + [str(i) for i in history]
        + extra,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    lines = [LINE.fullmatch(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(history) and all(lines), result.stdout

    model = TTT4RecForNextItemPrediction.from_pretrained(checkpoint).eval()
    for step, match in enumerate(lines, start=1):
        assert int(match[1]) == step and int(match[2]) == history[step - 1] and int(match[3]) == 4
        prefix = torch.tensor([history[:step]])
        expected = model.recommend(prefix, top_k=4, exclude_seen="--exclude_seen" in extra).item_ids[0]
        assert [int(i) for i in match[4].split(", ")] == expected.tolist()
        assert float(match[5]) > 0


def test_unknown_item_is_a_clear_error(checkpoint):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--model_name_or_path", str(checkpoint), "--history", "3", "50"],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2
    assert "error: history item 2 (50): Item id 50 is outside [0, 50)" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("after item    1 ")  # the items before the bad one were replayed


def test_item_chunk_size_must_be_a_multiple_of_64(checkpoint):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--model_name_or_path", str(checkpoint), "--history", "3", "--item_chunk_size"]
        + ["100"],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2 and "--item_chunk_size: `item_chunk_size` must be a positive multiple of 64" in (
        result.stderr
    )
