"""``--download`` code path, with the network replaced by a fake (tests never download)."""

from __future__ import annotations

import io
import urllib.request
import zipfile
from pathlib import Path

import pytest

from dataset_builders import DatasetBuildError
from dataset_builders.download import download_raw


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}

    def __enter__(self) -> _FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(autouse=True)
def no_real_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that reaches a real download fails (tests that fake one replace this in turn)."""

    def refuse(url: object, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"a test tried to download {getattr(url, 'full_url', url)}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_movielens_zip_is_fetched_and_unpacked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t2\t3\t4\n")
    urls: list[str] = []

    def fake_urlopen(url: str, timeout: float) -> _FakeResponse:
        urls.append(url)
        return _FakeResponse(buffer.getvalue())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    path = download_raw("movielens-100k", tmp_path / "raw", progress=False)
    assert urls == ["https://files.grouplens.org/datasets/movielens/ml-100k.zip"]
    assert path == tmp_path / "raw" / "u.data" and path.read_text() == "1\t2\t3\t4\n"
    assert download_raw("movielens-100k", tmp_path / "raw", progress=False) == path and len(urls) == 1  # reused


def test_failed_download_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(url: str, timeout: float) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetBuildError, match="download of https://snap.stanford.edu/.* failed: network"):
        download_raw("gowalla", tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_twitch_has_no_direct_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetBuildError, match="fetch 100k_a.csv from https://github.com/JRappaz/liverec by hand"):
        download_raw("twitch-100k", tmp_path)


def test_damaged_archive_is_a_clear_error_and_force_downloads_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "ml-100k.zip").write_bytes(b"not a zip at all")  # e.g. an interrupted or stale download
    with pytest.raises(DatasetBuildError, match=r"ml-100k.zip is damaged .* pass --force_download"):
        download_raw("movielens-100k", tmp_path, progress=False)
    assert not (tmp_path / "u.data").exists() and not (tmp_path / "u.data.part").exists()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t2\t3\t4\n")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _FakeResponse(buffer.getvalue()))
    path = download_raw("movielens-100k", tmp_path, force=True, progress=False)
    assert path.read_text() == "1\t2\t3\t4\n"


def test_download_into_a_file_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "loc-gowalla_totalCheckins.txt.gz"
    raw.write_bytes(b"data")
    with pytest.raises(DatasetBuildError, match="is a file; with --download, --raw names the folder"):
        download_raw("gowalla", raw, progress=False)
    assert raw.read_bytes() == b"data"
