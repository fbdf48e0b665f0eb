"""drip.parallel and drip score: bounded-memory sources, ranks that decide as one process does."""

from __future__ import annotations

import csv
import gc
import subprocess
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import calibrated_digits, snapshot, torchrun_command
from PIL import Image
from torch import nn

from drip.calibrate import calibrate
from drip.cli import main
from drip.errors import DripDataError, DripInputError, DripMalformedSampleError
from drip.filter import DripFilter
from drip.parallel import (
    ImageFolder,
    RankBatches,
    Ranks,
    TensorShards,
    batch_loader,
    open_source,
    resolve_device,
    score_source,
)
from drip.score import DripScorer
from drip.store import SampleStore

SHARD_SIZES = (40, 7, 53, 50)  # uneven, one shorter than a batch: batches span shards


@pytest.fixture
def files(tmp_path):
    """A calibrated digits model and its thresholds on disk, a stream as one file and as shards."""
    model, _, thresholds = calibrated_digits(held_out=200, q_high=0.3, q_low=0.1, min_class_points=5)
    torch.save(model, tmp_path / "model.pt")
    thresholds.save(tmp_path / "t.json")
    generator = torch.Generator().manual_seed(1)
    x, y = torch.rand(sum(SHARD_SIZES), 1, 8, 8, generator=generator), torch.arange(sum(SHARD_SIZES)) % 10
    torch.save({"x": x, "y": y}, tmp_path / "stream.pt")
    (tmp_path / "shards").mkdir()
    start = 0
    for k, size in enumerate(SHARD_SIZES):
        part = slice(start, start + size)
        torch.save({"x": x[part].clone(), "y": y[part].clone()}, tmp_path / "shards" / f"part-{k:03}.pt")
        start += size
    return tmp_path, x, y


def batches(source, batch_size: int, ranks: Ranks | None = None) -> list[tuple]:
    return [(i.tolist(), x, y.tolist()) for i, x, y in RankBatches(source, batch_size, ranks or Ranks())]


def test_shard_folder_iterates_as_the_single_file(files):
    tmp, x, y = files
    folder, single = TensorShards(tmp / "shards"), TensorShards(tmp / "stream.pt")
    assert len(folder) == len(single) == len(x)
    for world in (1, 2, 3):
        seen = []
        for rank in range(world):
            ranks = Ranks(rank, world)
            from_folder, from_file = batches(folder, 16, ranks), batches(single, 16, ranks)
            assert len(from_folder) == len(RankBatches(folder, 16, ranks))
            for (i, bx, by), (j, fx, fy) in zip(from_folder, from_file, strict=True):
                assert i == j and by == fy and torch.equal(bx, fx)
                assert i == list(range(i[0], i[-1] + 1, world)) and len(i) <= 16
                assert torch.equal(bx, x[i]) and by == y[i].tolist()
            seen += [i for batch in from_folder for i in batch[0]]
        assert sorted(seen) == list(range(len(x)))  # every sample once, on exactly one rank
    assert folder.source_id(0) == "part-000.pt:0" and folder.source_id(40) == "part-001.pt:0"
    assert folder.source_id(47) == "part-002.pt:0"
    assert folder.source_id(149) == "part-003.pt:49" and single.source_id(149) == "stream.pt:149"


def test_a_dataloader_with_workers_gives_the_same_batches_in_order(files):
    tmp, _, _ = files
    folder = TensorShards(tmp / "shards")
    expected = batches(folder, 16, Ranks(1, 2))
    loaded = batch_loader(folder, 16, Ranks(1, 2), num_workers=2)
    assert not loaded.pin_memory  # only when the batches go to a GPU
    got = [(i.tolist(), bx, by.tolist()) for i, bx, by in loaded]
    assert [b[0] for b in got] == [b[0] for b in expected]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(got, expected))


def test_the_reader_never_holds_more_than_one_shard(files, monkeypatch):
    tmp, x, _ = files
    folder = TensorShards(tmp / "shards")
    loaded: list[weakref.ref] = []
    load = TensorShards.load

    def counting_load(self, k):
        gc.collect()
        assert all(ref() is None for ref in loaded), f"a shard was still held when shard {k} loaded"
        shard_x, shard_y = load(self, k)
        loaded.append(weakref.ref(shard_x))
        return shard_x, shard_y

    monkeypatch.setattr(TensorShards, "load", counting_load)
    held = [batch for batch in RankBatches(folder, 16)]  # batches kept: they must not pin a shard
    assert len(loaded) == len(SHARD_SIZES)  # each shard read once, in order
    assert torch.equal(torch.cat([b[1] for b in held]), x)
    loaded.clear()
    batches(folder, 16, Ranks(1, 3))
    assert len(loaded) == len(SHARD_SIZES)


def _reference(tmp: Path, x, y, batch_size: int, store_path: Path, bad=(), **store_options):
    """Decisions and store of the single-process path: DripFilter.offer_batch in index order, in
    batches of ``batch_size`` less their ``bad`` samples (whose decisions are None), as
    ``drip filter`` offers them."""
    _, scorer, thresholds = calibrated_digits(held_out=200, q_high=0.3, q_low=0.1, min_class_points=5)
    folder = TensorShards(tmp / "shards")
    decisions = []
    with SampleStore(store_path, **store_options) as store:
        drip_filter = DripFilter(scorer, thresholds, store)
        for start in range(0, len(x), batch_size):
            index = range(start, min(start + batch_size, len(x)))
            good = [i for i in index if i not in bad]
            sources = [folder.source_id(i) for i in good]
            decided = iter(drip_filter.offer_batch(x[good], y[good], sources=sources) if good else [])
            decisions += [None if i in bad else next(decided) for i in index]
        rows = snapshot(store)
    return decisions, rows, drip_filter.counters


def _score_args(tmp: Path, out: str, store: str, data: str = "shards") -> list[str]:
    return [
        "score",
        "--model",
        str(tmp / "model.pt"),
        "--thresholds",
        str(tmp / "t.json"),
        "--data",
        str(tmp / data),
        "--out",
        str(tmp / out),
        "--store",
        str(tmp / store),
        "--capacity-count",
        "30",
        "--when-full",
        "evict",
        "--batch-size",
        "16",
        "--quiet",
    ]


def _same_as_reference(tmp: Path, out: str, store: str, reference) -> None:
    decisions, rows, _ = reference
    with (tmp / out).open() as handle:
        written = list(csv.DictReader(handle))
    assert [int(r["index"]) for r in written] == list(range(len(decisions)))
    for r, d in zip(written, decisions, strict=True):
        if d is None:
            assert (r["score"], r["kept"], r["reason"], r["sample_id"]) == ("", "0", "malformed", "")
            continue
        assert (bool(int(r["kept"])), r["reason"], int(r["label"])) == (d.kept, d.reason, d.label)
        assert float(r["score"]) == pytest.approx(d.score, rel=1e-5, abs=1e-7)
        assert r["sample_id"] == ("" if d.sample_id is None else str(d.sample_id))
    with SampleStore(tmp / store) as held:
        got = snapshot(held)
    assert [row[:2] + row[3:] for row in got] == [row[:2] + row[3:] for row in rows]
    assert [row[2] for row in got] == pytest.approx([row[2] for row in rows], rel=1e-5, abs=1e-7)


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    """``drip`` under ``torchrun`` on 2 CPU ranks."""
    command, env = torchrun_command("-m", "drip.cli", *args)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_two_gloo_processes_decide_and_store_as_one_process(files, capsys):
    tmp, x, y = files
    # An evicting store at capacity: its contents depend on the order samples arrive in.
    reference = _reference(tmp, x, y, 16, tmp / "reference.sqlite", capacity_count=30, when_full="evict")
    assert sum(d.reason == "store_full" for d in reference[0]) > 0  # the capacity mattered

    assert main(_score_args(tmp, "one.csv", "one.sqlite")) == 0
    _same_as_reference(tmp, "one.csv", "one.sqlite", reference)
    assert "scored 150 samples on 1 process(es)" in capsys.readouterr().out

    done = _torchrun(_score_args(tmp, "two.csv", "two.sqlite"))
    assert done.returncode == 0, done.stderr[-3000:]
    _same_as_reference(tmp, "two.csv", "two.sqlite", reference)
    assert "scored 150 samples on 2 process(es)" in done.stdout


def _bad_shards(tmp: Path, x, y) -> dict[int, str]:
    """The shards again in ``bad/``, with malformed samples: their indices and what is wrong."""
    (tmp / "bad").mkdir()
    x, y = x.clone(), y.clone()
    x[21, 0, 3, 3] = float("nan")  # rank 1's under 2 ranks, as are 57 and 133
    y[57] = 12  # beyond the 10 classes
    x[133] = float("inf")
    bad = {21: "NaN or infinite", 57: "label 12 is out of range", 133: "NaN or infinite"}
    start = 0
    for k, size in enumerate(SHARD_SIZES):
        shard = {"x": x[start : start + size], "y": y[start : start + size]}
        if k == 1:  # one shard of another shape: each of its samples is malformed, not the data set
            shard["x"] = torch.rand(size, 1, 9, 9)
            bad.update({i: "expected shape (B, 1, 8, 8)" for i in range(start, start + size)})
        torch.save(shard, tmp / "bad" / f"part-{k:03}.pt")
        start += size
    return bad


def _reported(out: str, bad: dict[int, str], source: TensorShards) -> None:
    """Each malformed sample reported on one line: its index, source id and what is wrong."""
    for i, why in bad.items():
        head = f"malformed sample {i} ({source.source_id(i)}): "
        lines = [line for line in out.splitlines() if line.startswith(head)]
        assert len(lines) == 1 and why in lines[0], out
    assert f"{len(bad)} malformed samples skipped (0 in earlier runs)" in out


def test_malformed_samples_are_reported_and_the_rest_decided_on_one_and_two_ranks(files, capsys):
    tmp, x, y = files
    bad = _bad_shards(tmp, x, y)
    # The decisions of drip filter's way: each batch of 16 less its malformed samples, in one call.
    reference = _reference(tmp, x, y, 16, tmp / "reference.sqlite", bad, capacity_count=30, when_full="evict")
    assert main(_score_args(tmp, "one.csv", "one.sqlite", data="bad")) == 0
    out = capsys.readouterr().out
    _reported(out, bad, TensorShards(tmp / "bad"))
    _same_as_reference(tmp, "one.csv", "one.sqlite", reference)

    done = _torchrun(_score_args(tmp, "two.csv", "two.sqlite", data="bad"))
    assert done.returncode == 0, done.stderr[-3000:]
    _reported(done.stdout, bad, TensorShards(tmp / "bad"))
    _same_as_reference(tmp, "two.csv", "two.sqlite", reference)


def test_strict_stops_every_rank_at_the_first_malformed_sample_and_a_rerun_goes_on(files, capsys):
    tmp, x, y = files
    bad = _bad_shards(tmp, x, y)
    reference = _reference(tmp, x, y, 16, tmp / "reference.sqlite", bad, capacity_count=30, when_full="evict")
    # Sample 21 is rank 1's; rank 0 decides the batch before its own, and both ranks stop.
    done = _torchrun([*_score_args(tmp, "strict.csv", "strict.sqlite", data="bad"), "--strict"])
    assert done.returncode == 1, done.stderr[-3000:]
    stopped = "stopped at malformed sample 21 (part-000.pt:21): x: expected finite values"
    assert stopped in done.stdout and "malformed sample 57" not in done.stdout
    assert not (tmp / "strict.csv").exists()
    with SampleStore(tmp / "strict.sqlite") as store:
        assert [row[3] for row in snapshot(store)] == [
            f"part-000.pt:{i}" for i, d in enumerate(reference[0][:16]) if d.kept
        ]
    # One process, the same: and without --strict the job goes on past it, to the whole run.
    args = _score_args(tmp, "one.csv", "one.sqlite", data="bad")
    assert main([*args, "--strict"]) == 1
    assert stopped in capsys.readouterr().out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "resumed at sample 16" in out
    _reported(out, bad, TensorShards(tmp / "bad"))
    _same_as_reference(tmp, "one.csv", "one.sqlite", reference)


def test_a_rerun_resumes_only_the_same_job_and_leaves_a_finished_one_alone(files, capsys):
    tmp, x, y = files
    _bad_shards(tmp, x, y)
    args = _score_args(tmp, "job.csv", "job.sqlite", data="bad")
    assert main([*args, "--strict"]) == 1  # stopped at sample 21: the batch before it is committed
    assert main([*args[:-2], "8", "--quiet"]) == 2  # --batch-size 8: other batches, other decisions
    assert "holds a run of 'drip score:bad:job.csv' with another model" in capsys.readouterr().err
    assert main(args) == 0
    written = (tmp / "job.csv").read_bytes()
    with SampleStore(tmp / "job.sqlite") as store:
        held = snapshot(store)
    capsys.readouterr()
    assert main(args) == 0
    assert "job.csv is complete" in capsys.readouterr().out
    assert (tmp / "job.csv").read_bytes() == written
    with SampleStore(tmp / "job.sqlite") as store:
        assert snapshot(store) == held
    # The CSV of an interrupted job lost: the store cannot vouch for a new one.
    gone = _score_args(tmp, "gone.csv", "job.sqlite", data="bad")
    assert main([*gone, "--strict"]) == 1
    (tmp / "gone.csv.partial").unlink()
    assert main(gone) == 2
    assert "gone.csv.partial, its CSV so far, is gone" in capsys.readouterr().err


def test_score_source_counts_as_the_filter_and_skips_malformed_samples(files, tmp_path):
    tmp, x, y = files
    _, scorer, thresholds = calibrated_digits(held_out=200, q_high=0.3, q_low=0.1, min_class_points=5)
    drip_filter = DripFilter(scorer, thresholds)
    seen = []
    run = score_source(
        drip_filter, TensorShards(tmp / "shards"), batch_size=32, on_decisions=lambda i, d: seen.extend(i)
    )
    _, _, counters = _reference(tmp, x, y, 32, tmp_path / "ref.sqlite")
    assert run.counters == counters and run.scored == len(x) and seen == list(range(len(x)))
    bad = tmp_path / "bad"
    bad.mkdir()
    labels = y[:20].clone()
    labels[[3, 17]] = 12  # beyond the 10 classes
    torch.save({"x": x[:20], "y": labels}, bad / "a.pt")
    run = score_source(DripFilter(scorer, thresholds), TensorShards(bad), batch_size=32)
    assert [i for i, _ in run.malformed] == [3, 17] and "label 12 is out of range" in run.malformed[0][1]
    assert sum(run.counters.seen) == 18
    with pytest.raises(DripMalformedSampleError, match=r"sample 3 \(a.pt:3\): y: .*label"):
        score_source(DripFilter(scorer, thresholds), TensorShards(bad), batch_size=32, strict=True)


def test_cuda_without_a_gpu_falls_back_to_the_cpu_and_says_so(files, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: nothing to fall back from")
    assert resolve_device("cuda") == torch.device("cpu")
    assert capsys.readouterr().err.strip() == (
        "drip: CUDA is not available here; running on the CPU instead of cuda"
    )
    assert resolve_device("cuda:1", announce=False) == torch.device("cpu")
    assert capsys.readouterr().err == ""
    with pytest.raises(DripInputError, match="expected cpu, cuda or cuda:N, got 'tpu'"):
        resolve_device("tpu")
    tmp, _, _ = files
    args = [*_score_args(tmp, "cpu.csv", "cpu.sqlite")[:9], "--device", "cuda", "--quiet"]
    assert main(args) == 0
    assert capsys.readouterr().err.count("CUDA is not available") == 1
    filter_args = ["filter", "--model", str(tmp / "model.pt"), "--thresholds", str(tmp / "t.json")]
    filter_args += ["--stream", str(tmp / "stream.pt"), "--store", str(tmp / "f.sqlite"), "--device", "cuda"]
    assert main([*filter_args, "--quiet"]) == 0
    assert capsys.readouterr().err.count("CUDA is not available") == 1


def test_drip_experiment_takes_the_device_too(monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: nothing to fall back from")
    import drip.experiment

    asked = {}

    def stop(*args, device, **kwargs):
        asked["device"] = device
        raise DripInputError("stopped before training")

    monkeypatch.setattr(drip.experiment, "run_experiment", stop)
    assert main(["experiment", "--dataset", "digits", "--device", "cuda", "--quiet"]) == 2
    assert asked["device"] == torch.device("cpu")
    assert capsys.readouterr().err.count("CUDA is not available") == 1


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


def test_bad_sources_raise_errors_that_name_what_is_wrong(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DripDataError, match="an empty folder"):
        open_source(tmp_path / "empty")
    with pytest.raises(DripDataError, match="no such file or folder"):
        open_source(tmp_path / "missing")
    x = torch.rand(4, 1, 8, 8)
    _write(tmp_path / "mixed" / "a.pt", {"x": x, "y": torch.zeros(4, dtype=torch.int64)})
    _write(tmp_path / "mixed" / "b.pt", {"x": torch.rand(4, 1, 9, 9), "y": torch.zeros(4, dtype=torch.int64)})
    # Samples of another shape are the scorer's to refuse, one at a time: a batch of both is a list.
    (index, mixed, _), *_ = RankBatches(TensorShards(tmp_path / "mixed"), 6)
    assert (
        index.tolist() == list(range(6))
        and [tuple(s.shape) for s in mixed] == [(1, 8, 8)] * 4 + [(1, 9, 9)] * 2
    )
    cases = {
        "nolabels": ({"x": x}, "no 'y': every shard needs the labels"),
        "floatlabels": ({"x": x, "y": torch.zeros(4)}, "'y': expected integer labels"),
        "short": ({"x": x, "y": torch.zeros(3, dtype=torch.int64)}, "4 samples but 3 labels"),
        "notdict": (x, "expected a dict with tensors 'x'"),
        "none": ({"x": x[:0], "y": torch.zeros(0, dtype=torch.int64)}, "the shards hold no samples"),
    }
    for name, (data, message) in cases.items():
        with pytest.raises(DripDataError, match=message):
            TensorShards(_write(tmp_path / name / "s.pt", data).parent)
    legacy = tmp_path / "legacy.pt"  # torch.save's old format cannot be memory-mapped
    torch.save({"x": x, "y": torch.arange(4)}, legacy, _use_new_zipfile_serialization=False)
    assert len(TensorShards(legacy)) == 4
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(DripDataError, match=r"junk\.pt: cannot read a \.pt shard"):
        TensorShards(tmp_path / "junk.pt")
    (tmp_path / "images" / "cat").mkdir(parents=True)
    with pytest.raises(DripInputError, match="image folder is read at the model's input shape"):
        open_source(tmp_path / "images")
    with pytest.raises(DripDataError, match="no PNG or JPG images"):
        open_source(tmp_path / "images", (3, 8, 8))
    with pytest.raises(DripInputError, match="batch_size: expected a positive number"):
        RankBatches(TensorShards(tmp_path / "mixed" / "a.pt"), 0)
    # On the command line: one line on stderr, exit code 2.
    args = ["score", "--model", "m.pt", "--thresholds", "t.json", "--data", str(tmp_path), "--out", "o.csv"]
    assert main([*args, "--batch-size", "0"]) == 2
    assert "--batch-size: expected a positive number" in capsys.readouterr().err


def test_image_folders_read_one_image_at_a_time_at_the_model_shape(tmp_path):
    for c, name in enumerate(("b_dog", "a_cat")):
        for i in range(3):
            pixels = np.full((12, 10, 3), 40 * (c + 1) + i, dtype=np.uint8)
            folder = tmp_path / "images" / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"im{i}.{'png' if i % 2 else 'jpg'}")
    (tmp_path / "images" / "a_cat" / "notes.txt").write_text("not an image")
    source = open_source(tmp_path / "images", (3, 8, 6))
    assert isinstance(source, ImageFolder) and source.classes == ("a_cat", "b_dog") and len(source) == 6
    assert source.source_id(0) == "a_cat/im0.jpg" and source.source_id(4) == "b_dog/im1.png"
    (index, x, y), *_ = RankBatches(source, 8)
    assert index.tolist() == list(range(6)) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert x.shape == (6, 3, 8, 6) and x.dtype == torch.float32
    assert x[1].flatten().tolist() == pytest.approx([81 / 255] * 144, abs=1e-6)  # a_cat/im1.png
    grey = ImageFolder(tmp_path / "images", (4, 4), channels=1)
    assert grey.image(4).shape == (1, 4, 4)
    (tmp_path / "images" / "a_cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DripDataError, match=r"broken\.png: not a readable image"):
        ImageFolder(tmp_path / "images", (4, 4)).image(0)


def test_an_unreadable_image_is_a_malformed_sample_and_the_rest_are_decided(tmp_path):
    for c, name in enumerate(("a_cat", "b_dog")):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((8, 8), 30 * c + i, dtype=np.uint8)).save(
                tmp_path / "images" / name / f"{i}.png"
            )
    (tmp_path / "images" / "a_cat" / "2.png").write_bytes(b"not a png")
    _, scorer, thresholds = calibrated_digits(held_out=200, q_high=0.3, q_low=0.1, min_class_points=5)
    seen = []
    run = score_source(
        DripFilter(scorer, thresholds),
        ImageFolder(tmp_path / "images", (8, 8), channels=1),
        batch_size=4,
        on_decisions=lambda i, d: seen.extend(zip(i, d)),
    )
    assert [i for i, _ in run.malformed] == [2] and "2.png: not a readable image" in run.malformed[0][1]
    assert [i for i, _ in seen] == list(range(10)) and sum(run.counters.seen) == 9
    assert seen[2][1].reason == run.malformed[0][1]


def test_drip_score_explains_itself(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0 and "torchrun --nproc-per-node N drip score" in text
    assert "--device" in text and "--workers" in text


def test_an_image_folder_is_read_at_the_shape_the_thresholds_were_calibrated_on(tmp_path, capsys):
    # A plain Sequential declares no input_shape: the thresholds remember the calibration samples'.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()
    x, y = torch.rand(80, 1, 8, 8), torch.arange(80) % 2
    thresholds = calibrate(DripScorer(model, "1"), x, y, q_high=0.3, num_classes=2, min_class_points=5)
    assert thresholds.input_shape == (1, 8, 8)
    torch.save(model, tmp_path / "m.pt")
    thresholds.save(tmp_path / "t.json")
    for c, name in enumerate(("a_cat", "b_dog")):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * c + i, dtype=np.uint8)).save(
                tmp_path / "images" / name / f"{i}.png"
            )
    args = ["score", "--model", str(tmp_path / "m.pt"), "--thresholds", str(tmp_path / "t.json")]
    args += ["--data", str(tmp_path / "images"), "--out", str(tmp_path / "o.csv"), "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    assert len((tmp_path / "o.csv").read_text().splitlines()) == 1 + 6
