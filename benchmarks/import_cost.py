"""What starting drip costs: wall time, CPU time and peak RSS of fresh interpreters, against ``import torch``.

Each command runs ``--runs`` times in a fresh process (one thread, ``OMP_WAIT_POLICY=PASSIVE``);
reported is the median of each figure. Peak RSS is the child's own ``ru_maxrss`` (``os.wait4``).
``--src`` imports drip from another tree (e.g. an extracted revision: ``git archive REV src``).

    .venv/bin/python benchmarks/import_cost.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "import drip": [sys.executable, "-c", "import drip"],
    "drip --help": [str(BIN / "drip"), "--help"],
}


def run_once(command: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MiB) of one fresh run of ``command``."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)}: exit code {process.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--src", type=Path, help="import drip from this folder instead of the checkout's")
    args = parser.parse_args()
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if args.src is not None:
        env["PYTHONPATH"] = str(args.src.resolve())
    print("| command | wall (s) | CPU (s) | peak RSS (MiB) |")
    print("|---|--:|--:|--:|")
    for name, command in COMMANDS.items():
        runs = [run_once(command, env) for _ in range(args.runs)]
        wall, cpu, rss = (statistics.median(figure) for figure in zip(*runs))
        print(f"| `{name}` | {wall:.2f} | {cpu:.2f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
