"""How every script ends on a user error: one line `error: ...` on stderr and exit status 2.

A user error is an exception whose message says what is wrong and how to fix it (a bad setting, a missing folder,
a data set that does not fit the model, the Hub unreachable): `USER_ERRORS`. Its traceback helps nobody, so it is
shown only with `--debug`. Any other exception is a bug and keeps its traceback. Ctrl-C ends with one line too (and,
for training, how to resume).
"""

import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from dataset_builders.errors import one_line
from dataset_builders.hub_access import HubError

T = TypeVar("T")

#: Exceptions that report a user's mistake with a message naming the fix (not a bug in the code).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # bad settings and inputs (also `DataError`, `DatasetBuildError`, `UnknownItemError`)
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    FloatingPointError,  # a diverged training run
    HubError,
)

DEBUG_FLAG = "--debug"
DEBUG_HELP = "Show the full traceback of an error (a user error is otherwise one line)"


def run_script(main: Callable[[list[str]], T], argv: Sequence[str] | None = None, interrupted: str = "") -> T:
    """`main(argv)` (without `--debug`), ending a user error with `error: MESSAGE` on stderr and exit status 2, and
    Ctrl-C with `interrupted` (what to do next) and status 130. With `--debug` every error keeps its traceback.

    A `SystemExit` with a message (e.g. `raise SystemExit("--x needs a path")`) is a user error too."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    try:
        return main(argv)
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    except SystemExit as error:
        if isinstance(error.code, str) and not debug:
            print(f"error: {one_line(error)}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted" + (f": {interrupted}" if interrupted else ""), file=sys.stderr)
        raise SystemExit(130) from None


__all__ = ["DEBUG_FLAG", "DEBUG_HELP", "USER_ERRORS", "run_script"]
