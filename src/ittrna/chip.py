"""A fabricated chip: per-layer crossbar tiles holding the true state of every cell.

Each mapped layer owns named cell arrays (``pos``/``neg`` for differential pairs, ``main``/``ref`` for the
offset scheme), and each array holds, per cell: its fault code, its device-to-device log factor theta, its
programmed target conductance, the programming-noise log factor of its last write, and its write count.

- :meth:`Chip.fabricate` draws faults and theta for a model's layers from one seed (bit-identical per seed).
  Each layer/array/quantity has its own random stream, so one seed is one die at every setting: with
  ``uniform`` faults a chip's faulty cells at rate 0.1 are among those at 0.2, and theta scales with sigma
  (common random numbers: sweeps compare settings on the same dies).
- :meth:`Chip.program` writes target conductances: stuck cells ignore it, each changed cell costs one write,
  wear is applied, programming noise is redrawn for written cells.
- :meth:`Chip.effective_matrix` / :meth:`Chip.effective_weight` read what the chip really computes.
- :meth:`Chip.test` returns the :class:`MeasuredMap` a post-fabrication test would give (faults and theta,
  with configurable misses and measurement noise); methods see only that, accuracy is judged on the chip.
- ``.npz`` save/load with a JSON header, no pickle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ittrna._io import load_npz, save_npz
from ittrna._validate import check_chip_archive, check_fabricate, check_measured_map
from ittrna.config import ChipConfig, ConfigError
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
from ittrna.mapping import CONVERTERS, Converter, TileGrid, mapped_modules, weight_scale, weight_to_matrix

__all__ = ["CellArray", "Chip", "LayerTiles", "MeasuredMap"]

FORMAT_VERSION = 1
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
class CellArray:
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

    def conductance(self, chip_cfg: ChipConfig, read_log: torch.Tensor | None = None) -> torch.Tensor:
        """Conductance the cells present now (siemens), optionally with a read-noise log factor."""
        log = self.theta + self.eps
        if read_log is not None:
            log = log + read_log
        return read_conductance(self.g, self.fault, log, chip_cfg.cell)

    def to(self, device: torch.device | str) -> CellArray:
        return CellArray(*(getattr(self, f).to(device) for f in _FIELDS))


@dataclass
class LayerTiles:
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

    def shape_meta(self) -> dict[str, Any]:
        """What identifies the layer's geometry in file headers: kind, weight shape, matrix size."""
        return {"kind": self.kind, "weight_shape": list(self.weight_shape), "k": self.grid.k, "n": self.grid.n}


@dataclass
class MeasuredMap:
    """What the post-fabrication test reports: per layer and array, fault codes and measured theta.

    It may miss faults (``test.miss_rate``) and carry measurement error on theta (``test.theta_noise``).
    """

    config: ChipConfig
    seed: int
    layers: dict[str, dict[str, dict[str, torch.Tensor]]]
    """layer -> array -> {"fault": int8, "theta": float32}."""
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    """layer -> {"kind", "weight_shape", "k", "n"} (shapes of the chip it came from)."""

    def save(self, path: str | Path) -> None:
        """Write to ``.npz`` (JSON header, no pickle), atomically."""
        arrays = {
            f"{lname}|{aname}|{fname}": t.cpu().numpy()
            for lname, arrs in self.layers.items()
            for aname, fields in arrs.items()
            for fname, t in fields.items()
        }
        header = {"kind": "measured-map", "format": FORMAT_VERSION, "config": self.config.to_json_dict(),
                  "seed": self.seed, "meta": self.meta}
        save_npz(path, header, arrays)

    @classmethod
    def load(cls, path: str | Path) -> MeasuredMap:
        """Read a map written by :meth:`save`."""
        header, arrays = load_npz(path, "measured-map")
        check_measured_map(path, header, arrays)
        layers: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        for key, value in arrays.items():
            lname, aname, fname = key.split("|")
            layers.setdefault(lname, {}).setdefault(aname, {})[fname] = torch.from_numpy(value)
        return cls(ChipConfig.from_dict(header["config"]), int(header["seed"]), layers, header["meta"])


class Chip:
    """A simulated RRAM chip holding one model's layers. Build with :meth:`fabricate` or :meth:`load`."""

    def __init__(self, config: ChipConfig, seed: int, layers: dict[str, LayerTiles], write_epoch: int = 0):
        self.config = config
        self.seed = seed
        self.layers = layers
        self.write_epoch = write_epoch
        """Number of programming operations so far (seeds each one's programming noise)."""
        self._read_gen = torch.Generator().manual_seed(_derive_seed(seed, 0x52454144))

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
        check_fabricate(model, config, seed, filter_fn)  # types, seed range, memory estimate
        conv = CONVERTERS[config.mapping.scheme]
        layers: dict[str, LayerTiles] = {}
        for li, (name, module) in enumerate(mapped_modules(model)):
            if filter_fn is not None and not filter_fn(module, name):
                continue
            weight = module.weight
            assert isinstance(weight, torch.Tensor)
            k, n = weight_to_matrix(weight).shape
            grid = TileGrid(k, n, config.mapping.rows, config.mapping.cols)
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

        Targets are clamped to [Gmin, Gmax] and rounded to the cell levels. Only cells whose target changes
        are written (one write each, counted when ``count_wear``); stuck cells ignore writes and are not
        counted. Written cells draw fresh programming noise; cells past their endurance become stuck.

        Returns:
            The number of cell writes performed.
        """
        layer = self.layer(name)
        cfg = self.config
        gen = torch.Generator().manual_seed(_derive_seed(self.seed, 0x50524F47, self.write_epoch))
        self.write_epoch += 1
        total = 0
        for aname, arr in layer.arrays.items():
            if aname not in targets:
                continue
            t = targets[aname].to(device=arr.g.device, dtype=arr.g.dtype)
            if t.shape != arr.g.shape:
                raise ValueError(f"layer {name!r} array {aname!r}: target shape {tuple(t.shape)} "
                                 f"!= array shape {tuple(arr.g.shape)}")
            t = quantize_levels(t, cfg.cell)
            write = (t != arr.g) & (arr.fault == HEALTHY)  # (rows, cols)
            arr.g = torch.where(write, t, arr.g)
            if cfg.variation.program_noise > 0:
                noise = lognormal_factor_log(tuple(arr.g.shape), cfg.variation.program_noise, gen,
                                             device=arr.g.device)
                arr.eps = torch.where(write, noise, arr.eps)
            if count_wear:
                arr.writes = arr.writes + write.to(arr.writes.dtype)
                arr.fault = wear_out(arr.writes, arr.fault, cfg.endurance)
            total += int(write.sum())
        layer.version += 1
        return total

    def program_weights(
        self, name: str, weight: torch.Tensor, *, scale: float | None = None, count_wear: bool | None = None
    ) -> int:
        """Map a weight tensor to conductances with the chip's converter and program it.

        Args:
            name: layer name.
            weight: tensor of the layer's weight shape.
            scale: weight scale s; default from ``mapping.clip_percentile`` of |w|.
            count_wear: default ``endurance.count_initial_programming`` for a never-programmed layer, else True.

        Returns:
            Cell writes performed.
        """
        layer = self.layer(name)
        if tuple(weight.shape) != layer.weight_shape:
            raise ValueError(
                f"layer {name!r}: weight shape {tuple(weight.shape)} does not match the chip's {layer.weight_shape}"
            )
        first = layer.scale == 0.0
        layer.scale = float(scale) if scale is not None else weight_scale(weight, self.config.mapping.clip_percentile)
        matrix = weight_to_matrix(weight.detach()).to(torch.float32)
        targets = self.converter.to_conductance(matrix, layer.scale, self.config.cell, layer.grid)
        if count_wear is None:
            count_wear = self.config.endurance.count_initial_programming if first else True
        return self.program(name, targets, count_wear=count_wear)

    def program_model(self, model: nn.Module) -> int:
        """Program every chip layer from the same-named layer of ``model``; returns total writes."""
        self.check_model(model)
        modules = dict(model.named_modules())
        return sum(self.program_weights(n, modules[n].weight) for n in self.layers)

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
    def conductances(self, name: str, *, read_noise: bool = False) -> dict[str, torch.Tensor]:
        """Conductances (siemens) the layer's arrays present; with ``read_noise`` a fresh read-noise draw."""
        layer = self.layer(name)
        sigma = self.config.variation.read_noise
        out = {}
        for aname, arr in layer.arrays.items():
            noise = (lognormal_factor_log(tuple(arr.g.shape), sigma, self._read_gen, device=arr.g.device)
                     if read_noise and sigma > 0 else None)
            out[aname] = arr.conductance(self.config, noise)
        return out

    def effective_matrix(self, name: str, *, read_noise: bool = False) -> torch.Tensor:
        """(K, N) matrix the layer really computes (weight units)."""
        layer = self.layer(name)
        g = self.conductances(name, read_noise=read_noise)
        return self.converter.to_matrix(g, layer.scale, self.config.cell, layer.grid)

    def effective_weight(self, name: str, *, read_noise: bool = False) -> torch.Tensor:
        """The layer's effective weight in its own shape (``Linear``: (out, in); ``Conv2d``: OIHW)."""
        layer = self.layer(name)
        return self.effective_matrix(name, read_noise=read_noise).t().reshape(layer.weight_shape).contiguous()

    # --- test, statistics --------------------------------------------------------------------------------
    def test(self, seed: int = 0) -> MeasuredMap:
        """Post-fabrication test: the measured defect map (faults, theta) with the configured imperfections.

        Args:
            seed: seeds the test's own imperfections (which faults it misses, theta measurement error).
        """
        tcfg = self.config.test
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
        return MeasuredMap(self.config, self.seed, layers, meta)

    def stats(self) -> list[dict[str, Any]]:
        """Per-layer statistics: cells, tiles, realised stuck-on/off fractions, theta spread, writes."""
        rows = []
        for layer in self.layers.values():
            faults = torch.cat([a.fault.flatten() for a in layer.arrays.values()])
            theta = torch.cat([a.theta.flatten() for a in layer.arrays.values()])
            writes = torch.cat([a.writes.flatten() for a in layer.arrays.values()])
            n = faults.numel()
            rows.append({
                "layer": layer.name, "kind": layer.kind, "matrix": [layer.grid.k, layer.grid.n],
                "tiles": list(layer.grid.tiles), "cells": n,
                "stuck_on_fraction": float((faults == STUCK_ON).sum()) / n,
                "stuck_off_fraction": float((faults == STUCK_OFF).sum()) / n,
                "theta_std": float(theta.float().std()) if n > 1 else 0.0,
                "max_writes": int(writes.max()),
            })
        return rows

    def summary(self) -> dict[str, Any]:
        """Whole-chip totals: cells, realised stuck-on/stuck-off fractions, tiles."""
        per = self.stats()
        cells = sum(r["cells"] for r in per)
        return {
            "cells": cells,
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
            meta.append({"name": layer.name, **layer.shape_meta(), "scale": layer.scale, "version": layer.version,
                         "arrays": list(layer.arrays)})
            for aname, arr in layer.arrays.items():
                for f in _FIELDS:
                    arrays[f"{layer.name}|{aname}|{f}"] = getattr(arr, f).cpu().numpy()
        header = {"kind": "chip", "format": FORMAT_VERSION, "config": self.config.to_json_dict(),
                  "seed": self.seed, "write_epoch": self.write_epoch, "layers": meta}
        save_npz(path, header, arrays)

    @classmethod
    def load(cls, path: str | Path, *, device: torch.device | str | None = None) -> Chip:
        """Read a chip written by :meth:`save`.

        Raises:
            ValueError: unreadable file, not a chip, unsupported format version, or inconsistent arrays.
        """
        header, arrays = load_npz(path, "chip")
        check_chip_archive(path, header, arrays)  # every field: type, dtype, shape, range, codes
        if header.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: chip format {header.get('format')} unsupported; accepted {FORMAT_VERSION}")
        try:
            config = ChipConfig.from_dict(header["config"])
        except ConfigError as exc:
            raise ValueError(f"{path}: invalid chip config: {exc}") from None
        layers = {}
        for m in header["layers"]:
            grid = TileGrid(int(m["k"]), int(m["n"]), config.mapping.rows, config.mapping.cols)
            arrs = {}
            for aname in m["arrays"]:
                try:
                    arrs[aname] = CellArray(*(torch.from_numpy(arrays[f"{m['name']}|{aname}|{f}"]) for f in _FIELDS))
                except KeyError as exc:
                    raise ValueError(f"{path}: missing array {exc.args[0]!r}") from None
            layers[m["name"]] = LayerTiles(m["name"], m["kind"], tuple(m["weight_shape"]), grid, arrs,
                                           float(m["scale"]), int(m["version"]))
        chip = cls(config, int(header["seed"]), layers, int(header["write_epoch"]))
        return chip.to(device) if device is not None else chip
