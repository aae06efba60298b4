#!/usr/bin/env python
"""Push the best model of a finished training run to the Hugging Face Hub, with its model card.

    python scripts/push_to_hub.py outputs/video --hub_model_id USER/NAME
    python scripts/push_to_hub.py outputs/video --hub_model_id USER/NAME --hub_dry_run   # prepare, upload nothing

RUN_DIR is the `--output_dir` of `scripts/train.py`: its `best_model/`, `results.json` and `run_config.json` make
the upload, prepared in `RUN_DIR/hub_upload` (what `train.py --push_to_hub` uploads at the end of a run). The token
(and, unless `--hub_dry_run`, the Hub's answer) is checked before anything is prepared. Options are snake_case
(kebab-case spellings are accepted too); `--debug` shows the traceback of an error.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_ttt4rec.training.arguments import add_option  # noqa: E402
from modeling_ttt4rec.training.cli import DEBUG_HELP, run_script  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="The --output_dir of a finished training run")
    add_option(parser, "hub_model_id", required=True, help="USER/NAME of the model repository")
    parser.add_argument(
        "--private", "--hub_private", "--hub-private", dest="hub_private", action="store_true", help="A private repo"
    )
    add_option(parser, "hub_token", default=None, help="Token (default: HF_TOKEN / hf auth login)")
    add_option(parser, "hub_dry_run", action="store_true", help="Prepare RUN_DIR/hub_upload, upload nothing")
    add_option(parser, "debug", action="store_true", help=DEBUG_HELP)
    return parser


def main(argv: list[str] | None = None) -> list[str]:
    args = build_parser().parse_args(argv)
    from modeling_ttt4rec.training.hub import push_run

    files = push_run(
        args.run_dir, args.hub_model_id, args.hub_token, private=args.hub_private, dry_run=args.hub_dry_run
    )
    what = "prepared (dry run, nothing uploaded) in" if args.hub_dry_run else "pushed to"
    target = os.path.join(args.run_dir, "hub_upload") if args.hub_dry_run else args.hub_model_id
    print(f"{len(files)} files {what} {target}: {', '.join(files)}")
    return files


if __name__ == "__main__":
    run_script(main)
