"""The README's Python examples run as printed, in order (with a smaller step budget)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 2
    code = "\n".join(blocks).replace("steps=300", "steps=15")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "stored" in out and (tmp_path / "kept.sqlite").exists() and (tmp_path / "thresholds.json").exists()
    assert "stored 76800 of 76800 bytes, 300 samples" in out
