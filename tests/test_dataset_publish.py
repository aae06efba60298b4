"""The published Hub dataset folder: offline loading, id maps, card statistics, the CLI and its errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from dataset_fixtures import format_lines, reference_kcore, reference_samples, write_raw

from dataset_builders import (
    DATASETS,
    EmptyDatasetError,
    UnknownDatasetError,
    WindowedSamples,
    build_dataset,
    get_dataset_spec,
    load_item_map,
    load_metadata,
    load_splits,
    load_user_map,
    push_folder_to_hub,
    write_hub_folder,
)
from dataset_builders.cli import main, summary_table

USER_MIN, ITEM_MIN, L = 4, 2, 5  # small settings for the fixture


def _records(seed: int = 0) -> list[tuple[str, str, int]]:
    """30 users with 1-25 interactions on 40 items, with many equal times (ties)."""
    rng = random.Random(seed)
    records = []
    for u in range(30):
        for _ in range(rng.randint(1, 25)):
            records.append((f"user{u:02d}", f"loc{rng.randint(0, 39)}", 1_287_000_000 + 3600 * rng.randint(0, 9)))
    rng.shuffle(records)
    return records


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str, int]]]:
    tmp = tmp_path_factory.mktemp("gowalla")
    records = _records()
    raw = write_raw(tmp / "loc-gowalla_totalCheckins.txt", format_lines(records, "gowalla"), gz=True)
    out = tmp / "repo"
    args = ["--dataset", "gowalla", "--raw", str(raw), "--output", str(out), "--user_min", str(USER_MIN)]
    assert main([*args, "--item_min", str(ITEM_MIN), "--max_length", str(L), "--no_progress", "-q"]) == 0
    return out, records


def test_folder_layout(published: tuple[Path, list]) -> None:
    out, _ = published
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == [
        "README.md",
        "item_map.parquet",
        "metadata.json",
        "split-3-2-5/test-00000-of-00001.parquet",
        "split-3-2-5/train-00000-of-00001.parquet",
        "split-3-2-5/validation-00000-of-00001.parquet",
        "split-6-2-2/test-00000-of-00001.parquet",
        "split-6-2-2/train-00000-of-00001.parquet",
        "split-6-2-2/validation-00000-of-00001.parquet",
        "user_map.parquet",
    ]


@pytest.mark.parametrize("config", ["split-3-2-5", "split-6-2-2"])
def test_loads_offline_with_load_dataset_and_matches_the_protocol(published: tuple[Path, list], config: str) -> None:
    from datasets import load_dataset

    out, records = published
    ds = load_dataset(str(out), config)
    assert set(ds) == {"train", "validation", "test"}
    assert set(ds["train"].column_names) == {"user_id", "item_ids", "target_start", "timestamps"}
    item_map = load_item_map(out)
    ratios = (0.3, 0.2, 0.5) if config == "split-3-2-5" else (0.6, 0.2, 0.2)
    expected = reference_samples(records, USER_MIN, ITEM_MIN, ratios, L)
    for split in ("train", "validation", "test"):
        samples = WindowedSamples(ds[split], max_length=L)
        users = list(ds[split]["user_id"])
        got = [
            (users[samples[i]["row"]], [item_map[x] for x in samples.history(i)], item_map[samples[i]["target"]])
            for i in range(len(samples))
        ]
        assert got == expected[split]


def test_default_config_is_3_2_5(published: tuple[Path, list]) -> None:
    out, _ = published
    default = load_splits(out)
    explicit = load_splits(out, "split-3-2-5")
    assert default["test"]["item_ids"][:] == explicit["test"]["item_ids"][:]


def test_id_maps_round_trip(published: tuple[Path, list]) -> None:
    out, records = published
    item_map, user_map = load_item_map(out), load_user_map(out)
    assert item_map[0] is None and len(item_map) == len(set(item_map))
    kept = reference_kcore(records, USER_MIN, ITEM_MIN)
    assert sorted(item_map[1:]) == sorted({i for _, i, _ in kept})
    assert user_map == list(dict.fromkeys(u for u, _, _ in kept))  # dense user order = first appearance
    # The test row of each user is its whole filtered history: back to the original ids, in stable time order.
    test = load_splits(out, "split-3-2-5")["test"]
    for row in test:
        mine = [(t, pos, i) for pos, (u, i, t) in enumerate(kept) if u == row["user_id"]]
        assert [item_map[x] for x in row["item_ids"]] == [i for _, _, i in sorted(mine)]
        assert row["timestamps"] == [t for t, _, _ in sorted(mine)]


def test_metadata(published: tuple[Path, list]) -> None:
    out, records = published
    meta = load_metadata(out)
    kept = reference_kcore(records, USER_MIN, ITEM_MIN)
    assert meta["dataset"] == "gowalla"
    assert meta["num_items"] == len({i for _, i, _ in kept}) + 1 == len(load_item_map(out))
    assert (meta["max_length"], meta["user_min"], meta["item_min"]) == (L, USER_MIN, ITEM_MIN)
    assert meta["configs"]["split-3-2-5"]["ratios"] == [0.3, 0.2, 0.5]
    assert meta["default_config"] == "split-3-2-5" and meta["has_timestamps"] is True
    assert json.loads((out / "metadata.json").read_text()) == meta


def _card_row(card: str, label: str) -> list[str]:
    line = next(line for line in card.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def _number(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_card_statistics_match_the_data(published: tuple[Path, list]) -> None:
    from huggingface_hub import DatasetCard

    out, records = published
    card = (out / "README.md").read_text()
    configs = DatasetCard.load(out / "README.md").data.to_dict()["configs"]
    assert [c["config_name"] for c in configs] == ["split-3-2-5", "split-6-2-2"] and configs[0]["default"] is True

    raw = _card_row(card, "raw")
    assert [_number(c) for c in raw[:3]] == [
        len({u for u, _, _ in records}),
        len({i for _, i, _ in records}),
        len(records),
    ]
    for config in ("split-3-2-5", "split-6-2-2"):
        ds = load_splits(out, config)
        history = {}
        for split in ds:
            for row in ds[split]:
                history[row["user_id"]] = max(history.get(row["user_id"], 0), len(row["item_ids"]))
        items = {x for split in ds for row in ds[split]["item_ids"] for x in row}
        filtered = _card_row(card, "after k-core filtering")
        interactions = sum(history.values())
        assert [_number(c) for c in filtered[:3]] == [len(history), len(items), interactions]
        assert float(filtered[3]) == round(interactions / len(history), 2)
        cells = _card_row(card, f"`{config}`" + (" (default)" if config == "split-3-2-5" else ""))
        samples = [sum(len(r["item_ids"]) - r["target_start"] for r in ds[s]) for s in ("train", "validation", "test")]
        assert [_number(c) for c in cells[1:4]] == samples
        assert [_number(c) for c in cells[4:7]] == [ds[s].num_rows for s in ("train", "validation", "test")]
        assert sum(samples) == interactions - len(history)  # every user's n - 1 samples, nothing lost


def test_ties_keep_file_order(tmp_path: Path) -> None:
    records = [("a", "x1", 10), ("b", "y", 3), ("a", "x2", 5), ("a", "x3", 10), ("b", "y", 3), ("a", "x4", 10)]
    records += [("a", "x5", 7), ("a", "x0", 10)]
    path = write_raw(tmp_path / "100k_a.csv", format_lines(records, "twitch-100k"))
    built = build_dataset("twitch-100k", path, user_min=1, item_min=1)
    row = built.configs["split-3-2-5"].tables["test"].to_pylist()[0]
    item_map = built.sequences.item_map.to_pylist()
    assert row["user_id"] == "a"
    # time 5, then 7, then the four at time 10 in the order of the file (x1, x3, x4, x0)
    assert [item_map[x] for x in row["item_ids"]] == ["x2", "x5", "x1", "x3", "x4", "x0"]
    assert row["timestamps"] == [5, 7, 10, 10, 10, 10]


def test_build_errors(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "Video.txt", format_lines([("1", "2", 0), ("1", "3", 0)], "sasrec"))
    with pytest.raises(EmptyDatasetError, match="nothing is left after k-core filtering with user minimum 5"):
        build_dataset("sasrec", path)
    with pytest.raises(UnknownDatasetError, match="choose one of: gowalla"):
        build_dataset("netflix", path)
    with pytest.raises(UnknownDatasetError) as info:
        get_dataset_spec("netflix")
    assert all(name in str(info.value) for name in DATASETS)


def test_cli_unknown_dataset_lists_choices(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--dataset", "netflix", "--raw", str(tmp_path / "x"), "--output", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown data set 'netflix'" in err and "gowalla, twitch-100k, amazon-video-games, sasrec" in err


def test_cli_bad_line_and_skip_bad_lines(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    records = [(f"u{u}", f"i{i}", 1000 + u + i) for u in range(6) for i in range(6)]
    lines = format_lines(records, "amazon-ratings")
    lines[4] = "u0,i4,5.0"
    lines[9] = "u1,i3,5.0,1e3x"
    raw = write_raw(tmp_path / "ratings_Video_Games.csv", lines)
    out = tmp_path / "out"
    args = ["--dataset", "amazon-video-games", "--raw", str(raw), "--output", str(out), "--no_progress", "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count(f"{raw}, line 5: expected 4 fields separated by ',', found 3") == 1  # once, on one line
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists()
    assert main([*args, "--skip_bad_lines", "--user_min", "3", "--item_min", "3"]) == 0
    summary = capsys.readouterr().out
    skipped = next(line for line in summary.splitlines() if line.startswith("skipped bad lines"))
    assert skipped.split()[-1] == "2"
    assert "line 10: unparsable time 1e3x" in summary
    assert "split-3-2-5" in summary and "after k-core" in summary
    assert load_metadata(out)["skipped_lines"] == 2
    assert "2 unreadable raw lines were skipped" in (out / "README.md").read_text()


def test_cli_nothing_left_after_filtering(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "u.data", format_lines([("1", "1", 5), ("1", "2", 6)], "movielens-100k"))
    assert main(["--dataset", "movielens-100k", "--raw", str(raw), "--output", str(tmp_path / "o"), "-q"]) == 2
    assert "nothing is left after k-core filtering" in capsys.readouterr().err


def test_custom_ratio_and_rewrite(tmp_path: Path) -> None:
    records = [(f"u{u}", f"i{(u + k) % 7}", k) for u in range(8) for k in range(12)]
    raw = write_raw(tmp_path / "my.csv", format_lines(records, "csv"))
    out = tmp_path / "out"
    base = ["--dataset", "csv", "--raw", str(raw), "--output", str(out), "--no_progress", "-q"]
    assert main(base) == 0
    assert main([*base, "--ratios", "0.8,0.1,0.1"]) == 0  # rewrite: the old configurations go
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["split-8-1-1"]
    ds = load_splits(out, "split-8-1-1")
    assert [ds[s].num_rows for s in ("train", "validation", "test")] == [8, 8, 8]
    assert sum(len(r["item_ids"]) - r["target_start"] for r in ds["test"]) == 8  # t = 11: (9, 1, 1)


def test_refuses_a_foreign_output_folder(tmp_path: Path) -> None:
    records = [(f"u{u}", f"i{k % 5}", k) for u in range(6) for k in range(6)]
    built = build_dataset("csv", write_raw(tmp_path / "my.csv", format_lines(records, "csv")))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty and was not written by dataset_builders"):
        write_hub_folder(built, tmp_path / "out")


def test_push_uploads_the_folder(monkeypatch: pytest.MonkeyPatch, published: tuple[Path, list]) -> None:
    import huggingface_hub

    calls: list[tuple[str, dict]] = []

    class FakeApi:
        def __init__(self, token: str | None = None) -> None:
            calls.append(("init", {"token": token}))

        def create_repo(self, repo_id: str, **kwargs: object) -> None:
            calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

        def upload_folder(self, **kwargs: object) -> str:
            calls.append(("upload_folder", kwargs))
            return "https://huggingface.co/datasets/me/x/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out, _ = published
    assert push_folder_to_hub(out, "me/x", token="t", private=True).endswith("/commit/abc")
    assert calls[1] == ("create_repo", {"repo_id": "me/x", "repo_type": "dataset", "private": True, "exist_ok": True})
    upload = calls[2][1]
    assert upload["repo_type"] == "dataset" and upload["folder_path"] == str(out) and upload["repo_id"] == "me/x"


def test_loaders_read_a_cached_hub_repo_offline(
    published: tuple[Path, list], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``load_splits`` / ``load_item_map`` / ``load_metadata`` with a repo id, from the hub cache, offline."""
    import shutil

    from huggingface_hub import constants

    out, _ = published
    # a cache of this test's own: the session-wide one would already hold the repo when the test runs again
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo = tmp_path / "hub" / "datasets--someone--ttt4rec-fixture"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(out, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert load_item_map("someone/ttt4rec-fixture") == load_item_map(out)
    assert load_metadata("someone/ttt4rec-fixture") == load_metadata(out)
    ds = load_splits("someone/ttt4rec-fixture", "split-6-2-2")
    assert ds["test"]["item_ids"][:] == load_splits(out, "split-6-2-2")["test"]["item_ids"][:]


def test_the_recorded_command_never_holds_the_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import dataset_builders.cli as cli

    pushed: list[dict] = []
    monkeypatch.setattr(cli, "push_folder_to_hub", lambda folder, repo_id, **kw: pushed.append(kw) or "url")
    monkeypatch.setattr(cli, "check_hub_access", lambda repo_id, token: token)  # offline: no Hub to ask
    records = [(f"u{u}", f"i{(u + k) % 7}", k) for u in range(8) for k in range(12)]
    raw = write_raw(tmp_path / "my.csv", format_lines(records, "csv"))
    out = tmp_path / "out"
    base = ["--dataset", "csv", "--raw", str(raw), "--output", str(out), "--no_progress", "-q"]
    base += ["--push_to_hub", "me/x"]
    for token_args in (["--token", "hf_SECRET1"], ["--token=hf_SECRET2"]):
        assert main([*base, *token_args]) == 0
        assert pushed[-1]["token"] == token_args[-1].removeprefix("--token=")  # the token is used ...
        card, metadata = (out / "README.md").read_text(), (out / "metadata.json").read_text()
        assert "SECRET" not in card + metadata and "***" in card and "***" in load_metadata(out)["build_command"]
    with pytest.raises(SystemExit):  # an abbreviation would escape the redaction, so none is accepted
        main([*base, "--tok", "hf_SECRET3"])


def test_movielens_is_pushed_only_to_a_private_repo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import dataset_builders.cli as cli

    pushed: list[dict] = []
    monkeypatch.setattr(cli, "push_folder_to_hub", lambda folder, repo_id, **kw: pushed.append(kw) or "url")
    monkeypatch.setattr(cli, "check_hub_access", lambda repo_id, token: token)  # offline: no Hub to ask
    records = [(f"{u}", f"{(u + k) % 9}", k) for u in range(1, 9) for k in range(12)]
    raw = write_raw(tmp_path / "u.data", format_lines(records, "movielens-100k"))
    args = ["--dataset", "movielens-100k", "--raw", str(raw), "--output", str(tmp_path / "o"), "-q", "--no_progress"]
    with pytest.raises(SystemExit) as info:
        main([*args, "--push_to_hub", "me/ml"])
    assert info.value.code == 2 and "may not be redistributed" in capsys.readouterr().err and not pushed
    assert main([*args, "--push_to_hub", "me/ml", "--private"]) == 0
    assert pushed == [{"token": None, "private": True}]


def test_an_empty_split_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    records = [(f"u{u}", f"i{k}", k) for u in range(3) for k in range(2)]  # one sample per user: all in train
    raw = write_raw(tmp_path / "my.csv", format_lines(records, "csv"))
    with pytest.raises(EmptyDatasetError, match="split-3-2-5: the validation and test split has no samples"):
        build_dataset("csv", raw, user_min=1, item_min=1)
    assert main(["--dataset", "csv", "--raw", str(raw), "--output", str(tmp_path / "o"), "-q", "--user_min", "1"]) == 2
    assert not (tmp_path / "o").exists()


def test_ratios_that_cannot_be_named_say_why(tmp_path: Path) -> None:
    records = [(f"u{u}", f"i{(u + k) % 7}", k) for u in range(8) for k in range(12)]
    raw = write_raw(tmp_path / "my.csv", format_lines(records, "csv"))
    with pytest.raises(ValueError, match=r"split ratios \(0.333333, 0.333333, 0.333333 after dividing by their sum\)"):
        build_dataset("csv", raw, ratios=["1,1,1"])


def test_skipped_line_examples_are_listed_in_file_order(tmp_path: Path) -> None:
    records = [(f"u{u}", f"i{(u + k) % 7}", k) for u in range(8) for k in range(12)]
    lines = format_lines(records, "csv")
    for n in (3, 10, 20):
        lines[n] = "broken"
    built = build_dataset("csv", write_raw(tmp_path / "my.csv", lines), skip_bad_lines=True)
    summary = summary_table(built, tmp_path, {})
    shown = [line.split()[2] for line in summary.splitlines() if line.strip().startswith("e.g. line")]
    assert shown == ["4:", "11:", "21:"]


def test_size_categories_follow_the_hub_labels() -> None:
    from dataset_builders.publish import _size_category

    assert [_size_category(n) for n in (999, 1_000, 5 * 10**8, 2 * 10**9, 5 * 10**11, 2 * 10**12)] == [
        "n<1K",
        "1K<n<10K",
        "100M<n<1B",
        "1B<n<10B",
        "100B<n<1T",
        "n>1T",
    ]
