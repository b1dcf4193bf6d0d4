"""The true cell state of a chip and its fabrication.

Each mapped layer owns named cell arrays (``pos``/``neg`` for differential pairs, ``main``/``ref`` for the
offset scheme), and each array holds, per cell: its fault code, its device-to-device log factor theta, its
programmed target conductance, the programming-noise log factor of its last write, its write count and the
time of its last write on the chip's clock (``ChipState.now``, seconds since fabrication: relaxation acts on
each cell's age).

:func:`fabricate` draws faults and theta for a model's layers from one seed (bit-identical per seed). Each
layer/array/quantity has its own random stream (:func:`_gen`), so one seed is one die at every setting: with
``uniform`` faults a chip's faulty cells at rate 0.1 are among those at 0.2, and theta scales with sigma
(common random numbers: sweeps compare settings on the same dies).

Who writes what: cells (``g``, ``eps``, ``writes``, ``fault`` after wear), ``scale``, ``version`` and the
write counters only :mod:`ittrna.chip.program`; the periphery (``layout``, ADC calibration, registers) only
:mod:`ittrna.chip.readout` (tests/test_layering.py checks it on the syntax tree).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from ittrna import boundary
from ittrna._validate import check_seed
from ittrna.boundary import Guarded
from ittrna.config import ChipConfig
from ittrna.device import read_conductance, sample_faults, sample_theta
from ittrna.errors import InputError, UnknownNameError
from ittrna.mapping import CONVERTERS, Converter, LayerLayout, TileGrid, groups_of, mapped_modules, weight_to_matrix
from ittrna.mapping.footprint import check_fits

__all__ = ["CellArray", "ChipState", "LayerTiles", "check_fabricate", "fabricate", "relaxation_draw"]


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (stable across runs and platforms)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def _gen(seed: int, *parts: int) -> torch.Generator:
    """A CPU generator for one named random stream of a chip."""
    return torch.Generator().manual_seed(_derive_seed(seed, 0x464142, *parts))


def _read_stream(seed: int) -> torch.Generator:
    """The chip's read-noise stream, as after fabrication (:func:`ittrna.chip.readout.restart_reads`)."""
    return torch.Generator().manual_seed(_derive_seed(seed, 0x52454144))


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
    written_at: torch.Tensor
    """float64 time of the cell's last performed write on the chip's clock (seconds since fabrication; 0 for a
    cell never written)."""
    delta: torch.Tensor | None = None
    """float32 additive programming error (siemens) drawn at the cell's last write
    (:mod:`ittrna.device.programming`); None on a chip without ``program_error`` (all zeros)."""

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
        delta = self.delta[sl] if self.delta is not None else None
        return read_conductance(self.g[sl], self.fault[sl], log, chip_cfg.cell, delta)

    def to(self, device: torch.device | str) -> CellArray:
        return CellArray(self.fault.to(device), self.theta.to(device), self.g.to(device), self.eps.to(device),
                         self.writes.to(device), self.written_at.to(device),
                         self.delta.to(device) if self.delta is not None else None)


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
    """Incremented at every programming and layout change, so reads cached by the readout know when to
    re-read."""
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
    drift_ref: tuple[int, float] | None = None
    """Global drift compensation (``relaxation.compensation = "global"``): the layer ``version`` and the
    reference read taken right after that programming; None = not taken yet."""

    def get_layout(self) -> LayerLayout:
        """The layer's layout (identity when none was set)."""
        if self.layout is None:
            self.layout = LayerLayout.identity(self.grid)
        return self.layout

    def shape_meta(self) -> dict[str, Any]:
        """What identifies the layer's geometry in file headers: kind, weight shape, matrix size, and the column
        groups of a grouped convolution (only then: every other layer's header is as it always was)."""
        meta: dict[str, Any] = {"kind": self.kind, "weight_shape": list(self.weight_shape), "k": self.grid.k,
                                "n": self.grid.n}
        if self.grid.groups > 1:
            meta["groups"] = self.grid.groups
        return meta

    def device(self) -> torch.device:
        """Where the layer's cell state lives."""
        return self.arrays[next(iter(self.arrays))].g.device


class ChipState(Guarded):
    """The state of a chip: its config, seed, layers, write counters and read-noise stream.

    :class:`~ittrna.chip.Chip` is this state with the operations of the chip's submodules as methods."""

    def __init__(self, config: ChipConfig, seed: int, layers: dict[str, LayerTiles], write_epoch: int = 0,
                 writes_issued: int = 0, writes_performed: int = 0, now: float = 0.0):
        self.config = config
        self.seed = seed
        self.layers = layers
        self.now = float(now)
        """The chip's clock: seconds since fabrication. Writes are stamped with it; reads see each cell at its
        age ``now - written_at`` (:class:`~ittrna.config.RelaxationConfig`). Advanced only by
        :meth:`Chip.wait <ittrna.chip.Chip.wait>`."""
        self.write_epoch = write_epoch
        """Number of programming operations so far (seeds each one's programming noise)."""
        self.writes_issued = writes_issued
        """Cell writes the host has asked for (every changed target, stuck cells included): the only write
        count a host sees. Writes *performed* are counted by :meth:`write_stats` (evaluator-only)."""
        self.writes_performed = writes_performed
        """Cell writes performed (healthy cells whose target changed), counted whether or not as wear."""
        self._read_gen = _read_stream(seed)
        """The read-noise stream (owned by :mod:`ittrna.chip.readout`)."""
        self._reads: dict[str, tuple[tuple[int, float], torch.Tensor]] = {}
        """Per layer, the effective weight read at a layer ``version`` and clock time (owned by
        :mod:`ittrna.chip.readout`)."""

    @property
    def converter(self) -> Converter:
        return CONVERTERS[self.config.mapping.scheme]

    def layer(self, name: str) -> LayerTiles:
        """The named layer; :class:`~ittrna.errors.UnknownNameError` (also a ``KeyError``) if there is none."""
        try:
            return self.layers[name]
        except KeyError:
            raise UnknownNameError(f"chip has no layer {name!r}; it holds {list(self.layers)}") from None

    def __iter__(self) -> Iterator[LayerTiles]:
        return iter(self.layers.values())


S = TypeVar("S", bound=ChipState)


_DIE_CACHE: OrderedDict[tuple[int, int, int, int, tuple[int, int]], torch.Tensor] = OrderedDict()
_DIE_CACHE_BYTES = 256 * 2**20
"""Most bytes the die cache holds (least recently used draws go first)."""
_die_cache_used = 0


def _die_draw(seed: int, li: int, ai: int, quantity: int, shape: tuple[int, int], *, normal: bool) -> torch.Tensor:
    """The first U(0, 1) (faults) or N(0, 1) (theta) draw of one (layer, array, quantity) stream of a die,
    kept for the next fabrication of the same seed: a sweep over fault rates or sigmas draws each die once
    (the streams are the same at every setting, so this changes no bit of any chip). Read-only for callers."""
    key = (seed, li, ai, quantity, shape)
    hit = _DIE_CACHE.get(key)
    if hit is not None:
        _DIE_CACHE.move_to_end(key)
        return hit
    gen = _gen(seed, li, ai, quantity)
    draw = torch.randn(shape, generator=gen) if normal else torch.rand(shape, generator=gen)
    global _die_cache_used
    _DIE_CACHE[key] = draw
    _die_cache_used += draw.numel() * draw.element_size()
    while _die_cache_used > _DIE_CACHE_BYTES and len(_DIE_CACHE) > 1:
        _, old = _DIE_CACHE.popitem(last=False)
        _die_cache_used -= old.numel() * old.element_size()
    return draw


def check_fabricate(
    model: Any, config: Any, seed: Any, filter_fn: Callable[[nn.Module, str], bool] | None = None
) -> None:
    """Arguments of ``Chip.fabricate``: a module, a :class:`ChipConfig`, a seed in [0, 2**63 - 1], and a chip
    that fits in the available memory (estimated before anything is allocated, :mod:`ittrna.mapping.footprint`).

    Raises:
        InputError: a bad argument; ResourceError: the chip would not fit in memory.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model has type {type(model).__name__}; accepted a torch.nn.Module")
    if not isinstance(config, ChipConfig):
        raise InputError(f"config has type {type(config).__name__}; accepted an ittrna.ChipConfig")
    check_seed(seed)
    check_fits(model, config, filter_fn)


def fabricate(
    cls: type[S],
    model: nn.Module,
    config: ChipConfig,
    seed: int,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> S:
    """A chip of class ``cls`` sized for ``model``'s ``Linear``/``Conv2d`` layers, its faults and theta drawn
    on the CPU from one stream per (layer, array, quantity) of ``seed`` (see :meth:`Chip.fabricate
    <ittrna.chip.Chip.fabricate>`)."""
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
        grid = TileGrid.on(config.mapping, k, n, groups_of(module))
        arrays = {}
        tiles = conv.array_tiles(grid)
        for ai, (aname, shape) in enumerate(conv.array_shapes(grid).items()):
            # one stream per (layer, array, quantity): the same seed is the same die at every setting
            # (nested uniform fault sets across rates, theta scaling with sigma)
            uniform = _die_draw(seed, li, ai, 1, shape, normal=False) if config.faults.pattern == "uniform" else None
            normal = _die_draw(seed, li, ai, 2, shape, normal=True) if config.variation.sigma > 0 else None
            fault = sample_faults(shape, tiles[aname], config.faults, _gen(seed, li, ai, 1), uniform=uniform)
            theta = sample_theta(shape, config.variation.sigma, _gen(seed, li, ai, 2), normal=normal)
            g = torch.full(shape, config.cell.g_min)
            arrays[aname] = CellArray(fault, theta, g, torch.zeros(shape), torch.zeros(shape, dtype=torch.int64),
                                      torch.zeros(shape, dtype=torch.float64),
                                      torch.zeros(shape) if config.program_error.model != "none" else None)
        kind = "conv2d" if isinstance(module, nn.Conv2d) else "conv1d" if isinstance(module, nn.Conv1d) else "linear"
        layers[name] = LayerTiles(name, kind, tuple(weight.shape), grid, arrays)
    if not layers:
        raise InputError("the model has no Linear/Conv2d layer to put on a chip")
    return cls(config, seed, layers)


def relaxation_draw(chip: ChipState, name: str, array: str) -> torch.Tensor:
    """The fixed N(0, 1) relaxation draw of every cell of one layer's array: a stream of the chip's seed of its
    own, keyed by the layer's and array's names (not their order), so a chip reads the same at the same age
    whatever else was fabricated beside it; on the array's device. Read-only for callers."""
    layer = chip.layer(name)
    arr = layer.arrays[array]
    digest = hashlib.sha256(f"ittrna/relaxation/{name}|{array}".encode()).digest()
    key = int.from_bytes(digest[:7], "big")  # 56 bits: a stream per (layer, array) name
    rows, cols = arr.g.shape
    draw = _die_draw(chip.seed, key, 0, 3, (int(rows), int(cols)), normal=True)  # quantity 3: relaxation
    return draw.to(arr.g.device)


def move_cells(chip: ChipState, device: torch.device | str) -> None:
    """Move every layer's cell arrays to ``device`` (in place; the periphery moves with
    :func:`ittrna.chip.readout.move_periphery`)."""
    for layer in chip.layers.values():
        layer.arrays = {k: a.to(device) for k, a in layer.arrays.items()}
