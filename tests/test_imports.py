"""The walls: the device path ships alone, and starting drip pays for torch and nothing else heavy."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import drip

# Third-party packages that only the data sets, the report and the ONNX side use.
HEAVY = ("sklearn", "scipy", "matplotlib", "onnx", "onnxruntime")
# The device path, and what it may lean on (DESIGN.md section 3: it imports nothing else of drip).
DEVICE_PATH = ("cam", "score", "thresholds", "rules", "filter", "store", "budget")
SHARED = ("errors", "validation", "atomic")
# What `import drip` loads beyond those: the Training Phase (its function shares its module's
# name, so drip binds it at import) and the training it runs.
TRAINING = ("calibrate", "train")


def loaded_after(code: str) -> dict[str, list[str]]:
    """The heavy packages and the drip modules a fresh interpreter has loaded after ``code``."""
    report = (
        "import json, sys\n"
        f"heavy = [name for name in {HEAVY!r} if name in sys.modules]\n"
        "ours = sorted(name for name in sys.modules if name.split('.')[0] == 'drip')\n"
        "print(json.dumps({'heavy': heavy, 'drip': ours}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code + "\n" + report], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


def test_importing_the_device_path_loads_nothing_heavy_and_no_other_room():
    loaded = loaded_after(
        "import drip\nfrom drip import DripScorer, Thresholds, DripFilter, SampleStore, BudgetedThresholds"
    )
    assert loaded["heavy"] == []
    rooms = {name.split(".")[1] for name in loaded["drip"] if name != "drip"}
    assert rooms <= {*DEVICE_PATH, *SHARED, *TRAINING}, sorted(rooms - {*DEVICE_PATH, *SHARED, *TRAINING})


def test_drip_help_loads_nothing_heavy():
    loaded = loaded_after(
        "from drip.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert loaded["heavy"] == []
    assert not any(name.startswith("drip.data") for name in loaded["drip"])


def test_every_public_name_imports_from_drip():
    for name in drip.__all__:
        assert getattr(drip, name) is not None, name
    assert set(drip.__all__) <= set(dir(drip))
    assert callable(drip.calibrate) and drip.calibrate.__module__ == "drip.calibrate"


def drip_imports(path: Path, package: str) -> set[str]:
    """The drip modules a source file imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
            if node.module:
                found.add(f"{base}.{node.module}")
            else:  # from . import module
                found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found.update(name for name in names if name and name.split(".")[0] == "drip")
    return found


def test_the_device_path_imports_nothing_else_of_drip():
    root = Path(drip.__file__).parent
    allowed = {*DEVICE_PATH, *SHARED}
    for room in DEVICE_PATH:
        files = sorted((root / room).glob("*.py")) if (root / room).is_dir() else [root / f"{room}.py"]
        for path in files:
            package = f"drip.{room}" if path.parent.name == room else "drip"
            rooms = {name.split(".")[1] for name in drip_imports(path, package) if name != "drip"}
            assert rooms <= allowed, f"{path.relative_to(root)} imports drip.{sorted(rooms - allowed)}"
