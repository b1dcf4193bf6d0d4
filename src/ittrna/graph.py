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
- :func:`fold_batchnorm`: a copy of the model with every BatchNorm that directly follows a crossbar layer
  folded into that layer's weight and bias (the BatchNorm becomes ``nn.Identity``), each fold checked on an
  example; :func:`fold_structure` rebuilds a folded model's layout for its checkpoint's weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ittrna.errors import InputError

__all__ = ["FilterFn", "dataflow_order", "digital_modules", "fold_batchnorm", "fold_structure", "mapped_modules"]

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


# --- BatchNorm folding ------------------------------------------------------------------------------------
_BATCHNORM = nn.modules.batchnorm._BatchNorm
"""BatchNorm1d/2d/3d (and SyncBatchNorm): the layers a fold removes."""

FOLD_TOLERANCE = 1e-4
"""Largest change of the model's output a fold may make, relative to the output's largest magnitude on the
example (float32 arithmetic changes it by about 1e-6)."""


def _batchnorm_candidates(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(layer, BatchNorm) pairs where one forward pass (eval mode, no gradients) feeds a crossbar layer's
    output, unchanged, straight into a BatchNorm: each of the two called once, the BatchNorm with running
    statistics and as many features as the layer has outputs."""
    modules = dict(model.named_modules())
    produced: dict[int, tuple[str, torch.Tensor, int]] = {}  # id(output) -> (layer, output kept alive, version)
    calls: dict[str, int] = {}
    fed: list[tuple[str, str]] = []

    def after_layer(_m: nn.Module, _i: object, out: object, n: str) -> None:
        calls[n] = calls.get(n, 0) + 1
        if isinstance(out, torch.Tensor):
            produced[id(out)] = (n, out, out._version)

    def before_bn(_m: nn.Module, args: tuple[object, ...], n: str) -> None:
        calls[n] = calls.get(n, 0) + 1
        x = args[0] if args else None
        # the very tensor (every output is kept alive in ``produced``, so an id is never reused), unchanged in place
        hit = produced.get(id(x)) if isinstance(x, torch.Tensor) else None
        if hit is not None and isinstance(x, torch.Tensor) and x._version == hit[2]:
            fed.append((hit[0], n))

    hooks = []
    for n, m in modules.items():
        if isinstance(m, MAPPED):
            hooks.append(m.register_forward_hook(lambda m, i, o, n=n: after_layer(m, i, o, n)))
        elif isinstance(m, _BATCHNORM):
            hooks.append(m.register_forward_pre_hook(lambda m, a, n=n: before_bn(m, a, n)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for layer, bn in fed:
        b = modules[bn]
        assert isinstance(b, _BATCHNORM)
        channels = modules[layer].weight.shape[0]
        if (calls.get(layer) == 1 and calls.get(bn) == 1 and b.running_mean is not None
                and b.running_var is not None and b.num_features == channels):
            out.append((layer, bn))
    return out


def fold_structure(model: nn.Module, pairs: Sequence[Sequence[str]]) -> nn.Module:
    """Give ``model`` (in place) the layout of its folded form: each pair's BatchNorm replaced by
    ``nn.Identity`` and its layer given a bias where it had none (zeros; the folded weights then load into it).

    Raises:
        InputError: a pair that is not (crossbar layer, BatchNorm) of this model, or a module named twice.
    """
    modules = dict(model.named_modules())
    seen: set[str] = set()
    for pair in pairs:
        if len(pair) != 2:
            raise InputError(f"folded pair {list(pair)!r} is invalid; accepted [layer, batchnorm]")
        layer, bn = pair
        if layer in seen or bn in seen:
            raise InputError(f"folded pair [{layer!r}, {bn!r}] names a module already folded")
        seen.update((layer, bn))
        if not isinstance(modules.get(layer), MAPPED):
            raise InputError(f"folded layer {layer!r} is not a Linear/Conv1d/Conv2d of the model")
        if not isinstance(modules.get(bn), _BATCHNORM):
            raise InputError(f"folded BatchNorm {bn!r} is not a BatchNorm of the model")
        m = modules[layer]
        if getattr(m, "bias", None) is None:
            w = m.weight
            m.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
        parent_name, _, child = bn.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, nn.Identity())
    return model


def _fold_one(model: nn.Module, layer: str, bn: str) -> None:
    """Fold BatchNorm ``bn`` (eval statistics) into ``layer``, in place: W' = W·s, b' = (b - μ)·s + β with
    s = γ / √(var + ε) per output channel."""
    modules = dict(model.named_modules())
    m, b = modules[layer], modules[bn]
    assert isinstance(b, _BATCHNORM) and b.running_var is not None
    assert b.running_mean is not None
    with torch.no_grad():
        w: torch.Tensor = m.weight  # (N, K...) output channels first
        var, mean = b.running_var.to(torch.float64), b.running_mean.to(torch.float64)
        gamma = b.weight.to(torch.float64) if b.weight is not None else torch.ones_like(var)
        beta = b.bias.to(torch.float64) if b.bias is not None else torch.zeros_like(var)
        s = gamma / torch.sqrt(var + b.eps)  # (N,)
        bias = m.bias.to(torch.float64) if getattr(m, "bias", None) is not None else torch.zeros_like(var)
        new_w = (w.to(torch.float64) * s.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
        new_b = ((bias - mean) * s + beta).to(w.dtype)
    fold_structure(model, [(layer, bn)])
    with torch.no_grad():
        m.weight.copy_(new_w)
        m.bias.copy_(new_b)


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, list[tuple[str, str]],
                                                                       list[tuple[str, str, str]]]:
    """A copy of ``model`` with its BatchNorm layers folded into the crossbar layers that feed them.

    A BatchNorm is folded where one forward pass on ``example`` feeds it a ``Linear``/``Conv1d``/``Conv2d``
    output directly (each called once); the layer's weight and bias absorb the BatchNorm's eval-mode affine
    map and the BatchNorm becomes ``nn.Identity``, so the chip holds the folded weights and nothing of the
    BatchNorm stays digital. Each fold is kept only if the model's output on ``example`` stays within
    :data:`FOLD_TOLERANCE` (a layer whose output is also used elsewhere, e.g. by a residual addition before the
    BatchNorm, would change: that BatchNorm stays). The model itself is not changed.

    Args:
        model: any network with BatchNorm layers (its running statistics are what is folded).
        example: input batch (N, *in_shape), real data or not; a few images are enough.

    Returns:
        (folded copy in eval mode, the folded (layer, BatchNorm) pairs in data-flow order, the BatchNorm layers
        left as they are as (BatchNorm, layer before it or "", why)).
    """
    base = copy.deepcopy(model).eval()
    with torch.no_grad():
        want = base(example)
    scale = float(want.abs().max()) if want.numel() else 0.0
    folded = copy.deepcopy(base)
    pairs = _batchnorm_candidates(folded, example)
    done: list[tuple[str, str]] = []
    left: list[tuple[str, str, str]] = []
    for layer, bn in pairs:
        trial = copy.deepcopy(folded)
        _fold_one(trial, layer, bn)
        with torch.no_grad():
            got = trial(example)
        err = float((got - want).abs().max()) if got.shape == want.shape else math.inf
        if err <= FOLD_TOLERANCE * max(scale, 1e-12):
            folded, done = trial, [*done, (layer, bn)]
        else:
            left.append((bn, layer, f"folding it changes the output by {err:.3g} (the layer's output is used "
                                    "elsewhere too)"))
    paired = {bn for _, bn in pairs}
    for n, m in base.named_modules():
        if isinstance(m, _BATCHNORM) and n not in paired:
            left.append((n, "", "not fed directly by one crossbar layer called once (or no running statistics)"))
    return folded.eval(), done, left
