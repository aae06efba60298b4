"""Readers of every raw layout (docs/protocol.md section 1), plain and gzip, and their errors on bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl
import pytest
from dataset_fixtures import format_lines, write_raw

from dataset_builders import BadLineError, DatasetBuildError, EmptyDatasetError, UnknownDatasetError, read_interactions

RECORDS = [
    ("u1", "100", 1_287_532_527),
    ("u2", "200", 1_287_500_000),
    ("u1", "300", 1_287_400_000),
    ("u3", "100", 1_287_532_527),
    ("u2", "100", 1_287_300_000),
]

# (file layout used to write, layout name passed to the reader, has time)
LAYOUT_CASES = [
    ("gowalla", "gowalla", True),
    ("twitch-100k", "twitch-100k", True),
    ("amazon-ratings", "amazon-ratings", True),
    ("sasrec", "sasrec", False),
    ("movielens-100k", "movielens", True),
    ("movielens-1m", "movielens", True),
    ("csv", "csv", True),
]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize(("written", "layout", "has_time"), LAYOUT_CASES, ids=[c[0] for c in LAYOUT_CASES])
def test_reader_plain_and_gzip(tmp_path: Path, written: str, layout: str, has_time: bool, gz: bool) -> None:
    path = write_raw(tmp_path / "raw.txt", format_lines(RECORDS, written), gz=gz)
    raw = read_interactions(path, layout)
    assert raw.has_time == has_time
    assert raw.frame["user"].to_list() == [u for u, _, _ in RECORDS]  # file order kept
    assert raw.frame["item"].to_list() == [i for _, i, _ in RECORDS]
    if has_time:
        assert raw.frame["time"].to_list() == [t for _, _, t in RECORDS]
        assert raw.frame["time"].dtype == pl.Int64
    else:
        assert "time" not in raw.frame.columns
    assert raw.num_lines == len(RECORDS) and raw.skipped_lines == 0


def test_gzip_is_detected_by_content_not_name(tmp_path: Path) -> None:
    path = tmp_path / "u.data"  # gzip bytes without a .gz suffix
    path.write_bytes(gzip.compress("\n".join(format_lines(RECORDS, "movielens-100k")).encode()))
    assert read_interactions(path, "movielens").frame.height == len(RECORDS)


def test_blank_lines_and_crlf_are_tolerated(tmp_path: Path) -> None:
    lines = format_lines(RECORDS, "amazon-ratings")
    path = tmp_path / "ratings.csv"
    path.write_bytes(("\r\n".join(lines[:2] + [""] + lines[2:]) + "\r\n\r\n").encode())
    raw = read_interactions(path, "amazon-ratings")
    assert raw.frame["time"].to_list() == [t for _, _, t in RECORDS]


def test_sasrec_accepts_any_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "Video.txt"
    path.write_text("1 10\n1\t11\n  2   12  \n")
    raw = read_interactions(path, "sasrec")
    assert raw.frame.rows() == [("1", "10"), ("1", "11"), ("2", "12")]


def test_wrong_field_count_names_file_and_line(tmp_path: Path) -> None:
    lines = format_lines(RECORDS, "gowalla")
    lines[2] = "u1\t2010-10-19T23:55:27Z\t30.2\t300"  # 4 fields instead of 5
    path = write_raw(tmp_path / "loc-gowalla_totalCheckins.txt", lines, gz=True)
    with pytest.raises(BadLineError) as info:
        read_interactions(path, "gowalla")
    message = str(info.value)
    assert str(path) in message and "line 3" in message and "expected 5 fields" in message and "found 4" in message
    assert info.value.line == 3


@pytest.mark.parametrize(
    ("layout", "written", "bad_line", "bad_time"),
    [
        ("gowalla", "gowalla", "u1\t2010-13-45 noon\t30.2\t-97.7\t300", "2010-13-45 noon"),
        ("twitch-100k", "twitch-100k", "u1,300,someone,soon,12", "soon"),
        ("movielens", "movielens-1m", "7::300::4::yesterday", "yesterday"),
    ],
)
def test_unparsable_time_names_file_and_line(
    tmp_path: Path, layout: str, written: str, bad_line: str, bad_time: str
) -> None:
    lines = format_lines(RECORDS, written)
    lines.insert(1, "")  # blank lines still count for the line number
    lines.insert(3, bad_line)
    path = write_raw(tmp_path / "raw.txt", lines)
    with pytest.raises(BadLineError, match=rf"raw.txt, line 4: unparsable time {bad_time}"):
        read_interactions(path, layout)


def test_skip_bad_lines_counts_them(tmp_path: Path) -> None:
    lines = format_lines(RECORDS, "amazon-ratings")
    lines[1] = "u2,200,5.0"  # 3 fields
    lines.append("u9,900,5.0,not-a-time")
    lines.append(",900,5.0,1287300000")  # empty user id
    path = write_raw(tmp_path / "ratings.csv", lines)
    raw = read_interactions(path, "amazon-ratings", skip_bad_lines=True)
    assert raw.skipped_lines == 3
    assert [line for line, _ in raw.skipped_examples] == [2, 6, 7]
    assert raw.frame.height == len(RECORDS) - 1
    assert raw.num_lines == len(lines)


def test_nothing_readable_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("\n\n")
    with pytest.raises(EmptyDatasetError, match="no interactions"):
        read_interactions(path, "sasrec")


def test_unknown_layout_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(UnknownDatasetError, match="choose one of: gowalla, twitch-100k"):
        read_interactions(tmp_path / "x", "netflix")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetBuildError, match="not found"):
        read_interactions(tmp_path / "nope.csv", "amazon-ratings")
    with pytest.raises(DatasetBuildError, match="is a folder: pass the raw file inside it, or add --download"):
        read_interactions(tmp_path, "amazon-ratings")


@pytest.mark.parametrize("layout", ["amazon-ratings", "csv"])
def test_bytes_that_are_not_utf8_are_bad_lines_not_merged_ids(tmp_path: Path, layout: str) -> None:
    """Two users whose ids differ only in bytes that are not UTF-8 must not silently become one user."""
    rows = [b"a\xff,x,5.0,1", b"a\xfe,y,5.0,2", b"b,x,5.0,3", b"caf\xc3\xa9,y,5.0,4", b"c\xef\xbf\xbd,x,5.0,5"]
    header = b"user_id,item_id,rating,timestamp\n" if layout == "csv" else b""
    if layout == "csv":
        rows[2] = b'"b",x,5.0,3'  # a quoted field: the CSV parser path
    path = tmp_path / "latin1.csv"
    path.write_bytes(header + b"\n".join(rows) + b"\n")
    first = 2 if layout == "csv" else 1
    with pytest.raises(BadLineError, match=rf"line {first}: not valid UTF-8 text \(re-encode the file as UTF-8"):
        read_interactions(path, layout)
    raw = read_interactions(path, layout, skip_bad_lines=True)
    # In a file that is not UTF-8, a U+FFFD cannot be told from a replaced byte: that line is bad as well.
    assert raw.frame["user"].to_list() == ["b", "café"] and raw.skipped_lines == 3
    valid = tmp_path / "valid.csv"
    valid.write_bytes(header + b"c\xef\xbf\xbd,x,5.0,5\n")  # a real U+FFFD in a UTF-8 file is an ordinary character
    assert read_interactions(valid, layout).frame["user"].to_list() == ["c\ufffd"]


@pytest.mark.parametrize("kind", ["bz2", "xz"])
def test_bzip2_and_xz_are_decompressed(tmp_path: Path, kind: str) -> None:
    import bz2
    import lzma

    data = "\n".join(format_lines([("u", "i", 7), ("u", "j", 8)], "amazon-ratings")).encode()
    path = tmp_path / "ratings.csv.compressed"
    path.write_bytes(bz2.compress(data) if kind == "bz2" else lzma.compress(data))
    assert read_interactions(path, "amazon-ratings").frame.rows() == [("u", "i", 7), ("u", "j", 8)]
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DatasetBuildError, match=f"not a readable {'bzip2' if kind == 'bz2' else 'xz'} file"):
        read_interactions(path, "amazon-ratings")


def test_a_zip_archive_is_refused_with_what_to_do(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t2\t3\t4\n")
    with pytest.raises(DatasetBuildError, match="is a zip archive, not an interaction file: extract it .* --download"):
        read_interactions(path, "movielens")


def test_a_utf8_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfuser_id,item_id,timestamp\na,x,1\n")
    assert read_interactions(path, "csv").frame.rows() == [("a", "x", 1)]


def test_generic_csv_named_columns_and_datetimes(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("ts,who,what\n2020-01-02T00:00:00,a,x\n2020-01-01T00:00:00,a,y\n1577836800,b,x\n")
    raw = read_interactions(path, "csv", user_col="who", item_col="what", time_col="ts")
    assert raw.frame.rows() == [("a", "x", 1577923200), ("a", "y", 1577836800), ("b", "x", 1577836800)]


def test_generic_csv_quoted_fields(tmp_path: Path) -> None:
    path = tmp_path / "quoted.csv"
    path.write_text('user_id,item_id,timestamp\n"a,1","x",5\n"b","y",6\n"c","z",later\n')
    raw = read_interactions(path, "csv", skip_bad_lines=True)
    assert raw.frame.rows() == [("a,1", "x", 5), ("b", "y", 6)]
    assert raw.skipped_examples == [(4, "unparsable time later")]


def test_generic_csv_without_time_and_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("user_id,item_id\na,x\na,y\n")
    raw = read_interactions(path, "csv", time_col=None)
    assert not raw.has_time and raw.frame.rows() == [("a", "x"), ("a", "y")]
    with pytest.raises(DatasetBuildError, match=r"line 1: no column named \['timestamp'\]"):
        read_interactions(path, "csv")


def test_generic_parquet(tmp_path: Path) -> None:
    path = tmp_path / "mine.parquet"
    pl.DataFrame(
        {"u": [1, 1, 2], "i": [10, 11, 10], "t": pl.Series([3.0, 1.0, 2.5])}  # 2.5 is not a whole time
    ).write_parquet(path)
    with pytest.raises(BadLineError, match="row 3: unparsable time 2.5"):
        read_interactions(path, "parquet", user_col="u", item_col="i", time_col="t")
    raw = read_interactions(path, "parquet", user_col="u", item_col="i", time_col="t", skip_bad_lines=True)
    assert raw.frame.rows() == [("1", "10", 3), ("1", "11", 1)]
    dated = tmp_path / "dated.parquet"
    pl.DataFrame(
        {"user_id": ["a"], "item_id": ["x"], "timestamp": pl.Series(["2020-01-01"]).str.to_date()}
    ).write_parquet(dated)
    assert read_interactions(dated, "parquet").frame["time"].to_list() == [1577836800]


def test_synthetic_generator_needs_a_row_per_user(tmp_path: Path) -> None:
    from dataset_builders.synthetic import write_synthetic_gowalla

    with pytest.raises(ValueError, match=r"num_rows \(1,000\) must be at least num_users \(5,000\)"):
        write_synthetic_gowalla(tmp_path / "s.txt", num_rows=1_000, num_users=5_000)
    path = write_synthetic_gowalla(tmp_path / "s.txt", num_rows=1_000, num_users=100, num_items=500)
    raw = read_interactions(path, "gowalla")
    assert raw.frame.height == 1_000 and raw.frame["user"].n_unique() == 100


def test_synthetic_catalog_keeps_about_the_asked_items(tmp_path: Path) -> None:
    """`rows_for_catalog` sizes a file in which nearly every location of the catalog passes a 5-check-in filter."""
    from dataset_builders.synthetic import rows_for_catalog, write_synthetic_gowalla

    rows = rows_for_catalog(2_000, zipf_exponent=0.5)
    # 10 * sum(r ** -0.5, r <= 2000) / 2000 ** -0.5, the sum about 2 sqrt(2000) - 1.46 = 88.0
    assert 39_000 < rows < 40_000
    path = write_synthetic_gowalla(
        tmp_path / "s.txt", num_rows=rows, num_users=500, num_items=2_000, zipf_exponent=0.5
    )
    counts = read_interactions(path, "gowalla").frame["item"].value_counts()["count"]
    assert (counts >= 5).sum() >= 0.97 * 2_000
