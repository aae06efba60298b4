"""Every shell command of the README and docs/ runs as written, in the order a reader meets it.

The commands run in a sandbox laid out like a fresh clone next to `../shared/data`: `repo/` (the working directory,
with a copy of `scripts/` and `.venv` pointing at this test's environment) and `shared/data/`, where small raw files
in the real layouts (Video.txt, MovieLens' u.data) stand in for the real data. Each fenced `bash` block runs as one
`bash -e` script, and each command written inline in the prose runs on its own; the documents share one sandbox,
so the checkpoints the README trains serve the later documents' commands.

What is not run as written is listed below, each entry with its reason, and each entry must still match the text
(so the list cannot go stale silently):
* `PLACEHOLDERS`: templates (`DATA_DIR`, `CKPT`, `[optional parts]`) get the values a reader would type;
* `BOUNDS`: measurement commands get smaller sizes (the full-size numbers are recorded in docs/benchmarks.md with
  these same commands), fixed ports become free ones, and every training command (`train.py`, `compare.py`,
  `grid_search.py`) trains at most `MAX_EPOCHS` epochs (appended `--max_epochs`, which the last one given sets);
* `INSTALLED`: the installation, which `.ci/run` performs on every clean clone (the rest of its line runs);
* `NOT_RUN`: what needs the network (a download, a Hub push), or is this test suite itself (`pytest`).
A server started by a block (`scripts/serve.py`) runs in the background until the block ends.
"""

import os
import random
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    "README.md",
    "docs/results.md",
    "docs/datasets.md",
    "docs/benchmarks.md",
    "docs/serving.md",
    "docs/protocol.md",
]

# Original item ids that documented commands type (README, docs/serving.md): the stand-in data must contain them.
TYPED_ITEM_IDS = ["7351", "20163", "18028", "1523", "877"]

PLACEHOLDERS = [  # (document, text, replacement)
    (
        "README.md",
        "scripts/serve.py --model path/to/checkpoint",
        "scripts/serve.py --model outputs/video/best_model --port {port}",
    ),
    ("docs/benchmarks.md", "--dataset DATA_DIR", "--dataset data/amazon"),
    ("docs/benchmarks.md", "--output_dir OUT", "--output_dir outputs/benchmark-sampled"),
    (
        "docs/benchmarks.md",
        "[--loss_type sampled_softmax --num_negatives 1024 --negative_sampler uniform|popularity]",
        "--loss_type sampled_softmax --num_negatives 1024 --negative_sampler popularity",
    ),
    (
        "docs/serving.md",
        "--model path/or/hub-id [--store sqlite:///PATH | redis://HOST:PORT/DB] \\\n"
        "    [--host 127.0.0.1 --port 8000] [--max_batch 64 --max_wait_ms 2] [--lru_size 100000] "
        "[--state_dtype float32]",
        "--model outputs/amazon/best_model --store sqlite:///states-template.db --host 127.0.0.1 --port {port} "
        "--max_batch 64 --max_wait_ms 2 --lru_size 100000 --state_dtype float32",
    ),
    ("docs/serving.md", "--model CKPT", "--model outputs/amazon/best_model"),
    ("docs/benchmarks.md", "--model_type MODEL", "--model_type gru4rec"),
    ("docs/benchmarks.md", "--model MODEL", "--model gru4rec"),
    ("docs/benchmarks.md", "--seed SEED", "--seed 2020"),
    ("docs/benchmarks.md", "-MODEL-SEED", "-gru4rec-2020"),
    ("docs/serving.md", "--item_ids_from CKPT", "--item_ids_from outputs/amazon/best_model"),
]

BOUNDS = [  # (document, text, replacement)
    ("README.md", "127.0.0.1:8000", "127.0.0.1:{port}"),
    ("docs/serving.md", "--port 18791", "--port {port}"),
    ("docs/serving.md", "http://127.0.0.1:18791", "http://127.0.0.1:{port}"),
    (
        "docs/serving.md",
        "--users 100000 \\\n    --prefill_items 10 --prefill_rate 1000 --rate 1 --duration 1 --max_requests 1",
        "--users 50 --prefill_items 10 --prefill_rate 500 --rate 1 --duration 1 --max_requests 1",
    ),
    ("docs/serving.md", "--users 100000 \\\n    --rate 300 --duration 20", "--users 50 --rate 100 --duration 2"),
    ("docs/serving.md", "--users 100000 \\\n    --rate 1000 --duration 30", "--users 50 --rate 100 --duration 2"),
    ("docs/benchmarks.md", "--only training --repeats 5", "--only training --repeats 1 --num_items 500 --batch 4"),
    ("docs/benchmarks.md", "--only serving      #", "--only serving --serving_repeats 2 --serving_batches 1 #"),
    (
        "docs/benchmarks.md",
        "--serving_batches 1 256 --serving_lengths 200",
        "--serving_batches 1 --serving_lengths 20",
    ),
    ("docs/benchmarks.md", "benchmark_builders.py --regenerate", "benchmark_builders.py --regenerate --rows 20000"),
    ("docs/benchmarks.md", "--items 10000 100000 1000000", "--items 1000"),
    ("docs/benchmarks.md", "synthetic-gowalla.txt.gz --rows 6400000", "synthetic-gowalla.txt.gz --rows 20000"),
    ("docs/benchmarks.md", "--catalog 1000000", "--rows 20000"),
    ("README.md", "scripts/quickstart.py", "scripts/quickstart.py --steps 20"),
    ("docs/benchmarks.md", "--only breakdown --compiled_recompute", "--only breakdown --breakdown_length 16"),
    ("docs/benchmarks.md", "torch.arange(70497)", "torch.arange(4096)"),
]

INSTALLED = [  # (document, text, replacement): the installation, which `.ci/run` performs on every clean clone
    ("README.md", 'python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ".[dev]" && ', ""),
]

MAX_EPOCHS = 2
TRAINING = re.compile(r"scripts/(train|compare|grid_search)\.py")

NOT_RUN = [  # (document, the command's beginning, why)
    ("README.md", "--download", "downloads MovieLens from its site: needs the network"),
    ("README.md", ".venv/bin/python -m pytest", "this test suite itself"),
    ("docs/datasets.md", "--download", "downloads from the data set's site and pushes to the Hub: needs the network"),
    ("docs/datasets.md", "--push_to_hub", "pushes to the Hub: needs the network and a token"),
    ("docs/serving.md", 'pip install -e ".[serve]"', "the installation of the serving extra (in the dev extra too)"),
    ("docs/benchmarks.md", "/tmp/recbole-venv/bin/python", "needs RecBole, never installed with this project"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_stand_in_data(data: Path, seed: int = 0) -> None:
    """Small raw files in the layouts of ../shared/data: 90 users over 120 items, every item read by 8 users (so all
    survive the 5-core and the sampled protocol's 99 negatives exist), the item ids the documents type among them."""
    rng = random.Random(seed)
    items = TYPED_ITEM_IDS + [str(100 + i) for i in range(120 - len(TYPED_ITEM_IDS))]
    pool = items * 8 + [rng.choice(items) for _ in range(800)]
    rng.shuffle(pool)
    cuts = sorted(rng.sample(range(1, len(pool)), 89))
    histories = [pool[a:b] for a, b in zip([0, *cuts], [*cuts, len(pool)], strict=True)]
    histories = [h + [rng.choice(items) for _ in range(6 - len(h))] for h in histories]  # at least 6 per user
    video = data / "amazon-video-games" / "Video.txt"
    video.parent.mkdir(parents=True)
    video.write_text("".join(f"{u + 1} {item}\n" for u, history in enumerate(histories) for item in history))
    movielens = data / "movielens-100k" / "u.data"
    movielens.parent.mkdir(parents=True)
    rows = [
        f"{u + 1}\t{item}\t{rng.randint(1, 5)}\t{874965478 + 60 * t}\n"
        for u, history in enumerate(histories)
        for t, item in enumerate(history)
    ]
    rng.shuffle(rows)  # u.data is not ordered by time
    movielens.write_text("".join(rows))


def fenced_blocks(text: str) -> list[str]:
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.DOTALL) if lang in ("bash", "")]


def inline_commands(text: str) -> list[str]:
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    commands = [" ".join(cmd.split()) for cmd in re.findall(r"`(\.venv/bin/python scripts/[^`]*)`", prose)]
    return [cmd for cmd in commands if not cmd.endswith("...")]


def documented_scripts() -> list[tuple[str, str]]:
    """(document, script) of every block and inline command that runs something, in reading order."""
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for block in fenced_blocks(text):
            if re.search(r"^\s*(\.venv/bin/|python3 |pip |curl )", block, flags=re.MULTILINE):
                found.append((doc, block))
        found.extend((doc, cmd) for cmd in inline_commands(text))
    return found


def prepared(doc: str, script: str, port: int) -> str | None:
    """The script as it runs here, after the listed replacements that apply to it (None: nothing of it runs)."""
    for d, old, new in INSTALLED + PLACEHOLDERS + BOUNDS:
        if d == doc and old in script:
            script = script.replace(old, new.format(port=port))
    lines = []
    for line in script.replace("\\\n", " ").splitlines():
        why = next((why for d, marker, why in NOT_RUN if d == doc and marker in line), None)
        if why is not None:
            line = f"# not run here: {why}"
        elif line.lstrip().startswith("#"):
            pass
        elif "scripts/serve.py" in line:
            # a server: in the background, then wait until it answers
            line = re.sub(r"\s+#.*$", "", line) + f" &\nwait_for_server {port}"
        elif TRAINING.search(line):
            line = re.sub(r"\s+#.*$", "", line) + f" --max_epochs {MAX_EPOCHS}"
        lines.append(line)
    if all(not line.strip() or line.lstrip().startswith("#") for line in lines):
        return None
    return "\n".join(lines)


PRELUDE = """
set -e
wait_for_server() {
    for _ in $(seq 600); do curl -sf "127.0.0.1:$1/healthz" >/dev/null && return 0; sleep 0.2; done
    echo "the server did not answer on port $1" >&2; return 1
}
trap 'jobs -p | xargs -r kill' EXIT
"""


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("clone")
    repo = base / "repo"
    shutil.copytree(ROOT / "scripts", repo / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    venv = Path(sys.prefix)
    if venv == Path(sys.base_prefix):  # not a virtual environment: a .venv/bin/python that runs this interpreter
        (repo / ".venv" / "bin").mkdir(parents=True)
        (repo / ".venv" / "bin" / "python").symlink_to(sys.executable)
    else:
        (repo / ".venv").symlink_to(venv)
    write_stand_in_data(base / "shared" / "data")
    # datasets.md builds "my.csv", the reader's own file: a stand-in in the folder the command runs in
    video = (base / "shared" / "data" / "amazon-video-games" / "Video.txt").read_text().split("\n")
    rows = [line.split() for line in video if line]
    (repo / "my.csv").write_text("user,item,ts\n" + "".join(f"{u},{i},{t}\n" for t, (u, i) in enumerate(rows)))
    return repo


def test_every_listed_replacement_matches_its_document():
    texts = {doc: (ROOT / doc).read_text() for doc in DOCS}
    stale = [(d, old) for d, old, *_ in INSTALLED + PLACEHOLDERS + BOUNDS + NOT_RUN if old not in texts[d]]
    assert not stale, f"replacements whose text is no longer in the document (update the lists): {stale}"


@pytest.mark.parametrize(
    "doc, script", documented_scripts(), ids=[f"{d}:{s.strip()[:60]}" for d, s in documented_scripts()]
)
def test_documented_commands_run(sandbox, doc, script):
    runnable = prepared(doc, script, free_port())
    if runnable is None:
        pytest.skip("not run here (see NOT_RUN)")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    proc = subprocess.run(
        ["bash", "-c", PRELUDE + runnable],
        cwd=sandbox,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        start_new_session=True,
    )
    assert proc.returncode == 0, (
        f"{doc}:\n{runnable}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def test_a_failing_command_fails_the_check(sandbox):
    """The runner reports a command that fails (the check above is not vacuous)."""
    proc = subprocess.run(
        [
            "bash",
            "-c",
            PRELUDE
            + ".venv/bin/python scripts/evaluate.py --model_name_or_path outputs/x --dataset data/no-such-folder",
        ],
        cwd=sandbox,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "outputs/x" in proc.stderr
