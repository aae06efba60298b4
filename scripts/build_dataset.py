#!/usr/bin/env python
"""Build a TTT4Rec benchmark dataset from a raw file and write (and optionally push) it as a Hub dataset.

Examples:
    python scripts/build_dataset.py --dataset sasrec --raw ../shared/data/amazon-video-games/Video.txt \\
        --output data/amazon-video-games
    python scripts/build_dataset.py --dataset gowalla --raw raw/ --download --output data/gowalla \\
        --push_to_hub <user>/ttt4rec-gowalla
    python scripts/build_dataset.py --dataset csv --raw my.csv --user_col user --item_col item \\
        --time_col ts --ratios 0.8,0.1,0.1 --output data/mine

All logic lives in ``dataset_builders``; see ``docs/datasets.md``.
"""

import sys

from dataset_builders.cli import main

if __name__ == "__main__":
    sys.exit(main())
