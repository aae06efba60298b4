"""The command line of ``scripts/build_dataset.py``: raw file -> Hub dataset folder (-> the Hub)."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from .errors import DatasetBuildError, one_line
from .format import SPLIT_NAMES
from .hub_access import HubError, check_hub_access
from .pipeline import BuiltDataset, build_dataset
from .publish import push_folder_to_hub, write_hub_folder
from .readers import LAYOUTS
from .registry import DATASETS, DEFAULT_RATIOS, get_dataset_spec

__all__ = ["build_parser", "main", "recorded_arguments", "summary_table"]

logger = logging.getLogger("dataset_builders")
T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``build_dataset.py``: options in snake_case, each also accepted in kebab-case."""
    parser = argparse.ArgumentParser(
        prog="build_dataset.py",
        epilog="Options are spelled with underscores (--push_to_hub); the older spellings with hyphens "
        "(--push-to-hub) are accepted too.",
        allow_abbrev=False,  # so that no abbreviation of --token escapes recorded_arguments
        description="Build a TTT4Rec benchmark dataset (docs/protocol.md sections 1-5) from a raw file and write it "
        "as a Hub dataset folder (Parquet per configuration and split, dataset card, id maps), optionally pushing it.",
    )
    parser.add_argument("--dataset", required=True, help=f"data set name; one of: {', '.join(DATASETS)}")
    parser.add_argument("--raw", required=True, type=Path, help="raw file (plain or .gz); with --download, a folder")
    parser.add_argument("--output", required=True, type=Path, help="folder to write the dataset repository to")
    parser.add_argument(
        "--push_to_hub", "--push-to-hub", metavar="REPO_ID", help="also upload the folder to this Hub dataset repo"
    )
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    parser.add_argument("--token", help="Hub token (default: the logged-in one / HF_TOKEN)")
    parser.add_argument("--user_min", "--user-min", type=int, help="k-core user minimum U (default: the data set's)")
    parser.add_argument("--item_min", "--item-min", type=int, help="k-core item minimum (default: 5)")
    parser.add_argument(
        "--max_length", "--max-length", type=int, help="maximum context length L (default: the data set's)"
    )
    parser.add_argument(
        "--ratios",
        action="append",
        metavar="TRAIN,VAL,TEST",
        help="a split ratio such as 0.3,0.2,0.5; repeat for several configurations "
        "(default: 0.3,0.2,0.5 and 0.6,0.2,0.2)",
    )
    parser.add_argument(
        "--skip_bad_lines", "--skip-bad-lines", action="store_true", help="skip unreadable lines and count them"
    )
    parser.add_argument("--download", action="store_true", help="download the official raw file into --raw first")
    parser.add_argument(
        "--force_download",
        "--force-download",
        action="store_true",
        help="with --download: download again even if the file is there",
    )
    parser.add_argument("--layout", choices=LAYOUTS, help="read the raw file as this layout")
    parser.add_argument(
        "--user_col", "--user-col", default="user_id", help="csv/parquet: user column (default user_id)"
    )
    parser.add_argument(
        "--item_col", "--item-col", default="item_id", help="csv/parquet: item column (default item_id)"
    )
    parser.add_argument(
        "--time_col",
        "--time-col",
        default="timestamp",
        help="csv/parquet: time column (default timestamp; 'none': file order)",
    )
    parser.add_argument("--separator", default=",", help="csv: field separator (default ,)")
    parser.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return parser


def recorded_arguments(argv: Sequence[str]) -> list[str]:
    """The arguments as recorded in the dataset card and ``metadata.json``: the value of ``--token`` hidden."""
    recorded: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            recorded.append("***")
        elif arg.startswith("--token="):
            recorded.append("--token=***")
        else:
            recorded.append(arg)
        hide_next = arg == "--token"
    return recorded


def summary_table(built: BuiltDataset, output: Path, seconds: dict[str, float]) -> str:
    """The summary printed at the end of a build: statistics, samples and rows per split, timings."""
    seq = built.sequences
    lines = [
        f"data set     {built.name} ({Path(built.source).name}, layout {built.layout})",
        f"settings     user min {built.user_min}, item min {built.item_min}, max length {built.max_length}",
        "",
        f"{'':<24}{'users':>12}{'items':>12}{'interactions':>15}",
        f"{'raw':<24}{seq.raw.users:>12,}{seq.raw.items:>12,}{seq.raw.interactions:>15,}",
        f"{'after k-core':<24}{seq.filtered.users:>12,}{seq.filtered.items:>12,}{seq.filtered.interactions:>15,}",
        f"{'skipped bad lines':<24}{built.skipped_lines:>12,}",
        f"{'k-core rounds':<24}{seq.kcore_rounds:>12,}",
        "",
        f"{'samples (rows)':<24}" + "".join(f"{split:>22}" for split in SPLIT_NAMES),
    ]
    for name, cfg in built.configs.items():
        cells = "".join(f"{f'{cfg.samples[s]:,} ({cfg.rows[s]:,})':>22}" for s in SPLIT_NAMES)
        lines.append(f"{name:<24}{cells}")
    lines[7:7] = [f"  e.g. line {line}: {reason}" for line, reason in built.skipped_examples]
    timing = ", ".join(f"{step} {secs:.1f} s" for step, secs in seconds.items())
    lines += ["", f"time         {timing}", f"output       {output}"]
    return "\n".join(lines)


def _timed(seconds: dict[str, float], step: str, run: Callable[[], T]) -> T:
    """``run()``, its duration recorded in ``seconds[step]``."""
    start = time.perf_counter()
    result = run()
    seconds[step] = time.perf_counter() - start
    return result


def _build_and_write(args: argparse.Namespace, ratios: list[str], command: str) -> tuple[BuiltDataset, dict]:
    """Download (with ``--download``), build and write; returns the timings."""
    seconds: dict[str, float] = {}
    progress = not args.no_progress
    raw_path = args.raw
    if args.download:
        from .download import download_raw

        raw_path = _timed(
            seconds,
            "download",
            lambda: download_raw(args.dataset, args.raw, force=args.force_download, progress=progress),
        )
    logger.info("building %s from %s", args.dataset, raw_path)
    built = build_dataset(
        args.dataset,
        raw_path,
        user_min=args.user_min,
        item_min=args.item_min,
        max_length=args.max_length,
        ratios=ratios,
        skip_bad_lines=args.skip_bad_lines,
        layout=args.layout,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=None if args.time_col.lower() == "none" else args.time_col,
        separator=args.separator,
        progress=progress,
    )
    seconds.update(built.seconds)
    _timed(seconds, "write", lambda: write_hub_folder(built, args.output, command=command, progress=progress))
    logger.info("wrote %s", args.output)
    return built, seconds


def _fail(error: Exception) -> int:
    """Print `error: MESSAGE` (one line) on stderr; the exit status of bad input."""
    print(f"error: {one_line(error)}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status: 0 ok, 2 bad arguments or input (one line `error: ...` on
    stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        spec = get_dataset_spec(args.dataset)
    except DatasetBuildError as err:
        parser.error(str(err))
    if args.push_to_hub and not args.private and not spec.redistributable:
        parser.error(f"{spec.name} may not be redistributed ({spec.licence}); add --private to push it")
    ratios = args.ratios or [",".join(f"{r:g}" for r in ratio) for ratio in DEFAULT_RATIOS]
    arguments = recorded_arguments(sys.argv[1:] if argv is None else argv)
    command = "python scripts/build_dataset.py " + shlex.join(arguments)
    start_all = time.perf_counter()
    try:
        if args.push_to_hub:  # before the build: a token, and the Hub answering
            check_hub_access(args.push_to_hub, args.token)
        built, seconds = _build_and_write(args, ratios, command)
    except (DatasetBuildError, ValueError, OSError, HubError) as err:
        return _fail(err)
    seconds["total"] = time.perf_counter() - start_all
    print(summary_table(built, args.output, seconds))
    if args.push_to_hub:  # after the summary: a failed upload leaves the written folder, which can be pushed again
        try:
            url = push_folder_to_hub(args.output, args.push_to_hub, token=args.token, private=args.private or None)
        except HubError as err:
            return _fail(err)
        print(f"pushed       {url}")
    return 0
