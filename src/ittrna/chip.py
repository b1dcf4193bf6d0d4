"""A fabricated chip: per-layer crossbar tiles holding the true state of every cell.

Each mapped layer owns named cell arrays (``pos``/``neg`` for differential pairs, ``main``/``ref`` for the
offset scheme), and each array holds, per cell: its fault code, its device-to-device log factor theta, its
programmed target conductance, the programming-noise log factor of its last write, and its write count.

- :meth:`Chip.fabricate` draws faults and theta for a model's layers from one seed (bit-identical per seed).
  Each layer/array/quantity has its own random stream, so one seed is one die at every setting: with
  ``uniform`` faults a chip's faulty cells at rate 0.1 are among those at 0.2, and theta scales with sigma
  (common random numbers: sweeps compare settings on the same dies).
- :meth:`Chip.program` writes target conductances: each changed target is one write *issued* (all a host
  sees); stuck cells ignore it, healthy ones *perform* it (wear, fresh programming noise).
  :meth:`Chip.program_deployment` programs a method's :class:`~ittrna.host.Deployment` (layouts, scales,
  explicit targets); :meth:`Chip.write_stats` gives the evaluator-only wear figures.
- :meth:`Chip.effective_matrix` / :meth:`Chip.effective_weight` read what the chip really computes.
- :meth:`Chip.test` returns the :class:`~ittrna.host.MeasuredMap` a post-fabrication test would give (faults
  and theta, with configurable misses and measurement noise; no seed); methods see only that, accuracy is
  judged on the chip.
- ``.npz`` save/load with a JSON header, no pickle.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ittrna import boundary
from ittrna._io import load_npz, save_npz
from ittrna._validate import check_chip_archive, check_fabricate, check_seed
from ittrna.boundary import Guarded
from ittrna.config import ChipConfig, ConfigError, TestConfig
from ittrna.device import (
    HEALTHY,
    STUCK_OFF,
    STUCK_ON,
    lognormal_factor_log,
    quantize_levels,
    read_conductance,
    sample_faults,
    sample_theta,
    wear_out,
)
from ittrna.errors import FileFormatError, InputError
from ittrna.host import Deployment, MeasuredMap, design_config
from ittrna.mapping import (
    CONVERTERS,
    Converter,
    LayerLayout,
    TileGrid,
    mapped_modules,
    to_logical,
    to_physical,
    weight_scale,
    weight_to_matrix,
)

__all__ = ["CellArray", "Chip", "LayerTiles", "MeasuredMap"]

FORMAT_VERSION = 2
_READABLE_FORMATS = (1, 2)  # format 1 chips have no layouts (identity) and no issued-write count
_FIELDS = ("fault", "theta", "g", "eps", "writes")


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (stable across runs and platforms)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def _gen(seed: int, *parts: int) -> torch.Generator:
    """A CPU generator for one named random stream of a chip."""
    return torch.Generator().manual_seed(_derive_seed(seed, 0x464142, *parts))


@dataclass
class CellArray(Guarded):
    """True state of one physical cell array (rows x cols), all tensors of that shape."""

    fault: torch.Tensor
    """int8 codes: 0 healthy, 1 stuck_off (reads Gmin), 2 stuck_on (reads Gmax)."""
    theta: torch.Tensor
    """float32 device-to-device log factor, fixed at fabrication."""
    g: torch.Tensor
    """float32 programmed target conductance (siemens), after clamping and level quantisation."""
    eps: torch.Tensor
    """float32 programming-noise log factor drawn at the cell's last write."""
    writes: torch.Tensor
    """int64 writes the cell has received."""

    def conductance(self, chip_cfg: ChipConfig, read_log: torch.Tensor | None = None,
                    region: tuple[int, int] | None = None) -> torch.Tensor:
        """Conductance the cells present now (siemens), optionally with a read-noise log factor; ``region``
        (rows, cols) reads only that top-left corner (the rest being padding)."""
        sl = (slice(0, region[0]), slice(0, region[1])) if region is not None else (slice(None), slice(None))
        log = self.theta[sl]
        if chip_cfg.variation.program_noise > 0:  # eps is all zeros otherwise
            log = log + self.eps[sl]
        if read_log is not None:
            log = log + read_log[sl]
        return read_conductance(self.g[sl], self.fault[sl], log, chip_cfg.cell)

    def to(self, device: torch.device | str) -> CellArray:
        return CellArray(*(getattr(self, f).to(device) for f in _FIELDS))


@dataclass
class LayerTiles(Guarded):
    """The crossbar tiles that hold one layer."""

    name: str
    """Module name in the model (``named_modules`` path)."""
    kind: str
    """``linear`` or ``conv2d``."""
    weight_shape: tuple[int, ...]
    """Shape of the layer's weight tensor."""
    grid: TileGrid
    """Matrix size and tiling."""
    arrays: dict[str, CellArray]
    """Named cell arrays (converter-specific)."""
    scale: float = 0.0
    """Weight units per full conductance span; set when weights are programmed (0 = never programmed)."""
    version: int = 0
    """Incremented at every programming, so deployed layers know when to re-read."""
    layout: LayerLayout | None = None
    """Digital layout (row routing, column polarity); None until set = the identity layout."""
    adc_fs: torch.Tensor | None = None
    """Calibrated ADC full scale per tile (tiles along K, tiles along N), in weight units x input units;
    None = not calibrated (see :class:`~ittrna.config.MappingConfig` ``adc_bits``)."""
    adc_version: int = -1
    """``version`` the calibration was made at (a reprogrammed layer is calibrated again)."""
    gain: torch.Tensor | None = None
    """Digital per-column gain register (N,) applied to each output column; None = 1 (costs no writes)."""
    offset: torch.Tensor | None = None
    """Digital per-column offset register (N,) added after the gain, before the bias; None = 0."""

    def get_layout(self) -> LayerLayout:
        """The layer's layout (identity when none was set)."""
        if self.layout is None:
            self.layout = LayerLayout.identity(self.grid)
        return self.layout

    def shape_meta(self) -> dict[str, Any]:
        """What identifies the layer's geometry in file headers: kind, weight shape, matrix size."""
        return {"kind": self.kind, "weight_shape": list(self.weight_shape), "k": self.grid.k, "n": self.grid.n}


def _adc_calibration(path: str | Path, rec: dict[str, Any], grid: TileGrid) -> tuple[torch.Tensor | None, int]:
    """A layer record's ADC calibration (absent in older files): finite, > 0, one value per tile."""
    fs, version = rec.get("adc_fs"), rec.get("adc_version", -1)
    if fs is None:
        return None, -1
    try:
        t = torch.tensor(fs, dtype=torch.float32)
    except (TypeError, ValueError):
        raise FileFormatError(f"{path}: layer {rec['name']!r} field adc_fs is not a table of numbers") from None
    if tuple(t.shape) != grid.tiles or not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise FileFormatError(f"{path}: layer {rec['name']!r} field adc_fs must be {grid.tiles} finite values >= 0")
    if isinstance(version, bool) or not isinstance(version, int):
        raise FileFormatError(f"{path}: layer {rec['name']!r} field adc_version = {version!r}; accepted an integer")
    return t, version


def _registers(path: str | Path, rec: dict[str, Any], n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A layer record's per-column gain/offset registers (absent in older files): n finite values each."""
    out: list[torch.Tensor | None] = []
    for key in ("gain", "offset"):
        value = rec.get(key)
        if value is None:
            out.append(None)
            continue
        try:
            t = torch.tensor(value, dtype=torch.float32)
        except (TypeError, ValueError):
            raise FileFormatError(f"{path}: layer {rec['name']!r} field {key} is not a list of numbers") from None
        if tuple(t.shape) != (n,) or not bool(torch.isfinite(t).all()) or bool((t.abs() > 1e6).any()):
            raise FileFormatError(f"{path}: layer {rec['name']!r} field {key} must be {n} finite values within "
                                  "+/- 1e6")
        out.append(t)
    return out[0], out[1]


def check_registers(name: str, n: int, gain: torch.Tensor, offset: torch.Tensor) -> None:
    """Raise InputError unless ``gain`` and ``offset`` are finite (n,) tensors within +/- 1e6 (the range
    a digital register holds)."""
    for what, t in (("gain", gain), ("offset", offset)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n,) or not t.is_floating_point():
            raise InputError(f"layer {name!r} {what} register must be a float tensor of shape ({n},)")
        if not bool(torch.isfinite(t).all()) or bool((t.abs() > 1e6).any()):
            raise InputError(f"layer {name!r} {what} register holds a value outside +/- 1e6 or not finite")


class Chip(Guarded):
    """A simulated RRAM chip holding one model's layers. Build with :meth:`fabricate` or :meth:`load`."""

    def __init__(self, config: ChipConfig, seed: int, layers: dict[str, LayerTiles], write_epoch: int = 0,
                 writes_issued: int = 0, writes_performed: int = 0):
        self.config = config
        self.seed = seed
        self.layers = layers
        self.write_epoch = write_epoch
        """Number of programming operations so far (seeds each one's programming noise)."""
        self.writes_issued = writes_issued
        """Cell writes the host has asked for (every changed target, stuck cells included): the only write
        count a host sees. Writes *performed* are counted by :meth:`write_stats` (evaluator-only)."""
        self.writes_performed = writes_performed
        """Cell writes performed (healthy cells whose target changed), counted whether or not as wear."""
        self._read_gen = torch.Generator().manual_seed(_derive_seed(seed, 0x52454144))

    def restart_reads(self) -> None:
        """Restart the read-noise stream (as after fabrication), so that a measurement repeated on the same
        chip state draws the same read noise (evaluations are reproducible)."""
        self._read_gen = torch.Generator().manual_seed(_derive_seed(self.seed, 0x52454144))

    # --- construction ------------------------------------------------------------------------------------
    @classmethod
    def fabricate(
        cls,
        model: nn.Module,
        config: ChipConfig,
        seed: int,
        *,
        filter_fn: Callable[[nn.Module, str], bool] | None = None,
        device: torch.device | str | None = None,
    ) -> Chip:
        """Fabricate a chip sized for ``model``'s ``Linear``/``Conv2d`` layers (weights not yet written).

        Args:
            model: the network whose layer shapes size the chip.
            config: chip configuration.
            seed: fabrication seed; the same seed gives a bit-identical chip.
            filter_fn: ``(module, name) -> bool`` choosing which layers go on crossbars (default: all).
            device: where the cell state lives (draws are made on the CPU, so results match across devices).
        """
        boundary.check("Chip.fabricate (a true chip)")
        check_fabricate(model, config, seed, filter_fn)  # types, seed range, memory estimate
        conv = CONVERTERS[config.mapping.scheme]
        layers: dict[str, LayerTiles] = {}
        for li, (name, module) in enumerate(mapped_modules(model)):
            if filter_fn is not None and not filter_fn(module, name):
                continue
            weight = module.weight
            assert isinstance(weight, torch.Tensor)
            k, n = weight_to_matrix(weight).shape
            grid = TileGrid(k, n, config.mapping.rows, config.mapping.cols, config.mapping.spare_rows)
            arrays = {}
            tiles = conv.array_tiles(grid)
            for ai, (aname, shape) in enumerate(conv.array_shapes(grid).items()):
                # one stream per (layer, array, quantity): the same seed is the same die at every setting
                # (nested uniform fault sets across rates, theta scaling with sigma)
                fault = sample_faults(shape, tiles[aname], config.faults, _gen(seed, li, ai, 1))
                theta = sample_theta(shape, config.variation.sigma, _gen(seed, li, ai, 2))
                g = torch.full(shape, config.cell.g_min)
                arrays[aname] = CellArray(fault, theta, g, torch.zeros(shape), torch.zeros(shape, dtype=torch.int64))
            kind = "conv2d" if isinstance(module, nn.Conv2d) else "linear"
            layers[name] = LayerTiles(name, kind, tuple(weight.shape), grid, arrays)
        if not layers:
            raise ValueError("the model has no Linear/Conv2d layer to put on a chip")
        chip = cls(config, seed, layers)
        return chip.to(device) if device is not None else chip

    def to(self, device: torch.device | str) -> Chip:
        """Move the cell state to ``device`` (in place); returns self."""
        for layer in self.layers.values():
            layer.arrays = {k: a.to(device) for k, a in layer.arrays.items()}
            if layer.layout is not None:
                layer.layout = layer.layout.to(device)
            if layer.adc_fs is not None:
                layer.adc_fs = layer.adc_fs.to(device)
            if layer.gain is not None and layer.offset is not None:
                layer.gain, layer.offset = layer.gain.to(device), layer.offset.to(device)
        return self

    @property
    def converter(self) -> Converter:
        return CONVERTERS[self.config.mapping.scheme]

    def layer(self, name: str) -> LayerTiles:
        try:
            return self.layers[name]
        except KeyError:
            raise KeyError(f"chip has no layer {name!r}; it holds {list(self.layers)}") from None

    def __iter__(self) -> Iterator[LayerTiles]:
        return iter(self.layers.values())

    # --- programming -------------------------------------------------------------------------------------
    def program(self, name: str, targets: dict[str, torch.Tensor], *, count_wear: bool = True) -> int:
        """Write target conductances (siemens) into a layer's arrays.

        Targets are clamped to [Gmin, Gmax] and rounded to the cell levels. Every cell whose target changes
        is one write *issued* (the host cannot tell a stuck cell from a healthy one, so it pays for both); a
        stuck cell ignores it, so only healthy cells perform the write (counted as wear when
        ``count_wear``), draw fresh programming noise, and may wear out past their endurance.

        Returns:
            The number of cell writes issued (what a host sees; writes performed are in :meth:`write_stats`).
        """
        layer = self.layer(name)
        cfg = self.config
        gen = torch.Generator().manual_seed(_derive_seed(self.seed, 0x50524F47, self.write_epoch))
        self.write_epoch += 1
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
            write = issued & (arr.fault == HEALTHY)  # performed: stuck cells ignore the write
            arr.g = t  # the programmed target (a stuck cell reads its stuck state whatever it is)
            if cfg.variation.program_noise > 0:
                noise = lognormal_factor_log(tuple(arr.g.shape), cfg.variation.program_noise, gen,
                                             device=arr.g.device)
                arr.eps = torch.where(write, noise, arr.eps)
            if count_wear:
                arr.writes = arr.writes + write.to(arr.writes.dtype)
                arr.fault = wear_out(arr.writes, arr.fault, cfg.endurance)
            total += int(issued.sum())
            self.writes_performed += int(write.sum())
        layer.version += 1
        self.writes_issued += total
        return total

    def count_issued(self, name: str, targets: dict[str, torch.Tensor]) -> int:
        """Writes :meth:`program` would issue for ``targets`` (no state change): changed quantised targets."""
        layer = self.layer(name)
        total = 0
        for aname, arr in layer.arrays.items():
            if aname in targets:
                t = targets[aname].to(device=arr.g.device, dtype=arr.g.dtype)
                if t.shape != arr.g.shape:
                    raise InputError(f"layer {name!r} array {aname!r}: target shape {tuple(t.shape)} "
                                     f"!= array shape {tuple(arr.g.shape)}")
                total += int((quantize_levels(t, self.config.cell) != arr.g).sum())
        return total

    def weight_targets(self, name: str, weight: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
        """Target conductances the chip's converter gives ``weight`` at ``scale`` under the layer's layout."""
        layer = self.layer(name)
        matrix = weight_to_matrix(weight.detach()).to(torch.float32)
        physical = to_physical(matrix, layer.grid, layer.get_layout())  # (Kph, Np)
        return self.converter.to_conductance(physical, scale, self.config.cell, layer.grid)

    def set_registers(self, name: str, gain: torch.Tensor | None, offset: torch.Tensor | None) -> None:
        """Set (None: clear) a layer's per-column digital gain/offset registers; no cell is written."""
        layer = self.layer(name)
        if gain is None or offset is None:
            layer.gain = layer.offset = None
            return
        check_registers(name, layer.grid.n, gain, offset)
        device = layer.arrays[next(iter(layer.arrays))].g.device
        layer.gain = gain.detach().to(device=device, dtype=torch.float32).clone()
        layer.offset = offset.detach().to(device=device, dtype=torch.float32).clone()

    def program_weights(
        self,
        name: str,
        weight: torch.Tensor,
        *,
        scale: float | None = None,
        layout: LayerLayout | None = None,
        targets: dict[str, torch.Tensor] | None = None,
        count_wear: bool | None = None,
    ) -> int:
        """Map a weight tensor to conductances with the chip's converter and program it.

        Args:
            name: layer name.
            weight: tensor of the layer's weight shape.
            scale: weight scale s; default from ``mapping.clip_percentile`` of |w|.
            layout: digital layout to set first (costs no writes); default: keep the layer's.
            targets: explicit target conductances per array (physical shapes) instead of the converter's.
            count_wear: default ``endurance.count_initial_programming`` for a never-programmed layer, else True.

        Returns:
            Cell writes issued.
        """
        layer = self.layer(name)
        if tuple(weight.shape) != layer.weight_shape:
            raise ValueError(
                f"layer {name!r}: weight shape {tuple(weight.shape)} does not match the chip's {layer.weight_shape}"
            )
        first = layer.scale == 0.0
        if layout is not None:
            layout.check(layer.grid, f"layer {name!r} layout")
            own = LayerLayout(layout.row_map.detach().clone(), layout.col_sign.detach().clone())  # never an alias
            layer.layout = own.to(layer.arrays[next(iter(layer.arrays))].g.device)
        if scale is not None and not (math.isfinite(scale) and scale > 0):
            raise InputError(f"layer {name!r}: scale = {scale!r} is invalid; accepted a finite number > 0")
        layer.scale = float(scale) if scale is not None else weight_scale(weight, self.config.mapping.clip_percentile)
        if targets is None:
            targets = self.weight_targets(name, weight, layer.scale)
        if count_wear is None:
            count_wear = self.config.endurance.count_initial_programming if first else True
        return self.program(name, targets, count_wear=count_wear)

    def program_model(self, model: nn.Module) -> int:
        """Program every chip layer from the same-named layer of ``model``; returns total writes issued."""
        self.check_model(model)
        modules = dict(model.named_modules())
        return sum(self.program_weights(n, modules[n].weight) for n in self.layers)

    def program_deployment(self, deployment: Deployment) -> int:
        """Program a method's :class:`~ittrna.host.Deployment`: per layer its layout, scale and either its
        explicit targets or its weight through the converter. Returns total writes issued."""
        total = 0
        self._check_targets(deployment)
        for name, layer in self.layers.items():
            key = f"{name}.weight"
            if key not in deployment.state_dict:
                raise InputError(f"deployment has no weight for chip layer {name!r}")
            weight = deployment.state_dict[key]
            if tuple(weight.shape) != layer.weight_shape:
                raise InputError(f"deployment weight {key!r} has shape {tuple(weight.shape)}, chip layer "
                                 f"{name!r} holds {layer.weight_shape}")
            layout = deployment.layouts.get(name) or LayerLayout.identity(layer.grid)
            total += self.program_weights(name, weight, scale=deployment.scales.get(name), layout=layout,
                                          targets=deployment.targets.get(name))
            reg = deployment.registers.get(name)
            self.set_registers(name, reg["gain"] if reg else None, reg["offset"] if reg else None)
        return total

    def _check_targets(self, deployment: Deployment) -> None:
        """A deployment's explicit targets cover every array of every layer or none, and lie in the cells'
        range [Gmin, Gmax] (a method's targets always do; a tuned file with others is damaged or forged)."""
        if not deployment.targets:
            return
        cell = self.config.cell
        lo, hi = cell.g_min, cell.g_max
        tol = 1e-6 * hi
        for name, layer in self.layers.items():
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

    def write_stats(self) -> dict[str, Any]:
        """Evaluator-only wear figures: writes issued (host-visible) and performed (healthy cells whose target
        changed, counted as wear or not), and from the wear counters (the first programming counts only with
        ``endurance.count_initial_programming``): the largest count on one cell, the fraction of cells
        written and the cells worn out."""
        writes = torch.cat([a.writes.flatten() for layer in self for a in layer.arrays.values()])
        return {
            "writes_issued": self.writes_issued,
            "writes_performed": self.writes_performed,
            "max_writes_per_cell": int(writes.max()) if writes.numel() else 0,
            "fraction_cells_written": float((writes > 0).float().mean()) if writes.numel() else 0.0,
            "cells_worn_out": int((writes > self.config.endurance.endurance).sum()),
        }

    def check_model(self, model: nn.Module) -> None:
        """Raise ValueError unless ``model`` has every chip layer with the same weight shape."""
        modules = dict(model.named_modules())
        for name, layer in self.layers.items():
            module = modules.get(name)
            if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
                raise ValueError(f"chip layer {name!r} has no matching weight layer in the model")
            shape = tuple(module.weight.shape)
            if shape != layer.weight_shape:
                raise ValueError(
                    f"chip layer {name!r} was made for weight shape {layer.weight_shape}, model has {shape}"
                )

    # --- reading -----------------------------------------------------------------------------------------
    def conductances(self, name: str, *, read_noise: bool = False, used_only: bool = False
                     ) -> dict[str, torch.Tensor]:
        """Conductances (siemens) the layer's arrays present; with ``read_noise`` a fresh read-noise draw.

        ``used_only`` with the identity layout reads only the corner of each array that holds weights (the
        rest is padding), the same values as the full read's corner."""
        layer = self.layer(name)
        sigma = self.config.variation.read_noise
        region = None
        if used_only and layer.grid.spare == 0 and layer.get_layout().is_identity(layer.grid):
            region = (layer.grid.k, layer.grid.n)
        out = {}
        for aname, arr in layer.arrays.items():
            noise = (lognormal_factor_log(tuple(arr.g.shape), sigma, self._read_gen, device=arr.g.device)
                     if read_noise and sigma > 0 else None)
            out[aname] = arr.conductance(self.config, noise, region)
        return out

    def effective_matrix(self, name: str, *, read_noise: bool = False) -> torch.Tensor:
        """(K, N) matrix the layer really computes (weight units)."""
        layer = self.layer(name)
        g = self.conductances(name, read_noise=read_noise, used_only=True)
        physical = self.converter.to_matrix(g, layer.scale, self.config.cell, layer.grid)  # (Kph, Np)
        return to_logical(physical, layer.grid, layer.get_layout())

    def effective_weight(self, name: str, *, read_noise: bool = False) -> torch.Tensor:
        """The layer's effective weight in its own shape (``Linear``: (out, in); ``Conv2d``: OIHW)."""
        layer = self.layer(name)
        return self.effective_matrix(name, read_noise=read_noise).t().reshape(layer.weight_shape).contiguous()

    # --- test, statistics --------------------------------------------------------------------------------
    @property
    def chip_id(self) -> str:
        """Opaque identity shared by the chip and its measured maps (a salted hash of the seed, the fabricated
        config — the test's own settings excluded — and the layer geometry)."""
        import hashlib
        import json

        fabricated = {k: v for k, v in self.config.to_json_dict().items() if k != "test"}  # not the test's settings
        text = json.dumps({"salt": "ittrna-chip-id-v1", "seed": self.seed, "config": fabricated,
                           "layers": {n: layer.shape_meta() for n, layer in self.layers.items()}}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def test(self, seed: int = 0, test: TestConfig | None = None) -> MeasuredMap:
        """Post-fabrication test: the measured defect map (faults, theta) with the configured imperfections.

        Args:
            seed: seeds the test's own imperfections (which faults it misses, theta measurement error);
                accepted [0, 2**63 - 1].
            test: the test's imperfections, if not the chip config's own ``test`` section (the chip is not
                changed; the map's design states the test it came from).
        """
        boundary.check("Chip.test (the true chip)")
        seed = check_seed(seed, "test seed")
        if test is not None and not isinstance(test, TestConfig):
            raise InputError(f"test = {test!r}; accepted a TestConfig or None")
        tcfg = test if test is not None else self.config.test
        gen = torch.Generator().manual_seed(_derive_seed(self.seed, 0x54455354, seed))
        layers: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        meta: dict[str, dict[str, Any]] = {}
        for lname, layer in self.layers.items():
            layers[lname] = {}
            for aname, arr in layer.arrays.items():
                fault = arr.fault.cpu().clone()
                if tcfg.miss_rate > 0:
                    missed = torch.rand(fault.shape, generator=gen) < tcfg.miss_rate
                    fault = torch.where(missed, torch.zeros_like(fault), fault)
                theta = arr.theta.cpu().clone()
                if tcfg.theta_noise > 0:
                    theta = theta + torch.randn(theta.shape, generator=gen) * tcfg.theta_noise
                layers[lname][aname] = {"fault": fault, "theta": theta}
            meta[lname] = layer.shape_meta()
        return MeasuredMap(design_config(dataclasses.replace(self.config, test=tcfg)), self.chip_id, layers, meta)

    def used_cells(self, name: str) -> dict[str, torch.Tensor]:
        """Per array, a bool mask of the cells that carry a weight under the layer's layout (padding and
        unused spare rows excluded; for the offset scheme, reference cells on rows that carry weights)."""
        layer = self.layer(name)
        grid, lay = layer.grid, layer.get_layout()
        idx = lay.index(grid)[: grid.k, : grid.n].cpu()  # (K, N) physical row of each weight
        weights = torch.zeros(grid.physical, dtype=torch.bool)
        weights[idx, torch.arange(grid.n).unsqueeze(0)] = True
        out = {}
        for aname, arr in layer.arrays.items():
            if tuple(arr.fault.shape) == grid.physical:
                out[aname] = weights
            else:  # one reference column per tile column: the rows that carry weights there
                ref = torch.zeros(tuple(arr.fault.shape), dtype=torch.bool)
                for c in range(grid.tiles[1]):
                    ref[lay.row_map[c, : grid.k].cpu(), c] = True
                out[aname] = ref
        return out

    def stats(self) -> list[dict[str, Any]]:
        """Per-layer statistics over the cells that carry weights (``cells``; ``cells_total`` adds padding
        and spare rows): realised stuck-on/off fractions, theta spread, largest write count."""
        rows = []
        for layer in self.layers.values():
            used = self.used_cells(layer.name)
            arrays = layer.arrays.items()
            faults = torch.cat([a.fault.cpu()[used[n]] for n, a in arrays])
            theta = torch.cat([a.theta.cpu()[used[n]] for n, a in arrays])
            writes = torch.cat([a.writes.cpu().flatten() for _, a in arrays])
            n = max(faults.numel(), 1)
            rows.append({
                "layer": layer.name, "kind": layer.kind, "matrix": [layer.grid.k, layer.grid.n],
                "tiles": list(layer.grid.tiles), "cells": faults.numel(), "cells_total": writes.numel(),
                "stuck_on_fraction": float((faults == STUCK_ON).sum()) / n,
                "stuck_off_fraction": float((faults == STUCK_OFF).sum()) / n,
                "theta_std": float(theta.float().std()) if faults.numel() > 1 else 0.0,
                "max_writes": int(writes.max()),
            })
        return rows

    def summary(self) -> dict[str, Any]:
        """Whole-chip totals over the cells that carry weights (``cells_total`` adds padding): realised
        stuck-on/stuck-off fractions, tiles."""
        per = self.stats()
        cells = max(sum(r["cells"] for r in per), 1)
        return {
            "cells": sum(r["cells"] for r in per),
            "cells_total": sum(r["cells_total"] for r in per),
            "tiles": sum(math.prod(r["tiles"]) for r in per),
            "stuck_on_fraction": sum(r["stuck_on_fraction"] * r["cells"] for r in per) / cells,
            "stuck_off_fraction": sum(r["stuck_off_fraction"] * r["cells"] for r in per) / cells,
        }

    # --- persistence -------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the whole chip state to ``.npz`` (JSON header, no pickle), atomically; lossless."""
        arrays: dict[str, np.ndarray] = {}
        meta = []
        for layer in self.layers.values():
            adc = layer.adc_fs.cpu().tolist() if layer.adc_fs is not None else None
            meta.append({"name": layer.name, **layer.shape_meta(), "scale": layer.scale, "version": layer.version,
                         "arrays": list(layer.arrays), "adc_fs": adc, "adc_version": layer.adc_version,
                         "gain": layer.gain.cpu().tolist() if layer.gain is not None else None,
                         "offset": layer.offset.cpu().tolist() if layer.offset is not None else None})
            for aname, arr in layer.arrays.items():
                for f in _FIELDS:
                    arrays[f"{layer.name}|{aname}|{f}"] = getattr(arr, f).cpu().numpy()
            lay = layer.get_layout()
            arrays[f"{layer.name}|_layout|row_map"] = lay.row_map.cpu().numpy()
            arrays[f"{layer.name}|_layout|col_sign"] = lay.col_sign.cpu().numpy()
        header = {"kind": "chip", "format": FORMAT_VERSION, "config": self.config.to_json_dict(),
                  "seed": self.seed, "write_epoch": self.write_epoch, "writes_issued": self.writes_issued,
                  "writes_performed": self.writes_performed,
                  "layers": meta}
        save_npz(path, header, arrays)

    @classmethod
    def load(cls, path: str | Path, *, device: torch.device | str | None = None) -> Chip:
        """Read a chip written by :meth:`save`.

        Raises:
            ValueError: unreadable file, not a chip, unsupported format version, or inconsistent arrays.
        """
        boundary.check("Chip.load (a true chip file)")
        header, arrays = load_npz(path, "chip")
        check_chip_archive(path, header, arrays)  # every field: type, dtype, shape, range, codes, layouts
        try:
            config = ChipConfig.from_dict(header["config"])
        except ConfigError as exc:
            raise ValueError(f"{path}: invalid chip config: {exc}") from None
        layers = {}
        for m in header["layers"]:
            grid = TileGrid(int(m["k"]), int(m["n"]), config.mapping.rows, config.mapping.cols,
                            config.mapping.spare_rows)
            arrs = {}
            for aname in m["arrays"]:
                try:
                    arrs[aname] = CellArray(*(torch.from_numpy(arrays[f"{m['name']}|{aname}|{f}"]) for f in _FIELDS))
                except KeyError as exc:
                    raise ValueError(f"{path}: missing array {exc.args[0]!r}") from None
            layout = None
            if f"{m['name']}|_layout|row_map" in arrays:
                layout = LayerLayout(torch.from_numpy(arrays[f"{m['name']}|_layout|row_map"]),
                                     torch.from_numpy(arrays[f"{m['name']}|_layout|col_sign"]))
                try:
                    layout.check(grid, f"{path}: layer {m['name']!r} layout")
                except InputError as exc:
                    raise FileFormatError(str(exc)) from None
            layers[m["name"]] = LayerTiles(m["name"], m["kind"], tuple(m["weight_shape"]), grid, arrs,
                                           float(m["scale"]), int(m["version"]), layout,
                                           *_adc_calibration(path, m, grid), *_registers(path, m, grid.n))
        chip = cls(config, int(header["seed"]), layers, int(header["write_epoch"]), int(header.get("writes_issued", 0)),
                   int(header.get("writes_performed", 0)))
        return chip.to(device) if device is not None else chip
