"""One table of the selection-rule runs (benchmarks/rules.sh): every arm's accuracy at DRIP's storage,
DRIP's paired gaps, the corrupted samples each arm dropped, and the kept samples per class.

python benchmarks/rules_table.py runs/rules/* --out benchmarks/results/rules
writes OUT/rules.md and OUT/rules.json (and prints the markdown).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from drip.report import paired_gap

ARMS = (
    "full",
    "drip",
    "drip-per-class",
    "drip-pooled",
    "drip-paper",
    "random",
    "reservoir",
    "loss",
    "margin",
)
ARMS += ("el2n", "loss-band")
LEARNER_SIGNALS = ("loss", "margin", "el2n")


def row(name: str, summary: dict) -> dict:
    """The figures of one run."""
    arms = summary["arms"]
    present = [arm for arm in ARMS if arm in arms]
    best = max(
        (a for a in LEARNER_SIGNALS if a in arms), key=lambda a: arms[a]["accuracy"]["mean"], default=None
    )
    figures = {
        "run": name,
        "seeds": len(summary["seeds"]),
        "q_high": summary["q_high"]["per_seed"],
        "saving": summary["storage_saving"]["mean"],
        "accuracy": {arm: arms[arm]["accuracy"]["mean"] for arm in present},
        "std": {arm: arms[arm]["accuracy"]["std"] for arm in present},
        "drip_minus": {
            other: paired_gap(summary, "drip", other)
            for other in ("full", "random", "drip-per-class", *([best] if best else []))
            if other in arms
        },
        "best_learner_signal": best,
        "kept_per_class": {arm: arms[arm].get("kept_per_class") for arm in present},
    }
    recall = {arm: arms[arm].get("noise_recall") for arm in present}
    if any(recall.values()):
        figures["corrupted_dropped"] = {arm: r["mean"] for arm, r in recall.items() if r}
    return figures


def markdown(rows: list[dict]) -> str:
    shown = [arm for arm in ARMS if any(arm in r["accuracy"] for r in rows)]
    head = [
        "run",
        "seeds",
        "saving",
        *shown,
        "DRIP - FULL",
        "DRIP - RANDOM",
        "DRIP - per-class",
        "DRIP - best signal",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]
    for r in rows:
        cells = [r["run"], str(r["seeds"]), f"{100 * r['saving']:.1f}%"]
        top = max(r["accuracy"][a] for a in r["accuracy"] if a != "full")
        for arm in shown:
            value = r["accuracy"].get(arm)
            text = "-" if value is None else f"{100 * value:.2f}"
            cells.append(f"**{text}**" if value == top else text)
        for other in ("full", "random", "drip-per-class", r["best_learner_signal"]):
            gap = r["drip_minus"].get(other)
            cells.append("-" if gap is None else f"{gap[0]:+.2f} ({gap[1]}/{gap[2]})")
        lines.append("| " + " | ".join(cells) + " |")
    noisy = [r for r in rows if r.get("corrupted_dropped")]
    if noisy:
        heading = "Corrupted stream samples (flipped labels, or noisy inputs) dropped by each arm (%):"
        lines += ["", heading, ""]
        arms = [a for a in ARMS if any(a in r["corrupted_dropped"] for r in noisy)]
        lines += ["| run | " + " | ".join(arms) + " |", "|---|" + "--:|" * len(arms)]
        for r in noisy:
            cells = [
                f"{100 * r['corrupted_dropped'][a]:.1f}" if a in r["corrupted_dropped"] else "-" for a in arms
            ]
            lines.append(f"| {r['run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="experiment folders holding summary.json")
    parser.add_argument("--out", type=Path, default=None, help="folder for rules.md and rules.json")
    args = parser.parse_args()
    rows = [
        row(folder.name, json.loads((folder / "summary.json").read_text()))
        for folder in args.runs
        if (folder / "summary.json").is_file()
    ]
    text = markdown(rows)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "rules.md").write_text(text)
        (args.out / "rules.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
