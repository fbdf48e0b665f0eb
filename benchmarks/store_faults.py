"""What durability costs and what a concurrent reader costs the writer, measured.

    .venv/bin/python benchmarks/store_faults.py [--samples 400]

Prints a markdown table: per-commit latency of ``SampleStore.add`` with ``durable=True``
(``synchronous=FULL``) and ``False``; the same while another process reads the whole store with
``as_dataset()`` in a loop; and ``drip filter`` on a 2000-sample stream, first run and rerun (the
rerun skips what the first decided).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from drip.cli import main
from drip.models import digits_cnn
from drip.score import DripScorer
from drip.store import SampleStore
from drip.thresholds import Thresholds, model_fingerprint


def add_latencies_ms(path: Path, samples: int, *, durable: bool = True, tag: str = "s") -> list[float]:
    """The wall time (ms) of each of ``samples`` single-sample adds (ids ``tag0``, ``tag1``, ...)."""
    x, latencies = torch.rand(1, 8, 8), []
    with SampleStore(path, durable=durable) as store:
        for i in range(samples):
            start = time.perf_counter()
            store.add(x, i % 10, 0.5, source=f"{tag}{i}")
            latencies.append((time.perf_counter() - start) * 1000)
    return latencies


def read_forever(path: Path) -> None:
    with SampleStore(path) as store:
        while True:
            store.as_dataset()


def row(name: str, latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"| {name} | {statistics.median(ordered):.2f} | {p99:.2f} | {ordered[-1]:.2f} |"


def filter_runs_s(folder: Path) -> tuple[float, float]:
    torch.manual_seed(0)
    model = digits_cnn().eval()
    torch.save(model, folder / "model.pt")
    held_out, labels = torch.rand(300, 1, 8, 8), torch.arange(300) % 10
    Thresholds.from_scores(
        DripScorer(model)(held_out, labels),
        labels,
        10,
        q_high=0.3,
        layer="relu3",
        model_fingerprint=model_fingerprint(model),
    ).save(folder / "t.json")
    torch.save({"x": torch.rand(2000, 1, 8, 8), "y": torch.arange(2000) % 10}, folder / "stream.pt")
    argv = ["filter", "--model", str(folder / "model.pt"), "--thresholds", str(folder / "t.json")]
    argv += ["--stream", str(folder / "stream.pt"), "--store", str(folder / "kept.sqlite"), "--quiet"]
    times = []
    for _ in range(2):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(argv) == 0
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def run(samples: int, folder: Path) -> None:
    torch.set_num_threads(1)
    print(f"{samples} single-sample adds, {os.cpu_count()} CPUs, torch {torch.__version__}\n")
    print("| writer | median ms | p99 ms | max ms |\n|---|---|---|---|")
    print(row("durable (FULL)", add_latencies_ms(folder / "full.sqlite", samples)))
    print(row("durable=False (NORMAL)", add_latencies_ms(folder / "normal.sqlite", samples, durable=False)))
    shared = folder / "shared.sqlite"
    add_latencies_ms(shared, samples)  # a store worth reading
    print(row("durable, store of that size, no reader", add_latencies_ms(shared, samples, tag="alone")))
    reader = multiprocessing.get_context("fork").Process(target=read_forever, args=(shared,), daemon=True)
    reader.start()
    time.sleep(1.0)  # let the reader get into its loop
    try:
        beside_reader = add_latencies_ms(shared, samples, tag="read")
        print(row("durable, same store, reader looping as_dataset()", beside_reader))
    finally:
        reader.kill()
    first, rerun = filter_runs_s(folder)
    print(f"\ndrip filter, 2000 samples: first run {first:.2f} s, rerun after it finished {rerun:.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400)
    with tempfile.TemporaryDirectory(prefix="drip-bench-") as folder:
        run(parser.parse_args().samples, Path(folder))
