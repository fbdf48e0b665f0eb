"""The label-noise table of docs/experiments.md, from the summary.json of each noise run.

python benchmarks/noise_table.py runs/mnist-label20 runs/mnist-label40 runs/mnist-label20-long ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cell(summary: dict, arm: str, detail: bool) -> str:
    values = summary["arms"].get(arm)
    if values is None:
        return "-"
    text = f"{100 * values['accuracy']['mean']:.2f} ± {100 * values['accuracy']['std']:.2f}"
    if detail:
        recall = values.get("noise_recall")
        text += f" ({100 * values['saving']['mean']:.0f}% saved"
        text += f", {100 * recall['mean']:.0f}% of flips dropped)" if recall else ")"
    return text


def main() -> None:
    print(
        "| run | FULL, clean stream | FULL | flips FULL fits | DRIP | RANDOM | LOSS | loss band | drip-rank |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in map(Path, sys.argv[1:]):
        summary = json.loads((folder / "summary.json").read_text())
        fit = summary["arms"]["full"]["noise_fit"]
        row = [
            f"{100 * summary['noise']['rate']:.0f}% flips, {summary['steps']} steps"
            f"{', 10k pool' if '-long' in folder.name else ''}",
            cell(summary, "full-clean", False),
            cell(summary, "full", False),
            f"{100 * fit['mean']:.0f}%" if fit else "-",
            *(
                cell(summary, arm, arm in ("drip", "loss-band", "drip-rank"))
                for arm in ("drip", "random", "loss", "loss-band", "drip-rank")
            ),
        ]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
