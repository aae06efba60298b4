"""One way to turn "a local folder or a Hub repository id" into a local folder, for data sets and models alike.

A Hub id is resolved with ``huggingface_hub.snapshot_download``, which also finds the repository in the Hugging Face
cache when offline mode is on (``HF_HUB_OFFLINE=1``; ``datasets.load_dataset(repo_id)`` and a plain download do not
look there offline).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

__all__ = ["looks_like_a_path", "resolve_folder"]


# What to do about a local folder that does not exist, by repository type.
_HOW_TO_MAKE = {
    "dataset": "build it with `python scripts/build_dataset.py --dataset NAME --raw RAW_FILE --output {name}` "
    "(docs/datasets.md), or pass a Hub dataset id OWNER/NAME",
    "model": "train one with `python scripts/train.py --output_dir RUN_DIR` (the checkpoint is RUN_DIR/best_model), "
    "or pass a Hub model id OWNER/NAME",
}


def looks_like_a_path(text: str) -> bool:
    """A name meant as a local path: one that can only be a path (a Hub id is ``NAME`` or ``OWNER/NAME``), or
    ``PARENT/NAME`` where the folder ``PARENT`` exists here (``data/ml100k`` before it is built)."""
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep in text.replace("/", ""):
        return True
    return "/" in text and Path(text).parent.is_dir()


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_DATASETS_OFFLINE") == "1"


def resolve_folder(
    name: str | os.PathLike,
    repo_type: Literal["dataset", "model"],
    *,
    what: str,
    marker: str,
    revision: str | None = None,
    token: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    error: type[ValueError] = ValueError,
) -> Path:
    """The local folder of ``name``: an existing folder as is, else a Hub repository id through the local cache.

    Args:
        name: A local folder or a Hub repository id (``OWNER/NAME``).
        repo_type: ``"dataset"`` or ``"model"``.
        what: What it is, for messages (``"data set"``, ``"checkpoint"``).
        marker: The file that identifies such a folder, for messages (``"README.md"``, ``"config.json"``).
        revision, token: Passed to ``snapshot_download``.
        allow_patterns: Download only these files of the repository (all when ``None``).
        error: The exception class raised, with a message naming the problem and the fix.
    """
    path = Path(name).expanduser()
    text = str(name)
    if path.exists():
        if not path.is_dir():
            raise error(
                f"The {what} {text!r} is a file, not a folder; pass the folder that holds its {marker} (or a Hub "
                f"{repo_type} repository id)."
            )
        return path
    if looks_like_a_path(text):
        raise error(
            f"{text!r}: no such {what} folder: it does not exist (and is not a Hub repository id OWNER/NAME); "
            + _HOW_TO_MAKE[repo_type].format(name=text)
            + "."
        )
    return _download(text, repo_type, what, revision, token, allow_patterns, error)


def _download(
    repo_id: str,
    repo_type: str,
    what: str,
    revision: str | None,
    token: str | None,
    allow_patterns: Sequence[str] | None,
    error: type[ValueError],
) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = _offline()
    patterns = list(allow_patterns) if allow_patterns is not None else None
    try:
        folder = snapshot_download(
            repo_id,
            repo_type=repo_type,
            revision=revision,
            token=token,
            local_files_only=offline,
            allow_patterns=patterns,
        )
    except RepositoryNotFoundError as err:
        raise error(
            f"No {repo_type} repository {repo_id!r} on the Hub (or no access to it with this token), and no local "
            f"{what} folder of that name."
        ) from err
    except LocalEntryNotFoundError as err:
        where = "offline mode (HF_HUB_OFFLINE=1) is on" if offline else "the Hub could not be reached"
        raise error(
            f"The {repo_type} repository {repo_id!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            f"{where}; there is no local {what} folder of that name either. Download it once with network access, or "
            f"pass a local {what} folder."
        ) from err
    except HfHubHTTPError as err:
        raise error(f"Could not download the {repo_type} repository {repo_id!r}: {err}") from err
    except Exception as err:  # httpx connection errors are not OSErrors
        raise error(f"Could not reach the Hub to download the {repo_type} repository {repo_id!r}: {err!r}") from err
    return Path(folder)
