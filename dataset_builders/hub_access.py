"""Using the Hugging Face Hub to publish, for data sets and models alike: checked before any long work, and every
failure one clear `HubError` (no token, offline mode on, the Hub unreachable, the upload refused)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .errors import one_line

__all__ = ["HubError", "check_hub_access", "hub_errors"]


class HubError(RuntimeError):
    """The Hub cannot be used (no token, unreachable, offline mode): the message says what to do."""


def _token(token: str | None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubError(
            "Cannot push to the Hub: no token. Run `hf auth login`, set HF_TOKEN, or pass the token option "
            "(--hub_token / --token)."
        )
    return token


@contextlib.contextmanager
def hub_errors(action: str) -> Iterator[None]:
    """Turn the Hub client's errors inside the block into a `HubError` saying that `action` failed and why."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except OfflineModeIsEnabled as err:
        raise HubError(f"Cannot {action}: offline mode is on (HF_HUB_OFFLINE=1). Unset it to upload.") from err
    except HfHubHTTPError as err:
        raise HubError(f"The Hub refused to {action}: {one_line(err)}") from err
    except HubError:
        raise
    except Exception as err:  # connection errors of the HTTP client (httpx2) are not OSErrors
        raise HubError(
            f"Cannot reach the Hub at {constants.ENDPOINT} to {action} ({type(err).__name__}: {err}). Check the "
            "network connection or HF_ENDPOINT."
        ) from err


def check_hub_access(repo_id: str, token: str | None = None, dry_run: bool = False) -> str:
    """Check, before any long work, that a push to `repo_id` can happen: a well-formed id and a token, and unless
    `dry_run` (nothing is uploaded), offline mode off and the Hub answering with that token valid. Returns the token;
    raises a `HubError` naming the fix."""
    from huggingface_hub import HfApi, constants

    if not repo_id or repo_id.count("/") > 1 or repo_id.startswith(("/", ".")):
        raise HubError(f"{repo_id!r} is not a Hub repository id: write it as USER/NAME (or ORGANIZATION/NAME).")
    token = _token(token)
    if not dry_run:
        if constants.HF_HUB_OFFLINE:
            raise HubError("Cannot push to the Hub: offline mode is on (HF_HUB_OFFLINE=1). Unset it to upload.")
        with hub_errors(f"check the token for {repo_id!r}"):
            HfApi(token=token).whoami()
    return token
