"""What every ``drip`` command shares: the common flags, one-line errors, loading users' files."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from ..errors import DripInputError


def add_common(parser: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--quiet``, on every command."""
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device``: where the model runs (``drip.parallel.resolve_device``: CPU when CUDA is absent)."""
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or cuda:N (default: cpu; cuda without a GPU falls back to the CPU, saying so)",
    )


def scorer_for(model, thresholds, layer: str | None = None):
    """The ``DripScorer`` that ``thresholds`` were calibrated with, on ``model`` (``layer``: the
    thresholds' own unless given)."""
    from ..score import DripScorer

    return DripScorer(
        model,
        layer or thresholds.layer or None,
        thresholds.statistic,
        thresholds.target,
        cam=thresholds.cam,
        # A model that declares no shape is checked against the one it was calibrated on.
        input_shape=getattr(model, "input_shape", None) or thresholds.input_shape or None,
    )


def print_counters(counters, num_classes: int) -> None:
    """A filter's per-class counters as a markdown table."""
    print("| class | seen | kept | dropped | store full |\n|---|---|---|---|---|")
    for c in range(num_classes):
        row = (c, counters.seen[c], counters.kept[c], counters.dropped[c], counters.rejected[c])
        print("| " + " | ".join(map(str, row)) + " |")


def add_rule(parser: argparse.ArgumentParser) -> None:
    """``--rule``: how the upper cuts are placed across classes (see ``drip.rules``)."""
    from ..rules import DEFAULT_RULE, RULES

    parser.add_argument(
        "--rule",
        choices=RULES,
        default=DEFAULT_RULE,
        help="which samples the band drops: per-class (the paper's: the top q_high of every class), "
        "pooled (the top q_high of all scores: storage goes to the hard classes), coverage (pooled, "
        f"with a floor per class so no class is starved and rare ones are kept) (default: {DEFAULT_RULE})",
    )


# drip.data.regimes.DIFFICULTIES, spelt here so that building the parser loads no data module.
DIFFICULTY_NAMES = ("none", "graded")


def add_difficulty(parser: argparse.ArgumentParser) -> None:
    """``--difficulty``: the harder data set of ``drip.data.regimes``."""
    parser.add_argument(
        "--difficulty",
        choices=DIFFICULTY_NAMES,
        default="none",
        help="graded: the classes are blended in confusable pairs of graded strength (pair k of "
        "C/2 gets 45%% k/(C/2-1) of its partner's image), so they differ in difficulty "
        "(drip.data.regimes) (default: none)",
    )


def add_proxy_fraction(parser: argparse.ArgumentParser, of: str = "D0") -> None:
    """``--proxy-fraction``: the proxy stream's share of the initial data in the band search."""
    from ..calibrate import DEFAULT_PROXY_FRACTION

    parser.add_argument(
        "--proxy-fraction",
        type=float,
        default=DEFAULT_PROXY_FRACTION,
        help=f"the proxy stream's share of {of} in the band search, with D0_train the rest of the 80%% "
        f"that validation leaves (default: {DEFAULT_PROXY_FRACTION})",
    )


def add_target(parser: argparse.ArgumentParser) -> None:
    """``--statistic``, ``--target`` and ``--cam``: the score's reduction, what the map
    differentiates and how (see ``drip.score``)."""
    from ..cam import CAM_METHODS
    from ..score import DEFAULT_CAM, DEFAULT_STATISTIC, DEFAULT_TARGET, STATISTICS, TARGETS

    parser.add_argument(
        "--statistic",
        choices=sorted(STATISTICS),
        default=DEFAULT_STATISTIC,
        help=f"how the map becomes a score: net (the mean of the signed map: evidence for minus "
        f"against), mean (of the ReLU'd map: the paper's), max, sum, entropy, coverage "
        f"(default: {DEFAULT_STATISTIC})",
    )
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default=DEFAULT_TARGET,
        help=f"what the map explains: margin (the label's logit minus the strongest rival's), label "
        f"(the paper's: the label's logit), logprob, predicted (default: {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--cam",
        choices=CAM_METHODS,
        default=DEFAULT_CAM,
        help=f"the map's channel weights (default: {DEFAULT_CAM}; the paper's: gradcam; the two agree "
        "for global-average-pooling heads)",
    )


def one_line(err: BaseException) -> str:
    """An error's message on one line (torch and SQLite messages may span several)."""
    return " ".join(str(err).split())


def load_tensors(path: Path, content: bytes | None = None):
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


def load_model(path: Path):
    import torch
    from torch import nn

    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # as in _load_tensors: damaged pickles raise anything
        raise DripInputError(f"{path}: cannot load a model: {err}") from None
    if not isinstance(model, nn.Module):
        raise DripInputError(f"{path}: expected a torch.save'd nn.Module, got {type(model).__name__}")
    return model.eval()


def fresh_copy_factory(model):
    """A factory of untrained copies of ``model``: deep copy, then reset every layer's parameters."""

    def factory():
        fresh = copy.deepcopy(model)
        for module in fresh.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return fresh

    return factory
