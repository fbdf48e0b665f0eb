"""``drip report``: re-render the tables and plots of a run from its results.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_common


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``drip report`` to ``commands``."""
    report = commands.add_parser(
        "report",
        help="re-render summary.md, summary.json and the plots from a run's results.json",
        description="Reads RUN/results.json alone and rewrites summary.md, summary.json and the PNG plots.",
    )
    report.add_argument("run", type=Path, help="a folder written by drip experiment or drip demo")
    add_common(report)
    report.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..report import load_results, markdown, write_report

    results = load_results(args.run / "results.json")
    print(markdown(write_report(results, args.run)))
    return 0
