"""What every route shares: the settings, the classes' check, the layer's output captured in one forward.

The layer's output is taken by a forward hook that lives for one call (removed in ``finally``),
or, for a plain ``nn.Sequential`` with no hooks of its own, by running its children in turn as its
forward does, which costs no hook at all. A route runs hooks it finds on the model; one that runs
the model by hand (the piecewise head) asks ``_calls_hooks`` first.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import DripInputError, DripModelError
from ..validation import int_range
from .heads import _is_plain_sequential_child

# The hook registries torch's Module.__call__ consults (private names, stable since torch 1.x).
_OWN_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = tuple(f"_global{name}" for name in _OWN_HOOKS)


def _calls_hooks(*modules: nn.Module) -> bool:
    """Whether calling any of ``modules`` runs hooks: their own, or torch's global module hooks."""
    registry = torch.nn.modules.module
    return any(getattr(registry, name) for name in _GLOBAL_HOOKS) or any(
        getattr(module, name) for module in modules for name in _OWN_HOOKS
    )


@contextlib.contextmanager
def _one_call_hook(layer: nn.Module, hook: Callable) -> Iterator[None]:
    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class CamResult:
    """Heatmaps ``maps: (B, *S)`` (raw; ReLU'd unless signed) and the model's ``logits: (B, C)``."""

    maps: torch.Tensor
    logits: torch.Tensor


class Route(abc.ABC):
    """One way to the maps of ``layer`` (named ``layer_name``) in ``model``: ``route(x, classes)``.

    ``method``, ``target`` and ``rectify`` as in ``LayerGradCam``, which has checked them.
    """

    path: ClassVar[str]

    def __init__(
        self, model: nn.Module, layer: nn.Module, layer_name: str, method: str, target: str, rectify: bool
    ) -> None:
        self.model = model
        self.layer = layer
        self.layer_name = layer_name
        self.method = method
        self.target = target
        self.rectify = rectify
        self._nonnegative = type(layer) in (nn.ReLU, nn.ReLU6)
        self._runs_children = _is_plain_sequential_child(model, layer)

    @abc.abstractmethod
    def __call__(self, x: torch.Tensor, classes: torch.Tensor | None) -> CamResult:
        """Maps for ``x: (B, ...)`` and ``classes: (B,)`` (None: each sample's predicted class)."""

    @property
    def means_without_map(self) -> bool:
        """Whether the signed map's mean can be had without forming the map (see ``LayerGradCam``)."""
        return False

    def _forward_capturing(self, x: torch.Tensor, replace: bool) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []

        def capture(output: object) -> torch.Tensor | None:
            self._check_layer_output(output)
            if captured:
                raise DripModelError(
                    f"layer {self.layer_name!r} ran more than once in one forward pass; "
                    "Grad-CAM needs a layer that runs once"
                )
            if not replace:
                captured.append(output)
                return None
            leaf = output.detach().requires_grad_(True)
            captured.append(leaf)
            # Record the graph from here on only; the clone keeps in-place ops after the layer
            # (e.g. ReLU(inplace=True)) off the leaf.
            torch.set_grad_enabled(True)
            return leaf.clone()

        # A hook puts the layer on torch's slow call path, measured 13-23 us a call at batch 1
        # (13% of a small model's forward). A plain Sequential is run child by child instead,
        # exactly as its forward does, unless calling it would run hooks the loop would skip.
        if self._runs_children and not _calls_hooks(self.model):
            logits = self._run_children(x, capture)
        else:
            with _one_call_hook(self.layer, lambda module, inputs, output: capture(output)):
                logits = self.model(x)
        if not captured:
            raise DripModelError(f"layer {self.layer_name!r} did not run in the model's forward")
        self._check_logits(logits, x)
        return captured[0], logits

    def _check_layer_output(self, output: object) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            raise DripModelError(
                f"layer {self.layer_name!r} must output a tensor (B, K, ...), got "
                f"{type(output).__name__}{tuple(getattr(output, 'shape', ()))}"
            )

    @staticmethod
    def _check_logits(logits: object, x: torch.Tensor) -> None:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise DripModelError(
                f"model: expected logits of shape (B={x.shape[0]}, C), got "
                f"{type(logits).__name__}{tuple(getattr(logits, 'shape', ()))}"
            )

    def _run_children(self, x: torch.Tensor, capture: Callable[[object], torch.Tensor | None]) -> object:
        """``nn.Sequential.forward``, with ``capture`` applied to the layer's output on the way."""
        output: object = x
        for child in self.model:
            output = child(output)
            if child is self.layer:
                replacement = capture(output)
                if replacement is not None:
                    output = replacement
        return output

    def _classes(self, classes: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
        if classes is None:
            return logits.detach().argmax(1)
        if classes.shape != (logits.shape[0],):
            raise DripInputError(f"classes: expected shape ({logits.shape[0]},), got {tuple(classes.shape)}")
        if classes.dtype != torch.int64 or classes.device != logits.device:
            classes = classes.to(device=logits.device, dtype=torch.int64)
        if classes.numel():
            low, high = int_range(classes)
            if low < 0 or high >= logits.shape[1]:
                raise DripInputError(
                    f"classes: expected values in [0, {logits.shape[1]}), got [{low}, {high}]"
                )
        return classes
