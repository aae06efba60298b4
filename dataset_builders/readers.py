"""Readers: one per raw layout of docs/protocol.md section 1, each giving the interactions in file order.

Every reader returns a :class:`RawInteractions` whose ``frame`` has the columns ``user`` and ``item`` (original
ids, as strings) and, where the raw data has times, ``time`` (Int64: Unix seconds, or the file's own integer
time unit), one row per interaction, in the order of the file. Nothing is de-duplicated and no rating is looked
at (PROTOCOL 1).

The work is vectorised with polars: the file (plain or gzip, detected from its first bytes) is read as lines,
the fields are split and parsed column-wise, and the lines that do not fit are found with a mask. A bad line
raises :class:`~dataset_builders.errors.BadLineError` naming the file and the line number, unless
``skip_bad_lines`` is set, in which case the count of skipped lines is returned. Blank lines are ignored.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from .errors import BadLineError, DatasetBuildError, EmptyDatasetError, UnknownDatasetError

__all__ = [
    "LAYOUTS",
    "LineLayout",
    "RawInteractions",
    "read_bytes",
    "read_interactions",
]

TimeKind = Literal["int", "iso8601", "auto"]
_ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # SNAP Gowalla: 2010-10-19T23:55:27Z


@dataclass(frozen=True)
class LineLayout:
    """A text layout with one interaction per line and fields at fixed positions.

    Attributes:
        separator: The literal field separator; with ``whitespace=True`` any run of spaces or tabs separates.
        num_fields: How many fields every line has.
        user_field, item_field: Positions (from 0) of the user and item ids.
        time_field: Position of the time, or ``None`` when the layout has no time (file order is time order).
        time_kind: ``"int"`` (an integer such as a Unix time), ``"iso8601"`` (``2010-10-19T23:55:27Z``) or
            ``"auto"`` (an integer, else any date-time polars recognises).
        whitespace: Split on runs of whitespace rather than on ``separator`` literally.
        header: The first line is a header row.
    """

    separator: str
    num_fields: int
    user_field: int
    item_field: int
    time_field: int | None
    time_kind: TimeKind | None = None
    whitespace: bool = False
    header: bool = False


#: The fixed line layouts of docs/protocol.md section 1 (``movielens`` chooses between the two MovieLens ones).
LINE_LAYOUTS: dict[str, LineLayout] = {
    # user \t 2010-10-19T23:55:27Z \t latitude \t longitude \t location_id
    "gowalla": LineLayout("\t", 5, user_field=0, item_field=4, time_field=1, time_kind="iso8601"),
    # user_id,stream_id,streamer_username,time_start,time_stop
    "twitch-100k": LineLayout(",", 5, user_field=0, item_field=1, time_field=3, time_kind="int"),
    # user,item,rating,unix_time
    "amazon-ratings": LineLayout(",", 4, user_field=0, item_field=1, time_field=3, time_kind="int"),
    # user item (each user's lines in time order)
    "sasrec": LineLayout(" ", 2, user_field=0, item_field=1, time_field=None, whitespace=True),
    # u.data: user \t item \t rating \t unix_time
    "movielens-100k": LineLayout("\t", 4, user_field=0, item_field=1, time_field=3, time_kind="int"),
    # ratings.dat: user::item::rating::unix_time
    "movielens-1m": LineLayout("::", 4, user_field=0, item_field=1, time_field=3, time_kind="int"),
}

#: Every layout name :func:`read_interactions` accepts.
LAYOUTS: tuple[str, ...] = ("gowalla", "twitch-100k", "amazon-ratings", "sasrec", "movielens", "csv", "parquet")


@dataclass
class RawInteractions:
    """The interactions of one raw file, in file order, and what was skipped on the way.

    Attributes:
        frame: Columns ``user`` (String), ``item`` (String) and, if ``has_time``, ``time`` (Int64).
        source: The file that was read.
        layout: The layout it was read as.
        has_time: Whether the raw data has times (``False`` for ``sasrec``: file order is the order).
        num_lines: Non-blank data lines (or rows) seen, skipped ones included.
        skipped_lines: How many of them were skipped as bad (only with ``skip_bad_lines``).
        skipped_examples: Up to five ``(line, reason)`` pairs of skipped lines, for the summary.
    """

    frame: pl.DataFrame
    source: str
    layout: str
    has_time: bool
    num_lines: int
    skipped_lines: int = 0
    skipped_examples: list[tuple[int, str]] = field(default_factory=list)


_DECOMPRESSORS = {b"\x1f\x8b": ("gzip", gzip.decompress), b"BZh": ("bzip2", bz2.decompress)}
_DECOMPRESSORS[b"\xfd7zXZ\x00"] = ("xz", lzma.decompress)
_ARCHIVES = {b"PK\x03\x04": "zip", b"PK\x05\x06": "zip", b"7z\xbc\xaf\x27\x1c": "7z"}
_UTF8_BOM = b"\xef\xbb\xbf"


def read_bytes(path: str | Path) -> bytes:
    """Return the contents of ``path``: decompressed if it is gzip, bzip2 or xz (told by its first bytes, not its
    name), without a leading UTF-8 byte-order mark.

    Raises:
        DatasetBuildError: The file is an archive of several files (zip, 7z), or a damaged compressed file.
    """
    data = Path(path).read_bytes()
    for magic, kind in _ARCHIVES.items():
        if data.startswith(magic):
            raise DatasetBuildError(
                f"{path} is a {kind} archive, not an interaction file: extract it and pass the interaction file "
                "inside (e.g. MovieLens's u.data or ratings.dat), or pass --download to fetch and extract the "
                "official file"
            )
    for magic, (kind, decompress) in _DECOMPRESSORS.items():
        if data.startswith(magic):
            try:
                data = decompress(data)
            except (OSError, EOFError, ValueError, lzma.LZMAError) as err:
                raise DatasetBuildError(f"{path}: not a readable {kind} file ({err}); download it again") from err
            break
    return data[len(_UTF8_BOM) :] if data.startswith(_UTF8_BOM) else data


def _is_utf8(data: bytes, block: int = 1 << 24) -> bool:
    """Whether ``data`` is valid UTF-8 (decoded in blocks, so a large file is never held twice)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    try:
        for start in range(0, len(data), block):
            decoder.decode(view[start : start + block])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _not_utf8(column: str) -> pl.Expr:
    """True where a text column holds U+FFFD: in a file that is not valid UTF-8, the mark of a replaced byte (a
    U+FFFD written in such a file cannot be told from one, so its line counts as bad too)."""
    return pl.col(column).str.contains("\ufffd", literal=True)


_NOT_UTF8_REASON = "not valid UTF-8 text (re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8)"


def read_interactions(
    path: str | Path,
    layout: str,
    *,
    skip_bad_lines: bool = False,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = "timestamp",
    separator: str = ",",
) -> RawInteractions:
    """Read a raw interaction file of the given layout (plain or gzip) into file-ordered interactions.

    Args:
        path: The raw file.
        layout: One of :data:`LAYOUTS`: ``gowalla``, ``twitch-100k``, ``amazon-ratings``, ``sasrec``,
            ``movielens`` (``u.data`` or ``ratings.dat``, told apart by the ``::`` separator), ``csv`` (a header
            row, then rows) or ``parquet``.
        skip_bad_lines: Skip lines that cannot be read (and count them) instead of raising.
        user_col, item_col, time_col: For ``csv`` and ``parquet``: the column names of the user, the item and
            the time (``time_col=None``: no time column, file order is time order). Times may be integers,
            integral floats, or date-times (converted to Unix seconds).
        separator: For ``csv``: the field separator.

    Raises:
        BadLineError: A line has the wrong number of fields, an empty id, or an unparsable time.
        EmptyDatasetError: The file holds no interactions.
        UnknownDatasetError: ``layout`` is not one of :data:`LAYOUTS`.
    """
    path = str(path)
    if layout not in LAYOUTS:
        raise UnknownDatasetError(f"unknown raw layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if not Path(path).is_file():
        if Path(path).is_dir():
            raise DatasetBuildError(
                f"{path} is a folder: pass the raw file inside it, or add --download to download into it"
            )
        raise DatasetBuildError(f"raw file not found: {path}")
    if layout == "parquet":
        return _read_parquet(path, user_col, item_col, time_col, skip_bad_lines)
    data = read_bytes(path)
    if layout == "csv":
        if b'"' in data:
            return _read_quoted_csv(path, data, separator, user_col, item_col, time_col, skip_bad_lines)
        spec = _header_layout(path, data, separator, user_col, item_col, time_col)
    elif layout == "movielens":
        first = next((line for line in data[:4096].splitlines() if line.strip()), b"")
        spec = LINE_LAYOUTS["movielens-1m" if b"::" in first else "movielens-100k"]
    else:
        spec = LINE_LAYOUTS[layout]
    return _read_lines(path, data, spec, layout, skip_bad_lines)


def _lines_frame(path: str, data: bytes) -> pl.DataFrame:
    """One row per physical line: ``line`` (1-based number) and ``text``; blank lines dropped."""
    try:
        frame = pl.read_csv(
            data,
            has_header=False,
            separator="\x1f",  # a control byte that never occurs in these files: one column per line
            quote_char=None,
            new_columns=["text"],
            schema={"text": pl.String},
            encoding="utf8-lossy",
            raise_if_empty=False,
            empty_string_is_null=False,
        )
    except pl.exceptions.PolarsError as err:
        raise DatasetBuildError(f"{path}: cannot be read as text lines ({err})") from err
    return (
        frame.with_row_index("line", offset=1)
        .with_columns(pl.col("text").str.strip_suffix("\r"))
        .filter(pl.col("text").str.strip_chars().str.len_bytes() > 0)
    )


def _header_layout(
    path: str, data: bytes, separator: str, user_col: str, item_col: str, time_col: str | None
) -> LineLayout:
    """The layout of a plain (unquoted) CSV with a header naming the user, item and time columns."""
    first = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip("\r")
    names = [name.strip() for name in first.split(separator)]
    wanted = [user_col, item_col] + ([time_col] if time_col is not None else [])
    missing = [name for name in wanted if name not in names]
    if missing:
        raise DatasetBuildError(f"{path}, line 1: no column named {missing} in the header; the columns are {names}")
    return LineLayout(
        separator,
        len(names),
        user_field=names.index(user_col),
        item_field=names.index(item_col),
        time_field=None if time_col is None else names.index(time_col),
        time_kind="auto",
        header=True,
    )


def _read_lines(path: str, data: bytes, spec: LineLayout, layout: str, skip_bad_lines: bool) -> RawInteractions:
    """Read a file of one interaction per line with fields at fixed positions (vectorised)."""
    lines = _lines_frame(path, data)
    utf8 = _is_utf8(data)
    del data
    if spec.header:
        lines = lines.filter(pl.col("line") > 1)
    text = pl.col("text")
    sep = spec.separator
    if spec.whitespace:
        text = text.str.strip_chars().str.replace_all(r"\s+", sep)
    lines = lines.with_columns(text.alias("text"))
    count = pl.col("text").str.count_matches(sep, literal=True) + 1
    fields = pl.col("text").str.split_exact(sep, spec.num_fields - 1).struct.field
    columns = {
        "user": fields(f"field_{spec.user_field}").str.strip_chars(),
        "item": fields(f"field_{spec.item_field}").str.strip_chars(),
    }
    if spec.time_field is not None:
        columns["raw_time"] = fields(f"field_{spec.time_field}").str.strip_chars()
    frame = lines.with_columns(n_fields=count, **columns)
    if spec.time_field is not None:
        frame = frame.with_columns(time=_parse_time_strings(frame["raw_time"], spec.time_kind or "auto"))
    reason = (
        pl.when(pl.lit(not utf8) & _not_utf8("text"))
        .then(pl.lit(_NOT_UTF8_REASON))
        .when(pl.col("n_fields") != spec.num_fields)
        .then(
            pl.format(
                f"expected {spec.num_fields} fields separated by {sep!r}"
                + (" (whitespace)" if spec.whitespace else "")
                + ", found {}",
                pl.col("n_fields"),
            )
        )
        .when((pl.col("user").str.len_bytes() == 0) | (pl.col("item").str.len_bytes() == 0))
        .then(pl.lit("empty user or item id"))
    )
    if spec.time_field is not None:
        reason = reason.when(pl.col("time").is_null()).then(pl.format("unparsable time {}", pl.col("raw_time")))
    frame = frame.with_columns(reason=reason.otherwise(None))
    keep = ["user", "item"] + (["time"] if spec.time_field is not None else [])
    return _drop_bad(path, layout, frame, keep, skip_bad_lines, spec.time_field is not None, "line")


def _drop_bad(
    path: str, layout: str, frame: pl.DataFrame, keep: list[str], skip_bad_lines: bool, has_time: bool, unit: str
) -> RawInteractions:
    """Raise on the first row with a ``reason`` (or drop and count them) and return the good rows."""
    bad = frame.filter(pl.col("reason").is_not_null())
    examples = [(int(row["line"]), str(row["reason"])) for row in bad.head(5).iter_rows(named=True)]
    if bad.height and not skip_bad_lines:
        first = bad.row(0, named=True)
        raise BadLineError(path, int(first["line"]), first["reason"], first.get("text"), unit=unit)
    num_lines = frame.height
    good = frame.filter(pl.col("reason").is_null()).select(keep)
    if good.height == 0:
        raise EmptyDatasetError(
            f"{path}: no interactions could be read ({num_lines} non-blank {unit}s, {bad.height} skipped as bad)"
        )
    return RawInteractions(good, path, layout, has_time, num_lines, bad.height, examples)


def _parse_time_strings(raw: pl.Series, kind: TimeKind) -> pl.Series:
    """Parse a String column of times into Int64 (null where unparsable); in ``auto`` mode numbers are taken as
    Unix seconds, so they may be mixed with date-times."""
    if kind == "iso8601":
        parsed = raw.str.to_datetime(_ISO_FORMAT, strict=False, time_unit="us")
        return parsed.dt.epoch("s").alias("time")
    as_int = raw.cast(pl.Int64, strict=False)
    if kind == "int":
        return as_int.alias("time")
    # auto: integers, integral floats (e.g. "1.2e9" or "1378425600.0"), else date-times (in Unix seconds)
    as_float = raw.cast(pl.Float64, strict=False)
    integral = as_float.is_finite() & (as_float.floor() == as_float) & (as_float.abs() < 2**62)
    from_float = pl.select(pl.when(integral).then(as_float).otherwise(None).cast(pl.Int64)).to_series()
    out = as_int.fill_null(from_float)
    rest = out.is_null() & raw.is_not_null() & as_float.is_null()
    if rest.any():
        try:
            dates = raw.str.to_datetime(strict=False, time_unit="us")
        except pl.exceptions.PolarsError:
            dates = None
        if dates is not None:
            if dates.dtype.time_zone is None:  # type: ignore[union-attr]
                dates = dates.dt.replace_time_zone("UTC")
            out = out.fill_null(dates.dt.epoch("s"))
    return out.alias("time")


def _parse_time_values(values: pl.Series) -> pl.Series:
    """Turn a time column of any dtype (integer, float, date-time, date, string) into Int64 (null: unparsable)."""
    dtype = values.dtype
    if dtype.is_integer():
        return values.cast(pl.Int64).alias("time")
    if dtype.is_float():
        integral = values.is_finite() & (values.floor() == values)
        return pl.select(pl.when(integral).then(values).otherwise(None).cast(pl.Int64)).to_series().alias("time")
    if dtype in (pl.Date,) or isinstance(dtype, pl.Datetime):
        return values.dt.epoch("s").alias("time")
    return _parse_time_strings(values.cast(pl.String), "auto")


def _check_columns(path: str, available: list[str], wanted: list[str]) -> None:
    missing = [name for name in wanted if name not in available]
    if missing:
        raise DatasetBuildError(f"{path}: no column named {missing}; the columns are {available}")


def _table_to_raw(
    path: str,
    layout: str,
    table: pl.DataFrame,
    time_col: str | None,
    skip_bad_lines: bool,
    first_line: int,
    unit: str,
    utf8: bool = True,
) -> RawInteractions:
    """Validate a (user, item[, time]) table read by a column-aware reader (Parquet, quoted CSV); ``utf8``: whether
    the source was valid UTF-8 (if not, ids holding U+FFFD came from bytes that were not)."""
    frame = table.with_row_index("line", offset=first_line).with_columns(
        pl.col("user").cast(pl.String).str.strip_chars(), pl.col("item").cast(pl.String).str.strip_chars()
    )
    reason = pl.when(pl.lit(not utf8) & (_not_utf8("user") | _not_utf8("item"))).then(pl.lit(_NOT_UTF8_REASON))
    reason = reason.when(
        pl.col("user").is_null()
        | pl.col("item").is_null()
        | (pl.col("user").str.len_bytes() == 0)
        | (pl.col("item").str.len_bytes() == 0)
    ).then(pl.lit("missing user or item id"))
    if time_col is not None:
        frame = frame.with_columns(time=_parse_time_values(frame["raw_time"]))
        reason = reason.when(pl.col("time").is_null()).then(
            pl.format("unparsable time {}", pl.col("raw_time").cast(pl.String).fill_null("(missing)"))
        )
    frame = frame.with_columns(reason=reason.otherwise(None))
    keep = ["user", "item"] + (["time"] if time_col is not None else [])
    return _drop_bad(path, layout, frame, keep, skip_bad_lines, time_col is not None, unit)


def _read_parquet(
    path: str, user_col: str, item_col: str, time_col: str | None, skip_bad_lines: bool
) -> RawInteractions:
    """A Parquet file with user, item and (optionally) time columns; bad rows are named by row number."""
    try:
        available = list(pl.read_parquet_schema(path))
    except pl.exceptions.PolarsError as err:
        raise DatasetBuildError(f"{path}: not a readable Parquet file ({err})") from err
    wanted = [user_col, item_col] + ([time_col] if time_col is not None else [])
    _check_columns(path, available, wanted)
    table = pl.read_parquet(path, columns=wanted)
    names = {user_col: "user", item_col: "item"} | ({time_col: "raw_time"} if time_col is not None else {})
    return _table_to_raw(path, "parquet", table.rename(names), time_col, skip_bad_lines, 1, "row")


def _read_quoted_csv(
    path: str, data: bytes, separator: str, user_col: str, item_col: str, time_col: str | None, skip_bad_lines: bool
) -> RawInteractions:
    """A CSV with quoted fields, read by polars's CSV parser (line numbers assume one record per line)."""
    try:
        table = pl.read_csv(data, separator=separator, infer_schema=False, encoding="utf8-lossy")
    except pl.exceptions.PolarsError as err:
        raise DatasetBuildError(f"{path}: cannot be parsed as CSV ({err})") from err
    wanted = [user_col, item_col] + ([time_col] if time_col is not None else [])
    _check_columns(path, table.columns, wanted)
    names = {user_col: "user", item_col: "item"} | ({time_col: "raw_time"} if time_col is not None else {})
    table = table.select(wanted).rename(names)
    return _table_to_raw(path, "csv", table, time_col, skip_bad_lines, 2, "line", utf8=_is_utf8(data))
