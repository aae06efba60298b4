#!/usr/bin/env python
"""Write a synthetic check-in file in the SNAP Gowalla layout (6.4 million rows by default) for scale benchmarks.

    python scripts/make_synthetic_gowalla.py /tmp/ttt4rec-bench/synthetic-gowalla.txt.gz --rows 6400000
    python scripts/make_synthetic_gowalla.py /tmp/ttt4rec-bench/million.txt.gz --catalog 1000000  # 20 M rows

See ``dataset_builders.synthetic.write_synthetic_gowalla`` for the distributions and ``rows_for_catalog`` for
``--catalog``. Write it outside the repository.
"""

import argparse
import sys
import time
from collections.abc import Sequence

from dataset_builders.synthetic import rows_for_catalog, write_synthetic_gowalla

# the size of the default synthetic file (the real one's: 6.44M check-ins, 107,092 users, 1,280,969 locations)
REAL_ROWS, REAL_USERS, REAL_ITEMS = 6_400_000, 107_000, 1_280_000


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="output file (.gz for gzip)")
    parser.add_argument("--rows", type=int, default=6_400_000)
    parser.add_argument("--users", type=int, help="default: as many per check-in as the real file (107,000 at 6.4M)")
    parser.add_argument("--items", type=int, help="default: as many per check-in as the real file (1.28M at 6.4M)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zipf_exponent", type=float, default=0.9, help="location popularity ~ rank ** -exponent")
    parser.add_argument(
        "--catalog",
        type=int,
        default=None,
        help="a file whose built catalog keeps about this many items: sets --items to it and --rows by "
        "rows_for_catalog (with --zipf_exponent, default 0.5 here)",
    )
    args = parser.parse_args(argv)
    if args.catalog is not None:
        if "--zipf_exponent" not in (argv if argv is not None else sys.argv[1:]):
            args.zipf_exponent = 0.5
        args.items, args.rows = args.catalog, rows_for_catalog(args.catalog, zipf_exponent=args.zipf_exponent)
        args.users = min(args.users or REAL_USERS, args.rows)
    # a smaller file keeps the real file's shape, so that its users and locations survive the k-core filter
    args.users = args.users or max(1, args.rows * REAL_USERS // REAL_ROWS)
    args.items = args.items or max(1, args.rows * REAL_ITEMS // REAL_ROWS)
    if args.rows < args.users:
        parser.error(f"--rows ({args.rows:,}) must be at least --users ({args.users:,}): every user has a check-in")
    start = time.perf_counter()
    path = write_synthetic_gowalla(
        args.path, args.rows, args.users, args.items, zipf_exponent=args.zipf_exponent, seed=args.seed
    )
    seconds = time.perf_counter() - start
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB, {args.rows:,} rows) in {seconds:.1f} s")


if __name__ == "__main__":
    main()
