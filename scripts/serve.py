"""Serve recommendations over HTTP, keeping every user's test-time-trained state (docs/serving.md).

python scripts/serve.py --model path/or/hub-id                                   # SQLite file ttt4rec_states.db
python scripts/serve.py --model path/or/hub-id --store redis://127.0.0.1:6379/0  # several servers, one Redis

Options are snake_case (kebab-case spellings are accepted too). A mistake (a mistyped checkpoint path, an unknown
store option, a store of another checkpoint or one that cannot be reached) ends with one line `error: ...` (exit
status 2) before the server starts; `--debug` shows the traceback.
"""

import argparse

import torch
import uvicorn

from modeling_ttt4rec.serving.app import build_engine, create_app
from modeling_ttt4rec.serving.engine import LRU_SIZE, MAX_BATCH, MAX_WAIT_MS
from modeling_ttt4rec.serving.state import STATE_DTYPES
from modeling_ttt4rec.serving.store import CheckpointMismatch, StoreUnavailable
from modeling_ttt4rec.training.arguments import add_option
from modeling_ttt4rec.training.cli import DEBUG_HELP, run_script


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_option(parser, "model", required=True, help="a save_pretrained folder (with item_map.parquet) or Hub id")
    add_option(parser, "store", default="sqlite:///ttt4rec_states.db", help="sqlite:///PATH or redis://HOST:PORT/DB")
    add_option(parser, "host", default="127.0.0.1", help="address to listen on")
    add_option(parser, "port", type=int, default=8000, help="port to listen on")
    add_option(parser, "state_dtype", default="float32", choices=sorted(STATE_DTYPES), help="stored float format")
    add_option(parser, "max_batch", type=int, default=MAX_BATCH, help="most operations in one micro-batch")
    add_option(
        parser,
        "max_wait_ms",
        type=float,
        default=MAX_WAIT_MS,
        help="longest wait for more operations once one is queued (0: a batch is what queued during the last step)",
    )
    add_option(
        parser,
        "lru_size",
        type=int,
        default=LRU_SIZE,
        help="user states kept in memory with their cache rows (0: none; 68 KB each for the default model)",
    )
    add_option(parser, "max_items", type=int, default=256, help="most items in one event")
    add_option(parser, "log_level", default="warning", help="uvicorn's log level")
    add_option(parser, "torch_threads", type=int, default=1, help="torch's threads (1 leaves a core to the HTTP loop)")
    add_option(parser, "debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.torch_threads)

    try:
        engine = build_engine(
            args.model,
            args.store,
            state_dtype=args.state_dtype,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            lru_size=args.lru_size,
        )
    except (CheckpointMismatch, StoreUnavailable) as error:
        raise SystemExit(str(error)) from error
    app = create_app(engine, max_items=args.max_items)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    run_script(main)
