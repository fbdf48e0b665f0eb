"""The ``drip`` command line: one module per command, each adding its parser and its ``run``.

Every ``DripError`` becomes one line on stderr and exit code 2; no tracebacks for user mistakes.
Torch runs on one thread by default (``--threads``): on small shared machines a spinning OpenMP
pool next to any other busy process slowed torch by 35-230x. Commands import torch lazily, so
that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import DripError
from . import calibrate, data, demo, experiment, export, lifelong, report, score
from . import filter as stream_filter
from .common import load_model, load_tensors, one_line
from .data import FETCHABLE
from .experiment import DATASETS

# In the order `drip --help` lists them.
COMMANDS = (demo, calibrate, stream_filter, score, export, experiment, lifelong, report, data)

DESCRIPTION = """\
DRIP keeps only the informative samples of a labelled stream: it scores each sample with the mean
of a Grad-CAM-family map of the model (default: XGrad-CAM of the label's margin over its strongest
rival) and keeps it if the score lies inside per-class bands calibrated by a Training Phase.
High score = redundant (dropped), low score = informative. Start with `drip demo`."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="drip", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(max(1, args.threads))
    try:
        return args.handler(args)
    except DripError as err:
        # One write of the whole line: ranks of a torchrun job share stderr, and print's separate
        # write of the newline let two ranks' lines run together.
        sys.stderr.write(f"drip: error: {one_line(err)}\n")
        sys.stderr.flush()
        return 2


__all__ = ["COMMANDS", "DATASETS", "FETCHABLE", "build_parser", "load_model", "load_tensors", "main"]
