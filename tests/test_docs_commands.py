"""Every script command in the README and docs/ names options its script has (a renamed or removed option would
leave a command that fails as written), and is run with the repository's `.venv/bin/python`."""

import contextlib
import importlib.util
import io
import re
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"scripts/(\w+)\.py((?:[^\n`|]|\\\n)*)")


def commands() -> list[tuple[str, str, str]]:
    """(document, script, the command's arguments) of every `scripts/NAME.py ...` in the docs, with its `\\`-continued
    lines joined."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in COMMAND.finditer(text):
            args = match.group(2).replace("\\\n", " ").split("#")[0]
            found.append((doc.name, match.group(1), args))
    return found


@cache
def script_options(name: str) -> frozenset[str]:
    """The options in `scripts/NAME.py --help`, run in this process."""
    spec = importlib.util.spec_from_file_location(f"doc_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [f"{name}.py", "--help"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            module.main()
    finally:
        sys.argv = argv
    return frozenset(re.findall(r"--[A-Za-z][\w-]*", out.getvalue())) | {"--debug", "--help"}


@pytest.mark.parametrize("doc, script, args", commands(), ids=lambda value: str(value)[:40])
def test_documented_options_exist(doc, script, args):
    assert (ROOT / "scripts" / f"{script}.py").is_file(), f"{doc} runs scripts/{script}.py, which does not exist"
    used = set(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", args))
    unknown = sorted(used - script_options(script))
    assert not unknown, f"{doc}: scripts/{script}.py{args} uses unknown options {unknown}"


def test_code_blocks_run_the_repositorys_python():
    bare = [
        f"{doc.name}: {line.strip()}"
        for doc in DOCS
        for line in doc.read_text().splitlines()
        if re.search(r"(^|[\s`#(])python (scripts/|-m |-c )", line)
    ]
    assert not bare, f"commands with a bare `python` (use .venv/bin/python, as the README): {bare}"
