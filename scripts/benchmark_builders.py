#!/usr/bin/env python
"""Benchmark the dataset builders end to end: real data (if present) and a Gowalla-sized synthetic file.

Each build runs ``scripts/build_dataset.py`` in its own process; the wall time and the peak resident memory
(``os.wait4``'s ``ru_maxrss``) of that process are reported, with the counts from the written ``metadata.json``.
The synthetic SNAP-layout file (6.4 million check-ins by default) is written to ``--workdir`` first; writing it
is not part of the timing. Nothing is written into the repository.

    python scripts/benchmark_builders.py                      # real data from ../shared/data + synthetic Gowalla
    python scripts/benchmark_builders.py --rows 1000000 --no_real
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(script: str, args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``scripts/<script>`` with ``args``; return (wall seconds, peak RSS in MiB) of that process alone.

    This process stays small (it imports nothing heavy), so the child's peak RSS, which Linux carries over from
    the fork, is the build's own.
    """
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / script), *args], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed ({proc.returncode}): {' '.join(args)}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ttt4rec-bench"), help="scratch folder")
    parser.add_argument("--rows", type=int, default=6_400_000, help="rows of the synthetic Gowalla file")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="real data folder")
    parser.add_argument("--no_real", "--no-real", action="store_true", help="skip the real-data builds")
    parser.add_argument("--regenerate", action="store_true", help="rewrite the synthetic file even if present")
    args = parser.parse_args()

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    args.workdir.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, list[str]]] = []
    if not args.no_real:
        for name, rel in (("sasrec", "amazon-video-games/Video.txt"), ("movielens-100k", "movielens-100k/u.data")):
            if (args.data / rel).is_file():
                jobs.append((name, ["--dataset", name, "--raw", str(args.data / rel)]))
            else:
                print(f"skipping {name}: {args.data / rel} not found")
    synthetic = args.workdir / f"synthetic-gowalla-{args.rows}.txt.gz"
    if args.regenerate or not synthetic.is_file():
        run_script("make_synthetic_gowalla.py", [str(synthetic), "--rows", str(args.rows)], env)
    jobs.append(("gowalla", ["--dataset", "gowalla", "--raw", str(synthetic)]))

    rows = []
    for name, job in jobs:
        out = args.workdir / f"out-{name}"
        wall, rss = run_script("build_dataset.py", [*job, "--output", str(out), "--no_progress", "-q"], env)
        # the file name written out: importing dataset_builders here would grow this process (see run_script)
        meta = json.loads((out / "metadata.json").read_text())
        rows.append((name, Path(job[3]).name, meta, wall, rss))

    print(
        "\n| data set | raw file | raw users / items / interactions | filtered users / items / interactions "
        "| split-3-2-5 train / val / test samples | split-6-2-2 train / val / test samples | wall | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, raw_name, meta, wall, rss in rows:
        raw, flt = meta["raw"], meta["filtered"]

        def samples(config: str, meta: dict = meta) -> str:
            s = meta["configs"][config]["samples"]
            return f"{s['train']:,} / {s['validation']:,} / {s['test']:,}"

        print(
            f"| {name} (U={meta['user_min']}, I={meta['item_min']}, L={meta['max_length']}) | {raw_name} "
            f"| {raw['users']:,} / {raw['items']:,} / {raw['interactions']:,} "
            f"| {flt['users']:,} / {flt['items']:,} / {flt['interactions']:,} "
            f"| {samples('split-3-2-5')} | {samples('split-6-2-2')} | {wall:.1f} s | {rss:,.0f} MiB |"
        )


if __name__ == "__main__":
    main()
