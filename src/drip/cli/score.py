"""``drip score``: score and decide a whole data set (file, shard folder, image folder), on any ranks."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import DripDataError, DripInputError, DripMalformedSampleError
from .common import add_common, add_device, load_model, print_counters, scorer_for

if TYPE_CHECKING:  # torch loads lazily, so that --help stays fast
    from ..filter import ClassCounters, Decision
    from ..parallel import Malformed, SampleSource, ScoredSample
    from ..store import SampleStore
    from ..thresholds import Thresholds

COLUMNS = ("index", "source", "label", "score", "kept", "reason", "sample_id")
MALFORMED = "malformed"  # the reason column of a sample the scorer refused


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``drip score`` to ``commands``."""
    score = commands.add_parser(
        "score",
        help="score a whole data set with bounded memory, on one or several processes (torchrun)",
        description="Scores every sample of DATA with MODEL, decides it against THRESHOLDS and writes "
        "one CSV row per sample to OUT (index, source id, label, score, kept, reason, store id), in "
        "index order; with --store, also stores what it keeps. DATA is a .pt file of 'x' and 'y', "
        "a folder of such .pt shards (read one shard at a time, in file-name order), or an image "
        "folder DATA/<class>/*.png|jpg (read at the model's input shape). Under `torchrun "
        "--nproc-per-node N drip score ...` each rank scores every N-th sample (Gloo on CPU, NCCL "
        "with --device cuda) and rank 0 alone decides and writes: decisions, store and CSV are "
        "those of one process. A malformed sample (NaN, a shape or label the model does not take, an "
        "unreadable image) is reported with its index, source id and reason, gets a row with reason "
        "'malformed', and the job goes on. With --store, each batch commits how far the job got "
        "together with what it kept: rerunning the same command after a kill resumes there and ends "
        "in the CSV and store of an uninterrupted run. Exit codes: 0 done, 1 stopped at a malformed "
        "sample (--strict; the batches before its own are decided), 2 error.",
    )
    score.add_argument("--model", type=Path, required=True, help="the scorer model the thresholds belong to")
    score.add_argument("--thresholds", type=Path, required=True, help="thresholds JSON from drip calibrate")
    score.add_argument(
        "--data", type=Path, required=True, help=".pt file, folder of .pt shards, or image folder"
    )
    score.add_argument("--out", type=Path, required=True, help="CSV of per-sample scores and decisions")
    score.add_argument(
        "--store", type=Path, default=None, help="also store kept samples in this sample store"
    )
    score.add_argument("--capacity-count", type=int, default=None, help="most samples the store may hold")
    score.add_argument(
        "--capacity-bytes", type=int, default=None, help="most tensor bytes the store may hold"
    )
    score.add_argument("--when-full", choices=("reject", "evict"), default="reject", help="default: reject")
    score.add_argument(
        "--batch-size", type=int, default=256, help="samples per batch and rank (default: 256)"
    )
    score.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes per rank (default: 0, none)"
    )
    score.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first malformed sample, with exit code 1 (default: report it and go on)",
    )
    score.add_argument("--layer", default=None, help="target layer (default: the one in THRESHOLDS)")
    score.add_argument(
        "--allow-model-mismatch",
        action="store_true",
        help="apply thresholds to a model other than the calibrated one",
    )
    add_device(score)
    add_common(score)
    score.set_defaults(handler=run)


def _data_listing(path: Path) -> list[tuple[str, int, int]]:
    """Every file of DATA with its size and modification time: a rerun on changed data is told."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [(p.relative_to(path).as_posix() if path.is_dir() else p.name, *_stat(p)) for p in files]


def _stat(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_size, status.st_mtime_ns


class _Journal:
    """The CSV under way (``OUT.partial``) and, with a store, the progress committed with it.

    The store is the journal. Each chunk of samples commits, in the transaction that stores what
    it kept, a checkpoint holding the chunk's samples as scored and the CSV's length before their
    rows (written and fsynced first). A rerun cuts the CSV there and writes the chunk's rows again
    from the checkpoint and the store, which holds exactly what that chunk left in it (every later
    write would have committed a later checkpoint): wherever the kill fell, the CSV and the store
    agree, and the job goes on at the next chunk. Without a store nothing is durable: a rerun
    starts over.
    """

    def __init__(
        self, path: Path, handle: BinaryIO, source: SampleSource, thresholds: Thresholds, key: str, job: str
    ) -> None:
        self.path, self.handle, self.source, self.thresholds = path, handle, source, thresholds
        self.key, self.job = key, job
        self.start = 0  # the first sample this run decides

    @classmethod
    def open(
        cls,
        out: Path,
        source: SampleSource,
        thresholds: Thresholds,
        store: SampleStore | None,
        key: str,
        job: str,
    ) -> _Journal | None:
        """The journal of ``out``, resumed from ``store``'s checkpoint ``key`` where it holds one
        of this ``job``; None when the store says the job is done and ``out`` exists."""
        partial = out.with_name(out.name + ".partial")
        saved = None if store is None else store.checkpoint(key)
        progress = None if saved is None else _progress(saved, store.path)
        if progress is not None:
            if progress["job"] != job:
                raise DripInputError(
                    f"--store: {store.path} holds a run of {key!r} with another model, thresholds, "
                    "data, batch size or capacity; rerun it with the same ones, or use a new store"
                )
            if not partial.exists():
                if out.exists() and progress["next"] == len(source):
                    return None
                raise DripDataError(
                    f"--out: {store.path} holds an interrupted drip score to {out}, but {partial}, its "
                    "CSV so far, is gone; use a new store to start over"
                )
        try:
            handle = partial.open("r+b" if progress is not None else "w+b")
        except OSError as err:
            raise DripInputError(f"--out: cannot write {partial}: {err}") from None
        journal = cls(partial, handle, source, thresholds, key, job)
        if progress is None:
            journal.handle.write(journal._text([COLUMNS]))
        else:
            journal._resume(progress, store)
        return journal

    def _resume(self, progress: dict[str, Any], store: SampleStore) -> None:
        """Cut the CSV to the last committed chunk, then write that chunk's rows again."""
        from ..parallel import ScoredSample

        length = self.handle.seek(0, os.SEEK_END)
        if length < progress["csv_bytes"]:
            raise DripDataError(
                f"--out: {self.path} holds {length} bytes, but {store.path} committed rows up to byte "
                f"{progress['csv_bytes']}: it was cut or replaced; use a new store to start over"
            )
        self.handle.truncate(progress["csv_bytes"])
        self.handle.seek(progress["csv_bytes"])
        chunk = [ScoredSample(*fields) for fields in progress["chunk"]]
        self.write([s.index for s in chunk], self._outcomes(chunk, store))
        self.start = progress["next"]

    def _outcomes(self, chunk: list[ScoredSample], store: SampleStore) -> list[Decision | Malformed]:
        """A committed chunk's outcomes, as its decisions were: a sample in its band was kept if
        the store holds it (with that id), else refused or evicted by the chunk (``store_full``)."""
        from ..filter import ABOVE, BELOW, KEPT, STORE_FULL, Decision
        from ..parallel import Malformed
        from ..thresholds import ABOVE_HIGH, INSIDE

        good = [s for s in chunk if s.malformed is None]
        where = iter(self.thresholds.positions([s.score for s in good], [s.label for s in good]))
        positions = [None if s.malformed is not None else next(where) for s in chunk]
        held: dict[str | None, int] = {}
        if INSIDE in positions:
            held = {sample.source: sample.id for sample in store}
        outcomes: list[Decision | Malformed] = []
        for s, position in zip(chunk, positions):
            if s.malformed is not None:
                outcomes.append(Malformed(s.label, s.malformed))
            elif position == INSIDE:
                sample_id = held.get(self.source.source_id(s.index))
                reason = KEPT if sample_id is not None else STORE_FULL
                outcomes.append(Decision(sample_id is not None, s.score, s.label, reason, sample_id))
            else:
                outcomes.append(Decision(False, s.score, s.label, ABOVE if position == ABOVE_HIGH else BELOW))
        return outcomes

    def counted(self, counters: ClassCounters) -> int:
        """Add the decisions of the CSV's rows so far to ``counters``; the malformed rows' count."""
        import csv
        import io

        from ..filter import KEPT, STORE_FULL

        self.handle.flush()
        self.handle.seek(0)
        text = io.TextIOWrapper(self.handle, encoding="utf-8", newline="")
        malformed = 0
        for row in csv.DictReader(text):
            label, reason = int(row["label"]), row["reason"]
            if reason == MALFORMED:
                malformed += 1
                continue
            counters.seen[label] += 1
            if reason == KEPT:
                counters.kept[label] += 1
            elif reason == STORE_FULL:
                counters.rejected[label] += 1
            else:
                counters.dropped[label] += 1
        text.detach()  # the handle stays open, at its end, for the rows to come
        self.handle.seek(0, os.SEEK_END)
        return malformed

    def checkpoint(self, chunk: list[ScoredSample]) -> tuple[str, str]:
        """The progress to commit with ``chunk``: its samples as scored, and the CSV's length
        before their rows, made durable first."""
        import json

        self.handle.flush()
        os.fsync(self.handle.fileno())
        value = {
            "job": self.job,
            "next": chunk[-1].index + 1,
            "csv_bytes": self.handle.tell(),
            "chunk": [[s.index, s.label, s.score, s.malformed] for s in chunk],
        }
        return self.key, json.dumps(value)

    def write(self, indices: list[int], outcomes: list[Decision | Malformed]) -> None:
        """One chunk's rows, in index order."""
        from ..parallel import Malformed

        rows = []
        for i, d in zip(indices, outcomes):
            if isinstance(d, Malformed):
                rows.append((i, self.source.source_id(i), d.label, "", 0, MALFORMED, ""))
                continue
            sample_id = "" if d.sample_id is None else d.sample_id
            score = repr(d.score)  # repr: the float exactly, as a rerun writes it from its checkpoint
            rows.append((i, self.source.source_id(i), d.label, score, int(d.kept), d.reason, sample_id))
        self.handle.write(self._text(rows))

    @staticmethod
    def _text(rows: list[tuple[Any, ...]]) -> bytes:
        import csv
        import io

        text = io.StringIO(newline="")
        csv.writer(text).writerows(rows)
        return text.getvalue().encode()

    def finish(self, out: Path) -> None:
        """The whole CSV at ``out``: it appears whole, or not at all."""
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.path, out)


def _progress(saved: str, where: Path) -> dict[str, Any]:
    """A committed checkpoint of ``_Journal``, checked."""
    import json

    try:
        progress = json.loads(saved)
        if not (isinstance(progress["job"], str) and isinstance(progress["next"], int)):
            raise TypeError
        if not (isinstance(progress["csv_bytes"], int) and isinstance(progress["chunk"], list)):
            raise TypeError
    except (ValueError, TypeError, KeyError, RecursionError):
        raise DripDataError(f"{where}: the progress record of drip score is damaged: {saved!r}") from None
    return progress


def _job(args: argparse.Namespace) -> str:
    """What a resumed job must share with the run it resumes: the same decisions need the same
    model, thresholds, data, batches and store settings (not the ranks or device)."""
    import hashlib
    import json

    def content(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    settings = (args.batch_size, args.layer, args.capacity_count, args.capacity_bytes, args.when_full)
    what = (content(args.model), content(args.thresholds), _data_listing(args.data), settings)
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def run(args: argparse.Namespace) -> int:
    import contextlib

    from ..filter import DripFilter
    from ..parallel import Malformed, Ranks, distributed, open_source, resolve_device, score_source
    from ..store import SampleStore
    from ..thresholds import Thresholds

    if args.batch_size < 1:
        raise DripInputError(f"--batch-size: expected a positive number, got {args.batch_size}")
    if args.store is None and (args.capacity_count is not None or args.capacity_bytes is not None):
        raise DripInputError("--capacity-count/--capacity-bytes: only mean something with --store")
    device = resolve_device(args.device, announce=Ranks.from_env().rank == 0)
    thresholds = Thresholds.load(args.thresholds)
    model = load_model(args.model)
    # An image folder is read at the model's shape, or the one its thresholds were calibrated on.
    source = open_source(args.data, getattr(model, "input_shape", None) or thresholds.input_shape or None)
    with distributed(device) as (ranks, device), contextlib.ExitStack() as stack:
        scorer = scorer_for(model.to(device), thresholds, args.layer)
        writer = ranks.rank == 0
        store, journal, start = None, None, 0
        if writer and args.store is not None:
            store = stack.enter_context(
                SampleStore(args.store, args.capacity_bytes, args.capacity_count, args.when_full)
            )
        drip_filter = DripFilter(scorer, thresholds, store, allow_model_mismatch=args.allow_model_mismatch)
        if writer:
            key = f"drip score:{args.data.resolve().name}:{args.out.name}"
            job = _job(args) if store is not None else ""
            journal = _Journal.open(args.out, source, thresholds, store, key, job)
            # A finished job still joins the ranks, with nothing left to score.
            start = len(source) if journal is None else journal.start
        if journal is not None:
            stack.callback(journal.handle.close)
            if store is None:  # nothing durable to resume from: no half-written CSV left
                stack.callback(journal.path.unlink, missing_ok=True)
            earlier = journal.counted(drip_filter.counters)

        def on_decisions(indices: list[int], outcomes: list[Decision | Malformed]) -> None:
            journal.write(indices, outcomes)
            for i, d in zip(indices, outcomes):
                if isinstance(d, Malformed):
                    print(f"malformed sample {i} ({source.source_id(i)}): {d.reason}")

        try:
            run_ = score_source(
                drip_filter,
                source,
                batch_size=args.batch_size,
                ranks=ranks,
                num_workers=args.workers,
                device=device,
                on_decisions=on_decisions if journal is not None else None,
                start=start,
                checkpoint=journal.checkpoint if journal is not None and store is not None else None,
                strict=args.strict,
                progress=not args.quiet,
            )
        except DripMalformedSampleError as err:
            if writer:
                resume = ": rerun without --strict to go on past it" if store is not None else ""
                print(f"stopped at malformed {err}; the batches before its own are decided{resume}")
            return 1
        if not writer:
            return 0
        if journal is None:
            print(f"{args.out} is complete: {args.store} holds this whole run; nothing to do")
            return 0
        journal.finish(args.out)
        print_counters(run_.counters, thresholds.num_classes)
        if journal.start:
            print(
                f"resumed at sample {journal.start}: an earlier run decided samples 0 to {journal.start - 1}"
            )
        if earlier + len(run_.malformed):
            print(f"{earlier + len(run_.malformed)} malformed samples skipped ({earlier} in earlier runs)")
        done = len(source) - journal.start
        rate = done / run_.elapsed_s if run_.elapsed_s > 0 else float("inf")
        held = f"; store {args.store} holds {len(store)} samples" if store is not None else ""
        print(
            f"scored {done} samples on {ranks.world_size} process(es) in {run_.elapsed_s:.1f} s "
            f"({rate:,.0f}/s); storage saving {run_.counters.storage_saving:.1%}; wrote {args.out}{held}"
        )
    return 0
