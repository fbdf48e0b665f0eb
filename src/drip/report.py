"""From ``results.json`` alone: the summary (JSON and markdown) and the plots.

Plots use matplotlib's non-interactive Agg backend and are written as PNG next to the tables.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

ARM_TITLES = {"full": "FULL", "drip": "DRIP", "random": "RANDOM", "loss": "LOSS"}


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "per_seed": values,
    }


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures: saving, kept/seen, accuracy per arm (mean, std, per seed)."""
    seeds = results["seeds"]
    arms = list(seeds[0]["accuracy"])
    accuracy = {arm: _stats([s["accuracy"][arm] for s in seeds]) for arm in arms}
    summary = {
        "dataset": results["dataset"],
        "seeds": [s["seed"] for s in seeds],
        "budget": results.get("budget", "steps"),
        "steps": results["config"]["steps"],
        "statistic": results["config"]["statistic"],
        "storage_saving": _stats([1 - s["stream"]["kept"] / s["stream"]["seen"] for s in seeds]),
        "kept": _stats([float(s["stream"]["kept"]) for s in seeds]),
        "seen": _stats([float(s["stream"]["seen"]) for s in seeds]),
        "q_high": _stats([s["q_high"] for s in seeds]),
        "training_phase_cost_ratio": _stats([s["training_phase"]["cost_ratio"] for s in seeds]),
        "accuracy": accuracy,
        "elapsed_s": results.get("elapsed_s"),
    }
    summary["verdict"] = _verdict(summary)
    return summary


def _verdict(summary: dict[str, Any]) -> list[str]:
    """Plain sentences on how DRIP compares with each control (the point is to measure)."""
    accuracy = summary["accuracy"]
    drip = accuracy["drip"]
    lines = [f"DRIP stored {summary['storage_saving']['mean']:.1%} less of the stream than FULL."]
    for arm in ("full", "random", "loss"):
        if arm not in accuracy:
            continue
        diffs = [d - o for d, o in zip(drip["per_seed"], accuracy[arm]["per_seed"])]
        mean = 100 * statistics.fmean(diffs)
        wins = sum(d > 0 for d in diffs)
        relation = "above" if mean > 0 else "below" if mean < 0 else "level with"
        lines.append(
            f"DRIP is {relation} {ARM_TITLES[arm]} by {abs(mean):.2f} pp on average "
            f"(higher in {wins} of {len(diffs)} seeds)."
        )
    return lines


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a markdown table with the verdict under it."""
    seeds = len(summary["seeds"])
    saving = summary["storage_saving"]
    kept, seen = summary["kept"]["mean"], summary["seen"]["mean"]
    lines = [
        f"# drip: {summary['dataset']}",
        "",
        f"{seeds} seed(s); every arm trained for {summary['steps']} optimiser steps "
        f"(budget: {summary['budget']}); score statistic `{summary['statistic']}`; "
        f"Training Phase cost {summary['training_phase_cost_ratio']['mean']:.1f}x one training; "
        f"chosen q_high {', '.join(f'{q:g}' for q in summary['q_high']['per_seed'])}.",
        "",
        "| arm | test accuracy (%) | stream samples stored | storage saving |",
        "|---|---|---|---|",
    ]
    for arm, values in summary["accuracy"].items():
        stored = f"{seen:.0f}" if arm == "full" else f"{kept:.0f}"
        arm_saving = "0%" if arm == "full" else f"{100 * saving['mean']:.1f} ± {100 * saving['std']:.1f}%"
        lines.append(
            f"| {ARM_TITLES.get(arm, arm)} | {100 * values['mean']:.2f} ± {100 * values['std']:.2f} "
            f"| {stored} of {seen:.0f} | {arm_saving} |"
        )
    lines += ["", *(f"- {line}" for line in summary["verdict"]), ""]
    return "\n".join(lines)


def plot_scores(results: dict[str, Any], path: Path, seed_index: int = 0) -> None:
    """Per-class histograms of the stream's DRIP scores, kept vs dropped, with the band edges."""
    seed = results["seeds"][seed_index]
    scores = np.array(seed["stream"]["scores"])
    labels = np.array(seed["stream"]["labels"])
    kept = np.array(seed["stream"]["kept_mask"], dtype=bool)
    low, high = seed["thresholds"]["low"], seed["thresholds"]["high"]
    names = results["class_names"]
    classes = results["num_classes"]
    cols = min(5, classes)
    rows = -(-classes // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    bins = np.linspace(scores.min(), scores.max(), 30) if len(scores) else 10
    for c, ax in enumerate(axes.flat):
        if c >= classes:
            ax.axis("off")
            continue
        own = labels == c
        ax.hist(
            [scores[own & kept], scores[own & ~kept]],
            bins=bins,
            stacked=True,
            color=["tab:blue", "tab:orange"],
            label=["kept", "dropped"],
        )
        for edge, style in ((low[c], ":"), (high[c], "--")):
            if edge is not None:
                ax.axvline(edge, color="black", linestyle=style, linewidth=1)
        ax.set_title(f"class {names[c]}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(
        f"{results['dataset']}, seed {seed['seed']}: DRIP scores of the stream "
        f"(dashed: high threshold, dotted: low); q_high = {seed['q_high']:g}",
        fontsize=10,
    )
    fig.supxlabel("DRIP score (mean of the label's Grad-CAM map)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gallery(results: dict[str, Any], path: Path, seed_index: int = 0) -> None:
    """Kept and dropped stream samples with their Grad-CAM maps overlaid (upsampled for display)."""
    seed = results["seeds"][seed_index]
    gallery = seed["gallery"]
    rows = [(name, gallery.get(name, [])) for name in ("kept", "dropped")]
    width = max((len(items) for _, items in rows), default=1) or 1
    fig, axes = plt.subplots(2, width, figsize=(1.5 * width, 3.8), squeeze=False)
    # One colour scale for every map: raw magnitudes are what the score compares.
    peak = max((np.max(item["map"]) for _, items in rows for item in items), default=1.0) or 1.0
    for r, (name, items) in enumerate(rows):
        for col, ax in enumerate(axes[r]):
            ax.axis("off")
            if col >= len(items):
                continue
            item = items[col]
            image = np.array(item["x"])
            if image.ndim == 3:  # (C, H, W): grey as 2-D, colour channels last
                image = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
            heat = torch.tensor(item["map"], dtype=torch.float32)
            if heat.dim() == 2:
                heat = torch.nn.functional.interpolate(
                    heat[None, None], size=image.shape[:2], mode="bilinear", align_corners=False
                )[0, 0]
            extent = (-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5)
            ax.imshow(image, cmap="gray", extent=extent)
            ax.imshow(heat.numpy(), cmap="inferno", alpha=0.5, vmin=0, vmax=peak, extent=extent)
            ax.set_title(f"y={results['class_names'][item['label']]}\ns={item['score']:.3f}", fontsize=7)
        axes[r][0].text(
            -0.3,
            0.5,
            name,
            transform=axes[r][0].transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=10,
        )
    fig.suptitle(
        f"{results['dataset']}, seed {seed['seed']}: kept (top) and dropped (bottom), "
        "ordered by DRIP score, with Grad-CAM of the label",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write summary.json, summary.md, scores.png and heatmaps.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    plot_scores(results, out / "scores.png")
    plot_gallery(results, out / "heatmaps.png")
    return summary


def load_results(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
