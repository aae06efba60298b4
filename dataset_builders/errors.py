"""The errors the builders raise: each names the problem and, for raw input, the file and line."""

from __future__ import annotations

__all__ = ["BadLineError", "DataError", "DatasetBuildError", "EmptyDatasetError", "UnknownDatasetError", "one_line"]


class DatasetBuildError(ValueError):
    """Base class of every error a dataset builder raises on bad input or settings."""


class BadLineError(DatasetBuildError):
    """A raw line that cannot be read: wrong number of fields, a missing id, or an unparsable time."""

    def __init__(self, path: str, line: int, reason: str, text: str | None = None, unit: str = "line") -> None:
        self.path = path
        self.line = line
        self.reason = reason
        self.text = text
        shown = "" if text is None else f": {text[:200]!r}"
        super().__init__(
            f"{path}, {unit} {line}: {reason}{shown} "
            f"(pass --skip_bad_lines / skip_bad_lines=True to skip such {unit}s)"
        )


class EmptyDatasetError(DatasetBuildError):
    """Nothing is left to build from: an empty file, or k-core filtering removed every interaction."""


class UnknownDatasetError(DatasetBuildError, KeyError):
    """A data set or layout name that the registry does not know; the message lists the choices."""

    def __str__(self) -> str:  # KeyError would otherwise print the message with quotes around it
        return str(self.args[0])


class DataError(ValueError):
    """A published data set that cannot be used as given (the message says what is wrong and how to fix it)."""


def one_line(error: BaseException) -> str:
    """The error's message on one line (how the command lines print an error)."""
    return " ".join(str(error).split()) or type(error).__name__
