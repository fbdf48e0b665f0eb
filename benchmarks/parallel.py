"""drip at data-set scale: 1 against 2 processes on CPU, peak RSS against data size, GPU batch 1024.

Run by ``make bench-parallel`` (never by ``make test``). On a seeded, untrained ``lenet`` (speed
does not depend on the weights) with bands from random calibration inputs, over folders of
``.pt`` shards of 1x28x28 samples:

* throughput: ``torchrun --nproc-per-node 1`` and ``2`` running ``drip.parallel.score_source``
  on N samples (Gloo, one torch thread a rank), interleaved over ``--rounds``; a run's rate is N
  over the slowest rank's time in the loop (reading, scoring, gathering, rank 0's decisions;
  not the start of the processes); the ratio of each round's 2-process to 1-process rate, and
  their median;
* memory: the peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss`` of each rank) of one process on N
  and on 10N samples, and of the 2 ranks on 10N: bounded means it does not grow with the data;
* where CUDA exists, ``DripScorer`` at batch 1024 on the GPU against plain forward under
  ``torch.inference_mode`` on the same batch.

No store is written (the decisions are made, but a durable store's commits would time the disk).
Writes benchmarks/results/parallel.json and prints the figures.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from drip import DripFilter, DripScorer, Thresholds, model_fingerprint
from drip.models import lenet
from drip.parallel import distributed, open_source, score_source

RESULTS = Path(__file__).parent / "results" / "parallel.json"
SHARD = 2000


def make_files(folder: Path, samples: int) -> tuple[Path, Path, Path, Path]:
    """The model, its thresholds, and shard folders of ``samples`` and 10x as many samples."""
    torch.manual_seed(0)
    model = lenet().eval()
    torch.save(model, folder / "model.pt")
    scorer = DripScorer(model)
    x, y = torch.rand(512, 1, 28, 28), torch.arange(512) % 10
    thresholds = Thresholds.from_scores(
        scorer(x, y),
        y,
        10,
        q_high=0.3,
        min_class_points=30,
        layer=scorer.layer_name,
        target=scorer.target,
        cam=scorer.cam_method,
        model_fingerprint=model_fingerprint(model),
    )
    thresholds.save(folder / "t.json")
    generator = torch.Generator().manual_seed(1)
    shards = []
    for name, count in (("n", samples), ("10n", 10 * samples)):
        shard_dir = folder / name
        shard_dir.mkdir()
        for k, start in enumerate(range(0, count, SHARD)):
            size = min(SHARD, count - start)
            data = {"x": torch.rand(size, 1, 28, 28, generator=generator), "y": torch.arange(size) % 10}
            torch.save(data, shard_dir / f"part-{k:05}.pt")
        shards.append(shard_dir)
    return folder / "model.pt", folder / "t.json", shards[0], shards[1]


def rank_job(model_path: Path, thresholds_path: Path, data: Path, batch: int) -> None:
    """One rank under torchrun: score ``data``, print this rank's time, samples and peak RSS."""
    torch.set_num_threads(1)
    model = torch.load(model_path, weights_only=False).eval()
    thresholds = Thresholds.load(thresholds_path)
    source = open_source(data)
    with distributed(torch.device("cpu")) as (ranks, device):
        scorer = DripScorer(
            model, thresholds.layer, thresholds.statistic, thresholds.target, cam=thresholds.cam
        )
        run = score_source(
            DripFilter(scorer, thresholds), source, batch_size=batch, ranks=ranks, device=device
        )
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    line = {
        "rank": ranks.rank,
        "scored": run.scored,
        "elapsed_s": run.elapsed_s,
        "peak_rss_mib": peak_kib / 1024,
    }
    print("RANK " + json.dumps(line), flush=True)


def launch(processes: int, files: tuple[Path, Path], data: Path, batch: int) -> dict:
    """``torchrun`` this script's rank job on ``processes`` ranks: the ranks' reports."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    command = [torchrun, "--standalone", "--nproc-per-node", str(processes), __file__, "--rank-job"]
    command += ["--model", str(files[0]), "--thresholds", str(files[1]), "--data", str(data)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(
        [*command, "--batch", str(batch)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"torchrun failed ({done.returncode}):\n{done.stderr[-4000:]}")
    ranks = [json.loads(line[5:]) for line in done.stdout.splitlines() if line.startswith("RANK ")]
    samples = sum(r["scored"] for r in ranks)
    slowest = max(r["elapsed_s"] for r in ranks)
    return {
        "processes": processes,
        "samples": samples,
        "elapsed_s": slowest,
        "rate": samples / slowest,
        "peak_rss_mib": [round(r["peak_rss_mib"], 1) for r in sorted(ranks, key=lambda r: r["rank"])],
    }


def gpu_batch_1024(rounds: int = 20) -> dict | str:
    """Samples/s of DripScorer and of plain forward on one GPU at batch 1024 (median of rounds)."""
    if not torch.cuda.is_available():
        return "CUDA not available on this machine: not measured"
    torch.manual_seed(0)
    model = lenet().eval().cuda()
    scorer = DripScorer(model)
    x, y = torch.rand(1024, 1, 28, 28, device="cuda"), torch.arange(1024, device="cuda") % 10

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    rates = {}
    for name, call in (("forward", forward), ("score", lambda: scorer(x, y))):
        for _ in range(3):
            call()  # warm-up: kernels chosen, memory allocated
        times = []
        for _ in range(rounds):
            torch.cuda.synchronize()
            start = time.perf_counter()
            call()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        rates[name] = 1024 / statistics.median(times)
    return {
        "device": torch.cuda.get_device_name(),
        "forward_per_s": round(rates["forward"]),
        "score_per_s": round(rates["score"]),
        "score_over_forward": round(rates["score"] / rates["forward"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--samples", type=int, default=10_000, help="N (default: 10000; the RSS run uses 10N)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved 1- and 2-process runs (default: 3)"
    )
    parser.add_argument("--batch", type=int, default=256, help="samples per batch and rank (default: 256)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--rank-job", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--thresholds", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_job:
        rank_job(args.model, args.thresholds, args.data, args.batch)
        return
    started, load_before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model_path, thresholds_path, small, large = make_files(Path(tmp), args.samples)
        files = (model_path, thresholds_path)
        rounds = []
        for r in range(args.rounds):
            one, two = launch(1, files, small, args.batch), launch(2, files, small, args.batch)
            rounds.append({"one": one, "two": two, "ratio": round(two["rate"] / one["rate"], 3)})
            rates = f"1 process {one['rate']:,.0f}/s, 2 processes {two['rate']:,.0f}/s"
            print(f"round {r}: {rates}: {rounds[-1]['ratio']}x")
        memory = {
            "n_1_process": launch(1, files, small, args.batch),
            "10n_1_process": launch(1, files, large, args.batch),
            "10n_2_processes": launch(2, files, large, args.batch),
        }
    for name, run in memory.items():
        print(f"{name}: {run['samples']} samples, peak RSS per rank {run['peak_rss_mib']} MiB")
    sample_bytes = 28 * 28 * 4
    results = {
        "date": datetime.date.today().isoformat(),
        "command": "make bench-parallel ARGS='" + " ".join(sys.argv[1:]) + "'",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "torch": torch.__version__,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "model": "lenet (1x28x28), untrained, seeded",
        "samples": args.samples,
        "shard_samples": SHARD,
        "batch": args.batch,
        "data_mib": {
            "n": round(args.samples * sample_bytes / 2**20, 1),
            "10n": round(10 * args.samples * sample_bytes / 2**20, 1),
        },
        "throughput_rounds": rounds,
        "two_over_one_median": statistics.median(r["ratio"] for r in rounds),
        "memory": memory,
        "gpu_batch_1024": gpu_batch_1024(),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"2 processes over 1: {results['two_over_one_median']}x (median of {args.rounds} rounds)")
    print(f"GPU batch 1024: {results['gpu_batch_1024']}")
    print(f"wrote {args.out} ({results['elapsed_s']} s)")


if __name__ == "__main__":
    main()
