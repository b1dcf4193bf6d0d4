"""Programming: the only writer of a chip's cell state (targets, programming noise, wear) and write counts.

:func:`program` writes target conductances: each changed target is one write *issued* (all a host sees);
stuck cells ignore it, healthy ones *perform* it (wear, fresh programming noise drawn from the stream of
the chip's ``write_epoch``). :func:`program_weights` maps a weight through the chip's converter (setting the
layer's scale and, through :mod:`ittrna.chip.readout`, its layout first); :func:`program_deployment`
programs a method's :class:`~ittrna.host.Deployment` (layouts, scales, explicit targets, registers).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ittrna.chip import readout
from ittrna.chip.state import ChipState, _derive_seed
from ittrna.device import HEALTHY, lognormal_factor_log, programming, quantize_levels, wear_out
from ittrna.errors import InputError
from ittrna.host import Deployment
from ittrna.mapping import LayerLayout, groups_of, to_physical, weight_scale, weight_to_matrix

__all__ = ["check_model", "count_issued", "count_rewrites", "program", "program_deployment", "program_model",
           "program_weights", "rewrite", "weight_targets"]


def program(chip: ChipState, name: str, targets: dict[str, torch.Tensor], *, count_wear: bool = True,
            rewrite: dict[str, torch.Tensor] | None = None) -> int:
    """Write target conductances (siemens) into a layer's arrays (see :meth:`Chip.program
    <ittrna.chip.Chip.program>`); returns the cell writes issued. ``rewrite``: per array a bool mask of cells
    written again even where their target is unchanged (a refresh: fresh programming noise, age 0)."""
    layer = chip.layer(name)
    cfg = chip.config
    gen = torch.Generator().manual_seed(_derive_seed(chip.seed, 0x50524F47, chip.write_epoch))
    chip.write_epoch += 1
    total = 0
    for aname, arr in layer.arrays.items():
        if aname not in targets:
            continue
        t = targets[aname].detach().to(device=arr.g.device, dtype=arr.g.dtype)
        if t.shape != arr.g.shape:
            raise InputError(f"layer {name!r} array {aname!r}: target shape {tuple(t.shape)} "
                             f"!= array shape {tuple(arr.g.shape)}")
        t = quantize_levels(t, cfg.cell)
        issued = t != arr.g  # (rows, cols): the target changes
        if rewrite is not None and aname in rewrite:
            issued = issued | _mask(rewrite[aname], arr.g, name, aname)
        write = issued & (arr.fault == HEALTHY)  # performed: stuck cells ignore the write
        arr.g = t  # the programmed target (a stuck cell reads its stuck state whatever it is)
        if cfg.variation.program_noise > 0:
            noise = lognormal_factor_log(tuple(arr.g.shape), cfg.variation.program_noise, gen,
                                         device=arr.g.device)
            arr.eps = torch.where(write, noise, arr.eps)
        if cfg.program_error.model != "none":  # drawn after the lognormal noise: that stream is unchanged
            assert arr.delta is not None
            delta = programming.sample_delta(t, cfg.program_error, cfg.cell, gen)
            arr.delta = torch.where(write, delta, arr.delta)
        arr.written_at = arr.written_at.masked_fill(write, chip.now)  # each performed write: the chip's clock
        if count_wear:
            arr.writes = arr.writes + write.to(arr.writes.dtype)
            arr.fault = wear_out(arr.writes, arr.fault, cfg.endurance)
        total += int(issued.sum())
        chip.writes_performed += int(write.sum())
    layer.version += 1
    layer.drift_ref = None  # a programming makes the drift compensation's reference stale
    chip.writes_issued += total
    return total


def count_rewrites(chip: ChipState, name: str, cells: dict[str, torch.Tensor]) -> int:
    """Writes :func:`rewrite` would issue (one per masked cell), the masks checked (no state change)."""
    layer = chip.layer(name)
    total = 0
    for aname, mask in cells.items():
        if aname not in layer.arrays:
            raise InputError(f"layer {name!r} has no array {aname!r}; it holds {list(layer.arrays)}")
        total += int(_mask(mask, layer.arrays[aname].g, name, aname).sum())
    return total


def rewrite(chip: ChipState, name: str, cells: dict[str, torch.Tensor], *, count_wear: bool = True) -> int:
    """Write the masked cells of a layer again with the targets they hold (a refresh, e.g. after relaxation:
    each is one write issued, performed by healthy cells with fresh programming noise at the chip's clock);
    returns the writes issued."""
    layer = chip.layer(name)
    count_rewrites(chip, name, cells)  # all checked before the first write
    return program(chip, name, {a: layer.arrays[a].g for a in cells}, count_wear=count_wear, rewrite=cells)


def _mask(mask: torch.Tensor, like: torch.Tensor, name: str, aname: str) -> torch.Tensor:
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(like.shape):
        raise InputError(f"layer {name!r} array {aname!r}: a rewrite mask must be bool of shape {tuple(like.shape)}, "
                         f"not {mask.dtype} {tuple(mask.shape)}")
    return mask.to(like.device)


def count_issued(chip: ChipState, name: str, targets: dict[str, torch.Tensor]) -> int:
    """Writes :func:`program` would issue for ``targets`` (no state change): changed quantised targets."""
    layer = chip.layer(name)
    total = 0
    for aname, arr in layer.arrays.items():
        if aname in targets:
            t = targets[aname].to(device=arr.g.device, dtype=arr.g.dtype)
            if t.shape != arr.g.shape:
                raise InputError(f"layer {name!r} array {aname!r}: target shape {tuple(t.shape)} "
                                 f"!= array shape {tuple(arr.g.shape)}")
            total += int((quantize_levels(t, chip.config.cell) != arr.g).sum())
    return total


def weight_targets(chip: ChipState, name: str, weight: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
    """Target conductances the chip's converter gives ``weight`` at ``scale`` under the layer's layout."""
    layer = chip.layer(name)
    matrix = weight_to_matrix(weight.detach()).to(torch.float32)
    physical = to_physical(matrix, layer.grid, layer.get_layout())  # (Kph, Np)
    return chip.converter.to_conductance(physical, scale, chip.config.cell, layer.grid)


def program_weights(
    chip: ChipState,
    name: str,
    weight: torch.Tensor,
    *,
    scale: float | None = None,
    layout: LayerLayout | None = None,
    targets: dict[str, torch.Tensor] | None = None,
    count_wear: bool | None = None,
) -> int:
    """Map a weight tensor to conductances with the chip's converter and program it (see
    :meth:`Chip.program_weights <ittrna.chip.Chip.program_weights>`); returns the cell writes issued."""
    layer = chip.layer(name)
    if tuple(weight.shape) != layer.weight_shape:
        raise InputError(
            f"layer {name!r}: weight shape {tuple(weight.shape)} does not match the chip's {layer.weight_shape}"
        )
    first = layer.scale == 0.0
    if layout is not None:
        readout.install_layout(chip, name, layout)
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise InputError(f"layer {name!r}: scale = {scale!r} is invalid; accepted a finite number > 0")
    layer.scale = float(scale) if scale is not None else weight_scale(weight, chip.config.mapping.clip_percentile)
    if targets is None:
        targets = weight_targets(chip, name, weight, layer.scale)
    if count_wear is None:
        count_wear = chip.config.endurance.count_initial_programming if first else True
    return program(chip, name, targets, count_wear=count_wear)


def check_model(chip: ChipState, model: nn.Module) -> None:
    """Raise InputError unless ``model`` has every chip layer with the same weight shape."""
    modules = dict(model.named_modules())
    for name, layer in chip.layers.items():
        module = modules.get(name)
        if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise InputError(f"chip layer {name!r} has no matching weight layer in the model")
        shape = tuple(module.weight.shape)
        if shape != layer.weight_shape:
            raise InputError(
                f"chip layer {name!r} was made for weight shape {layer.weight_shape}, model has {shape}"
            )
        if groups_of(module) != layer.grid.groups:  # Conv2d(1, 8, 3) and Conv2d(8, 8, 3, groups=8): one shape
            raise InputError(f"chip layer {name!r} was made for groups = {layer.grid.groups}, model has "
                             f"groups = {groups_of(module)}")


def program_model(chip: ChipState, model: nn.Module) -> int:
    """Program every chip layer from the same-named layer of ``model``; returns total writes issued."""
    check_model(chip, model)
    modules = dict(model.named_modules())
    total = 0
    for n in chip.layers:
        weight = modules[n].weight
        assert isinstance(weight, torch.Tensor)
        total += program_weights(chip, n, weight)
    return total


def program_deployment(chip: ChipState, deployment: Deployment) -> int:
    """Program a method's :class:`~ittrna.host.Deployment`: per layer its layout, scale and either its
    explicit targets or its weight through the converter, then its registers. Returns total writes issued."""
    total = 0
    _check_targets(chip, deployment)
    for name, layer in chip.layers.items():
        key = f"{name}.weight"
        if key not in deployment.state_dict:
            raise InputError(f"deployment has no weight for chip layer {name!r}")
        weight = deployment.state_dict[key]
        if tuple(weight.shape) != layer.weight_shape:
            raise InputError(f"deployment weight {key!r} has shape {tuple(weight.shape)}, chip layer "
                             f"{name!r} holds {layer.weight_shape}")
        layout = deployment.layouts.get(name) or LayerLayout.identity(layer.grid)
        total += program_weights(chip, name, weight, scale=deployment.scales.get(name), layout=layout,
                                 targets=deployment.targets.get(name))
        reg = deployment.registers.get(name)
        readout.set_registers(chip, name, reg["gain"] if reg else None, reg["offset"] if reg else None)
    return total


def _check_targets(chip: ChipState, deployment: Deployment) -> None:
    """A deployment's explicit targets cover every array of every layer or none, and lie in the cells'
    range [Gmin, Gmax] (a method's targets always do; a tuned file with others is damaged or forged)."""
    if not deployment.targets:
        return
    cell = chip.config.cell
    lo, hi = cell.g_min, cell.g_max
    tol = 1e-6 * hi
    for name, layer in chip.layers.items():
        tg = deployment.targets.get(name)
        if tg is None:
            raise InputError(f"deployment has targets for layers {sorted(deployment.targets)} but none for chip "
                             f"layer {name!r}; accepted targets for every layer or for none")
        missing = sorted(set(layer.arrays) - set(tg))
        unknown = sorted(set(tg) - set(layer.arrays))
        if missing or unknown:
            raise InputError(f"deployment targets of layer {name!r} name arrays {sorted(tg)}; the chip layer "
                             f"holds {sorted(layer.arrays)}")
        for aname, t in tg.items():
            t64 = t.detach().double()
            if t64.numel() and (float(t64.min()) < lo - tol or float(t64.max()) > hi + tol):
                raise InputError(f"deployment targets of layer {name!r} array {aname!r} span "
                                 f"[{float(t64.min()):.3g}, {float(t64.max()):.3g}] S; accepted conductances "
                                 f"in [Gmin, Gmax] = [{lo:.3g}, {hi:.3g}] S")
