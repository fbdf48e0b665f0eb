"""Replays decision tests over ``band_search_study.py`` records: what each would have chosen.

For each data set, proxy share and rule it prints, per seed, every candidate's shortfall against
the reference on W (pp), the gap between the two references (two trainings of the same data),
the smallest shortfall each trial could detect, and the q_high the search picks (largest saving
first, the first that passes the paired test of ``drip.calibrate``; 0 keeps all).

    python benchmarks/band_search_table.py runs/band-search/*.json --out benchmarks/results/rules
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from drip.calibrate import BandTrial, choose_q_high


def trial(candidate: dict, proxy: int, reference: list[int]) -> BandTrial:
    """The search's own trial of a study's ``candidate`` against ``reference`` (per-sample
    correctness on W) over a proxy stream of ``proxy`` samples."""
    ref, cand = np.array(reference, dtype=bool), np.array(candidate["correct"], dtype=bool)
    return BandTrial(
        q_high=candidate["q_high"],
        kept=candidate["kept"],
        proxy=proxy,
        val_accuracy=float(cand.mean()),
        only_reference=int((ref & ~cand).sum()),
        only_candidate=int((cand & ~ref).sum()),
        validation=len(ref),
    )


def rows(study: dict) -> list[dict]:
    """One row per seed, proxy share and rule: shortfalls, detectable shortfalls, the pick."""
    out = []
    for record in study["seeds"]:
        for split in record["splits"]:
            reference, proxy = split["reference"], split["sizes"][1]
            gap = np.mean(split["second_reference"]) - np.mean(reference)
            for rule in dict.fromkeys(c["rule"] for c in split["candidates"]):
                ruled = [c for c in split["candidates"] if c["rule"] == rule]
                trials = [trial(c, proxy, reference) for c in ruled]
                out.append(
                    {
                        "seed": record["seed"],
                        "proxy_fraction": split["proxy_fraction"],
                        "rule": rule,
                        "second_initialisation_gap": float(gap),
                        "q_high": [t.q_high for t in trials],
                        "shortfall": [t.shortfall for t in trials],
                        "detectable": [t.detectable() for t in trials],
                        "chosen": choose_q_high(trials),
                    }
                )
    return out


def markdown(studies: dict[str, list[dict]]) -> str:
    lines = []
    for name, table in studies.items():
        lines += [
            f"\n## {name}\n",
            "| rule | P's share of D0 | seed | shortfall at q_high 0.5 / 0.4 / 0.3 / 0.2 (pp) "
            "| detectable (pp) | chosen | second initialisation's gap (pp) |",
            "|---|--:|--:|---|---|--:|--:|",
        ]
        for r in sorted(table, key=lambda r: (r["rule"], r["proxy_fraction"], r["seed"])):
            shortfalls = " / ".join(f"{100 * s:+.2f}" for s in r["shortfall"])
            detectable = " / ".join(f"{100 * d:.2f}" for d in r["detectable"])
            lines.append(
                f"| {r['rule']} | {r['proxy_fraction']:g} | {r['seed']} | {shortfalls} | {detectable} "
                f"| {r['chosen']:g} | {100 * r['second_initialisation_gap']:+.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="folder for band_search.md and .json")
    args = parser.parse_args()
    studies = {path.stem: rows(json.loads(path.read_text())) for path in args.studies}
    text = markdown(studies)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        title = (
            "# What the band search sees\n\nEvery candidate of the Training Phase's search against its "
            "reference on W, per seed, proxy share and rule (`benchmarks/band_search_study.py`, "
            "`benchmarks/band_search_table.py`); chosen: the first that passes (0: keep all).\n"
        )
        (args.out / "band_search.md").write_text(title + text)
        (args.out / "band_search.json").write_text(json.dumps(studies, indent=1) + "\n")


if __name__ == "__main__":
    main()
