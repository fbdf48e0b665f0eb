"""Adaptive thresholds under a byte budget (drip.budget) against the calibrated (fixed) thresholds
and the class-balanced reservoir, at the same bytes, on MNIST and the synthetic speech corpus.

    make bench-budget                                  # both data sets, 3 seeds (61 min, one thread)
    .venv/bin/python benchmarks/budget.py --datasets mnist --seeds 1 --budgets 0.3 --steps 200

Per seed: D0 (20% of the training data, stratified) and the stream S (the rest, shuffled); the
Training Phase in cheap mode (q_high 0.4) once, its scorer and calibration set shared by every
budget; bands calibrated on the calibration set for each scorer target. Then, at budgets of 30%, 50%
and 70% of S's bytes, four ways to fill a store of that many bytes, each retrained on D0 + what it
stored (a fresh model, same initialisation and optimiser steps) and tested on the test split:

* ``adaptive``: ``stream_with_budget`` (moving bands, evicting store, expected length = |S|);
* ``fixed-reject`` / ``fixed-evict``: ``DripFilter`` with the calibrated bands into a store of the
  budget that refuses newcomers once full / evicts the highest score of the largest class;
* ``reservoir``: ``selectors.class_balanced_reservoir`` with room for the budget's sample count.

A drift run sorts S into two halves with different class mixes (the first half of the classes make
85% of the first half of S and 15% of the second) and repeats the four arms at the drift budgets.
FULL (D0 + all of S) is the reference. Writes results.json and, per data set, <name>.md (the
table) and <name>.png (seed 0: thresholds and fill level over the stream) into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from drip.budget import stream_with_budget
from drip.calibrate import calibrate, training_phase
from drip.data import load_dataset, stratified_split
from drip.data.base import LabelledData
from drip.filter import DripFilter
from drip.models import build_model
from drip.score import DripScorer
from drip.selectors import class_balanced_reservoir
from drip.store import SampleStore
from drip.train import TrainConfig, fit, predict_logits

DATASETS = {
    "mnist": {"name": "mnist", "model": "lenet", "steps": 2000, "data_dir": None},
    "speech": {
        "name": "speech-commands",
        "model": "dscnn",
        "steps": 400,
        "data_dir": "runs/data/speech-commands-synth",
    },
}
ARMS = ("adaptive", "fixed-reject", "fixed-evict", "reservoir")
Q_HIGH = 0.4
DRIFT_SHARE = 0.85
BATCH = 64


def drift_order(y: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A stream order in two halves: classes below num_classes / 2 make DRIFT_SHARE of the first
    half's samples of their group and 1 - DRIFT_SHARE of the second; the other classes the reverse."""
    halves: list[list[int]] = [[], []]
    for c in range(num_classes):
        members = (y == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)].tolist()
        early = round((DRIFT_SHARE if c < num_classes / 2 else 1 - DRIFT_SHARE) * len(members))
        halves[0] += members[:early]
        halves[1] += members[early:]
    return torch.cat([torch.tensor(h)[torch.randperm(len(h), generator=generator)] for h in halves])


def fixed_store(
    scorer: DripScorer, thresholds, stream: LabelledData, path: Path, capacity: int, when_full: str
) -> tuple[torch.Tensor, list[int], int]:
    """The calibrated bands into a store of ``capacity`` bytes: held mask, bytes after each batch,
    samples written."""
    used = []
    with SampleStore(path, capacity_bytes=capacity, when_full=when_full, durable=False) as store:
        drip = DripFilter(scorer, thresholds, store)
        for start in range(0, len(stream), BATCH):
            stop = min(start + BATCH, len(stream))
            sources = [f"stream:{i}" for i in range(start, stop)]
            drip.offer_batch(stream.x[start:stop], stream.y[start:stop], sources=sources)
            used.append(store.bytes_used)
        held = torch.zeros(len(stream), dtype=torch.bool)
        held[[int(s.source.split(":")[1]) for s in store]] = True
    return held, used, sum(drip.counters.kept)


def adaptive_store(
    scorer: DripScorer, thresholds, stream: LabelledData, path: Path, capacity: int
) -> tuple[torch.Tensor, dict[str, Any], int]:
    with SampleStore(path, capacity_bytes=capacity, when_full="evict", durable=False) as store:
        run = stream_with_budget(scorer, thresholds, stream.x, stream.y, store, batch_size=BATCH)
    return run.kept, run.trace.to_dict(), sum(run.counters.kept)


def retrain(
    spec: dict[str, Any], d0: LabelledData, extra_x, extra_y, test: LabelledData, seed: int, steps: int
) -> torch.Tensor:
    """Test predictions of a fresh model (seeded initialisation) trained on D0 + the extra samples."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec["model"], d0.num_classes)
    fit(
        model,
        torch.cat([d0.x, extra_x]),
        torch.cat([d0.y, extra_y]),
        TrainConfig(steps=steps),
        seed=seed,
        progress=False,
    )
    return predict_logits(model, test.x).argmax(1)


def accuracies(predicted: torch.Tensor, test: LabelledData) -> dict[str, float]:
    """Overall accuracy, and on the first and second half of the classes (the drift's groups)."""
    right = predicted == test.y
    early = test.y < test.num_classes / 2
    return {
        "accuracy": float(right.float().mean()),
        "accuracy_early_classes": float(right[early].float().mean()),
        "accuracy_late_classes": float(right[~early].float().mean()),
    }


def describe(held: torch.Tensor, stream: LabelledData, capacity: int, sample_bytes: int) -> dict[str, Any]:
    counts = torch.bincount(stream.y[held], minlength=stream.num_classes)
    return {
        "stored": int(held.sum()),
        "bytes": int(held.sum()) * sample_bytes,
        "capacity_bytes": capacity,
        "fill": int(held.sum()) * sample_bytes / capacity if capacity else 0.0,
        "class_min_max": [int(counts.min()), int(counts.max())],
        "second_half": float(held[len(held) // 2 :].sum() / max(1, int(held.sum()))),
    }


def run_budget(ctx: dict[str, Any], stream: LabelledData, kind: str, budget: float) -> list[dict[str, Any]]:
    """Every arm at one budget of one stream order; their records (and seed 0's traces in ctx)."""
    sample_bytes = stream.x[0].numel() * stream.x.element_size()
    capacity = int(budget * len(stream)) * sample_bytes
    seed, spec = ctx["seed"], ctx["spec"]
    workdir = ctx["workdir"] / f"seed{seed}"  # fresh stores per seed: a store's budget state is its own
    workdir.mkdir(exist_ok=True)
    records = []
    selections: list[tuple[str, str | None, torch.Tensor, int]] = []
    generator = torch.Generator().manual_seed(seed + 7)
    reservoir = torch.zeros(len(stream), dtype=torch.bool)
    reservoir[class_balanced_reservoir(stream.y, capacity // sample_bytes, generator)] = True
    selections.append(("reservoir", None, reservoir, int(reservoir.sum())))
    for target, (scorer, thresholds) in ctx["scorers"].items():
        tag = f"{kind}-{budget}-{target}"
        kept, trace, written = adaptive_store(
            scorer, thresholds, stream, workdir / f"{tag}-a.sqlite", capacity
        )
        selections.append(("adaptive", target, kept, written))
        fills = {"adaptive": trace["bytes_used"]}
        for when_full in ("reject", "evict"):
            path = workdir / f"{tag}-{when_full}.sqlite"
            held, used, written = fixed_store(scorer, thresholds, stream, path, capacity, when_full)
            selections.append((f"fixed-{when_full}", target, held, written))
            fills[f"fixed-{when_full}"] = used
        if seed == 0:
            ctx["traces"][tag] = {"trace": trace, "fills": fills, "fixed_high": list(thresholds.high)}
    for arm, target, held, written in selections:
        predicted = retrain(spec, ctx["d0"], stream.x[held], stream.y[held], ctx["test"], seed, ctx["steps"])
        record = {
            "stream": kind,
            "budget": budget,
            "arm": arm,
            "target": target,
            "seed": seed,
            "written": written,
        }
        record.update(describe(held, stream, capacity, sample_bytes))
        record.update(accuracies(predicted, ctx["test"]))
        assert record["bytes"] <= capacity, record
        records.append(record)
        print(
            f"  {kind} {budget:.0%} {arm:12} {target or '':6} acc {100 * record['accuracy']:.2f} "
            f"stored {record['stored']} fill {record['fill']:.3f} written {written}",
            flush=True,
        )
    return records


def run_seed(spec, data, seed: int, args, workdir: Path, traces: dict) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(seed)
    d0_index, stream_index = stratified_split(data.train.y, (0.2, 0.8), seed + 1000)
    d0, stream = data.train.subset(d0_index), data.train.subset(stream_index)
    stream = stream.subset(torch.randperm(len(stream), generator=generator))
    steps = args.steps or spec["steps"]
    config = TrainConfig(steps=steps)
    phase = training_phase(
        d0,
        lambda: build_model(spec["model"], d0.num_classes),
        config,
        q_high=Q_HIGH,
        seed=seed,
        progress=False,
    )
    scorers = {}
    for target in args.targets:
        scorer = DripScorer(phase.model, target=target)
        scorers[target] = (scorer, calibrate(scorer, phase.calibration.x, phase.calibration.y, q_high=Q_HIGH))
    ctx = {
        "seed": seed, "spec": spec, "workdir": workdir, "scorers": scorers, "d0": d0,
        "test": data.test, "steps": steps, "traces": traces,
    }  # fmt: skip
    full = retrain(spec, d0, stream.x, stream.y, data.test, seed, steps)
    records = [{"stream": "stationary", "budget": 1.0, "arm": "full", "target": None, "seed": seed,
                "stored": len(stream), **accuracies(full, data.test)}]  # fmt: skip
    print(f"  seed {seed}: Training Phase {phase.elapsed_s:.0f} s, FULL {100 * records[0]['accuracy']:.2f}")
    for budget in args.budgets:
        records += run_budget(ctx, stream, "stationary", budget)
    drifted = stream.subset(drift_order(stream.y, stream.num_classes, generator))
    for budget in args.drift_budgets:
        records += run_budget(ctx, drifted, "drift", budget)
    return records


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def summary(dataset: str, records: list[dict[str, Any]], elapsed_s: float, command: str, target: str) -> str:
    """A markdown table: per stream, budget and arm, accuracy over seeds and what was stored."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["stream"], r["budget"], r["arm"], r["target"] or ""), []).append(r)
    lines = [
        f"### {dataset}: `{command}` ({len({r['seed'] for r in records})} seeds, {elapsed_s / 60:.0f} min)",
        "",
        "| stream | budget | arm | target | test accuracy (%) | late classes (%) | stored of budget | "
        "class min-max | from 2nd half | written | adaptive - this (pp, seeds won) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (stream, budget, arm, arm_target), rows in groups.items():
        adaptive = groups.get((stream, budget, "adaptive", arm_target or target), [])
        if arm in ("adaptive", "full") or not adaptive:
            versus = ""
        else:
            by_seed = {r["seed"]: r["accuracy"] for r in adaptive}
            gaps = [by_seed[r["seed"]] - r["accuracy"] for r in rows if r["seed"] in by_seed]
            versus = f"{100 * statistics.mean(gaps):+.2f} ({sum(g > 0 for g in gaps)}/{len(gaps)})"
        fill = "" if arm == "full" else f"{statistics.mean(r['fill'] for r in rows):.3f}"
        balance = (
            ""
            if arm == "full"
            else "; ".join(f"{r['class_min_max'][0]}-{r['class_min_max'][1]}" for r in rows)
        )
        half = "" if arm == "full" else f"{statistics.mean(r['second_half'] for r in rows):.2f}"
        written = "" if arm == "full" else f"{statistics.mean(r['written'] for r in rows):.0f}"
        lines.append(
            f"| {stream} | {budget:.0%} | {arm} | {arm_target} | {mean_std([r['accuracy'] for r in rows])} | "
            f"{mean_std([r['accuracy_late_classes'] for r in rows])} | {fill} | {balance} | {half} | "
            f"{written} | {versus} |"
        )
    return "\n".join(lines) + "\n"


def plot(traces: dict[str, Any], path: Path, title: str, target: str) -> None:
    """Seed 0, one target: upper thresholds per class and fill level over the stream."""
    tags = [t for t in traces if t.endswith(f"-{target}")]
    figure, axes = plt.subplots(len(tags), 2, figsize=(12, 3.2 * len(tags)), squeeze=False)
    for row, tag in enumerate(tags):
        entry = traces[tag]
        seen = entry["trace"]["seen"]
        high = [[float("nan") if v is None else v for v in h] for h in entry["trace"]["high"]]
        colours = plt.cm.tab20(range(len(entry["fixed_high"])))
        for c, colour in enumerate(colours):
            axes[row, 0].plot(seen, [h[c] for h in high], color=colour, lw=0.8)
            axes[row, 0].axhline(entry["fixed_high"][c], color=colour, lw=0.8, ls="--")
        axes[row, 0].set(
            title=f"{tag}: upper threshold per class (dashed: calibrated)", xlabel="samples seen"
        )
        capacity = entry["trace"]["capacity_bytes"]
        for arm, used in entry["fills"].items():
            axes[row, 1].plot(seen[: len(used)], [u / capacity for u in used], label=arm)
        axes[row, 1].set(
            title=f"{tag}: store fill", xlabel="samples seen", ylabel="bytes / budget", ylim=(0, 1.05)
        )
        axes[row, 1].legend(loc="lower right")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=["mnist", "speech"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--drift-budgets", type=float, nargs="*", default=[0.3])
    parser.add_argument("--targets", nargs="+", default=["margin"], help="scorer targets (default: margin)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: per data set)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/budget"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/budget.py", *sys.argv[1:]])
    results: dict[str, Any] = {
        "command": command,
        "q_high": Q_HIGH,
        "drift_share": DRIFT_SHARE,
        "datasets": {},
    }
    started = time.perf_counter()
    for name in args.datasets:
        spec = DATASETS[name]
        begin = time.perf_counter()
        data = load_dataset(spec["name"], spec["data_dir"], progress=False)
        print(f"{name}: {len(data.train)} training, {len(data.test)} test samples", flush=True)
        records, traces = [], {}
        with tempfile.TemporaryDirectory() as workdir:
            for seed in range(args.seeds):
                records += run_seed(spec, data, seed, args, Path(workdir), traces)
        elapsed = time.perf_counter() - begin
        results["datasets"][name] = {"records": records, "traces": traces, "elapsed_s": elapsed}
        table = summary(name, records, elapsed, command, args.targets[0])
        (args.out / f"{name}.md").write_text(table)
        plot(traces, args.out / f"{name}.png", f"{name}, seed 0, target {args.targets[0]}", args.targets[0])
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        print(table, flush=True)
    print(f"total {(time.perf_counter() - started) / 60:.1f} min, one process, one thread")


if __name__ == "__main__":
    main()
