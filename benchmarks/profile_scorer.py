"""Where a scoring call's time goes, for the cases ``make bench-scorer`` reports below target.

    .venv/bin/python benchmarks/profile_scorer.py [--model lenet] [--batch 1] [--calls 2000]

For one model and batch size, on one thread: ``torch.profiler`` over plain forward and over
``DripScorer`` (the torch ops each runs, by self CPU time, and the per-call time left to Python
outside any op), then ``DripFilter.offer_batch`` into a durable store split into scoring, the
store's ``add_batch`` and the filter's own work. Prints markdown.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from scorer import TimedStore, build_case, keep_everything, plain_forward
from torch.profiler import ProfilerActivity, profile

from drip.filter import DripFilter
from drip.models import MODELS


def per_call_us(call: Callable[[], object], calls: int) -> float:
    for _ in range(min(200, calls)):
        call()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def op_table(call: Callable[[], object], calls: int, rows: int) -> tuple[str, float]:
    """The ops ``call`` runs, by self CPU time per call, and the sum of their self times (us);
    ``call`` is warm (``per_call_us`` ran it first)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            call()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    in_ops = sum(e.self_cpu_time_total for e in events) / calls
    lines = ["| op | calls per call | self us per call |", "|---|--:|--:|"]
    lines += [
        f"| {e.key} | {e.count / calls:.0f} | {e.self_cpu_time_total / calls:.1f} |" for e in events[:rows]
    ]
    return "\n".join(lines), in_ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="lenet")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    case = build_case(args.model, args.batch)
    calls = {
        "plain forward": lambda: plain_forward(case.model, case.x),
        "DripScorer": lambda: case.scorer(case.x, case.y),
    }
    print(f"# {args.model}, batch {args.batch}, one thread, {args.calls} calls (path: {case.head})\n")
    for name, call in calls.items():
        wall = per_call_us(call, args.calls)
        table, in_ops = op_table(call, args.calls, args.rows)
        print(f"## {name}: {wall:.0f} us a call; torch ops' self time {in_ops:.0f} us (under the profiler)\n")
        print(table + "\n")
    with tempfile.TemporaryDirectory() as folder, TimedStore(Path(folder) / "s.sqlite") as store:
        drip_filter = DripFilter(case.scorer, keep_everything(case), store)
        counter = iter(range(10**12))
        score_batch, scoring_s = case.scorer.score_batch, [0.0]

        def timed_score_batch(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return score_batch(*args, **kwargs)
            finally:
                scoring_s[0] += time.perf_counter() - start

        def offer_batch() -> None:
            drip_filter.offer_batch(case.x, case.y, sources=[f"p:{next(counter)}" for _ in range(args.batch)])

        # Scoring and storing are timed inside the very calls whose wall time is split.
        case.scorer.score_batch = timed_score_batch
        for _ in range(min(200, args.calls // 4)):
            offer_batch()
        store.store_s = scoring_s[0] = 0.0
        calls = args.calls // 4
        start = time.perf_counter()
        for _ in range(calls):
            offer_batch()
        elapsed = time.perf_counter() - start
        wall, score_us, store_us = (1e6 * t / calls for t in (elapsed, scoring_s[0], store.store_s))
        print(
            f"## DripFilter.offer_batch into a durable store: {wall:.0f} us a call = scoring "
            f"{score_us:.0f} + SampleStore.add_batch {store_us:.0f} + the filter's own "
            f"{wall - score_us - store_us:.0f}\n"
        )


if __name__ == "__main__":
    main()
