"""Head discovery: the target layer by name, and what follows it (GAP + linear, piecewise linear, other).

The closed form needs the layer followed only by global average pooling and a linear layer
(found in nested ``nn.Sequential`` containers, or declared by the model's ``drip_head``); the
piecewise route needs the layer a child of a plain ``nn.Sequential`` followed only by Linear,
ReLU, max or global average pooling, Flatten and pass-through layers, ending in a Linear.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from ..errors import DripModelError

# Dropout counts as pass-through: scoring is meant for eval mode (the scorer warns otherwise).
_POOL_OR_RESHAPE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout)


def resolve_layer(model: nn.Module, layer: nn.Module | str) -> tuple[nn.Module, str]:
    """The module ``layer`` (a module inside ``model`` or its dotted name) and its dotted name."""
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer), layer
        except AttributeError:
            names = [name for name, _ in model.named_modules() if name]
            raise DripModelError(
                f"layer: no module named {layer!r} in {type(model).__name__}; some names it has: {names[-8:]}"
            ) from None
    for name, module in model.named_modules():
        if module is layer:
            return module, name
    raise DripModelError(f"layer: {type(layer).__name__} is not a module inside the model")


def _execution_atoms(module: nn.Module, stop: nn.Module) -> Iterator[nn.Module]:
    """Modules of nested ``nn.Sequential`` containers in execution order, ``stop`` kept whole."""
    if isinstance(module, nn.Sequential) and module is not stop:
        for child in module:
            yield from _execution_atoms(child, stop)
    else:
        yield module


def _is_global_pool(module: nn.Module) -> bool:
    size = getattr(module, "output_size", None)
    if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        return size == 1 or (isinstance(size, tuple) and all(s == 1 for s in size))
    return False


def find_gap_linear_head(model: nn.Module, layer: nn.Module) -> nn.Linear | None:
    """The linear head if ``model`` is a Sequential whose ``layer`` is followed only by GAP + Linear.

    A model of another structure can declare its head with a ``drip_head`` attribute (the dotted
    name of the linear layer); the scorer then checks the claim against the logits on first use.
    """
    declared = getattr(model, "drip_head", None)
    if isinstance(declared, str):
        head, _ = resolve_layer(model, declared)
        return head if isinstance(head, nn.Linear) else None
    if not isinstance(model, nn.Sequential):
        return None
    atoms = list(_execution_atoms(model, layer))
    if layer not in atoms:
        return None
    tail = atoms[atoms.index(layer) + 1 :]
    if not tail or not isinstance(tail[-1], nn.Linear):
        return None
    between = tail[:-1]
    if all(isinstance(m, _POOL_OR_RESHAPE) for m in between) and any(map(_is_global_pool, between)):
        return tail[-1]
    return None


_MAX_POOLS = {nn.MaxPool1d: nn.functional.max_pool1d, nn.MaxPool2d: nn.functional.max_pool2d}
# Exact types: a subclass may override forward, and the head is run by hand.
_PIECEWISE_LINEAR = (nn.Linear, nn.ReLU, nn.Flatten, nn.Identity, nn.Dropout, *_MAX_POOLS)


def find_piecewise_linear_head(model: nn.Module, layer: nn.Module) -> tuple[nn.Module, ...] | None:
    """The children after ``layer`` if ``model`` is a plain Sequential with ``layer`` a child and
    only piecewise-linear layers after it (Linear, ReLU, max or global average pooling, Flatten,
    Identity, Dropout), ending in a Linear; else None."""
    if not _is_plain_sequential_child(model, layer):
        return None
    children = list(model)
    tail = tuple(children[children.index(layer) + 1 :])
    if not tail or type(tail[-1]) is not nn.Linear:
        return None
    for module in tail:
        pool_with_indices = type(module) in _MAX_POOLS and module.return_indices
        if not (type(module) in _PIECEWISE_LINEAR or _is_global_pool(module)) or pool_with_indices:
            return None
    return tail


def _is_plain_sequential_child(model: nn.Module, layer: nn.Module) -> bool:
    """Whether ``model`` is an ``nn.Sequential`` (not a subclass, whose forward may differ) with
    ``layer`` as a direct child and nowhere else."""
    if type(model) is not nn.Sequential:
        return False
    uses = sum(module is layer for _, module in model.named_modules(remove_duplicate=False))
    return uses == 1 and any(child is layer for child in model)
