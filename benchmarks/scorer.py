"""Scoring at inference cost: drip's scorer against plain inference and captum's LayerGradCam.

For each model (lenet, resnet8, dscnn, digits_cnn), batch size (1, 64) and thread count (1, 2), it
times, interleaved in random order within each of ``--repeats`` rounds: plain forward under
``torch.inference_mode``; ``DripScorer`` (scores); ``DripScorer.heatmaps``; ``DripFilter.offer_batch``
into a durable on-disk ``SampleStore``; ``offer`` one sample at a time (durable commit per kept
sample); captum's ``LayerGradCam`` + ReLU + mean on the same model, layer and labels. Each figure is
the median samples/s and the median over rounds of its ratio to plain forward in the same round,
so machine noise cancels. Before timing it checks that drip's heatmaps equal captum's (relative
error < 1e-5) and refuses to time otherwise. It also measures the peak RSS increase of scoring a
batch of 64 over plain forward, in fresh child processes.

    python benchmarks/scorer.py [--repeats 9] [--quick]

Writes a markdown table to stdout and ``benchmarks/results/scorer.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from captum.attr import LayerGradCam

from drip import DripFilter, DripScorer, SampleStore, Thresholds, build_model, model_fingerprint

MODELS = ("lenet", "resnet8", "dscnn", "digits_cnn")
APPROACHES = ("forward", "drip_score", "drip_heatmaps", "offer_batch", "offer_single", "captum")
RESULTS = Path(__file__).parent / "results" / "scorer.json"
SAMPLES_PER_ROUND = {1: 48, 64: 256}


def make_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, 12 if name == "dscnn" else 10).eval()


def captum_scores(cam: LayerGradCam, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    maps = torch.relu(cam.attribute(x, target=y))
    return maps.flatten(1).mean(1)


def check_equal_to_captum(
    model: torch.nn.Module, scorer: DripScorer, x: torch.Tensor, y: torch.Tensor
) -> float:
    ours = scorer.heatmaps(x, y)
    reference = torch.relu(LayerGradCam(model, scorer.cam.layer).attribute(x, target=y)).squeeze(1).detach()
    error = float((ours - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
    if not error < 1e-5:
        raise SystemExit(f"drip's heatmaps differ from captum's (relative error {error:.2e}): not timing")
    return error


def calibrated_filter(model: torch.nn.Module, scorer: DripScorer, store: SampleStore) -> DripFilter:
    """A filter whose band keeps about 70% of random inputs, as a deployed one would."""
    x = torch.rand(200, *model.input_shape)
    y = torch.arange(200) % model.num_classes
    thresholds = Thresholds.from_scores(
        scorer(x, y),
        y,
        model.num_classes,
        q_high=0.3,
        min_class_points=10,
        statistic="mean",
        layer=scorer.layer_name,
        model_fingerprint=model_fingerprint(model),
    )
    return DripFilter(scorer, thresholds, store)


def time_round(run, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return time.perf_counter() - start


def bench_config(name: str, batch: int, threads: int, repeats: int, workdir: Path) -> dict:
    torch.set_num_threads(threads)
    model = make_model(name)
    scorer = DripScorer(model)
    x = torch.rand(batch, *model.input_shape)
    y = torch.arange(batch) % model.num_classes
    error = check_equal_to_captum(model, scorer, x, y)
    cam = LayerGradCam(model, scorer.cam.layer)
    store = SampleStore(workdir / f"{name}-{batch}-{threads}.sqlite")
    drip_filter = calibrated_filter(model, scorer, store)

    def offer_single() -> None:
        for i in range(batch):
            drip_filter.offer(x[i], y[i])

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    runs = {
        "forward": forward,
        "drip_score": lambda: scorer(x, y),
        "drip_heatmaps": lambda: scorer.heatmaps(x, y),
        "offer_batch": lambda: drip_filter.offer_batch(x, y),
        "offer_single": offer_single,
        "captum": lambda: captum_scores(cam, x, y),
    }
    calls = max(1, SAMPLES_PER_ROUND[batch] // batch)
    for run in runs.values():  # warm-up: allocator, first-call head check, SQLite pages
        time_round(run, 2)
    rates: dict[str, list[float]] = {a: [] for a in APPROACHES}
    ratios: dict[str, list[float]] = {a: [] for a in APPROACHES}
    order = list(APPROACHES)
    for _ in range(repeats):
        random.shuffle(order)
        elapsed = {
            a: time_round(runs[a], calls if a != "offer_single" else max(1, calls // 4)) for a in order
        }
        round_rates = {
            a: batch * (calls if a != "offer_single" else max(1, calls // 4)) / elapsed[a] for a in order
        }
        for a in APPROACHES:
            rates[a].append(round_rates[a])
            ratios[a].append(round_rates[a] / round_rates["forward"])
    commit_share = commit_time_share(drip_filter, x, y)
    store.close()
    return {
        "model": name,
        "batch": batch,
        "threads": threads,
        "closed_form": scorer.cam.closed_form,
        "captum_relative_error": error,
        "samples_per_s": {a: statistics.median(v) for a, v in rates.items()},
        "ratio_to_forward": {a: statistics.median(v) for a, v in ratios.items()},
        "single_offer_commit_share": commit_share,
    }


def commit_time_share(drip_filter: DripFilter, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of single-sample ``offer`` time spent in the store's durable transaction."""
    store = drip_filter.store
    spent = [0.0]
    add_batch = store.add_batch

    def timed_add_batch(*args, **kwargs):
        start = time.perf_counter()
        try:
            return add_batch(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    store.add_batch = timed_add_batch
    try:
        start = time.perf_counter()
        for i in range(len(x)):
            drip_filter.offer(x[i], y[i])
        total = time.perf_counter() - start
    finally:
        del store.add_batch
    return spent[0] / total


MEMORY_CHILD = """
import os, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {bench!r})
from scorer import make_model
from drip import DripScorer
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
model = make_model({name!r})
scorer = DripScorer(model)
x = torch.rand(64, *model.input_shape); y = torch.arange(64) % model.num_classes
with torch.inference_mode():
    model(x[:1])
scorer(x[:1], y[:1])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS high-water mark (Linux >= 4.0)
before = status("VmRSS:")
if {mode!r} == "forward":
    with torch.inference_mode():
        model(x)
else:
    scorer(x, y)
print(status("VmHWM:") - before)
"""


def peak_rss_kib(name: str, mode: str) -> int:
    """Peak RSS increase (KiB) of one batch of 64 in a fresh process after a batch-1 warm-up;
    the median of three processes."""
    code = MEMORY_CHILD.format(bench=str(Path(__file__).parent), name=name, mode=mode)
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        for _ in range(3)
    ]
    return int(statistics.median(int(r.stdout.strip().splitlines()[-1]) for r in runs))


def table(results: list[dict]) -> str:
    lines = [
        "| model | head | batch | threads | forward (samples/s) | DripScorer | heatmaps | offer_batch | "
        "offer (1 by 1) | captum | DripScorer / captum | commit share of offer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rate, ratio = r["samples_per_s"], r["ratio_to_forward"]
        cells = [
            r["model"],
            "GAP+linear" if r["closed_form"] else "other",
            str(r["batch"]),
            str(r["threads"]),
            f"{rate['forward']:,.0f}",
            *(
                f"{ratio[a]:.2f}x"
                for a in ("drip_score", "drip_heatmaps", "offer_batch", "offer_single", "captum")
            ),
            f"{ratio['drip_score'] / ratio['captum']:.2f}x",
            f"{100 * r['single_offer_commit_share']:.0f}%",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds per figure (default: 9)")
    parser.add_argument("--quick", action="store_true", help="3 rounds, 1 thread only")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    thread_counts = (1,) if args.quick else (1, 2)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            for threads in thread_counts:
                for batch in (1, 64):
                    results.append(bench_config(name, batch, threads, repeats, Path(tmp)))
                    print(f"{name} batch {batch} threads {threads}: done", file=sys.stderr)
    memory = {
        name: {"forward_kib": peak_rss_kib(name, "forward"), "drip_score_kib": peak_rss_kib(name, "score")}
        for name in MODELS
    }
    report = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
        "repeats": repeats,
        "results": results,
        "peak_rss_increase_batch64": memory,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    print()
    print("| model | peak RSS increase, forward (KiB) | peak RSS increase, DripScorer (KiB) |")
    print("|---|---|---|")
    for name, m in memory.items():
        print(f"| {name} | {m['forward_kib']} | {m['drip_score_kib']} |")


if __name__ == "__main__":
    main()
