"""One table of the lifelong runs (benchmarks/lifelong.sh): per run, every arm's average accuracy
over rounds, DRIP's paired gap to the best rehearsal buffer (class-balanced reservoir, GDumb's
sampler) and its final accuracy against the unbounded store, with the bars issue 23 set.

python benchmarks/lifelong_table.py runs/lifelong/* --out benchmarks/results/lifelong
writes OUT/lifelong.md and OUT/lifelong.json (and prints the markdown).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ARMS = ("drip", "drip-budget", "random", "reservoir", "class-balanced", "margin", "unbounded")
BUFFER_MARGIN_PP = 0.5  # DRIP's average accuracy over the best buffer's, at least
UNBOUNDED_SHORTFALL_PP = 1.0  # DRIP's final accuracy under the unbounded store's, at most
SHARE_WORDS = {"equal": "equally (class-balanced)", "band": "as the band does (shares band)"}


def row(name: str, summary: dict) -> dict:
    """The figures of one run."""
    arms, gaps = summary["arms"], summary["gaps"]
    config = summary["config"]
    to_buffer = gaps["class-balanced"]["average_accuracy"]
    to_unbounded = gaps["unbounded"]["final_accuracy"]
    return {
        "run": name,
        "dataset": config["dataset"] + ("" if config.get("difficulty", "none") == "none" else " graded"),
        "shares": config.get("shares", "equal"),
        "scenario": config["scenario"],
        "retrain": f"{config['retrain']}, {config['round_steps']} steps",
        "budget_fraction": config["budget_fraction"],
        "seeds": summary["seeds"],
        "average_accuracy": {arm: arms[arm]["average_accuracy"]["mean"] for arm in ARMS if arm in arms},
        "final_accuracy": {arm: arms[arm]["final_accuracy"]["mean"] for arm in ARMS if arm in arms},
        "drip_minus_class_balanced_average": to_buffer,
        "drip_minus_unbounded_final": to_unbounded,
        "beats_buffer_by_margin": to_buffer["mean_pp"] >= BUFFER_MARGIN_PP,
        "final_near_unbounded": to_unbounded["mean_pp"] >= -UNBOUNDED_SHORTFALL_PP,
    }


def _gap(gap: dict) -> str:
    return f"{gap['mean_pp']:+.2f} ({gap['wins']}/{gap['seeds']})"


def markdown(rows: list[dict]) -> str:
    head = ["run", "bytes", "retraining per round", *ARMS]
    head += ["DRIP - class-balanced (avg)", "DRIP - unbounded (final)"]
    lines = [
        "Average accuracy over rounds (%), mean of the seeds; DRIP's paired gaps in pp with the seeds "
        "it was higher in; in bold the best arm at the same bytes. DRIP's full store shares its bytes "
        f"among classes {' / '.join(sorted({SHARE_WORDS[r['shares']] for r in rows}))}. "
        f"Bars: DRIP - class-balanced >= +{BUFFER_MARGIN_PP} pp on average accuracy, "
        f"DRIP - unbounded >= -{UNBOUNDED_SHORTFALL_PP} pp on final accuracy (a mark: met).",
        "",
        "| " + " | ".join(head) + " |",
        "|---|--:|---|" + "--:|" * (len(ARMS) + 2),
    ]
    for r in rows:
        best = max(v for arm, v in r["average_accuracy"].items() if arm != "unbounded")
        cells = []
        for arm in ARMS:
            value = r["average_accuracy"].get(arm)
            text = "-" if value is None else f"{100 * value:.2f}"
            cells.append(f"**{text}**" if value == best else text)
        buffer = _gap(r["drip_minus_class_balanced_average"]) + (" ✓" if r["beats_buffer_by_margin"] else "")
        unbounded = _gap(r["drip_minus_unbounded_final"]) + (" ✓" if r["final_near_unbounded"] else "")
        run = f"{r['dataset']} {r['scenario']} | {r['budget_fraction']:.0%} | {r['retrain']}"
        lines.append(f"| {run} | " + " | ".join(cells) + f" | {buffer} | {unbounded} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="folders written by drip lifelong")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = [row(run.name, json.loads((run / "summary.json").read_text())) for run in sorted(args.runs)]
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows)
    (args.out / "lifelong.md").write_text(text)
    (args.out / "lifelong.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
