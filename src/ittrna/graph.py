"""A model's analog layers and their data-flow order: the one place that says which modules go on crossbars
and in which order data passes through them.

- :func:`mapped_modules`: the ``Linear``/``Conv2d`` layers of any ``nn.Module`` (nested or not), in
  definition order, optionally chosen by a ``filter_fn(module, name)`` (torchao's convention);
  :func:`digital_modules` lists every weight or normalisation layer that stays digital and why (attention
  projections, layer types without a crossbar mapping, normalisation; nothing crashes on them). Grouped and
  depthwise convolutions map, each group on tiles of its own (:mod:`ittrna.mapping.tiling`). Definition
  order names the chip's layers and their random streams, so a chip stays the same die whatever a method
  learns about the graph.
- :func:`dataflow_order`: the order in which one forward pass first calls those layers, traced on the
  ``meta`` device (no arithmetic, no memory for activations) from an example input's shape; a model whose
  forward cannot run on ``meta`` is traced on one example in eval mode instead. Methods that go layer by
  layer (``dynamic``, the register fit, the scale search) follow this order, not ``named_modules()``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ittrna.errors import InputError

__all__ = ["FilterFn", "dataflow_order", "digital_modules", "mapped_modules"]

MAPPED: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
"""The layer types that map onto crossbars (their weight as a matrix: :mod:`ittrna.mapping.unfold`)."""

FilterFn = Callable[[nn.Module, str], bool]
"""``filter_fn(module, name) -> bool``: True puts the layer on the chip."""


def _not_mapped(name: str, module: nn.Module, parents: dict[str, nn.Module]) -> str | None:
    """Why a ``Linear``/``Conv2d`` stays digital (None: it maps onto crossbars)."""
    parent = parents.get(name.rpartition(".")[0])
    if isinstance(parent, nn.MultiheadAttention):  # its forward reads the projection weights itself
        return "a projection inside nn.MultiheadAttention (its forward reads the weights directly)"
    return None


def mapped_modules(model: nn.Module, filter_fn: FilterFn | None = None) -> list[tuple[str, nn.Module]]:
    """The ``Linear``/``Conv2d`` layers of ``model`` that go on crossbars, in definition order: those
    ``filter_fn`` accepts (if given), less those that stay digital (see :func:`digital_modules`)."""
    modules = dict(model.named_modules())
    found: list[tuple[str, nn.Module]] = []
    for name, module in modules.items():
        if not isinstance(module, MAPPED):
            continue
        if filter_fn is not None and not filter_fn(module, name):
            continue
        if _not_mapped(name, module, modules) is None:
            found.append((name, module))
    return found


_DIGITAL_BY_DESIGN = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def digital_modules(model: nn.Module, filter_fn: FilterFn | None = None) -> list[tuple[str, str, str]]:
    """Every module with its own weights that stays digital, as (name, type, why): layers ``filter_fn``
    declines, weight layers not mapped (attention projections, ``Conv3d``, transposed convolutions,
    embeddings), and normalisation layers (digital by design)."""
    modules = dict(model.named_modules())
    out: list[tuple[str, str, str]] = []
    for name, module in modules.items():
        own = [p for p in module.parameters(recurse=False)]
        if not own and not isinstance(module, _DIGITAL_BY_DESIGN):
            continue
        kind = type(module).__name__
        if isinstance(module, MAPPED):
            if filter_fn is not None and not filter_fn(module, name):
                out.append((name, kind, "declined by filter_fn"))
            elif (why := _not_mapped(name, module, modules)) is not None:
                out.append((name, kind, why))
        elif isinstance(module, _DIGITAL_BY_DESIGN):
            out.append((name, kind, "normalisation: digital by design (its statistics and affine stay in software)"))
        elif isinstance(module, nn.MultiheadAttention):
            out.append((name, kind, "attention's fused input projection (in_proj_weight): digital"))
        else:
            out.append((name, kind, "no crossbar mapping for this layer type (digital)"))
    return out


def dataflow_order(model: nn.Module, example: torch.Tensor, names: Sequence[str], *,
                   uncalled: bool = True) -> list[str]:
    """``names`` (modules of ``model``) in the order one forward pass first calls them.

    Args:
        model: the network (not changed: it is copied to the ``meta`` device; only on the fallback it runs
            once, in eval mode without gradients, and its mode is restored).
        example: an input batch (only its shape and dtype matter on ``meta``); one sample is enough.
        names: the layers to order (e.g. the chip's).

    Returns:
        The names in first-call order; layers the pass never calls follow in their given order (left out
        with ``uncalled=False``).
    """
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise InputError(f"layer {missing[0]!r} is not a module of the model; it has {len(modules)} modules")
    try:
        order = _trace(copy.deepcopy(model).to("meta").eval(), torch.empty_like(example[:1], device="meta"), names)
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        modes = {m: m.training for m in model.modules()}  # each module's own mode, restored after
        model.eval()
        try:
            with torch.no_grad():
                order = _trace(model, example[:1], names)
        finally:
            for module, training in modes.items():
                module.training = training
    return order + ([n for n in names if n not in order] if uncalled else [])


def _trace(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> list[str]:
    modules = dict(model.named_modules())
    order: list[str] = []
    hooks = [modules[n].register_forward_pre_hook(
        lambda _m, _i, n=n: order.append(n) if n not in order else None) for n in names]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return order
