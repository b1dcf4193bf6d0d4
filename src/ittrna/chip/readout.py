"""What the chip presents: conductances, effective matrices and weights, and the per-layer periphery.

The periphery of a layer is digital state beside its cells: the layout (row routing, column polarity), the
calibrated ADC full scale per tile (``adc_fs``, valid at the layer ``version`` it was made at) and the
per-column gain/offset registers. This module is its only writer; everything else (``ittrna.nn``,
``ittrna.session``, the evaluator) changes it through the :class:`~ittrna.chip.Chip` methods defined here:
:func:`set_layout`, :func:`set_registers`, :func:`calibrate_adc`, :func:`reset_adc`.

Reads: :func:`conductances` / :func:`effective_matrix` / :func:`effective_weight` read the cells afresh
(with ``read_noise``, one draw from the chip's read-noise stream, :func:`restart_reads`), each healthy cell at
its age on the chip's clock (relaxation, :mod:`ittrna.device.relaxation`); with wire resistance the matrix
is that of the tiles' column currents under IR drop (:mod:`ittrna.device.ir_drop`). :func:`read_weight` is
the weight a deployed layer computes with: one fresh noisy read per call when the chip has read noise, else
one read cached until the layer is reprogrammed or the clock moves (so an ideal chip costs one
``F.linear``/``F.conv2d`` per layer per forward pass).
"""

from __future__ import annotations

import torch

from ittrna.chip.state import ChipState, _read_stream, relaxation_draw
from ittrna.device import STUCK_OFF, STUCK_ON, lognormal_factor_log
from ittrna.device.ir_drop import transfer_tiles
from ittrna.device.relaxation import check_time, relax_healthy
from ittrna.errors import InputError
from ittrna.mapping import LayerLayout, adc_full_scale, quantize_signed, tile_partials, to_logical

__all__ = [
    "adc_calibration",
    "calibrate_adc",
    "check_registers",
    "conductances",
    "drift_factor",
    "effective_matrix",
    "effective_weight",
    "forget_reads",
    "move_periphery",
    "read_weight",
    "registers",
    "reset_adc",
    "restart_reads",
    "set_layout",
    "set_registers",
    "wait",
]


# --- reads -------------------------------------------------------------------------------------------------
def restart_reads(chip: ChipState) -> None:
    """Restart the read-noise stream (as after fabrication), so that a measurement repeated on the same chip
    state draws the same read noise (evaluations are reproducible)."""
    chip._read_gen = _read_stream(chip.seed)


def conductances(chip: ChipState, name: str, *, read_noise: bool = False, used_only: bool = False
                 ) -> dict[str, torch.Tensor]:
    """Conductances (siemens) the layer's arrays present; with ``read_noise`` a fresh read-noise draw.

    ``used_only`` with the identity layout (and one column group) reads only the corner of each array that
    holds weights (the rest is padding), the same values as the full read's corner."""
    layer = chip.layer(name)
    cfg = chip.config
    sigma = cfg.variation.read_noise
    region = None
    if used_only and layer.grid.spare == 0 and layer.grid.groups == 1 and layer.get_layout().is_identity(layer.grid):
        region = (layer.grid.k, layer.grid.n)
    relaxing = cfg.relaxation.active
    out = {}
    for aname, arr in layer.arrays.items():
        noise = (lognormal_factor_log(tuple(arr.g.shape), sigma, chip._read_gen, device=arr.g.device)
                 if read_noise and sigma > 0 else None)
        if not relaxing:
            out[aname] = arr.conductance(cfg, noise, region)
            continue
        sl = (slice(0, region[0]), slice(0, region[1])) if region is not None else (slice(None), slice(None))
        g0 = arr.conductance(cfg, None, region)  # right after each cell's write
        age = (chip.now - arr.written_at[sl]).clamp(min=0.0)  # (rows, cols) seconds
        fault = arr.fault[sl]
        g = relax_healthy(g0, arr.g[sl], age, relaxation_draw(chip, name, aname)[sl], fault, cfg.relaxation,
                          cfg.cell)
        if noise is not None:  # the read's own noise on top, stuck cells exact as without relaxation
            g = g * torch.exp(noise[sl])
            g = g.masked_fill(fault == STUCK_OFF, cfg.cell.g_min).masked_fill(fault == STUCK_ON, cfg.cell.g_max)
        out[aname] = g
    return out


def effective_matrix(chip: ChipState, name: str, *, read_noise: bool = False) -> torch.Tensor:
    """(K, N) matrix the layer really computes (weight units)."""
    layer = chip.layer(name)
    wires = chip.config.wires
    if wires.r_wire == 0:
        g = conductances(chip, name, read_noise=read_noise, used_only=True)
    else:  # IR drop: every cell of a tile loads its wires, padding included; each tile's transfer matrix
        g = conductances(chip, name, read_noise=read_noise)
        tiles = chip.converter.array_tiles(layer.grid)
        g = {a: transfer_tiles(t, tiles[a], wires.r_wire, wires.solver) for a, t in g.items()}
    physical = chip.converter.to_matrix(g, layer.scale, chip.config.cell, layer.grid)  # (Kph, Np)
    return to_logical(physical, layer.grid, layer.get_layout())


def effective_weight(chip: ChipState, name: str, *, read_noise: bool = False) -> torch.Tensor:
    """The layer's effective weight in its own shape (``Linear``: (out, in); ``Conv2d``: OIHW)."""
    layer = chip.layer(name)
    return effective_matrix(chip, name, read_noise=read_noise).t().reshape(layer.weight_shape).contiguous()


def read_weight(chip: ChipState, name: str) -> torch.Tensor:
    """The weight a deployed layer computes with now: with read noise a fresh draw per call, else the
    effective weight read once and kept until the layer is reprogrammed, its layout changes or the clock
    moves; with global drift compensation, scaled by the layer's drift factor (:func:`drift_factor`). The
    tensor is the chip's own: read it, never modify it."""
    layer = chip.layer(name)
    if chip.config.variation.read_noise > 0:
        return _compensated(chip, name, effective_weight(chip, name, read_noise=True))
    stamp = (layer.version, chip.now)  # a read holds until the layer is reprogrammed or the clock moves
    cached = chip._reads.get(name)
    if cached is None or cached[0] != stamp:
        cached = (stamp, _compensated(chip, name, effective_weight(chip, name)))
        chip._reads[name] = cached
    return cached[1]


def _reference_read(chip: ChipState, name: str) -> float:
    """The global drift compensation's reference: the summed magnitude of the layer's column outputs for an
    all-ones input, sum_j |sum_i M[i, j]| (weight units), from a noiseless read of the cells as they are now."""
    return float(effective_matrix(chip, name).sum(dim=0).abs().sum())


def take_drift_references(chip: ChipState) -> None:
    """Take the reference read of every layer programmed since its last one (global drift compensation only):
    called before the clock moves, so a reference is always the layer right after its programming."""
    if chip.config.relaxation.compensation != "global":
        return
    for layer in chip.layers.values():
        if layer.scale != 0.0 and (layer.drift_ref is None or layer.drift_ref[0] != layer.version):
            layer.drift_ref = (layer.version, _reference_read(chip, layer.name))


def drift_factor(chip: ChipState, name: str) -> float:
    """The factor global drift compensation applies to a layer's outputs now: its reference read right after
    programming over the same read now (1 without compensation, at the time of programming, or for a layer
    whose read is 0)."""
    if chip.config.relaxation.compensation != "global":
        return 1.0
    take_drift_references(chip)
    layer = chip.layer(name)
    if layer.drift_ref is None:  # never programmed
        return 1.0
    now = _reference_read(chip, name)
    return layer.drift_ref[1] / now if now > 0 else 1.0


def _compensated(chip: ChipState, name: str, weight: torch.Tensor) -> torch.Tensor:
    factor = drift_factor(chip, name)
    return weight if factor == 1.0 else weight * factor


def wait(chip: ChipState, seconds: float) -> None:
    """Advance the chip's clock by ``seconds`` (in [0, 10 years]): every cell ages; nothing is written and the
    periphery (layouts, ADC calibration, registers) stays as it is, as on a chip left powered between uses."""
    seconds = check_time(seconds, "wait")
    check_time(chip.now + seconds, "the chip's clock after the wait")
    take_drift_references(chip)  # the compensation's references are those right after programming
    chip.now = chip.now + seconds


def forget_reads(chip: ChipState, name: str | None = None) -> None:
    """Drop the weights :func:`read_weight` keeps (of one layer, or all): the next call reads the cells again
    (a fresh deployment does this, so it reads the chip as it is)."""
    if name is None:
        chip._reads.clear()
    else:
        chip._reads.pop(chip.layer(name).name, None)


# --- layout ------------------------------------------------------------------------------------------------
def install_layout(chip: ChipState, name: str, layout: LayerLayout) -> None:
    """Check ``layout`` against the layer and set a private copy of it (no version change: the caller
    programs the layer next, see :func:`ittrna.chip.program.program_weights`)."""
    layer = chip.layer(name)
    layout.check(layer.grid, f"layer {name!r} layout")
    own = LayerLayout(layout.row_map.detach().clone(), layout.col_sign.detach().clone())  # never an alias
    layer.layout = own.to(layer.device())


def set_layout(chip: ChipState, name: str, layout: LayerLayout) -> None:
    """Change a layer's digital routing (no cell writes: the cells keep their conductances); the layer then
    reads anew (its ``version`` advances, so cached reads and the ADC calibration are renewed)."""
    install_layout(chip, name, layout)
    chip.layer(name).version += 1


# --- ADC calibration ---------------------------------------------------------------------------------------
def adc_calibration(chip: ChipState, name: str) -> torch.Tensor | None:
    """The layer's calibrated ADC full scale per tile (tiles along K, tiles along N), or None when it has
    none valid for its current programming (never calibrated, reset, or reprogrammed since)."""
    layer = chip.layer(name)
    if layer.adc_fs is None or layer.adc_version != layer.version:
        return None
    return layer.adc_fs


def calibrate_adc(chip: ChipState, name: str, inputs: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Calibrate the layer's ADCs on ``inputs`` (B, K) through ``matrix`` (K, N), the effective matrix these
    inputs meet (DAC-quantised first when the chip has DACs), and return the full scale per tile."""
    layer = chip.layer(name)
    m = chip.config.mapping
    x = quantize_signed(inputs, m.dac_bits, inputs.abs().amax(dim=1, keepdim=True)) if m.dac_bits else inputs
    layer.adc_fs = adc_full_scale(tile_partials(x, matrix, layer.grid), m.adc_percentile)
    layer.adc_version = layer.version
    return layer.adc_fs


def reset_adc(chip: ChipState, name: str | None = None) -> None:
    """Forget the ADC calibration of one layer (or of all): the next inputs calibrate it again."""
    for layer in ([chip.layer(name)] if name is not None else list(chip.layers.values())):
        layer.adc_fs = None


# --- registers ---------------------------------------------------------------------------------------------
def check_registers(name: str, n: int, gain: torch.Tensor, offset: torch.Tensor) -> None:
    """Raise InputError unless ``gain`` and ``offset`` are finite (n,) tensors within +/- 1e6 (the range
    a digital register holds)."""
    for what, t in (("gain", gain), ("offset", offset)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n,) or not t.is_floating_point():
            raise InputError(f"layer {name!r} {what} register must be a float tensor of shape ({n},)")
        if not bool(torch.isfinite(t).all()) or bool((t.abs() > 1e6).any()):
            raise InputError(f"layer {name!r} {what} register holds a value outside +/- 1e6 or not finite")


def set_registers(chip: ChipState, name: str, gain: torch.Tensor | None, offset: torch.Tensor | None) -> None:
    """Set (None: clear) a layer's per-column digital gain/offset registers; no cell is written."""
    layer = chip.layer(name)
    if gain is None or offset is None:
        layer.gain = layer.offset = None
        return
    check_registers(name, layer.grid.n, gain, offset)
    device = layer.device()
    layer.gain = gain.detach().to(device=device, dtype=torch.float32).clone()
    layer.offset = offset.detach().to(device=device, dtype=torch.float32).clone()


def registers(chip: ChipState, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The layer's (gain, offset) registers, each (N,) on the chip's device, or None when they are not set
    (gain 1, offset 0). The tensors are the chip's own: read them, never modify them."""
    layer = chip.layer(name)
    if layer.gain is None or layer.offset is None:
        return None
    return layer.gain, layer.offset


def move_periphery(chip: ChipState, device: torch.device | str) -> None:
    """Move every layer's layout, ADC calibration and registers to ``device`` (in place); cached reads are
    dropped (they are read again there)."""
    for layer in chip.layers.values():
        if layer.layout is not None:
            layer.layout = layer.layout.to(device)
        if layer.adc_fs is not None:
            layer.adc_fs = layer.adc_fs.to(device)
        if layer.gain is not None and layer.offset is not None:
            layer.gain, layer.offset = layer.gain.to(device), layer.offset.to(device)
    chip._reads.clear()
