"""The README's examples run exactly as written."""

import re
import subprocess
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)


def test_using_the_model_example_runs(tmp_path, monkeypatch):
    blocks = python_blocks("Using the model")
    assert blocks, "the README lost its usage example"
    monkeypatch.chdir(tmp_path)  # it saves a checkpoint into the working directory
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    assert (tmp_path / "ttt4rec-demo" / "model.safetensors").exists()


def test_second_paper_example_runs():
    blocks = python_blocks("The second paper's model (sampled protocol)")
    assert blocks, "the README lost the second paper's example"
    namespace = {"__name__": "readme"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # the same ranks from the model's full next-item scores, looked up at each row's 100 candidates
    model, candidates = namespace["model"], namespace["test_candidates"]
    with torch.no_grad():
        logits = model(namespace["histories"], use_cache=False).logits  # [2, num_items], at each row's last click
    scores = logits.gather(1, candidates)
    expected = (scores[:, 1:] >= scores[:, :1]).sum(dim=1)
    assert namespace["rank"].tolist() == expected.tolist()


def test_readme_commands_match_ci():
    ci = (README.parent / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -q" in README.read_text()
    assert ".venv/bin/python -m pytest -q" in ci
    assert 'pip install --quiet -c constraints.txt -e ".[dev]"' in ci
    assert "torch==2.13.0" in (README.parent / "constraints.txt").read_text()


def test_the_repository_cites_only_its_own_files():
    """Code, tests and docs cite the protocol as docs/protocol.md, never notes that live outside the repository."""
    root = README.parent
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    outside = re.compile(r"\b(PROTOCOL|DESIGN|ECOSYSTEM)\.md\b|\.\./shared/(?!data\b)")
    cited = [
        f"{name}:{number}"
        for name in tracked
        if name.endswith((".py", ".md", ".txt", ".toml", ".cfg")) and not (root / name).is_symlink()
        for number, line in enumerate((root / name).read_text().splitlines(), start=1)
        if outside.search(line)
    ]
    assert not cited, f"citations of files outside the repository: {cited}"
    assert (root / "docs" / "protocol.md").is_file()
