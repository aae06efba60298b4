"""``--download``: fetch a data set's official raw file (for users with internet; never run in the tests)."""

from __future__ import annotations

import logging
import shutil
import urllib.request
import zipfile
from pathlib import Path

from .errors import DatasetBuildError
from .registry import get_dataset_spec

__all__ = ["download_raw"]

logger = logging.getLogger(__name__)


def download_raw(name: str, dest_dir: str | Path, *, force: bool = False, progress: bool = True) -> Path:
    """Download the official raw file of data set ``name`` into ``dest_dir`` and return the file to build from.

    A ``.zip`` (MovieLens) is unpacked to its interactions file. An existing file is reused unless ``force``.

    Raises:
        UnknownDatasetError: ``name`` is not in the registry.
        DatasetBuildError: The data set has no direct download (Twitch-100k lives in a Google Drive folder;
            its message says where to get it), the download failed, or a downloaded archive is damaged.
    """
    spec = get_dataset_spec(name)
    if spec.url is None:
        where = f" from {spec.homepage}" if spec.homepage else ""
        raise DatasetBuildError(
            f"{name} has no direct download; fetch {spec.filename or 'the raw file'}{where} by hand and pass it "
            "with --raw"
        )
    dest_dir = Path(dest_dir)
    if dest_dir.is_file():
        raise DatasetBuildError(
            f"{dest_dir} is a file; with --download, --raw names the folder to download into (to build from this "
            "file, leave out --download)"
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    archive = dest_dir / spec.url.rsplit("/", 1)[-1]
    if force or not archive.is_file():
        partial = archive.with_name(archive.name + ".part")
        logger.info("downloading %s -> %s", spec.url, archive)
        try:
            with urllib.request.urlopen(spec.url, timeout=60) as response, open(partial, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                from tqdm.auto import tqdm

                with tqdm(total=total, unit="B", unit_scale=True, desc=archive.name, disable=not progress) as bar:
                    while block := response.read(1 << 20):
                        out.write(block)
                        bar.update(len(block))
        except OSError as err:
            partial.unlink(missing_ok=True)
            raise DatasetBuildError(f"download of {spec.url} failed: {err}") from err
        partial.replace(archive)
    if spec.archive_member is None:
        return archive
    target = dest_dir / (spec.filename or Path(spec.archive_member).name)
    if force or not target.is_file():
        partial = target.with_name(target.name + ".part")
        try:
            with zipfile.ZipFile(archive) as zf, zf.open(spec.archive_member) as src, open(partial, "wb") as out:
                shutil.copyfileobj(src, out)
        except (zipfile.BadZipFile, KeyError) as err:
            partial.unlink(missing_ok=True)
            raise DatasetBuildError(
                f"{archive} is damaged or not the expected archive ({err}); delete it or pass --force_download to "
                "download it again"
            ) from err
        partial.replace(target)
    return target
