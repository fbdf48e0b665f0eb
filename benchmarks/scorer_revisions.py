"""DripScorer of this checkout against DripScorer of an earlier git revision, in one process.

A speed change is best measured against the code it replaces, on the same machine at the same
moment: the revision's ``src/drip`` is extracted (``git archive``) into a temporary package
``drip_at_revision`` and both scorers, with their default arguments, run interleaved with plain
forward on the same seeded model and batch. Time is this thread's CPU time (one torch thread), so
another process on the other core does not count; reported per model: each scorer as a ratio to
plain forward (median over rounds) and the speed of this checkout over the revision's. Before
timing, both scorers must give the same scores (relative 1e-4).

A third reference is the **floor** (``scorer.floor``): the least any validated score of the batch
costs, the forward plus the operations no scorer can skip, each once. ``this / floor`` shows what
drip's own code costs on top.

    .venv/bin/python benchmarks/scorer_revisions.py --revision b0f5799 --batch 1
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from scorer import BENCH_MODELS, floor  # drip's models and two it never saw; the floor

from drip import DripScorer

ROOT = Path(__file__).resolve().parent.parent


def scorer_at(revision: str, into: Path) -> type:
    """``DripScorer`` as it was at ``revision``, imported from a copy of that revision's package."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src/drip"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "src" / "drip").rename(into / "drip_at_revision")
    sys.path.insert(0, str(into))
    return importlib.import_module("drip_at_revision").DripScorer


def cpu_median(call: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.thread_time_ns()
        call()
        times.append(time.thread_time_ns() - start)
    return statistics.median(times)


def compare(name: str, batch: int, old_scorer: type, rounds: int) -> dict:
    torch.manual_seed(0)
    model = BENCH_MODELS[name]().eval()
    x = torch.randn(batch, *model.input_shape)
    y = torch.randint(0, model.num_classes, (batch,))
    new, old = DripScorer(model), old_scorer(model)
    if not torch.allclose(new(x, y), old(x, y), rtol=1e-4, atol=1e-7):
        raise SystemExit(f"{name}: the two revisions' default scores differ; not timing")

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    approaches = {
        "forward": forward,
        "floor": lambda: floor(model, x, y),
        "revision": lambda: old(x, y),
        "this": lambda: new(x, y),
    }
    for call in approaches.values():
        for _ in range(30):
            call()
    found: dict[str, list[float]] = {key: [] for key in approaches}
    calls = max(20, 3000 // batch)
    for _ in range(rounds):
        for key, call in approaches.items():
            found[key].append(cpu_median(call, calls))

    def over_forward(key: str) -> float:
        return statistics.median(f / t for f, t in zip(found["forward"], found[key]))

    speedup = statistics.median(o / n for o, n in zip(found["revision"], found["this"]))
    over_floor = statistics.median(f / t for f, t in zip(found["floor"], found["this"]))
    return {
        "floor": over_forward("floor"),
        "revision": over_forward("revision"),
        "this": over_forward("this"),
        "this_over_floor": over_floor,
        "speedup": speedup,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revision", required=True, help="git revision to compare with")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=sorted(BENCH_MODELS),
        default=["lenet", "resnet8", "dscnn", "digits_cnn", "bn_gap_net", "mlp_lenet"],
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="drip-revision-") as folder:
        old_scorer = scorer_at(args.revision, Path(folder))
        print(
            f"| model | batch | floor / forward | {args.revision} / forward | this / forward | "
            f"this / floor | this over {args.revision} |"
        )
        print("|---|--:|--:|--:|--:|--:|--:|")
        for name in args.models:
            r = compare(name, args.batch, old_scorer, args.rounds)
            print(
                f"| {name} | {args.batch} | {r['floor']:.2f}x | {r['revision']:.2f}x | {r['this']:.2f}x | "
                f"{r['this_over_floor']:.2f}x | {r['speedup']:.2f}x |"
            )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (CPU time of this thread, one torch thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
