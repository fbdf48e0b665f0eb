"""Scoring at data-set scale: bounded-memory batches of big data sources, split over ranks.

Offline pruning of a data set larger than memory, and thresholds from a large D0, need what the
device path does one batch at a time, over a whole data set: a source is read in batches through
a torch ``DataLoader`` (a ``.pt`` file, a folder of ``.pt`` shards read one shard at a time, or an
image folder read one image at a time), and the work is split over the ranks of a
``torch.distributed`` process group that ``torchrun`` started (Gloo on CPU, NCCL on GPUs).

The split is deterministic and strided, as ``DistributedSampler``'s without shuffling (and without
its padding, which would score some samples twice): rank k of W scores samples k, k + W, ... in
batches of B. Round r of the ranks' batches then covers exactly samples [r*B*W, (r+1)*B*W), so rank
0, the single writer, gathers each round, sorts it by index and decides it in W chunks of B: the
same batches, in the same order, as one process offering the source to ``DripFilter`` in batches
of B. Decisions, counters and the store are those of the single-process path.

A malformed sample (NaN, a shape or label the model does not take, an unreadable image) is
reported and skipped, as ``drip filter`` does: it costs its batch a second look, not its
neighbours their decisions. Each chunk of B commits, with what it kept, a checkpoint of the
caller's: a job killed at any point resumes at the chunk after the last one the store holds
(``start``) and decides no sample twice.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import errors
from .errors import DripDataError, DripError, DripInputError, DripMalformedSampleError
from .filter import ClassCounters, Decision, DripFilter
from .thresholds import INSIDE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CPU = torch.device("cpu")


def resolve_device(name: str | torch.device = "cpu", *, announce: bool = True) -> torch.device:
    """The torch device ``name`` names (``cpu``, ``cuda``, ``cuda:N``); the CPU when CUDA is absent.

    Falling back prints one line on stderr (unless ``announce=False``), so a run asked for a GPU
    never silently takes hours on the CPU without saying so.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DripInputError(f"device: expected cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise DripInputError(f"device: expected cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        if announce:
            print(f"drip: CUDA is not available here; running on the CPU instead of {name}", file=sys.stderr)
        return torch.device("cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        visible = torch.cuda.device_count()
        raise DripInputError(f"device: {name} asked for, but only {visible} GPUs are visible")
    return device


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks (``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        """The ranks ``torchrun`` describes in the environment; one process when it set none."""
        values = {}
        for field, name, default in (
            ("rank", "RANK", 0),
            ("world_size", "WORLD_SIZE", 1),
            ("local_rank", "LOCAL_RANK", 0),
        ):
            text = os.environ.get(name, str(default))
            if not text.isdigit():
                raise DripInputError(f"{name}: expected a non-negative whole number, got {text!r}")
            values[field] = int(text)
        ranks = cls(**values)
        if ranks.world_size < 1 or ranks.rank >= ranks.world_size:
            raise DripInputError(f"RANK {ranks.rank} of WORLD_SIZE {ranks.world_size}: not a valid rank")
        return ranks


@contextlib.contextmanager
def distributed(device: torch.device) -> Iterator[tuple[Ranks, torch.device]]:
    """The process group of ``torchrun``'s environment and this rank's device, for the ``with`` body.

    One process (no WORLD_SIZE, or 1) needs no group. Several ranks on CUDA use NCCL, each on GPU
    LOCAL_RANK; on the CPU, Gloo.
    """
    import torch.distributed as dist

    ranks = Ranks.from_env()
    if ranks.world_size == 1:
        yield ranks, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield ranks, device
    finally:
        dist.destroy_process_group()


# A batch's samples: ``(B, ...)``, or a list of B samples where they differ in shape or dtype, or
# where some could not be read (their ``DripDataError`` in their place).
Batch = torch.Tensor | list[torch.Tensor | DripDataError]


class SampleSource(Protocol):
    """What ``RankBatches`` reads: ``len`` samples, a stable id each, and a reader of index ranges."""

    def __len__(self) -> int: ...

    def source_id(self, index: int) -> str: ...

    def reader(self) -> Callable[[range], tuple[Batch, torch.Tensor]]: ...


def _check_shard(path: Path, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A shard's 'x' (N, ...) and integer labels 'y' (N,), or a ``DripDataError`` saying what is wrong."""
    if not isinstance(data, dict) or "x" not in data:
        raise DripDataError(f"{path}: expected a dict with tensors 'x' (samples) and 'y' (labels)")
    if "y" not in data:
        raise DripDataError(f"{path}: no 'y': every shard needs the labels of its samples")
    x, y = data["x"], data["y"]
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise DripDataError(f"{path}: 'x': expected a tensor (N, ...), got {type(x).__name__}")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DripDataError(f"{path}: 'y': expected integer labels (N,), got {_describe(y)}")
    if len(x) != len(y):
        raise DripDataError(f"{path}: {len(x)} samples but {len(y)} labels")
    return x, y


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


class TensorShards:
    """The samples of ``.pt`` files (dicts of 'x': (N, ...) and 'y': (N,)), one file in memory at a time.

    ``path`` is one file or a folder of ``*.pt`` shards, taken in file-name order. Opening checks
    every shard's structure and count through a memory map (no sample is read); ``load`` reads one
    shard whole. Samples' shapes and dtypes are the scorer's to judge, one sample at a time: a
    shard of another shape holds malformed samples, not a broken data set. Sample i of shard
    ``s.pt`` has the id ``s.pt:i``, the id ``drip filter`` gives it when that shard is its stream.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.glob("*.pt") if p.is_file())
            if not self.files:
                raise DripDataError(f"{self.path}: no .pt shards in the folder")
        elif self.path.is_file():
            self.files = [self.path]
        else:
            raise DripDataError(f"{self.path}: no such file or folder")
        counts = [len(_check_shard(file, self._read(file, mmap=True))[0]) for file in self.files]
        # offsets[k]: the index of shard k's first sample; offsets[-1]: the total.
        self.offsets = [0]
        for count in counts:
            self.offsets.append(self.offsets[-1] + count)
        if len(self) == 0:
            raise DripDataError(f"{self.path}: the shards hold no samples")

    @staticmethod
    def _read(file: Path, mmap: bool) -> Any:
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
        # Damaged pickles raise whatever the opcode they trip on raises: only Exception names them all.
        except Exception as err:
            if mmap:  # files of torch.save's legacy format cannot be mapped: read them whole
                return TensorShards._read(file, mmap=False)
            raise DripDataError(f"{file}: cannot read a .pt shard: {err}") from None

    def __len__(self) -> int:
        return self.offsets[-1]

    def source_id(self, index: int) -> str:
        k = bisect.bisect_right(self.offsets, index) - 1
        return f"{self.files[k].name}:{index - self.offsets[k]}"

    def load(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Shard ``k`` whole, checked again (it may have changed since it was opened)."""
        file = self.files[k]
        x, y = _check_shard(file, self._read(file, mmap=False))
        if len(x) != self.offsets[k + 1] - self.offsets[k]:
            raise DripDataError(f"{file}: changed while it was read ({len(x)} samples now)")
        return x, y

    def reader(self) -> Callable[[range], tuple[Batch, torch.Tensor]]:
        """A reader of index ranges (increasing, as ``RankBatches`` asks) holding one shard at most."""
        held: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def read(index: range) -> tuple[Batch, torch.Tensor]:
            xs, ys = [], []
            i = index.start
            while i < index.stop:
                k = bisect.bisect_right(self.offsets, i) - 1
                if k not in held:
                    held.clear()  # before loading: two shards are never in memory together
                    held[k] = self.load(k)
                x, y = held[k]
                start = self.offsets[k]
                part = slice(i - start, min(index.stop, self.offsets[k + 1]) - start, index.step)
                # Copies, not views: a view would keep the whole shard alive (and a DataLoader
                # worker would send all of it to the main process).
                xs.append(x[part].clone())
                ys.append(y[part].clone())
                del x, y  # nor may this loop's names hold a shard while the next one loads
                i = start + part.start + index.step * len(ys[-1])
            if len({(x.shape[1:], x.dtype) for x in xs}) > 1:
                # Shards of other shapes or dtypes: cat would fail or promote; the scorer judges
                # each sample as it is.
                return [sample for x in xs for sample in x], torch.cat(ys)
            return (xs[0], ys[0]) if len(xs) == 1 else (torch.cat(xs), torch.cat(ys))

        return read


class ImageFolder:
    """Images ``root/<class>/*.png|jpg`` as float ``(C, H, W)`` in [0, 1], read one image at a time.

    Classes are numbered in the sorted order of their folder names (as ``drip.data``'s PlantVillage);
    images are converted to RGB (``channels=3``) or grey (1) and resized to ``size = (H, W)``.
    A sample's id is its path below ``root``.
    """

    def __init__(self, root: str | os.PathLike[str], size: tuple[int, int], channels: int = 3) -> None:
        if channels not in (1, 3):
            raise DripInputError(f"channels: expected 1 (grey) or 3 (RGB) for images, got {channels}")
        self.root, self.size = Path(root), (int(size[0]), int(size[1]))
        self.mode = "L" if channels == 1 else "RGB"
        classes = sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        if not classes:
            raise DripDataError(f"{self.root}: expected one folder of images per class, found none")
        self.classes = tuple(p.name for p in classes)
        self.files: list[Path] = []
        self.labels: list[int] = []
        for label, folder in enumerate(classes):
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise DripDataError(f"{folder}: no PNG or JPG images in this class's folder")
            self.files += images
            self.labels += [label] * len(images)

    def __len__(self) -> int:
        return len(self.files)

    def source_id(self, index: int) -> str:
        return self.files[index].relative_to(self.root).as_posix()

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` as ``(C, H, W)`` floats in [0, 1]."""
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        path = self.files[index]
        try:
            with Image.open(path) as image:
                resized = image.convert(self.mode).resize(self.size[::-1], Image.Resampling.BILINEAR)
                pixels = np.asarray(resized)
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DripDataError(f"{path}: not a readable image: {err}") from None
        tensor = torch.from_numpy(pixels.copy()).float() / 255.0
        return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)

    def reader(self) -> Callable[[range], tuple[Batch, torch.Tensor]]:
        def read(index: range) -> tuple[Batch, torch.Tensor]:
            images: list[torch.Tensor | DripDataError] = []
            for i in index:
                try:
                    images.append(self.image(i))
                except DripDataError as err:  # one broken image is a malformed sample, not a broken job
                    images.append(err)
            labels = torch.tensor([self.labels[i] for i in index], dtype=torch.int64)
            if all(isinstance(image, torch.Tensor) for image in images):
                return torch.stack(images), labels
            return images, labels

        return read


def open_source(path: str | os.PathLike[str], input_shape: tuple[int, ...] | None = None) -> SampleSource:
    """The source at ``path``: a ``.pt`` file or shard folder (``TensorShards``), or an image folder.

    An image folder is read at the model's ``input_shape`` (C, H, W), which it must declare.
    """
    path = Path(path)
    if path.is_dir() and not any(path.glob("*.pt")) and any(p.is_dir() for p in path.iterdir()):
        if input_shape is None or len(input_shape) != 3:
            raise DripInputError(
                f"{path}: an image folder is read at the model's input shape (C, H, W), but the "
                f"model declares {input_shape}; give it an input_shape attribute"
            )
        return ImageFolder(path, (input_shape[1], input_shape[2]), input_shape[0])
    if path.is_dir() and not any(path.iterdir()):
        raise DripDataError(f"{path}: an empty folder; expected .pt shards or one folder of images per class")
    return TensorShards(path)


class RankBatches(IterableDataset):
    """One rank's batches of a source, in order: ``(index (B,), x (B, ...), y (B,))``.

    Batch r of rank k of W holds samples k + W*(r*B + j), j < B (fewer at the end); iteration
    begins at batch ``first_round`` (a resumed job's). Under a ``DataLoader`` with workers,
    worker w of n reads batches w, w+n, ...: the loader's in-order interleaving gives them back
    in order.
    """

    def __init__(
        self, source: SampleSource, batch_size: int, ranks: Ranks = Ranks(), first_round: int = 0
    ) -> None:
        if batch_size < 1:
            raise DripInputError(f"batch_size: expected a positive number, got {batch_size}")
        if first_round < 0:
            raise DripInputError(f"first_round: expected 0 or more, got {first_round}")
        self.source, self.batch_size, self.ranks = source, batch_size, ranks
        self.first_round = first_round

    def __len__(self) -> int:
        share = len(range(self.ranks.rank, len(self.source), self.ranks.world_size))
        return max(0, math.ceil(share / self.batch_size) - self.first_round)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Batch, torch.Tensor]]:
        worker = get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        read = self.source.reader()
        k, world, size = self.ranks.rank, self.ranks.world_size, self.batch_size
        for r in range(self.first_round + first, self.first_round + len(self), step):
            index = range(k + world * r * size, min(len(self.source), k + world * (r + 1) * size), world)
            x, y = read(index)
            yield torch.arange(index.start, index.stop, index.step), x, y


def batch_loader(
    source: SampleSource,
    batch_size: int,
    ranks: Ranks = Ranks(),
    *,
    num_workers: int = 0,
    device: torch.device = CPU,
    first_round: int = 0,
) -> DataLoader:
    """A ``DataLoader`` of ``RankBatches``; pinned memory only when the batches go to a GPU."""
    if num_workers < 0:
        raise DripInputError(f"num_workers: expected 0 or more, got {num_workers}")
    return DataLoader(
        RankBatches(source, batch_size, ranks, first_round),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )


@dataclass(frozen=True)
class ScoredSample:
    """One sample as scored, before its decision: its label as read, and its score, or why the
    scorer refused it (``malformed``, a ``DripInputError``'s message on one line; score None)."""

    index: int
    label: int
    score: float | None
    malformed: str | None = None


@dataclass(frozen=True)
class Malformed:
    """The outcome of a malformed sample: reported and skipped, never decided or counted."""

    label: int
    reason: str


@dataclass
class _Part:
    """One rank's scored batch as rank 0 needs it: every sample, and the inputs of in-band ones."""

    samples: list[ScoredSample]
    inside: list[bool]
    inside_x: torch.Tensor | None


@dataclass(frozen=True)
class ScoreRun:
    """What ``score_source`` did: the filter's counters (rank 0's; None on other ranks), samples
    this rank scored, the malformed samples rank 0 reported (index, reason), and this rank's time
    in the loop (reading, scoring, gathering, deciding)."""

    counters: ClassCounters | None
    scored: int
    elapsed_s: float
    malformed: list[tuple[int, str]]


OnDecisions = Callable[[list[int], list[Decision | Malformed]], None]
Checkpoint = Callable[[list[ScoredSample]], tuple[str, str]]


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())  # torch's messages may span lines; a report line may not


def _take(x: Batch, rows: list[int]) -> torch.Tensor:
    """Samples ``rows`` of a batch as one tensor; a ``DripInputError`` where one could not be read
    or they differ in shape."""
    if isinstance(x, torch.Tensor):
        return x[rows]
    samples = [x[j] for j in rows]
    for sample in samples:
        if isinstance(sample, DripDataError):
            raise DripInputError(str(sample))
    # Checked, not left to stack, which would promote an integer sample to its neighbours' floats.
    if len({(s.shape, s.dtype) for s in samples}) > 1:
        raise DripInputError("x: samples of different shapes or dtypes in one batch")
    return torch.stack(samples)


def _score_rows(drip_filter: DripFilter, indices: list[int], x: torch.Tensor, y: torch.Tensor) -> _Part:
    """Samples ``indices`` scored in one call, with their band positions; ``DripInputError`` if any is bad."""
    scored = drip_filter.scorer.score_batch(x, y, num_classes=drip_filter.thresholds.num_classes)
    scores, labels = scored.scores.tolist(), scored.y.tolist()
    inside = [p == INSIDE for p in drip_filter.thresholds.positions(scores, labels)]
    mask = torch.tensor(inside, device=scored.x.device)
    samples = [ScoredSample(i, label, score) for i, label, score in zip(indices, labels, scores)]
    return _Part(samples, inside, scored.x[mask].cpu())


def _score(drip_filter: DripFilter, batch: Any) -> _Part:
    """A batch scored; its malformed samples found and reported, the rest scored all the same."""
    index, x, y = batch
    indices = index.tolist()
    try:
        whole = x if isinstance(x, torch.Tensor) else _take(x, list(range(len(indices))))
        return _score_rows(drip_filter, indices, whole, y)
    except DripInputError:
        pass
    # A bad sample fails its whole batch and changes nothing: find it by the input checks alone,
    # then score the rest in one call, as drip filter does.
    labels, malformed = y.tolist(), {}
    for j in range(len(indices)):
        try:
            drip_filter.scorer.prepare(_take(x, [j]), y[j : j + 1], drip_filter.thresholds.num_classes)
        except DripInputError as err:
            malformed[j] = _one_line(err)
    good = [j for j in range(len(indices)) if j not in malformed]
    parts = []
    try:
        if good:
            parts.append(_score_rows(drip_filter, [indices[j] for j in good], _take(x, good), y[good]))
    except DripInputError:
        # Only scoring tells (e.g. a sample the model overflows on): one at a time.
        for j in good:
            try:
                parts.append(_score_rows(drip_filter, [indices[j]], _take(x, [j]), y[j : j + 1]))
            except DripInputError as err:
                malformed[j] = _one_line(err)
    bad = [ScoredSample(indices[j], labels[j], None, why) for j, why in malformed.items()]
    held = [part.inside_x for part in parts if part.inside_x is not None and len(part.inside_x)]
    return _Part(
        [s for part in parts for s in part.samples] + bad,
        [inside for part in parts for inside in part.inside] + [False] * len(bad),
        torch.cat(held) if held else None,
    )


def _next_scored(
    drip_filter: DripFilter, loader: Iterator[Any], ranks: Ranks
) -> _Part | tuple[str, str] | None:
    """This rank's next scored batch; None when it has none left; (error type, message) on a fault."""
    try:
        batch = next(loader, None)
        return None if batch is None else _score(drip_filter, batch)
    except DripError as err:
        return type(err).__name__, f"rank {ranks.rank}: {err}"


def _gather(payload: Any, ranks: Ranks) -> list[Any] | None:
    """Every rank's ``payload`` on rank 0 (None on the others)."""
    if ranks.world_size == 1:
        return [payload]
    import torch.distributed as dist

    gathered: list[Any] | None = [None] * ranks.world_size if ranks.rank == 0 else None
    dist.gather_object(payload, gathered, dst=0)
    return gathered


def _share(value: int, ranks: Ranks) -> int:
    """Rank 0's ``value`` on every rank."""
    if ranks.world_size == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return int(box[0])


def _agree(fault: tuple[str, str] | None, ranks: Ranks, device: torch.device) -> None:
    """Raise rank 0's ``fault`` (error type name, message) on every rank; nothing when it is None.

    One flag a round goes to every rank (a tensor on the rank's device, as NCCL needs); the message
    only follows when there is one.
    """
    if ranks.world_size > 1:
        import torch.distributed as dist

        flag = torch.tensor([fault is not None], dtype=torch.int32, device=device)
        dist.broadcast(flag, src=0)
        if flag.item():
            box = [fault]
            dist.broadcast_object_list(box, src=0)
            fault = box[0]
    if fault is not None:
        raise getattr(errors, fault[0], DripError)(fault[1])


@dataclass(frozen=True)
class _Deciding:
    """What rank 0 decides a round with: the filter, the source's ids, and the job's settings."""

    drip_filter: DripFilter
    source: SampleSource
    batch_size: int
    start: int
    checkpoint: Checkpoint | None
    strict: bool
    on_decisions: OnDecisions | None


def _decide_round(job: _Deciding, parts: list[_Part]) -> list[tuple[int, str]]:
    """Rank 0: decide one round's samples in index order, in chunks of ``batch_size``; its
    malformed samples (index, reason), or ``DripMalformedSampleError`` at the first with ``strict``."""
    rows: list[tuple[ScoredSample, torch.Tensor | None]] = []
    for part in parts:
        kept = iter(part.inside_x if part.inside_x is not None else ())
        rows += [(s, next(kept) if inside else None) for s, inside in zip(part.samples, part.inside)]
    rows.sort(key=lambda row: row[0].index)
    malformed = []
    for begin in range(0, len(rows), job.batch_size):
        chunk = rows[begin : begin + job.batch_size]
        if chunk[0][0].index < job.start:  # decided before the job was resumed
            continue
        bad = [s for s, _ in chunk if s.malformed is not None]
        if bad and job.strict:
            first = bad[0]
            raise DripMalformedSampleError(
                f"sample {first.index} ({job.source.source_id(first.index)}): {first.malformed}"
            )
        checkpoint = job.checkpoint([s for s, _ in chunk]) if job.checkpoint is not None else None
        good = [(s, x) for s, x in chunk if s.malformed is None]
        decided = iter(_decide_chunk(job, good, checkpoint))
        outcomes = [
            next(decided) if s.malformed is None else Malformed(s.label, s.malformed) for s, _ in chunk
        ]
        malformed += [(s.index, s.malformed) for s in bad]
        if job.on_decisions is not None:
            job.on_decisions([s.index for s, _ in chunk], outcomes)
    return malformed


def _decide_chunk(
    job: _Deciding,
    good: list[tuple[ScoredSample, torch.Tensor | None]],
    checkpoint: tuple[str, str] | None,
) -> list[Decision]:
    """Decide a chunk's well-formed samples; ``checkpoint`` commits with what they keep."""
    drip_filter = job.drip_filter
    if not good:
        if checkpoint is not None:
            drip_filter.store.add_batch([], [], checkpoint=checkpoint)
        return []
    held = [x for _, x in good if x is not None]
    inputs: Any = None
    if held:
        # Rows outside their band are never read by the filter: left uninitialised.
        inputs = held[0].new_empty((len(good), *held[0].shape))
        for j, (_, x) in enumerate(good):
            if x is not None:
                inputs[j] = x
    scores, labels = [s.score for s, _ in good], [s.label for s, _ in good]
    sources = [job.source.source_id(s.index) for s, _ in good]
    # decide_scored's work, with the checkpoint in the transaction that stores the kept samples
    # (decide_scored takes no checkpoint): a kill never separates a chunk's decisions from it.
    position = drip_filter.thresholds.positions(scores, labels)
    return drip_filter._decide(inputs, scores, labels, position, sources, [checkpoint] if checkpoint else [])


def score_source(
    drip_filter: DripFilter,
    source: SampleSource,
    *,
    batch_size: int = 256,
    ranks: Ranks = Ranks(),
    num_workers: int = 0,
    device: torch.device = CPU,
    on_decisions: OnDecisions | None = None,
    start: int = 0,
    checkpoint: Checkpoint | None = None,
    strict: bool = False,
    progress: bool = False,
) -> ScoreRun:
    """Score this rank's share of ``source``; rank 0 decides every sample with ``drip_filter``.

    Call it on every rank of the group (``distributed``) with the same source and batch size.
    Rank 0 alone touches ``drip_filter.store`` and calls ``on_decisions(indices, outcomes)`` per
    chunk of ``batch_size`` samples, in index order: a ``Decision`` per sample, or ``Malformed``
    for one the scorer refused (reported, skipped, not counted); ``strict=True`` raises
    ``DripMalformedSampleError`` at the first instead, every chunk before it decided.

    ``checkpoint(samples)`` (rank 0's; needs a store) gives a ``(name, value)`` pair that the
    store commits with each chunk's kept samples (``SampleStore.add_batch``); ``start``, rank 0's
    (a multiple of ``batch_size``: the end of the last chunk an earlier run committed), resumes
    there. Any other fault on any rank (an unreadable shard, a store error) stops every rank
    within a round of it, each raising the same error type and message.
    """
    from tqdm.auto import tqdm

    writer = ranks.rank == 0
    if writer and checkpoint is not None and drip_filter.store is None:
        raise DripInputError("checkpoint: needs a store to be committed with, but the filter has none")
    if writer and (start < 0 or (start % batch_size and start != len(source)) or start > len(source)):
        raise DripInputError(
            f"start: expected the end of a chunk of {batch_size} samples in 0..{len(source)}, got {start}"
        )
    start = _share(start, ranks)
    first_round = start // (batch_size * ranks.world_size)
    loader = iter(
        batch_loader(
            source, batch_size, ranks, num_workers=num_workers, device=device, first_round=first_round
        )
    )
    all_rounds = math.ceil(len(source) / (batch_size * ranks.world_size))
    rounds = 0 if start == len(source) else all_rounds - first_round
    job = _Deciding(drip_filter, source, batch_size, start, checkpoint, strict, on_decisions)
    bar = tqdm(total=len(source), initial=start, desc="score", disable=not (progress and writer))
    scored, malformed, began = 0, [], time.perf_counter()
    # Rank 0 tells the ranks whether to go on right after gathering, before it decides: they
    # score their next batch meanwhile. A fault of its decisions is told at the next round.
    pending: tuple[str, str] | None = None
    try:
        for _ in range(rounds):
            payload = _next_scored(drip_filter, loader, ranks)
            if isinstance(payload, _Part):
                scored += len(payload.samples)
            gathered = _gather(payload, ranks)
            parts = [p for p in gathered or [] if isinstance(p, _Part)]
            fault = pending or next((p for p in gathered or [] if isinstance(p, tuple)), None)
            _agree(fault, ranks, device)
            if writer:
                try:
                    malformed += _decide_round(job, parts)
                except DripError as err:
                    pending = (type(err).__name__, str(err))
                bar.update(sum(s.index >= start for p in parts for s in p.samples))
        _agree(pending, ranks, device)
    finally:
        bar.close()
    counters = drip_filter.counters if writer else None
    return ScoreRun(counters, scored, time.perf_counter() - began, malformed)
