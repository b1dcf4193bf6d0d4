"""The model registry: :class:`ModelSpec`, :data:`MODELS` (open: :func:`register_model`) and :func:`build`
(deterministic initialisation from an explicit ``torch.Generator``, refused before allocation when the
shape does not fit or the model would not fit in memory)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ittrna import registry as _registry
from ittrna._validate import check_memory, check_seed
from ittrna.errors import InputError, UnknownNameError
from ittrna.models.definitions import Definition, is_definition, parse_definition
from ittrna.registry import Registry

__all__ = ["MAX_CLASSES", "MAX_IN_SIDE", "MODELS", "ModelSpec", "as_definition", "build", "check_shape",
           "register_model"]

MAX_IN_SIDE = 65536
"""Largest accepted checkpoint input dimension (channels, height, width)."""

MAX_CLASSES = 1_000_000
"""Largest accepted number of classes in a checkpoint."""


@dataclass(frozen=True)
class ModelSpec:
    """A registered reference network."""

    name: str
    description: str
    factory: Callable[[tuple[int, int, int], int], nn.Module]


MODELS: Registry[ModelSpec] = _registry.MODELS
"""Reference networks by name: the open registry of :mod:`ittrna.registry` (:func:`register_model` adds one)."""


def register_model(spec: ModelSpec, *, _home: str | None = None) -> ModelSpec:
    """Add a model definition to :data:`MODELS` under ``spec.name`` (a name may be registered once)."""
    return MODELS.register(spec.name, spec, home=_home)


def _spec(name: object) -> ModelSpec:
    if not isinstance(name, str) or name not in MODELS:
        raise UnknownNameError(f"unknown model {name!r}; accepted one of {sorted(MODELS)}")
    return MODELS[name]


def check_shape(name: str | Definition, in_shape: object, num_classes: object) -> tuple[int, int, int]:
    """(C, H, W) after checking that ``name`` (a zoo name or a definition) builds for it on the meta device and
    fits in memory."""
    if (not isinstance(in_shape, (tuple, list)) or len(in_shape) != 3
            or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_IN_SIDE for d in in_shape)):
        raise InputError(f"in_shape = {in_shape!r} is invalid; accepted 3 integers (C, H, W) in [1, {MAX_IN_SIDE}]")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
        raise InputError(f"num_classes = {num_classes!r} is invalid; accepted an integer in [1, {MAX_CLASSES}]")
    shape = (int(in_shape[0]), int(in_shape[1]), int(in_shape[2]))
    try:
        with torch.device("meta"):
            probe = (name.build(shape, num_classes) if isinstance(name, Definition)
                     else MODELS[name].factory(shape, num_classes))
        params = sum(p.numel() for p in probe.parameters())
        check_memory(params * 4 * 3, f"model {_label(name)} with in_shape {list(shape)} ({params:.3g} parameters)")
        try:
            out = probe.eval()(torch.empty(1, *shape, device="meta"))  # eval: BatchNorm takes one 1x1 sample
        except NotImplementedError:  # an operation without a meta kernel (a user's model): one real pass
            probe = name.build(shape, num_classes) if isinstance(name, Definition) else probe
            with torch.no_grad():
                out = probe.eval()(torch.zeros(1, *shape))
    except InputError:
        raise  # the definition's own one-line error (not found, changed, not callable, bad arguments)
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise InputError(f"model {_label(name)} cannot take in_shape {list(shape)}: {first}") from None
    if tuple(out.shape) != (1, num_classes):
        raise InputError(f"model {_label(name)} with in_shape {list(shape)} gives outputs {tuple(out.shape)[1:]}; "
                         f"expected ({num_classes},)")
    return shape


def _label(name: str | Definition) -> str:
    return name.name if isinstance(name, Definition) else repr(name)


def build(
    name: str | Definition, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, *, seed: int = 0,
    args: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a registered model, or a user's own definition, initialised deterministically from ``seed``.

    A zoo model's weights use PyTorch's default (Kaiming-uniform) scheme, drawn from a private
    ``torch.Generator``. A definition (``FILE.py:FUNCTION``, ``module:FUNCTION`` or a
    :class:`~ittrna.models.definitions.Definition`, with keyword arguments ``args``) initialises itself, with
    the global random state forked and seeded from ``seed``.

    The model is first built on the ``meta`` device (no memory) and run once there, so a shape that does not
    fit the architecture, or a model too large for the available memory, is refused before allocation.

    Raises:
        UnknownNameError: unknown model name (a ``KeyError``; the message lists the accepted names).
        InputError: ``in_shape``, ``num_classes`` or ``seed`` invalid for this model.
        ResourceError: the model would not fit in the available memory.
    """
    check_seed(seed)
    defn = as_definition(name, args)
    if defn is not None:
        shape = check_shape(defn, in_shape, num_classes)
        return defn.build(shape, num_classes, seed=seed)
    if args:
        raise InputError(f"model {name!r} is a zoo model; its arguments are fixed (accepted no model arguments)")
    assert isinstance(name, str)
    spec = _spec(name)
    shape = check_shape(name, in_shape, num_classes)
    model = spec.factory(shape, num_classes)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=gen)
                if module.bias is not None:
                    bound = 1.0 / math.sqrt(module.weight[0].numel())
                    nn.init.uniform_(module.bias, -bound, bound, generator=gen)
    return model


def as_definition(name: object, args: dict[str, Any] | None = None) -> Definition | None:
    """The user definition ``name`` stands for (None for a zoo name)."""
    if isinstance(name, Definition):
        return name
    if isinstance(name, str) and name not in MODELS and is_definition(name):
        return parse_definition(name, args)
    return None
