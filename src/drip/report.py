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

from .errors import DripInputError
from .experiment import RESULTS_VERSION

# Results this report still reads: version 3 runs hold no selection rule (per-class) and no
# per-class kept counts.
READABLE_VERSIONS = (3, RESULTS_VERSION)

ARM_TITLES = {
    "full": "FULL",
    "full-clean": "FULL (clean stream)",
    "drip": "DRIP",
    "drip-paper": "DRIP (paper's score)",
    "random": "RANDOM",
    "reservoir": "class-balanced reservoir",
    "loss": "LOSS",
    "margin": "margin",
    "entropy": "entropy",
    "el2n": "EL2N",
    "loss-band": "loss band (DRIP's quantiles and rule)",
    "drip-per-class": "DRIP score, per-class rule",
    "drip-pooled": "DRIP score, pooled rule",
    "drip-coverage": "DRIP score, coverage rule",
    "drip-budget": "DRIP, adaptive to --budget-bytes",
    "reservoir-budget": "class-balanced reservoir, same bytes",
}


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "per_seed": values,
    }


def _optional_stats(values: list[float | None]) -> dict[str, Any] | None:
    present = [v for v in values if v is not None]
    return _stats(present) if len(present) == len(values) and present else None


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures: DRIP's saving, kept/seen, and per arm accuracy (mean, std, per seed)."""
    seeds = results["seeds"]
    arms = {}
    for arm in seeds[0]["arms"]:
        records = [s["arms"][arm] for s in seeds]
        arms[arm] = {
            "accuracy": _stats([r["accuracy"] for r in records]),
            "saving": _stats([r["saving"] for r in records]),
            "kept": _stats([float(r["kept"]) for r in records]),
            "steps": _stats([float(r["steps"]) for r in records]),
            "kept_per_class": (
                np.mean([r["kept_per_class"] for r in records], axis=0).tolist()
                if all("kept_per_class" in r for r in records)
                else None
            ),
            **{
                key: _optional_stats([r.get(key) for r in records])
                for key in ("noise_precision", "noise_recall", "noise_fit")
            },
        }
    sweep = []
    for i, point in enumerate(seeds[0]["sweep"]):
        points = [s["sweep"][i] for s in seeds]
        sweep.append(
            {
                "q_high": point["q_high"],
                "saving": _stats([p["saving"] for p in points]),
                "arms": {
                    arm: {
                        "accuracy": _stats([p["arms"][arm]["accuracy"] for p in points]),
                        "saving": _stats([p["arms"][arm]["saving"] for p in points]),
                    }
                    for arm in point["arms"]
                },
            }
        )
    config = results["config"]
    summary = {
        "dataset": results.get("data_name", results["dataset"]),
        "data_source": results["data_source"],
        "seeds": [s["seed"] for s in seeds],
        "budget": results["budget"],
        "steps": config["steps"],
        "statistic": config["statistic"],
        "target": config["target"],
        "cam": config["cam"],
        "noise": {"kind": config["noise"], "rate": config["noise_rate"]},
        "q_low": config["q_low"],
        "rule": config.get("rule", "per-class"),
        "class_names": results["class_names"],
        "storage_saving": _stats([1 - s["stream"]["kept"] / s["stream"]["seen"] for s in seeds]),
        "kept": _stats([float(s["stream"]["kept"]) for s in seeds]),
        "seen": _stats([float(s["stream"]["seen"]) for s in seeds]),
        "q_high": _stats([s["q_high"] for s in seeds]),
        "training_phase_cost_ratio": _stats([s["training_phase"]["cost_ratio"] for s in seeds]),
        "accuracy": {arm: values["accuracy"] for arm, values in arms.items()},
        "arms": arms,
        "sweep": sweep,
        "elapsed_s": results["elapsed_s"],
        "threads": results["threads"],
    }
    if seeds[0].get("budget"):
        summary["budget_store"] = {
            "capacity_bytes": seeds[0]["budget"]["capacity_bytes"],
            "bytes_used": _stats([float(s["budget"]["bytes_used"]) for s in seeds]),
        }
    summary["headline"] = headline(summary)
    summary["verdict"] = _verdict(summary)
    return summary


def paired_gap(summary: dict[str, Any], arm: str, other: str) -> tuple[float, int, int]:
    """Mean per-seed accuracy difference arm - other (pp), seeds where arm is higher, seeds."""
    diffs = [
        a - o for a, o in zip(summary["accuracy"][arm]["per_seed"], summary["accuracy"][other]["per_seed"])
    ]
    return 100 * statistics.fmean(diffs), sum(d > 0 for d in diffs), len(diffs)


def _compare(summary: dict[str, Any], arm: str) -> str:
    mean, wins, seeds = paired_gap(summary, "drip", arm)
    relation = "above" if mean > 0 else "below" if mean < 0 else "level with"
    return (
        f"DRIP is {relation} {ARM_TITLES.get(arm, arm)} by {abs(mean):.2f} pp on average "
        f"(higher in {wins} of {seeds} seeds)."
    )


def headline(summary: dict[str, Any]) -> str:
    """The one-line verdict: DRIP's saving and accuracy, against FULL and RANDOM at equal storage."""
    accuracy = summary["accuracy"]
    line = (
        f"DRIP stored {summary['storage_saving']['mean']:.1%} less of the stream than FULL, at "
        f"{100 * accuracy['drip']['mean']:.2f}% test accuracy"
    )
    against = [
        f"{paired_gap(summary, 'drip', arm)[0]:+.2f} pp against {ARM_TITLES[arm]}"
        + (" at the same storage" if arm == "random" else "")
        for arm in ("full", "random")
        if arm in accuracy
    ]
    return line + (": " + " and ".join(against) if against else "") + f" ({len(summary['seeds'])} seeds)."


def _verdict(summary: dict[str, Any]) -> list[str]:
    """Plain sentences on how DRIP compares with each control (the point is to measure)."""
    accuracy = summary["accuracy"]
    saving = summary["storage_saving"]["mean"]
    lines = [_compare(summary, arm) for arm in accuracy if arm != "drip"]
    if "full" in accuracy:
        gap = 100 * (accuracy["drip"]["mean"] - accuracy["full"]["mean"])
        met = saving >= 0.39 and gap >= -0.2
        lines.append(
            f"The paper's claim (>= 39% saving at FULL's accuracy, within 0.2 pp) is "
            f"{'met' if met else 'not met'} here: {saving:.1%} saving, {gap:+.2f} pp against FULL."
        )
    if "random" in accuracy and "loss" in accuracy:
        beats = [arm for arm in ("random", "loss") if accuracy["drip"]["mean"] > accuracy[arm]["mean"]]
        missed = [ARM_TITLES[a] for a in ("random", "loss") if a not in beats]
        if missed:
            lines.append(f"DRIP does not beat {' or '.join(missed)} at the same storage in this run.")
    return lines


def _percent(values: dict[str, Any] | None) -> str:
    return "" if values is None else f"{100 * values['mean']:.1f}"


def _sweep_table(summary: dict[str, Any]) -> list[str]:
    """Every arm's accuracy at every band of the sweep, and DRIP's paired gaps."""
    sweep = summary["sweep"]
    arms = list(sweep[0]["arms"])
    lines = [
        "",
        "Every arm at each band of the sweep (bands: their own storage at that q_high; the other "
        "controls: DRIP's count there). Test accuracy (%), mean ± std over seeds:",
        "",
        "| arm | " + " | ".join(f"q_high {p['q_high']:g}" for p in sweep) + " |",
        "|---|" + "--:|" * len(sweep),
        "| DRIP's storage saving (%) | "
        + " | ".join(f"{100 * p['saving']['mean']:.1f}" for p in sweep)
        + " |",
    ]
    for arm in arms:
        cells = [
            f"{100 * p['arms'][arm]['accuracy']['mean']:.2f} ± {100 * p['arms'][arm]['accuracy']['std']:.2f}"
            for p in sweep
        ]
        lines.append(f"| {ARM_TITLES.get(arm, arm)} | " + " | ".join(cells) + " |")
    full = summary["accuracy"].get("full")
    for other, title in (("random", "RANDOM"), ("loss", "LOSS"), ("drip-paper", "paper's score")):
        if other not in arms or other == "drip":
            continue
        cells = []
        for p in sweep:
            diffs = [
                d - o
                for d, o in zip(
                    p["arms"]["drip"]["accuracy"]["per_seed"], p["arms"][other]["accuracy"]["per_seed"]
                )
            ]
            cells.append(f"{100 * statistics.fmean(diffs):+.2f} ({sum(d > 0 for d in diffs)}/{len(diffs)})")
        lines.append(f"| DRIP - {title} (pp, seeds higher) | " + " | ".join(cells) + " |")
    if full is not None:
        cells = []
        for p in sweep:
            diffs = [d - f for d, f in zip(p["arms"]["drip"]["accuracy"]["per_seed"], full["per_seed"])]
            cells.append(f"{100 * statistics.fmean(diffs):+.2f} ({sum(d > 0 for d in diffs)}/{len(diffs)})")
        lines.append("| DRIP - FULL (pp, seeds higher) | " + " | ".join(cells) + " |")
    return lines


def _kept_per_class_table(summary: dict[str, Any]) -> list[str]:
    """Stream samples each arm stored, per class (mean over seeds): where each rule spent storage."""
    arms = {arm: v["kept_per_class"] for arm, v in summary["arms"].items() if v.get("kept_per_class")}
    if not arms:
        return []
    names = summary["class_names"]
    lines = [
        "",
        "Stream samples stored per class (mean over seeds): where each arm spends its storage.",
        "",
        "| arm | " + " | ".join(map(str, names)) + " |",
        "|---|" + "--:|" * len(names),
    ]
    for arm, counts in arms.items():
        lines.append(f"| {ARM_TITLES.get(arm, arm)} | " + " | ".join(f"{c:.0f}" for c in counts) + " |")
    return lines


def plot_kept_per_class(summary: dict[str, Any], path: Path) -> None:
    """Stream samples stored per class, the arms side by side (mean over seeds)."""
    arms = {
        arm: v["kept_per_class"]
        for arm, v in summary["arms"].items()
        if v.get("kept_per_class") and arm not in ("full-clean",)
    }
    names = summary["class_names"]
    fig, ax = plt.subplots(figsize=(max(7.5, 0.9 * len(names)), 4.2))
    width = 0.8 / len(arms)
    for i, (arm, counts) in enumerate(arms.items()):
        full = arm == "full"  # an outline: what there was to store, not a choice
        ax.bar(
            np.arange(len(names)) + (i - (len(arms) - 1) / 2) * width,
            counts,
            width,
            label=ARM_TITLES.get(arm, arm),
            color="none" if full else _STYLES.get(arm, (None, None))[1],
            edgecolor="black" if full else None,
            alpha=1.0 if full else 0.9,
        )
    ax.set_xticks(np.arange(len(names)), [str(n) for n in names])
    ax.set_xlabel("class")
    ax.set_ylabel("stream samples stored (mean over seeds)")
    ax.set_title(
        f"{summary['dataset']}: what each arm stores, per class (DRIP's rule: {summary['rule']})", fontsize=9
    )
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the legend below the axes, inside the image
    plt.close(fig)


def markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown: the one-line verdict, the arms, the sweep, then the details."""
    seen = summary["seen"]["mean"]
    noise = summary["noise"]
    noisy = noise["kind"] != "none"
    chosen = ", ".join(f"{q:g}" for q in summary["q_high"]["per_seed"])
    if summary["budget"] == "epochs":
        budget = f"every arm trained for the same epochs (FULL {summary['steps']} optimiser steps)"
    else:
        budget = f"every arm trained for {summary['steps']} optimiser steps"
    setup = (
        f"{len(summary['seeds'])} seed(s); {budget}; DRIP's score: the `{summary['statistic']}` of the "
        f"`{summary['cam']}` map of the `{summary['target']}` target, `{summary['rule']}` rule; "
        f"Training Phase cost {summary['training_phase_cost_ratio']['mean']:.1f}x one training; "
        f"chosen q_high {chosen}"
    )
    if summary["q_low"]:
        setup += f", q_low {summary['q_low']:g}"
    if noisy:
        setup += f"; {noise['kind']} noise on {noise['rate']:.0%} of the stream"
    header = "| arm | test accuracy (%) | stream samples stored | storage saving (%) |"
    rule = "|---|---|---|---|"
    if noisy:
        header += " dropped that were corrupted (%) | corrupted dropped (%) | noisy labels fit (%) |"
        rule += "---|---|---|"
    if summary["data_source"]:
        setup += f". Data: {summary['data_source']}"
    lines = [
        f"# drip: {summary['dataset']}",
        "",
        f"**{headline(summary)}**",
        "",
        setup + ".",
        "",
        header,
        rule,
    ]
    for arm, values in summary["arms"].items():
        accuracy = values["accuracy"]
        cells = [
            ARM_TITLES.get(arm, arm),
            f"{100 * accuracy['mean']:.2f} ± {100 * accuracy['std']:.2f}",
            f"{values['kept']['mean']:.0f} of {seen:.0f}",
            f"{100 * values['saving']['mean']:.1f}",
        ]
        if noisy:
            cells += [_percent(values[key]) for key in ("noise_precision", "noise_recall", "noise_fit")]
        lines.append("| " + " | ".join(cells) + " |")
    if summary.get("budget_store"):
        store = summary["budget_store"]
        used = ", ".join(f"{b:.0f}" for b in store["bytes_used"]["per_seed"])
        lines += [
            "",
            f"The adaptive store ended at {used} tensor bytes of its {store['capacity_bytes']} (per seed).",
        ]
    if summary.get("sweep"):
        lines += _sweep_table(summary)
    lines += _kept_per_class_table(summary)
    lines += ["", *(f"- {line}" for line in summary["verdict"]), ""]
    return "\n".join(lines)


# How the plots name each map (runs from before the choice of map recorded none: Grad-CAM).
CAM_NAMES = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "xgradcam": "XGrad-CAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
}
# How a statistic reads on a plot: whether the map was ReLU'd matters for what the score means.
STATISTIC_NAMES = {"net": "signed mean", "mean": "mean of the ReLU'd"}


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
        f"{results.get('data_name', results['dataset'])}, seed {seed['seed']}: DRIP scores of the stream "
        f"(dashed: high threshold, dotted: low); q_high = {seed['q_high']:g}",
        fontsize=10,
    )
    config = results["config"]
    fig.supxlabel(
        f"DRIP score ({STATISTIC_NAMES.get(config['statistic'], config['statistic'])} of the "
        f"{CAM_NAMES[config.get('cam', 'gradcam')]} "
        f"map of the {config['target']} target)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _is_spectrogram(image: np.ndarray) -> bool:
    """A grey input much taller than wide: audio features, frames by coefficients (49 x 10 MFCC)."""
    return image.ndim == 2 and image.shape[0] > 2 * image.shape[1]


def plot_gallery(results: dict[str, Any], path: Path, seed_index: int = 0) -> None:
    """Kept and dropped stream samples with their Grad-CAM maps overlaid (upsampled for display)."""
    seed = results["seeds"][seed_index]
    gallery = seed["gallery"]
    rows = [(name, gallery.get(name, [])) for name in ("kept", "dropped")]
    width = max((len(items) for _, items in rows), default=1) or 1
    fig, axes = plt.subplots(2, width, figsize=(1.5 * width, 3.8), squeeze=False)
    # One colour scale for every map: raw magnitudes are what the score compares. A signed map
    # (the net score's) gets a diverging scale centred on 0: red for the target, blue against it.
    maps = [np.asarray(item["map"]) for _, items in rows for item in items]
    signed = any(np.min(m) < 0 for m in maps)
    peak = max((float(np.max(np.abs(m))) for m in maps), default=1.0) or 1.0
    colours = {"cmap": "coolwarm", "vmin": -peak} if signed else {"cmap": "inferno", "vmin": 0}
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
            heat = heat.numpy()
            if _is_spectrogram(image):
                # (frames, coefficients): time left to right, each coefficient scaled on its own
                # (the first, the energy, would otherwise swamp the rest).
                image, heat = image.T, heat.T
                spread = image.std(axis=1, keepdims=True)
                image = (image - image.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, 1)
            extent = (-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5)
            ax.imshow(image, cmap="gray", extent=extent, aspect="auto")
            ax.imshow(heat, alpha=0.5, vmax=peak, extent=extent, aspect="auto", **colours)
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
    cam = CAM_NAMES[results["config"].get("cam", "gradcam")]
    fig.suptitle(
        f"{results.get('data_name', results['dataset'])}, seed {seed['seed']}: kept (top) and dropped "
        f"(bottom), ordered by DRIP score, with {cam} of the {results['config']['target']} target"
        + (
            " (MFCC: time left to right, coefficients top to bottom)"
            if results["input_shape"][1:] == [49, 10]
            else ""
        ),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# Marker and colour of each arm in the accuracy-vs-saving plot.
_STYLES = {
    "drip": ("*", "tab:blue"),
    "drip-paper": ("o", "tab:cyan"),
    "random": ("s", "tab:gray"),
    "reservoir": ("D", "tab:olive"),
    "loss": ("^", "tab:green"),
    "margin": ("v", "tab:red"),
    "entropy": ("P", "tab:purple"),
    "el2n": ("<", "tab:brown"),
    "loss-band": (">", "tab:pink"),
    "drip-per-class": ("X", "navy"),
    "drip-pooled": ("h", "darkorange"),
    "drip-coverage": ("d", "teal"),
}


def plot_accuracy_vs_saving(summary: dict[str, Any], path: Path) -> None:
    """Test accuracy against storage saving: every arm along the sweep, the chosen band starred."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    arms = summary["arms"]
    if "full" in arms:
        full = arms["full"]["accuracy"]
        ax.axhline(100 * full["mean"], color="black", linewidth=1, label="FULL")
        ax.axhspan(
            100 * (full["mean"] - full["std"]), 100 * (full["mean"] + full["std"]), color="black", alpha=0.08
        )
    sweep = summary.get("sweep") or []
    for arm, (marker, colour) in _STYLES.items():
        points = [p["arms"][arm] for p in sweep if arm in p["arms"]]
        if points:
            ax.errorbar(
                [100 * p["saving"]["mean"] for p in points],
                [100 * p["accuracy"]["mean"] for p in points],
                yerr=[100 * p["accuracy"]["std"] for p in points],
                color=colour,
                marker=marker,
                markersize=9 if arm == "drip" else 4,
                linewidth=2.2 if arm == "drip" else 1,
                capsize=2,
                label=ARM_TITLES[arm],
            )
        if arm in arms:  # the arms at the band the Training Phase chose
            values = arms[arm]
            # The equal-count controls share one x: RANDOM, hollow and larger, stays visible.
            hollow = arm == "random"
            ax.errorbar(
                100 * values["saving"]["mean"],
                100 * values["accuracy"]["mean"],
                yerr=100 * values["accuracy"]["std"],
                marker=marker,
                markersize=16 if arm == "drip" else 12 if hollow else 7,
                markeredgecolor=colour if hollow else "black",
                markeredgewidth=2 if hollow else 1,
                markerfacecolor="none" if hollow else colour,
                color=colour,
                linestyle="none",
                zorder=3 if hollow else 2,
                label=None if points else ARM_TITLES[arm],
            )
    if "full-clean" in arms:
        ax.axhline(
            100 * arms["full-clean"]["accuracy"]["mean"],
            color="green",
            linestyle="--",
            linewidth=1,
            label="FULL on the clean stream",
        )
    ax.set_xlabel("storage saving: stream samples not stored (%)")
    ax.set_ylabel("test accuracy (%)")
    low, high = ax.get_xlim()
    if high - low < 20:  # arms at (nearly) one storage: a narrow axis would spread them apart
        middle = (low + high) / 2
        ax.set_xlim(middle - 10, middle + 10)
    noise = summary["noise"]
    title = f"{summary['dataset']}: accuracy vs storage ({len(summary['seeds'])} seeds, "
    title += f"{summary['budget']} budget"
    title += f", {noise['kind']} noise {noise['rate']:.0%})" if noise["kind"] != "none" else ")"
    ax.set_title(title + ";\nblack-edged: the Training Phase's band", fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))  # off the markers
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_noise_scores(results: dict[str, Any], path: Path, seed_index: int = 0) -> None:
    """DRIP score distributions of clean and corrupted stream samples (noise runs)."""
    seed = results["seeds"][seed_index]
    scores = np.array(seed["stream"]["scores"])
    corrupted = np.array(seed["stream"]["corrupted"], dtype=bool)
    labels = np.array(seed["stream"]["labels"])
    # Scores live on per-class scales: show each as its percentile within its class's clean scores.
    percentile = np.empty(len(scores))
    for c in np.unique(labels):
        own = labels == c
        reference = np.sort(scores[own & ~corrupted]) if (own & ~corrupted).any() else np.sort(scores[own])
        percentile[own] = np.searchsorted(reference, scores[own]) / max(len(reference), 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, values, xlabel in (
        (axes[0], scores, "DRIP score"),
        (axes[1], 100 * percentile, "percentile among the class's clean stream scores"),
    ):
        bins = np.linspace(values.min(), values.max(), 40)
        ax.hist(values[~corrupted], bins=bins, alpha=0.6, density=True, label="clean", color="tab:blue")
        ax.hist(values[corrupted], bins=bins, alpha=0.6, density=True, label="corrupted", color="tab:red")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    config = results["config"]
    fig.suptitle(
        f"{results.get('data_name', results['dataset'])}, seed {seed['seed']}: {config['noise']} noise on "
        f"{config['noise_rate']:.0%} of the stream",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write summary.json and summary.md and the plots into ``out``; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    plot_scores(results, out / "scores.png")
    plot_gallery(results, out / "heatmaps.png")
    if summary["sweep"] or len(summary["arms"]) > 4:
        plot_accuracy_vs_saving(summary, out / "accuracy_vs_saving.png")
    if summary["noise"]["kind"] != "none":
        plot_noise_scores(results, out / "noise_scores.png")
    if any(v.get("kept_per_class") for v in summary["arms"].values()):
        plot_kept_per_class(summary, out / "kept_per_class.png")
    return summary


def read_results(path: Path) -> tuple[Any, tuple[Any, Any] | None]:
    """A ``results.json``'s content and the (format, version) it declares (None: not an object)."""
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as err:
        raise DripInputError(f"{path}: cannot read results: {err}") from None
    found = (results.get("format"), results.get("version")) if isinstance(results, dict) else None
    return results, found


def load_results(path: Path) -> dict[str, Any]:
    """Read a ``results.json`` written by ``drip.experiment``; another format or version is an error."""
    return checked_results(path, *read_results(path))


def checked_results(path: Path, results: Any, found: tuple[Any, Any] | None) -> dict[str, Any]:
    """``results`` as :func:`read_results` read them from ``path``, if ``drip.experiment`` wrote
    them in a version this reads; else an error."""
    if found is None or found[0] != "drip-results" or found[1] not in READABLE_VERSIONS:
        raise DripInputError(
            f"{path}: expected drip results version {RESULTS_VERSION}, got {found!r}; rerun the experiment"
        )
    return results
