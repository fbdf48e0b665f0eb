"""A lifelong run as a reader meets it: summary.json, summary.md and two plots, from results.json.

* the table: per arm, the mean over seeds of the average accuracy over rounds, the final accuracy,
  forgetting, the bytes stored at the end (and as a share of the unbounded store's), trainings and
  seconds; then DRIP's paired gaps against each arm;
* ``accuracy_over_rounds.png``: test accuracy on the classes seen so far, per arm, round by round;
* ``store_composition.png``: each arm's store per class over rounds (seed 0), the picture that
  says where each arm spent its bytes.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DripInputError
from .protocol import FORMAT, VERSION

ARM_TITLES = {
    "drip": "DRIP (band + reservoir at the band's class shares)",
    "drip-budget": "DRIP (band tightened to the budget)",
    "random": "random admission",
    "reservoir": "reservoir",
    "class-balanced": "class-balanced reservoir (GDumb)",
    "margin": "margin (online, class-balanced)",
    "unbounded": "unbounded store",
}
# The DRIP arm of a run made with equal class shares (and of every run before shares existed).
EQUAL_SHARES_TITLE = "DRIP (band + class-balanced reservoir)"
FIGURES = ("average_accuracy", "final_accuracy", "forgetting", "final_bytes", "trainings", "train_s")


def arm_titles(config: dict[str, Any]) -> dict[str, str]:
    """Each arm's title in a run of ``config`` (DRIP's names its store's class shares)."""
    equal = config.get("shares", "equal") == "equal"
    return {**ARM_TITLES, "drip": EQUAL_SHARES_TITLE} if equal else ARM_TITLES


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "per_seed": values,
    }


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Means over seeds of every arm's figures, per-round accuracy curves, and DRIP's gaps."""
    seeds = results["seeds"]
    arms = results["config"]["arms"]
    figures: dict[str, dict[str, Any]] = {}
    for arm in arms:
        figures[arm] = {}
        for name in FIGURES:
            values = [seed["summary"][arm][name] for seed in seeds]
            if all(v is not None for v in values):
                figures[arm][name] = _stats([float(v) for v in values])
        curves = np.array([[r["arms"][arm]["accuracy"] for r in seed["rounds"]] for seed in seeds])
        figures[arm]["accuracy_by_round"] = curves.mean(0).tolist()
        figures[arm]["accuracy_by_round_std"] = curves.std(0).tolist()
    unbounded = figures.get("unbounded", {}).get("final_bytes")
    for arm in arms:
        if unbounded and unbounded["mean"] > 0:
            figures[arm]["bytes_share"] = figures[arm]["final_bytes"]["mean"] / unbounded["mean"]
    gaps = {}
    if "drip" in arms:
        for other in arms:
            if other != "drip":
                gaps[other] = {
                    name: paired_gap(figures, "drip", other, name)
                    for name in ("average_accuracy", "final_accuracy")
                }
    return {
        "data_name": results["data_name"],
        "config": results["config"],
        "seeds": len(seeds),
        "capacity_bytes": [seed["capacity_bytes"] for seed in seeds],
        "offered_bytes": [seed["offered_bytes"] for seed in seeds],
        "q_high": [seed["q_high"] for seed in seeds],
        "arms": figures,
        "gaps": gaps,
        "composition": {
            arm: [r["arms"][arm]["stored_per_class"] for r in seeds[0]["rounds"]] for arm in arms
        },
        "classes_seen": [r["classes_seen"] for r in seeds[0]["rounds"]],
        "threshold_shift": {
            arm: [r["arms"][arm]["threshold_shift"] for r in seeds[0]["rounds"]]
            for arm in arms
            if "threshold_shift" in seeds[0]["rounds"][0]["arms"][arm]
        },
        "elapsed_s": results["elapsed_s"],
    }


def paired_gap(figures: dict[str, Any], arm: str, other: str, name: str) -> dict[str, Any]:
    """Per-seed ``name`` of ``arm`` minus ``other``, in pp: mean, seeds where arm is higher, seeds."""
    diffs = [a - o for a, o in zip(figures[arm][name]["per_seed"], figures[other][name]["per_seed"])]
    return {"mean_pp": 100 * statistics.fmean(diffs), "wins": sum(d > 0 for d in diffs), "seeds": len(diffs)}


def _pct(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "n/a"
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


def markdown(summary: dict[str, Any]) -> str:
    """summary.md: the setting, the table, DRIP's gaps."""
    config = summary["config"]
    titles = arm_titles(config)
    capacity = statistics.fmean(summary["capacity_bytes"])
    lines = [
        f"# drip lifelong: {summary['data_name']}",
        "",
        f"{config['rounds']} rounds, scenario `{config['scenario']}`, {summary['seeds']} seeds; every arm "
        f"holds at most {capacity / 1e6:.2f} MB ({config['budget_fraction']:.0%} of the bytes the life "
        f"offers) but the unbounded store; each round every arm retrains with {config['round_steps']} "
        f"steps ({config['retrain']}{', D0 kept' if config['keep_initial'] else ''}). DRIP's q_high "
        f"per seed: {', '.join(f'{q:g}' for q in summary['q_high'])}. Accuracy on the classes seen so far, "
        "mean ± std over seeds (%).",
        "",
        "| arm | average accuracy | final accuracy | forgetting (pp) | bytes at the end | of unbounded "
        "| train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, figures in summary["arms"].items():
        share = figures.get("bytes_share")
        lines.append(
            f"| {titles.get(arm, arm)} | {_pct(figures.get('average_accuracy'))} | "
            f"{_pct(figures.get('final_accuracy'))} | {_pct(figures.get('forgetting'))} | "
            f"{figures['final_bytes']['mean'] / 1e6:.2f} MB | {'' if share is None else f'{share:.0%}'} | "
            f"{figures['train_s']['mean']:.0f} |"
        )
    if summary["gaps"]:
        lines += ["", "DRIP minus each arm, paired by seed (pp; seeds where DRIP is higher):", ""]
        lines += ["| against | average accuracy | final accuracy |", "|---|---|---|"]
        for other, gap in summary["gaps"].items():
            cells = [f"{g['mean_pp']:+.2f} ({g['wins']}/{g['seeds']})" for g in gap.values()]
            lines.append(f"| {titles.get(other, other)} | {' | '.join(cells)} |")
    for arm, shifts in summary["threshold_shift"].items():
        lines += [
            "",
            f"{titles.get(arm, arm)}: recalibration moved the upper cuts by "
            f"{', '.join('-' if v is None else f'{v:.3g}' for v in shifts)} per round (mean |change| over "
            "classes, seed 0).",
        ]
    lines += [
        "",
        f"Run time: {summary['elapsed_s'] / 60:.1f} min (of the command that wrote this; rounds an "
        "earlier run saved are read back, not rerun).",
        "",
    ]
    return "\n".join(lines)


def plot_accuracy(summary: dict[str, Any], path: Path) -> None:
    """Accuracy on the classes seen so far over rounds, one line per arm (mean, ± std band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = arm_titles(summary["config"])
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for arm, figures in summary["arms"].items():
        mean = 100 * np.array(figures["accuracy_by_round"])
        std = 100 * np.array(figures["accuracy_by_round_std"])
        rounds = np.arange(1, len(mean) + 1)
        style = {"lw": 2.6, "color": "black"} if arm == "drip" else {"lw": 1.4}
        (line,) = ax.plot(rounds, mean, marker="o", ms=3.5, label=titles.get(arm, arm), **style)
        ax.fill_between(rounds, mean - std, mean + std, color=line.get_color(), alpha=0.12)
    ax.set_xticks(np.arange(1, len(mean) + 1))
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy on the classes seen so far (%)")
    ax.set_title(
        f"{summary['data_name']}: accuracy over the device's life\n(mean of {summary['seeds']} seeds, ± std)"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_composition(summary: dict[str, Any], path: Path) -> None:
    """Per arm, the store's samples per class over rounds (stacked), seed 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = arm_titles(summary["config"])
    arms = list(summary["composition"])
    columns = min(3, len(arms))
    rows = -(-len(arms) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), sharey=True, squeeze=False)
    colors = plt.get_cmap("tab10" if len(summary["composition"][arms[0]][0]) <= 10 else "tab20")
    for ax, arm in zip(axes.flat, arms):
        counts = np.array(summary["composition"][arm], dtype=float)  # (rounds, classes)
        rounds = np.arange(1, len(counts) + 1)
        bottom = np.zeros(len(counts))
        for c in range(counts.shape[1]):
            ax.bar(rounds, counts[:, c], bottom=bottom, color=colors(c % colors.N), width=0.8, label=str(c))
            bottom += counts[:, c]
        ax.set_title(titles.get(arm, arm), fontsize=9)
        ax.set_xlabel("round")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.flat[len(arms) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("samples stored")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, title="class", loc="center right", fontsize=7)
    fig.suptitle(f"{summary['data_name']}: what each store holds per class after each round (seed 0)")
    fig.tight_layout(rect=(0, 0, 0.93, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict[str, Any], out: Path) -> dict[str, Any]:
    """summary.json, summary.md and the two plots into ``out``; the summary."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    plot_accuracy(summary, out / "accuracy_over_rounds.png")
    plot_composition(summary, out / "store_composition.png")
    return summary


def load_results(path: Path) -> dict[str, Any]:
    """A lifelong ``results.json``; another format or version is an error."""
    from ..report import read_results

    return checked_results(path, *read_results(path))


def checked_results(path: Path, results: Any, found: tuple[Any, Any] | None) -> dict[str, Any]:
    """``results`` as ``drip.report.read_results`` read them from ``path``, if they are a
    lifelong run's of this version; else an error."""
    if found != (FORMAT, VERSION):
        raise DripInputError(f"{path}: expected {FORMAT} results version {VERSION}, got {found!r}")
    return results
