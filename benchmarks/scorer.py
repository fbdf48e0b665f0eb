"""DRIP scoring against plain inference and captum's LayerGradCam: throughput and memory.

Run by ``make bench-scorer`` (never by ``make test``). For each model, batch size and thread count,
the median samples/s of: plain forward under ``torch.inference_mode``; the ``floor``, the least
any validated score costs (the forward and the few operations no scorer can skip); ``DripScorer`` with the
product's default score (XGrad-CAM of the label's margin) and with the paper's (Grad-CAM of the
label's logit); ``DripScorer.heatmaps``; ``DripFilter.offer_batch`` into a durable on-disk
``SampleStore`` (the whole device path); ``DripFilter.offer`` one sample at a time (a durable
commit per sample); and captum's ``LayerGradCam`` + ReLU + mean on the same model, layer and
labels, the external reference for the paper's score (captum has no margin target).

Shared machines drift up to 2x in absolute speed, so the approaches run interleaved: each round runs
every approach once, in a rotated order, and every figure is also a ratio to plain forward in the
same round. A round's rate is the batch size over the median time of its calls, so a call that lost
the CPU to another process does not count. Reported: medians over the rounds. Before timing, each
model's paper-score heatmaps must equal captum's, and its default-score heatmaps those of drip's
generic autograd path (relative error < 1e-5), else nothing is timed.

Every sample offered is kept (thresholds without bounds), so every call writes to the store: the
worst case for the filter. The store's share is the time in ``SampleStore.add_batch`` (encoding,
inserts, commit); the commit's share is what durability costs, from the same path timed in the same
rounds into a store with ``durable=False`` (no fsync). Memory: the peak RSS over setup of 20
calls at batch 64 in a fresh process (glibc's mmap threshold fixed, so freed buffers leave the
RSS), scoring vs plain forward, median of 3 processes each, and the RSS growth over 200 more calls.
"""

from __future__ import annotations

import os

# Before torch starts its OpenMP pool: spinning threads next to any busy process slowed torch
# 35-230x on a shared 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import gc
import itertools
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drip import DripFilter, DripScorer, SampleStore, Thresholds, model_fingerprint
from drip.models import MODELS

RESULTS = Path(__file__).parent / "results" / "scorer.json"
AGREEMENT = 1e-5
# The default scores are read off float32 logits: their error is float32's epsilon times the
# logits' size (over |S|), large against scores near zero (seeded untrained dscnn: logits 370x the
# scores, 1.7e-5 relative); the export's tolerance.
SCORE_AGREEMENT = 1e-4
# (batch, closed form) -> minimum ratio of DripScorer to plain forward (the targets).
FORWARD_TARGETS = {(64, True): 0.90, (64, False): 0.85, (1, True): 0.85, (1, False): 0.60}
CAPTUM_TARGETS = {64: 1.0, 1: 1.25}
OFFER_BATCH_TARGET = 0.6


class BatchNormGapNet(nn.Module):
    """A model drip never saw (the issue's case): three conv-BatchNorm-ReLU blocks, GAP and a
    linear head, as a custom module that declares its head (no Sequential to run child by child)."""

    input_shape = (1, 28, 28)
    num_classes = 10
    drip_layer = "act3"
    drip_head = "fc"

    def __init__(self) -> None:
        super().__init__()
        widths = (1, 16, 32, 64)
        for index, (inputs, outputs) in enumerate(itertools.pairwise(widths), start=1):
            self.add_module(f"conv{index}", nn.Conv2d(inputs, outputs, 3, stride=2, padding=1, bias=False))
            self.add_module(f"bn{index}", nn.BatchNorm2d(outputs))
            self.add_module(f"act{index}", nn.ReLU())
        self.fc = nn.Linear(widths[-1], self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index in (1, 2, 3):
            x = getattr(self, f"act{index}")(getattr(self, f"bn{index}")(getattr(self, f"conv{index}")(x)))
        return self.fc(x.mean((2, 3)))


def mlp_lenet() -> nn.Module:
    """The other unseen case: a plain Sequential LeNet whose conv features go flat into an MLP."""
    model = nn.Sequential(
        nn.Conv2d(1, 8, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    model.input_shape, model.num_classes, model.drip_layer = (1, 28, 28), 10, "4"
    return model


# drip's reference models, and two it never saw (custom module with BatchNorm; flatten + MLP).
BENCH_MODELS: dict[str, Callable[[], nn.Module]] = {
    **MODELS,
    "bn_gap_net": BatchNormGapNet,
    "mlp_lenet": mlp_lenet,
}


@dataclass
class Case:
    """One model at one batch size, with everything its approaches need."""

    name: str
    model: nn.Module
    scorer: DripScorer
    paper: DripScorer
    x: torch.Tensor
    y: torch.Tensor

    @property
    def batch(self) -> int:
        return len(self.y)

    @property
    def head(self) -> str:
        return {"closed_form": "GAP+linear", "piecewise": "piecewise"}.get(self.scorer.cam.path, "autograd")


def build_case(name: str, batch: int) -> Case:
    """A seeded model in eval mode, its default and paper's scorers, and a random labelled batch."""
    torch.manual_seed(0)
    model = BENCH_MODELS[name]().eval()
    x = torch.randn(batch, *model.input_shape)
    y = torch.randint(0, model.num_classes, (batch,))
    paper = DripScorer(model, statistic="mean", target="label", cam="gradcam")
    return Case(name, model, DripScorer(model), paper, x, y)


def captum_cam(case: Case) -> Any:
    """captum's LayerGradCam on the scorer's model and layer (imported here: an optional extra)."""
    from captum.attr import LayerGradCam as CaptumGradCam

    return CaptumGradCam(case.model, case.scorer.cam.layer)


def captum_scores(case: Case) -> Callable[[], torch.Tensor]:
    """The reference score: captum's Grad-CAM maps for the labels, ReLU'd, averaged."""
    cam = captum_cam(case)
    return lambda: cam.attribute(case.x, target=case.y, relu_attributions=True).flatten(1).mean(1)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs difference / max abs (inf when the shapes differ)."""
    if got.shape != expected.shape:
        return math.inf
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


def captum_agreement(case: Case) -> float:
    """Relative error between the paper's-score heatmaps and captum's."""
    expected = captum_cam(case).attribute(case.x, target=case.y, relu_attributions=True)
    return relative_error(case.paper.heatmaps(case.x, case.y), expected.squeeze(1).detach())


def autograd_agreement(case: Case) -> float:
    """Relative error between the default score's heatmaps and drip's generic autograd path."""
    reference = DripScorer(case.model, path="autograd")
    return relative_error(case.scorer.heatmaps(case.x, case.y), reference.heatmaps(case.x, case.y))


def map_mean_agreement(case: Case) -> float:
    """Relative error between the default scores (read off the logits after a first call) and the
    means of the autograd path's signed maps."""
    case.scorer(case.x, case.y)
    maps = DripScorer(case.model, path="autograd").heatmaps(case.x, case.y)
    return relative_error(case.scorer(case.x, case.y), maps.flatten(1).mean(1))


class TimedStore(SampleStore):
    """A SampleStore that adds up the time spent in ``add_batch`` (encode, insert, commit), on the
    same clock as the calls it is a share of."""

    store_s = 0.0
    clock: Callable[[], float] = time.perf_counter

    def add_batch(self, *args: Any, **kwargs: Any) -> list[int | None]:
        start = self.clock()
        try:
            return super().add_batch(*args, **kwargs)
        finally:
            self.store_s += self.clock() - start


def plain_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a device runs without DRIP: inference."""
    with torch.inference_mode():
        return model(x)


def floor(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The least any validated score of the batch costs, with none of drip's code: the forward
    plus, once each, the inputs' finiteness as one reduction, the labels and the logits read into
    Python, and the scores made a tensor."""
    math.isfinite(x.sum())
    labels = y.tolist()
    with torch.inference_mode():
        logits = model(x)
    logits.tolist()
    return logits.new_tensor([0.0] * len(labels))


def keep_everything(case: Case) -> Thresholds:
    """Bands without bounds, bound to the case's model: every sample offered is stored."""
    classes = case.model.num_classes
    return Thresholds(
        low=(-math.inf,) * classes,
        high=(math.inf,) * classes,
        statistic=case.scorer.statistic,
        layer=case.scorer.layer_name,
        model_fingerprint=model_fingerprint(case.model),
    )


def approaches(case: Case, durable: DripFilter, fast: DripFilter) -> dict[str, Callable[[], object]]:
    """The calls to time for ``case``.

    ``durable`` stores with a durable commit, ``fast`` without fsync: the difference is the
    commit's cost. The per-sample path is ``offer`` (one sample) at batch 1, else ``offer_batch``.
    """
    model, scorer, paper, x, y = case.model, case.scorer, case.paper, case.x, case.y
    counter = iter(range(10**12))

    def offer_batch(drip_filter: DripFilter) -> Callable[[], object]:
        return lambda: drip_filter.offer_batch(
            x, y, sources=[f"bench:{next(counter)}" for _ in range(len(y))]
        )

    def offer(drip_filter: DripFilter) -> Callable[[], object]:
        return lambda: drip_filter.offer(x[0], y[0], source=f"bench:{next(counter)}")

    calls = {
        "forward": lambda: plain_forward(model, x),
        "floor": lambda: floor(model, x, y),
        "score": lambda: scorer(x, y),
        "score_paper": lambda: paper(x, y),
        "heatmaps": lambda: scorer.heatmaps(x, y),
        "offer_batch": offer_batch(durable),
        "captum": captum_scores(case),
    }
    if case.batch == 1:
        calls.update(offer=offer(durable), offer_nosync=offer(fast))
    else:
        calls["offer_batch_nosync"] = offer_batch(fast)
    return calls


# What a call's time is: wall time, or the CPU time of this process (all its threads), which a
# process holding the other core does not inflate: on a loaded machine, the work a call costs.
# CPU time leaves out waiting for the disk: the durable commit's fsync shows only on the wall clock.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_calls(
    call: Callable[[], object], min_s: float, min_calls: int, clock: Callable[[], float]
) -> list[float]:
    """Times (s) of ``call`` on ``clock``, for at least ``min_s`` wall seconds and ``min_calls`` calls."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - started < min_s:
        start = clock()
        call()
        times.append(clock() - start)
    return times


def bench_case(
    case: Case, threads: int, rounds: int, min_s: float, store_dir: Path, clock: Callable[[], float]
) -> dict:
    """Interleaved rounds of every approach for one case at one thread count."""
    torch.set_num_threads(threads)
    path = store_dir / f"{case.name}-{case.batch}-{threads}.sqlite"
    fast_path = path.with_suffix(".fast.sqlite")
    path_name = "offer" if case.batch == 1 else "offer_batch"
    with TimedStore(path) as store, SampleStore(fast_path, durable=False) as fast_store:
        store.clock = clock
        thresholds = keep_everything(case)
        calls = approaches(
            case, DripFilter(case.scorer, thresholds, store), DripFilter(case.scorer, thresholds, fast_store)
        )
        for call in calls.values():  # warm-up: one-time allocations, caches, the head check
            call()
        rates: dict[str, list[float]] = {name: [] for name in calls}
        store_share: list[float] = []
        names = list(calls)
        for index in range(rounds):
            for name in names[index % len(names) :] + names[: index % len(names)]:
                store.store_s = 0.0
                times = time_calls(calls[name], min_s, 3, clock)
                rates[name].append(case.batch / statistics.median(times))
                if name == path_name:
                    store_share.append(store.store_s / sum(times))
    path.unlink(missing_ok=True)
    fast_path.unlink(missing_ok=True)
    ratios = {
        name: [rate / forward for rate, forward in zip(values, rates["forward"])]
        for name, values in rates.items()
    }
    # Like for like: captum computes the paper's score.
    score_vs_captum = [score / captum for score, captum in zip(rates["score_paper"], rates["captum"])]
    # Per round: the share of the durable path's time that its fsync costs.
    commit_share = [
        1 - durable / fast for durable, fast in zip(rates[path_name], rates[path_name + "_nosync"])
    ]
    return {
        "model": case.name,
        "head": case.head,
        "batch": case.batch,
        "threads": threads,
        "rates": {name: _summary(values) for name, values in rates.items()},
        "ratios": {name: _summary(values) for name, values in ratios.items()},
        "score_vs_captum": _summary(score_vs_captum),
        "store_share": {path_name: _summary(store_share)},
        "commit_share": {path_name: _summary(commit_share)},
    }


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "rounds": values}


# -- memory -----------------------------------------------------------------------------------


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_probe(name: str, mode: str, batch: int, calls: int) -> dict:
    """Peak RSS increase (KiB) of ``calls`` calls of ``mode`` in this fresh process, and growth."""
    torch.set_num_threads(1)
    case = build_case(name, batch)
    run = {
        "forward": lambda: plain_forward(case.model, case.x),
        "score": lambda: case.scorer(case.x, case.y),
    }[mode]
    gc.collect()
    # Reset the peak to the current RSS (Linux clear_refs 5), so the peak is this code's alone.
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = _rss_kib("VmRSS")
    for _ in range(calls):
        run()
    peak, settled = _rss_kib("VmHWM"), _rss_kib("VmRSS")
    for _ in range(10 * calls):
        run()
    gc.collect()
    return {"peak_kib": peak - before, "growth_kib": _rss_kib("VmRSS") - settled}


def measure_memory(name: str, batch: int, calls: int = 20, repeats: int = 3) -> dict:
    """Peak RSS of scoring vs plain forward, each in fresh processes (median of ``repeats``)."""
    found: dict[str, list[dict]] = {"forward": [], "score": []}
    # A fixed mmap threshold (glibc) hands every freed tensor buffer back to the system at once;
    # with glibc's sliding default, the peak RSS swung by 10 MiB with the allocation history.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    for _ in range(repeats):
        for mode, probes in found.items():
            command = [sys.executable, __file__, "--memory-probe", name, mode, str(batch), str(calls)]
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
            probes.append(json.loads(output.strip().splitlines()[-1]))

    def mib(mode: str, key: str) -> float:
        return statistics.median(probe[key] for probe in found[mode]) / 1024

    return {
        "model": name,
        "batch": batch,
        "forward_peak_mib": mib("forward", "peak_kib"),
        "score_peak_mib": mib("score", "peak_kib"),
        "increase_mib": mib("score", "peak_kib") - mib("forward", "peak_kib"),
        "score_growth_mib": mib("score", "growth_kib"),
        "calls": calls,
        "repeats": repeats,
    }


# -- report -----------------------------------------------------------------------------------


def targets(result: dict) -> list[dict]:
    """The issue's targets that apply to one result, each with its measured value."""
    batch, closed = result["batch"], result["head"] == "GAP+linear"
    found = [
        ("score / forward", result["ratios"]["score"]["median"], FORWARD_TARGETS.get((batch, closed))),
        (
            "paper's score / forward",
            result["ratios"]["score_paper"]["median"],
            FORWARD_TARGETS.get((batch, closed)),
        ),
        ("paper's score / captum", result["score_vs_captum"]["median"], CAPTUM_TARGETS.get(batch)),
    ]
    if batch == 64:
        found.append(("offer_batch / forward", result["ratios"]["offer_batch"]["median"], OFFER_BATCH_TARGET))
    where = {"model": result["model"], "batch": batch, "threads": result["threads"]}
    return [
        {**where, "what": what, "value": value, "target": target, "met": value >= target}
        for what, value, target in found
        if target is not None
    ]


def markdown(results: list[dict], memory: list[dict]) -> str:
    """The results as markdown: throughput with ratios, the store's shares, memory."""
    lines = [
        "| model | head | batch | threads | forward /s | floor | score | paper's score | heatmaps "
        "| offer_batch | offer | captum | paper's / captum | store share | commit share |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        cells = []
        for name in ("floor", "score", "score_paper", "heatmaps", "offer_batch", "offer", "captum"):
            if name not in r["rates"]:
                cells.append("-")
                continue
            rate, ratio = r["rates"][name]["median"], r["ratios"][name]["median"]
            cells.append(f"{rate:,.0f} ({ratio:.2f}x)")
        (store,) = r["store_share"].values()
        (commit,) = r["commit_share"].values()
        lines.append(
            f"| {r['model']} | {r['head']} | {r['batch']} | {r['threads']} "
            f"| {r['rates']['forward']['median']:,.0f} | {' | '.join(cells)} "
            f"| {r['score_vs_captum']['median']:.2f}x | {store['median']:.0%} | {commit['median']:.0%} |"
        )
    if memory:
        lines += [
            "",
            "| model | batch | peak RSS, forward | peak RSS, score | increase | growth over 10x more calls |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for m in memory:
            peaks = f"{m['forward_peak_mib']:.1f} MiB | {m['score_peak_mib']:.1f} MiB"
            changes = f"{m['increase_mib']:+.1f} MiB | {m['score_growth_mib']:+.1f} MiB"
            lines.append(f"| {m['model']} | {m['batch']} | {peaks} | {changes} |")
    return "\n".join(lines)


def check_agreement(models: list[str], batches: list[int]) -> list[dict]:
    """Every case's heatmaps against their references; raises SystemExit (no timing) on a mismatch."""
    agreement = []
    for name in models:
        for batch in batches:
            case = build_case(name, batch)
            for reference, error, tolerance in (
                ("captum", captum_agreement(case), AGREEMENT),
                ("autograd", autograd_agreement(case), AGREEMENT),
                ("autograd maps' means", map_mean_agreement(case), SCORE_AGREEMENT),
            ):
                agreement.append(
                    {"model": name, "batch": batch, "reference": reference, "relative_error": error}
                )
                if not error < tolerance:
                    found = f"heatmaps or scores differ from {reference} (relative error {error:.2e})"
                    raise SystemExit(f"{name} batch {batch}: {found}; not timing")
    worst = max(a["relative_error"] for a in agreement)
    print(
        "heatmaps agree with captum (paper's score) and autograd (default), the default scores with the "
        f"autograd maps' means: max relative error {worst:.1e}"
    )
    return agreement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        choices=sorted(BENCH_MODELS),
        default=["lenet", "resnet8", "dscnn", "digits_cnn", "bn_gap_net", "mlp_lenet"],
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per approach per round")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or process CPU time (loaded machines)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS measurement")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--memory-probe", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        name, mode, batch, calls = args.memory_probe
        print(json.dumps(memory_probe(name, mode, int(batch), int(calls))))
        return 0
    try:
        import captum
    except ImportError:
        print("captum is missing: `make bench-scorer` installs it (the 'bench' extra)", file=sys.stderr)
        return 2

    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()
    agreement = check_agreement(args.models, args.batches)
    results = []
    with tempfile.TemporaryDirectory(prefix="drip-bench-") as store_dir:
        for name in args.models:
            for batch in args.batches:
                case = build_case(name, batch)
                for threads in args.threads:
                    result = bench_case(
                        case, threads, args.rounds, args.min_time, Path(store_dir), CLOCKS[args.clock]
                    )
                    results.append(result)
                    print(markdown([result], []).splitlines()[-1], flush=True)
    memory = [] if args.no_memory else [measure_memory(name, 64) for name in args.models]
    checked = [t for r in results for t in targets(r)]
    environment = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "captum": captum.__version__,
        "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
    }

    print(f"\n{markdown(results, memory)}\n")
    missed = [t for t in checked if not t["met"]]
    print(f"targets met: {len(checked) - len(missed)} of {len(checked)}")
    for t in missed:
        where = f"{t['model']} batch {t['batch']}, {t['threads']} thread(s)"
        print(f"  missed: {where}: {t['what']} {t['value']:.3f} < {t['target']:.2f}")
    print(
        f"load average {load_start[0]:.1f} at the start, {environment['load_average_end'][0]:.1f} at the end"
    )

    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": started.isoformat(timespec="seconds"),
        "seconds": (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(),
        "environment": environment,
        "settings": {"rounds": args.rounds, "min_time_s": args.min_time, "clock": args.clock},
        "agreement": agreement,
        "results": results,
        "memory": memory,
        "targets": checked,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
