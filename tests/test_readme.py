"""The Python examples of README.md and of docs/ run as printed, in order (with a smaller step budget)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(page: str, count: int) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), flags=re.S)
    assert len(blocks) == count, f"{page}: expected {count} python blocks, found {len(blocks)}"
    return "\n".join(blocks).replace("steps=300", "steps=15")


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    code = python_blocks("README.md", 1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "stored" in out and "saving" in out and (tmp_path / "kept.sqlite").exists()


def test_api_and_budget_examples_run_in_order(tmp_path, monkeypatch, capsys):
    # docs/budgets.md's example continues docs/api.md's: one program, as a reader runs them.
    code = python_blocks("docs/api.md", 1) + "\n" + python_blocks("docs/budgets.md", 1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/api.md + docs/budgets.md", "exec"), {})
    out = capsys.readouterr().out
    assert "stored" in out and (tmp_path / "kept.sqlite").exists() and (tmp_path / "thresholds.json").exists()
    assert "stored 76800 of 76800 bytes, 300 samples" in out
