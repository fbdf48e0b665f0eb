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
        description="Reads RUN/results.json alone and rewrites summary.md, summary.json and the PNG "
        "plots (of drip experiment, drip demo or drip lifelong, as the file says).",
    )
    report.add_argument(
        "run", type=Path, help="a folder written by drip experiment, drip demo or drip lifelong"
    )
    add_common(report)
    report.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..lifelong import report as lifelong
    from ..lifelong.protocol import FORMAT as LIFELONG
    from ..report import checked_results, markdown, read_results, write_report

    path = args.run / "results.json"
    results, found = read_results(path)  # once: a long run's results are megabytes
    if found is not None and found[0] == LIFELONG:
        checked = lifelong.checked_results(path, results, found)
        print(lifelong.markdown(lifelong.write_report(checked, args.run)))
    else:
        print(markdown(write_report(checked_results(path, results, found), args.run)))
    return 0
