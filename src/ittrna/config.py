"""Configuration: a tree of validated dataclasses describing a simulated RRAM-crossbar chip.

Every field carries a docstring (units, source, accepted range) right under it, in the manner of IBM
aihwkit's ``simulator/parameters``. Every section validates itself on construction and rejects a bad value
with a one-line :class:`ConfigError` naming the dotted field, the value and the accepted range.

The tree serialises to and from plain dicts, JSON and TOML; named presets (CrossSim-style
``ChipConfig.preset("date17")``) live in an explicit registry, :data:`PRESETS`.

Example:
    >>> cfg = ChipConfig.preset("default").override({"faults.rate": 0.1, "variation.sigma": 0.5})
    >>> cfg.faults.rate
    0.1
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - exercised on Python 3.10 only
    pass

from ittrna import registry as _registry
from ittrna.errors import ConfigError

MAX_SEED = 2**63 - 1
"""Largest seed (seeds are mixed as 64-bit integers; larger ones would alias smaller ones): the one bound every
seed check uses (CLI, sweep grids, archives)."""

__all__ = [
    "PRESETS",
    "CellConfig",
    "ChipConfig",
    "ConfigError",
    "EnduranceConfig",
    "FaultConfig",
    "MappingConfig",
    "ProgramErrorConfig",
    "RefreshConfig",
    "RelaxationConfig",
    "TestConfig",
    "TrainConfig",
    "VariationConfig",
    "WireConfig",
]

#: Stuck-on share of all stuck-at faults measured on a 4-Mb HfO2 RRAM test chip: 1.75 % of cells stuck-on
#: versus 9.04 % stuck-off (Chen et al., "RRAM defect modeling and failure analysis based on march test and
#: a novel squeeze-search scheme", IEEE Trans. Computers 64(1), 2015).
HFO2_STUCK_ON_SHARE = 1.75 / (1.75 + 9.04)

R_ON_MIN = 1.0
"""Smallest accepted LRS resistance in ohm (Gmax = 1 S); below it a cell is a short, not an RRAM state."""
R_ON_MAX = 1e9
"""Largest accepted LRS resistance in ohm (Gmax = 1 nS)."""
R_OFF_MAX = 1e12
"""Largest accepted finite HRS resistance in ohm (Gmin = 1 pS); use ``inf`` for Gmin = 0."""


def _fmt(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


class _Section:
    """Mixin: validation helpers, dict conversion and dotted naming for one config section."""

    _section: ClassVar[str] = ""

    def _name(self, fname: str) -> str:
        return f"{self._section}.{fname}" if self._section else fname

    def _range(
        self, fname: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
    ) -> None:
        value = getattr(self, fname)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self._name(fname)} = {value!r} is not a number; accepted "
                              f"{_fmt(lo, hi, lo_open, hi_open)}")
        if isinstance(value, int) and abs(value) > 2**1023:  # beyond float: math.isnan would overflow
            raise ConfigError(f"{self._name(fname)} = an integer of {value.bit_length()} bits is out of range; "
                              f"accepted {_fmt(lo, hi, lo_open, hi_open)}")
        ok = not math.isnan(value)
        ok = ok and (value > lo if lo_open else value >= lo)
        ok = ok and (value < hi if hi_open else value <= hi)
        if not ok:
            raise ConfigError(
                f"{self._name(fname)} = {value!r} is out of range; accepted {_fmt(lo, hi, lo_open, hi_open)}"
            )

    def _int_range(self, fname: str, lo: int, hi: int, *, optional: bool = False) -> None:
        value = getattr(self, fname)
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(
                f"{self._name(fname)} = {value!r} is invalid; accepted an integer in [{lo}, {hi}]"
                + (" or None" if optional else "")
            )

    def _choice(self, fname: str, choices: Iterable[str]) -> None:
        value = getattr(self, fname)
        choices = tuple(choices)
        if value not in choices:
            raise ConfigError(f"{self._name(fname)} = {value!r} is invalid; accepted one of {list(choices)}")


@dataclass(frozen=True)
class CellConfig(_Section):
    """One RRAM cell's programmable conductance range.

    Source: a two-terminal HfO2/TaOx RRAM cell read at low voltage; Gmax = 1/r_on (low-resistance state),
    Gmin = 1/r_off (high-resistance state). Typical values r_on ~ 1-100 kOhm, on/off ratio 10-1000
    (Wong et al., "Metal-oxide RRAM", Proc. IEEE 100(6), 2012). Units: ohm.

    Accepted ranges are physical bounds, far wider than any reported cell but narrow enough that every
    conductance is a normal float32 (no overflow to inf, no underflow to 0 in the simulation):
    r_on in [R_ON_MIN, R_ON_MAX] = [1 ohm, 1e9 ohm]; r_off in (r_on, R_OFF_MAX] = (r_on, 1e12 ohm] or inf.
    """

    _section: ClassVar[str] = "cell"

    r_on: float = 10e3
    """Low-resistance state (LRS) resistance in ohm; Gmax = 1/r_on. Accepted [1, 1e9] ohm, below r_off."""

    r_off: float = 1e6
    """High-resistance state (HRS) resistance in ohm; Gmin = 1/r_off. Accepted (r_on, 1e12] ohm or ``inf``;
    ``inf`` gives Gmin = 0, the ideal on/off ratio of the DATE'17 / ITT-RNA weight model."""

    levels: int | None = None
    """Number of evenly spaced programmable conductance levels in [Gmin, Gmax]; None = analog cells.
    Accepted None or an integer in [2, 65536]."""

    def __post_init__(self) -> None:
        self._range("r_on", R_ON_MIN, R_ON_MAX)
        self._range("r_off", 0.0, math.inf, lo_open=True)
        if not math.isinf(self.r_off) and self.r_off > R_OFF_MAX:
            raise ConfigError(
                f"cell.r_off = {self.r_off!r} is out of range; accepted (r_on, {R_OFF_MAX:g}] ohm or inf"
            )
        if not self.r_off > self.r_on:
            raise ConfigError(
                f"cell.r_off = {self.r_off!r} must exceed cell.r_on = {self.r_on!r}; accepted (r_on, inf]"
            )
        self._int_range("levels", 2, 65536, optional=True)

    @property
    def g_max(self) -> float:
        """Largest conductance in siemens (1/r_on)."""
        return 1.0 / self.r_on

    @property
    def g_min(self) -> float:
        """Smallest conductance in siemens (1/r_off; 0 when r_off is infinite)."""
        return 0.0 if math.isinf(self.r_off) else 1.0 / self.r_off


@dataclass(frozen=True)
class VariationConfig(_Section):
    """Lognormal resistance variation: G_actual = G_target * exp(theta), theta ~ N(0, sigma^2).

    Source: device-to-device variation model used by Chen et al. (DATE 2017) and ITT-RNA (Song et al.,
    IEEE TCAD 2020); lognormal spread of RRAM resistance is reported with sigma up to ~1 for HfOx cells.
    Units: sigma is the standard deviation of the natural log of the conductance factor (dimensionless).
    """

    _section: ClassVar[str] = "variation"

    sigma: float = 0.0
    """Device-to-device sigma of theta, fixed per cell per chip. Accepted [0, 3]."""

    program_noise: float = 0.0
    """Cycle-to-cycle sigma of an extra log factor redrawn at every write of a cell. Accepted [0, 3]."""

    read_noise: float = 0.0
    """Sigma of a log factor redrawn at every read (every forward pass through an analog layer).
    Accepted [0, 3]."""

    def __post_init__(self) -> None:
        for name in ("sigma", "program_noise", "read_noise"):
            self._range(name, 0.0, 3.0)


PROGRAM_ERROR_MODELS = _registry.PROGRAM_ERROR_MODELS
"""The programming-error model names (one list, :mod:`ittrna.registry`; the models are in
:mod:`ittrna.device.programming`)."""

CROSSSIM_WAN_GMAX_MAX = 39.26e-6
"""Largest Gmax (siemens) of CrossSim's ``RRAMWan`` fit (its own limit: the data end there)."""


@dataclass(frozen=True)
class ProgramErrorConfig(_Section):
    """Conductance-dependent programming error: a healthy cell written to the target G presents
    G e^(theta + eps) + delta, delta = scale * sigma(G) * z, z ~ N(0, 1) drawn at every performed write of
    the cell (a write-verify loop's residual error, which depends on the target), the sum clamped at 0 S.
    Beside it the lognormal factors of :class:`VariationConfig` stay as they are. Units: siemens (the fits
    in microsiemens, as published). Models (:mod:`ittrna.device.programming`, each with its source):

    - ``none``: no such error (the chip of earlier versions, bit for bit);
    - ``crosssim-wan``: Sandia CrossSim's ``RRAMWan`` (``simulator/devices/custom/RRAM_Wan.py``), a cubic
      fit to Wan et al., Nature 608 (2022), Extended Data Fig. 3 at t = 1 s: sigma = 1.536e-4 G^3
      - 1.167e-2 G^2 + 0.2374 G + 1.053 uS, G in uS; valid for Gmax <= 39.26 uS (``cell.r_on`` >= 25.47
      kOhm), refused above;
    - ``aihwkit-pcm``: aihwkit's ``PCMLikeNoiseModel`` programming noise (Nandakumar et al., ICECS 2019):
      sigma = 0.26348 + 1.9650 x - 1.1731 x^2 uS, x = G / Gmax, fitted at Gmax = 25 uS and scaled by
      Gmax / 25 uS (a PCM fit, for comparison with PCM-based studies);
    - ``polynomial``: your own fit, sigma = c0 + c1 x + c2 x^2 + c3 x^3 uS, x = G / Gmax, fitted at
      ``g_ref_us`` and scaled by Gmax / ``g_ref_us``.

    Every sigma is clamped at 0 (as both sources do). ``relaxation.model = "wan2022"`` already includes the
    programming error at 1 s (its 1-s polynomial), so it is refused with any model here.
    """

    _section: ClassVar[str] = "program_error"

    model: str = "none"
    """sigma(G) law: ``none``, ``crosssim-wan``, ``aihwkit-pcm`` or ``polynomial``."""

    scale: float = 1.0
    """Factor on sigma. Accepted [0, 10]."""

    c0: float = 0.0
    """``polynomial`` only: constant term (uS). Accepted [-1e4, 1e4]."""

    c1: float = 0.0
    """``polynomial`` only: coefficient of x (uS). Accepted [-1e4, 1e4]."""

    c2: float = 0.0
    """``polynomial`` only: coefficient of x^2 (uS). Accepted [-1e4, 1e4]."""

    c3: float = 0.0
    """``polynomial`` only: coefficient of x^3 (uS). Accepted [-1e4, 1e4]."""

    g_ref_us: float = 100.0
    """``polynomial`` only: the Gmax (uS) the coefficients were fitted at (100 uS = the default cell's).
    Accepted (0, 1e6]."""

    def __post_init__(self) -> None:
        self._choice("model", PROGRAM_ERROR_MODELS.names())
        self._range("scale", 0.0, 10.0)
        for name in ("c0", "c1", "c2", "c3"):
            self._range(name, -1e4, 1e4)
        self._range("g_ref_us", 0.0, 1e6, lo_open=True)


RELAXATION_MODELS = _registry.RELAXATION_MODELS
"""The relaxation-model names (one list, :mod:`ittrna.registry`; the models are in :mod:`ittrna.device.relaxation`)."""

YEAR_S = 365.25 * 86400.0
"""One year in seconds."""
TIME_MAX_S = 10 * YEAR_S
"""Longest accepted time after programming (10 years, in seconds): past it no relaxation model was fitted."""

TIME_UNITS: dict[str, float] = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0,
                                "month": YEAR_S / 12, "y": YEAR_S}
"""Units a time may be written in (``1s``, ``30min``, ``1h``, ``1d``, ``1w``, ``1month``, ``1y``)."""


def parse_time(value: Any, what: str = "time") -> float:
    """A time after programming in seconds, from a number (seconds) or a number with a unit of
    :data:`TIME_UNITS` (``"1h"``, ``"2.5d"``, ``"1y"``); accepted [0, 10 years].

    Raises:
        ConfigError: one line naming ``what``, the value and what is accepted.
    """
    accepted = f"accepted seconds in [0, {TIME_MAX_S:g}] (10 years), or a number with a unit {list(TIME_UNITS)}"
    seconds: float
    if isinstance(value, bool):
        raise ConfigError(f"{what} = {value!r} is not a time; {accepted}")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            bits = int(value).bit_length()
            raise ConfigError(f"{what} = an integer of {bits} bits is out of range; {accepted}") from None
    elif isinstance(value, str):
        text = value.strip()
        if not text.isascii():
            raise ConfigError(f"{what} = {value!r} is not a time; {accepted}")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number):] or "s"
        if unit not in TIME_UNITS or not number.strip() or len(text) > 64:
            raise ConfigError(f"{what} = {value!r} is not a time; {accepted}")
        try:
            seconds = float(number.strip().replace("_", "x")) * TIME_UNITS[unit]
        except ValueError:
            raise ConfigError(f"{what} = {value!r} is not a time; {accepted}") from None
    else:
        raise ConfigError(f"{what} = {value!r} is not a time; {accepted}")
    if not (math.isfinite(seconds) and 0.0 <= seconds <= TIME_MAX_S):
        raise ConfigError(f"{what} = {value!r} is out of range; {accepted}")
    return seconds + 0.0  # -0.0 is 0.0


@dataclass(frozen=True)
class RelaxationConfig(_Section):
    """Conductance relaxation after programming: a healthy cell written at time t_w reads, at time t, a
    conductance moved from the one it presented right after its write, by the model's law at age t - t_w.

    The per-cell random part of every model is one N(0, 1) draw per cell from a stream of the chip's seed of its
    own (fixed per chip: the same chip at the same age reads the same, and a later age continues the same
    trajectory). Stuck cells do not relax. The additive models keep a relaxed conductance within [Gmin, Gmax]
    (one that variation left outside the range is not pushed further out). Units: seconds, siemens. Models
    (:mod:`ittrna.device.relaxation`, each with its source and range):

    - ``none``: no relaxation (the chip of earlier versions, bit for bit);
    - ``cmo-hfox``: IBM's CMO/HfOx ReRAM (aihwkit ``ReRamCMONoiseModel``, Falcone et al.): mean shift
      -0.089 ln(t) uS and spread 0.042 ln(t) + 0.412 uS, independent of G, at aihwkit's Gmax of 88.2 uS
      (scaled by this chip's Gmax / 88.2 uS);
    - ``wan2022``: NeuRRAM (Wan et al., Nature 2022; aihwkit ``ReRamWan2022NoiseModel``): spread a 4th-order
      polynomial of G/Gmax fitted at 1 s, 1 day and 2 days at Gmax = 40 uS (scaled likewise), interpolated
      in ln t; past 2 days only with ``extrapolate``;
    - ``power-law``: G(t) = G0 (t/t0)^-nu, nu ~ N(nu_mean, nu_std^2) per cell, clipped to [0, 1] (MemTorch's
      ``conductance_drift``, Boybat et al. 2018; aihwkit's PCM model for the nu statistics).
    """

    _section: ClassVar[str] = "relaxation"

    model: str = "none"
    """Relaxation law: ``none``, ``cmo-hfox``, ``wan2022`` or ``power-law``."""

    scale: float = 1.0
    """Factor on the model's shift and spread (``power-law``: on nu). Accepted [0, 10]."""

    extrapolate: bool = False
    """``wan2022`` only: continue the last fitted segment (1 to 2 days, linear in ln t) past 2 days; without
    it a later time is refused."""

    nu_mean: float = 0.05
    """``power-law`` only: mean drift exponent (aihwkit's PCM model spans 0.049-0.1). Accepted [0, 1]."""

    nu_std: float = 0.01
    """``power-law`` only: spread of the drift exponent between cells (aihwkit's PCM: 0.008-0.045).
    Accepted [0, 1]."""

    t0: float = 20.0
    """``power-law`` only: the age (s) of the reference read G0 (aihwkit's PCM t0 = 20 s); younger cells read
    G0. Accepted [1e-3, 1e6] s."""

    compensation: str = "none"
    """Zero-write drift compensation in each layer's periphery: ``none``, or ``global`` (aihwkit's
    ``GlobalDriftCompensation``, ``inference/compensation/drift.py``): right after a layer is programmed it
    reads a reference (the summed magnitude of its columns' outputs for an all-ones input); whenever the clock
    has moved it reads it again and scales the layer's outputs by the ratio, digitally. No cell is written."""

    @property
    def active(self) -> bool:
        """Whether cells relax at all (a model other than ``none`` at a scale above 0)."""
        return self.model != "none" and self.scale > 0

    def __post_init__(self) -> None:
        self._choice("model", RELAXATION_MODELS.names())
        self._choice("compensation", ("none", "global"))
        self._range("scale", 0.0, 10.0)
        if not isinstance(self.extrapolate, bool):
            raise ConfigError(f"relaxation.extrapolate = {self.extrapolate!r}; accepted true/false")
        self._range("nu_mean", 0.0, 1.0)
        self._range("nu_std", 0.0, 1.0)
        self._range("t0", 1e-3, 1e6)


WIRE_SOLVERS = _registry.WIRE_SOLVERS
"""The wire-solver names (one list, :mod:`ittrna.registry`; the solvers are in :mod:`ittrna.device.ir_drop`)."""


@dataclass(frozen=True)
class WireConfig(_Section):
    """Line resistance of the crossbar wires (IR drop).

    Each tile: rows driven at their input voltage, columns read at virtual ground. One wire segment of
    ``r_wire`` ohm lies between a row's driver and its first cell and between neighbouring cells along a row;
    along a column, one between neighbouring cells and one between its last cell and the sense amplifier (held
    at 0 V). The column currents are the nodal solution of that network (:mod:`ittrna.device.ir_drop`). Since
    the network is linear, each tile computes with a transfer matrix solved once per programming. Source:
    the crossbar parasitics of MemTorch (``solve_passive``) and CrossSim; copper/tungsten lines of a
    sub-100 nm node are about 0.1-10 ohm per cell pitch.
    """

    _section: ClassVar[str] = "wires"

    r_wire: float = 0.0
    """Resistance of one wire segment in ohm; 0 = ideal wires (no IR drop, bit for bit the chip without this
    section). Accepted [0, 1000] ohm."""

    solver: str = "exact"
    """How a tile's transfer matrix is solved: ``exact``, a sparse direct solve of the nodal equations in
    float64 (:func:`ittrna.device.ir_drop.transfer`); ``block``, the same solution by exact block
    elimination in torch, float64, dense matrix products (:func:`ittrna.device.ir_drop.transfer_block`:
    equal to ``exact`` to rounding, several times faster from 128x128 tiles on, and where the cells live,
    e.g. on CUDA); or ``iterative``, block Gauss-Seidel line relaxation in torch to 1e-9 of the tile's
    full-scale current (:func:`ittrna.device.ir_drop.transfer_iterative`)."""

    def __post_init__(self) -> None:
        self._range("r_wire", 0.0, 1000.0)
        self._choice("solver", WIRE_SOLVERS.names())


FAULT_PATTERNS = _registry.FAULT_PATTERNS
"""The fault-pattern names (one list, :mod:`ittrna.registry`; the samplers are in :mod:`ittrna.device.faults`)."""


@dataclass(frozen=True)
class FaultConfig(_Section):
    """Stuck-at faults fixed at fabrication.

    ``stuck_off`` cells read Gmin (high-resistance state) and ``stuck_on`` cells read Gmax (low-resistance
    state) whatever is programmed. Source for the default share: 9.04 % stuck-off versus 1.75 % stuck-on
    cells on a 4-Mb HfO2 test chip (Chen et al., IEEE Trans. Computers 2015).
    """

    _section: ClassVar[str] = "faults"

    rate: float = 0.0
    """Fraction of all cells that are stuck (stuck_on + stuck_off). Accepted [0, 1)."""

    stuck_on_share: float = HFO2_STUCK_ON_SHARE
    """Fraction of stuck cells that are stuck_on (at Gmax); the rest are stuck_off (at Gmin).
    Accepted [0, 1]. Default 1.75/(1.75+9.04) ~ 0.162."""

    pattern: str = "uniform"
    """Spatial pattern: ``uniform`` (independent positions), ``clustered`` (Thomas cluster process:
    Poisson cluster centres with bivariate-Gaussian spread) or ``lines`` (whole or partly broken word/bit
    lines of a tile). The realised fraction equals ``rate`` for every pattern."""

    cluster_radius: float = 3.0
    """``clustered`` only: standard deviation of the bivariate-Gaussian cluster shape, in cells.
    Accepted (0, 1000]."""

    cluster_size: float = 25.0
    """``clustered`` only: mean number of faulty cells per cluster. Accepted [1, 1e6]."""

    background_share: float = 0.1
    """``clustered`` only: share of the fault intensity spread uniformly outside clusters. Accepted [0, 1]."""

    def __post_init__(self) -> None:
        self._range("rate", 0.0, 1.0, hi_open=True)
        self._range("stuck_on_share", 0.0, 1.0)
        self._choice("pattern", FAULT_PATTERNS)
        self._range("cluster_radius", 0.0, 1000.0, lo_open=True)
        self._range("cluster_size", 1.0, 1e6)
        self._range("background_share", 0.0, 1.0)


@dataclass(frozen=True)
class EnduranceConfig(_Section):
    """Write endurance: a per-cell write counter; a cell written more than ``endurance`` times gets stuck.

    Source: HfOx/TaOx RRAM endurance is reported between ~1e6 and ~1e12 cycles; 1e8 is a common
    mid-range figure. Units: writes (program operations) per cell.
    """

    _section: ClassVar[str] = "endurance"

    endurance: float = 1e8
    """Writes a cell survives; the next write leaves it stuck. Accepted [1, 1e15]."""

    count_initial_programming: bool = False
    """Whether the first programming of a freshly fabricated chip counts as wear."""

    failure_state: str = "stuck_on"
    """State a worn-out cell sticks at: ``stuck_on`` (filament can no longer be reset, the common RRAM
    endurance failure) or ``stuck_off``."""

    def __post_init__(self) -> None:
        self._range("endurance", 1.0, 1e15)
        self._choice("failure_state", ("stuck_on", "stuck_off"))
        if not isinstance(self.count_initial_programming, bool):
            raise ConfigError(
                f"endurance.count_initial_programming = {self.count_initial_programming!r}; accepted true/false"
            )


MAPPING_SCHEMES = _registry.SCHEMES
"""The mapping-scheme names (one list, :mod:`ittrna.registry`; the converters are in :mod:`ittrna.mapping`)."""


@dataclass(frozen=True)
class MappingConfig(_Section):
    """How a weight matrix becomes conductances on crossbar tiles, and the tiles' periphery.

    A ``Linear`` weight (out x in) maps as its transpose (in rows x out columns); a ``Conv2d`` kernel is
    unrolled to (Cin*k*k) rows x Cout columns. The matrix is tiled over ``rows x cols`` crossbars whose
    partial sums are added digitally. Biases stay digital.
    """

    _section: ClassVar[str] = "mapping"

    scheme: str = "differential"
    """``differential``: w = s*(G+ - G-) on two cells, the inactive cell at Gmin; ``offset``: one cell
    per weight around mid-range, minus a per-tile reference column programmed at (Gmin+Gmax)/2."""

    rows: int = 128
    """Crossbar word lines (inputs) per tile. Accepted [1, 65536]."""

    cols: int = 128
    """Crossbar bit lines (outputs) per tile. Accepted [1, 65536]."""

    spare_rows: int = 0
    """Spare word lines per tile beyond ``rows`` (fabricated, faulty or not like every cell), which a
    remapping may route logical inputs onto (Liu et al., DAC 2017). Accepted [0, 65536]."""

    clip_percentile: float = 100.0
    """Per-layer weight scale: this percentile of |w| maps to Gmax - Gmin; larger weights are clipped.
    100 = max |w| (no clipping). Accepted (0, 100]."""

    dac_bits: int | None = None
    """Input DAC resolution in bits (signed, per-sample full scale); None = ideal. Accepted [1, 32]."""

    adc_bits: int | None = None
    """Output ADC resolution in bits per tile column (signed); None = ideal. Each tile's full scale is
    calibrated once, when the layer is first used after programming (on the calibration inputs given to
    ``deploy``, else on that first batch), then kept fixed like a real converter's. Accepted [1, 32]."""

    adc_percentile: float = 99.99
    """ADC calibration: a tile's full scale is this percentile of |partial sum| over the calibration
    inputs and the tile's columns (100 = the largest; lower clips rare outliers for finer steps).
    Accepted (0, 100]."""

    def __post_init__(self) -> None:
        self._choice("scheme", MAPPING_SCHEMES)
        self._int_range("rows", 1, 65536)
        self._int_range("cols", 1, 65536)
        self._int_range("spare_rows", 0, 65536)
        self._range("clip_percentile", 0.0, 100.0, lo_open=True)
        self._int_range("dac_bits", 1, 32, optional=True)
        self._int_range("adc_bits", 1, 32, optional=True)
        self._range("adc_percentile", 0.0, 100.0, lo_open=True)


@dataclass(frozen=True)
class TrainConfig(_Section):
    """How a software model is trained (:func:`ittrna.training.fit`): the one owner of these ranges, which
    ``ittrna train``'s flags and a sweep's ``[train]`` table reuse."""

    _section: ClassVar[str] = "train"

    epochs: int = 5
    """Passes over the training split (the cosine schedule spans them). Accepted [0, 100000]."""
    lr: float = 1e-3
    """Adam peak learning rate, cosine-annealed. Accepted (0, 10]."""
    batch_size: int = 64
    """Mini-batch size. Accepted [1, 1000000]."""
    seed: int = 0
    """Seeds the private generator that shuffles the mini-batches. Accepted [0, 2**63 - 1]."""
    patience: int | None = None
    """With validation data, stop after this many epochs without improvement (None: run all). Accepted None
    or [1, 1000]."""

    def __post_init__(self) -> None:
        self._int_range("epochs", 0, 100_000)
        self._range("lr", 0.0, 10.0, lo_open=True)
        self._int_range("batch_size", 1, 1_000_000)
        self._int_range("seed", 0, MAX_SEED)
        self._int_range("patience", 1, 1000, optional=True)


@dataclass(frozen=True)
class TestConfig(_Section):
    """Imperfections of the post-fabrication chip test that produces the measured defect map.

    Methods only ever see the measured map; accuracy is always judged on the true chip.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class
    _section: ClassVar[str] = "test"

    miss_rate: float = 0.0
    """Fraction of stuck cells the test fails to detect (reported healthy). Accepted [0, 1]."""

    theta_noise: float = 0.0
    """Standard deviation of additive Gaussian error on each measured theta. Accepted [0, 3]."""

    def __post_init__(self) -> None:
        self._range("miss_rate", 0.0, 1.0)
        self._range("theta_noise", 0.0, 3.0)


@dataclass(frozen=True)
class ChipConfig(_Section):
    """A whole simulated chip: cells, variation, faults, endurance, mapping/periphery and chip test."""

    cell: CellConfig = field(default_factory=CellConfig)
    """Conductance range and programmable levels."""

    variation: VariationConfig = field(default_factory=VariationConfig)
    """Lognormal device-to-device, programming and read variation."""

    faults: FaultConfig = field(default_factory=FaultConfig)
    """Stuck-at faults fixed at fabrication."""

    endurance: EnduranceConfig = field(default_factory=EnduranceConfig)
    """Write endurance."""

    mapping: MappingConfig = field(default_factory=MappingConfig)
    """Weight-to-conductance mapping, tiling, DAC/ADC."""

    test: TestConfig = field(default_factory=TestConfig)
    """Imperfections of the post-fabrication test."""

    relaxation: RelaxationConfig = field(default_factory=RelaxationConfig)
    """Conductance relaxation after programming."""

    wires: WireConfig = field(default_factory=WireConfig)
    """Line resistance (IR drop)."""

    program_error: ProgramErrorConfig = field(default_factory=ProgramErrorConfig)
    """Conductance-dependent programming error sigma(G)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = _SECTION_TYPES[f.name]
            if not isinstance(value, expected):
                raise ConfigError(
                    f"ChipConfig.{f.name} = {value!r} has type {type(value).__name__}; accepted a {expected.__name__} "
                    f"(e.g. ChipConfig().override({{'{f.name}.<field>': ...}}))"
                )
        perr = self.program_error.model
        if perr != "none" and self.relaxation.model == "wan2022":
            raise ConfigError(f"program_error.model = {perr!r} with relaxation.model = 'wan2022', whose 1-s fit "
                              "already holds the programming error; accepted one of them")
        if perr == "crosssim-wan" and self.cell.g_max > CROSSSIM_WAN_GMAX_MAX * (1 + 1e-9):
            raise ConfigError(f"program_error.model = 'crosssim-wan' was fitted up to Gmax = 39.26 uS; cell.r_on = "
                              f"{self.cell.r_on:g} ohm gives Gmax = {self.cell.g_max * 1e6:g} uS; accepted r_on >= "
                              "25470 ohm")

    # --- conversion -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (JSON/TOML-ready; ``None`` values kept)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChipConfig:
        """Build from a nested dict; missing keys take defaults, unknown keys are an error."""
        return _from_dict(cls, data, "")

    def to_json_dict(self) -> dict[str, Any]:
        """Nested dict safe for strict JSON (``inf`` as the string ``"inf"``); :meth:`from_dict` reads it."""
        return dict(_encode_inf(self.to_dict()))

    def identity_dict(self) -> dict[str, Any]:
        """:meth:`to_json_dict` without the sections added later that are at their defaults: what identifies
        a chip's settings in store keys and chip ids (unchanged by sections a config does not use)."""
        out = self.to_json_dict()
        for name in _LATER_SECTIONS:
            if getattr(self, name) == _SECTION_TYPES[name]():
                del out[name]
        return out

    def to_json(self) -> str:
        """JSON text (``inf`` written as the string ``"inf"``)."""
        return json.dumps(self.to_json_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ChipConfig:
        """Parse JSON text written by :meth:`to_json` (or by hand)."""
        from ittrna._plain import loads_json

        return cls.from_dict(loads_json(text, "JSON config", ConfigError, unique_keys=True))

    def to_toml(self) -> str:
        """TOML text, one table per section; ``None`` fields are omitted (they default to None)."""
        lines: list[str] = []
        for sname, section in self.to_dict().items():
            lines.append(f"[{sname}]")
            for key, value in section.items():
                if value is not None:
                    lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
        return "\n".join(lines)

    @classmethod
    def from_toml(cls, text: str) -> ChipConfig:
        """Parse TOML text."""
        from ittrna._plain import loads_toml

        return cls.from_dict(loads_toml(text, "TOML config", ConfigError))

    @classmethod
    def from_file(cls, path: str | Path) -> ChipConfig:
        """Load a ``.toml`` or ``.json`` file."""
        p = Path(path)
        if p.suffix not in (".toml", ".json"):
            raise ConfigError(f"config file {p} has suffix {p.suffix!r}; accepted .toml or .json")
        from ittrna._plain import read_small_text

        text = read_small_text(p, "config file", MAX_CONFIG_BYTES, ConfigError)
        try:
            return cls.from_toml(text) if p.suffix == ".toml" else cls.from_json(text)
        except ConfigError as exc:
            raise ConfigError(f"config file {p}: {exc}") from None

    def save(self, path: str | Path) -> None:
        """Write to ``.toml`` or ``.json`` (by suffix), atomically."""
        from ittrna._io import atomic_write_text

        p = Path(path)
        if p.suffix not in (".toml", ".json"):
            raise ConfigError(f"config file {p} has suffix {p.suffix!r}; accepted .toml or .json")
        atomic_write_text(p, self.to_toml() if p.suffix == ".toml" else self.to_json())

    @classmethod
    def preset(cls, name: str) -> ChipConfig:
        """A named preset from :data:`PRESETS`."""
        try:
            factory = PRESETS[name]
        except KeyError:
            raise ConfigError(f"unknown preset {name!r}; accepted one of {sorted(PRESETS)}") from None
        return factory()

    def override(self, changes: Mapping[str, Any]) -> ChipConfig:
        """A copy with dotted-path overrides applied, e.g. ``{"faults.rate": 0.2}``; validated again."""
        if not isinstance(changes, Mapping):
            raise ConfigError(f"override changes = {changes!r} has type {type(changes).__name__}; accepted a mapping "
                              "of 'section.field' to value, e.g. {'faults.rate': 0.1}")
        data = self.to_dict()
        for dotted, value in changes.items():
            if not isinstance(dotted, str):
                raise ConfigError(f"config field {dotted!r} has type {type(dotted).__name__}; accepted a "
                                  "'section.field' string, e.g. 'faults.rate'")
            parts = dotted.split(".")
            if len(parts) != 2 or parts[0] not in data or parts[1] not in data[parts[0]]:
                raise ConfigError(f"unknown config field {dotted!r}; accepted section.field, e.g. faults.rate")
            data[parts[0]][parts[1]] = value
        return ChipConfig.from_dict(data)


MAX_CONFIG_BYTES = 1 << 20
"""Largest config file read (1 MiB); a chip config is a few hundred bytes."""

_SECTION_TYPES: dict[str, type] = {
    "cell": CellConfig,
    "variation": VariationConfig,
    "faults": FaultConfig,
    "endurance": EnduranceConfig,
    "mapping": MappingConfig,
    "test": TestConfig,
    "relaxation": RelaxationConfig,
    "wires": WireConfig,
    "program_error": ProgramErrorConfig,
}

#: Sections added after records were stored: left out of every identity (store keys, chip ids) while at their
#: defaults, so a config that does not use them keeps the identity it had before they existed.
_LATER_SECTIONS: tuple[str, ...] = ("relaxation", "wires", "program_error")


def _encode_inf(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _encode_inf(v) for k, v in obj.items()}
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    return obj


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Coerce a JSON/TOML scalar to the dataclass field's annotated type (int/float/str/bool/None)."""
    args = typing.get_args(hint)
    if value is None:
        return None
    if args and type(None) in args:  # Optional[X]
        hint = next(a for a in args if a is not type(None))
    if hint is float:
        if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "infinity"):
            return math.inf
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise ConfigError(f"{name} = an integer of {value.bit_length()} bits is out of range (beyond a "
                                  "float)") from None
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _from_dict(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'} must be a table/object")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted((k for k in data if k not in known), key=repr)
    if unknown:
        raise ConfigError(f"unknown config field {prefix}{unknown[0]!r}; accepted {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, f"{prefix}{name}.")  # type: ignore[arg-type]
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


# --- presets -------------------------------------------------------------------------------------------
def _preset_default() -> ChipConfig:
    """Issue defaults: analog cells, ideal DAC/ADC, differential pairs on 128x128 tiles, r_on 10 kOhm,
    r_off 1 MOhm, no faults, no variation (set rates to taste)."""
    return ChipConfig()


def _preset_date17() -> ChipConfig:
    """Weight model of Chen et al. (DATE 2017) and ITT-RNA (TCAD 2020): ideal on/off ratio (Gmin = 0),
    analog cells, ideal periphery."""
    return ChipConfig(cell=CellConfig(r_on=10e3, r_off=math.inf))


def _preset_quantized4() -> ChipConfig:
    """A 4-bit (16-level) cell chip with 8-bit input DACs and 8-bit output ADCs per tile."""
    return ChipConfig(
        cell=CellConfig(levels=16), mapping=MappingConfig(dac_bits=8, adc_bits=8)
    )


def _preset_hfo2_4mb() -> ChipConfig:
    """Stuck-at fault statistics of the 4-Mb HfO2 test chip of Chen et al. (IEEE TC 2015): 9.04 %
    stuck-off and 1.75 % stuck-on cells (10.79 % in all)."""
    return ChipConfig(faults=FaultConfig(rate=0.1079, stuck_on_share=HFO2_STUCK_ON_SHARE))


def _preset_cmo_hfox() -> ChipConfig:
    """IBM's analog CMO/HfOx ReRAM as fitted in aihwkit (``ReRamCMONoiseModel``, Falcone et al.): conductances
    9-88.2 uS (r_on 11.34 kOhm, r_off 111.1 kOhm, aihwkit's ``SingleDeviceConductanceConverter`` range) and
    its relaxation (mean shift and spread growing with ln t), with global drift compensation in the periphery."""
    return ChipConfig(cell=CellConfig(r_on=1 / 88.199997e-6, r_off=1 / 9e-6),
                      relaxation=RelaxationConfig(model="cmo-hfox", compensation="global"))


def _preset_neurram() -> ChipConfig:
    """NeuRRAM (Wan et al., Nature 2022) as fitted in aihwkit (``ReRamWan2022NoiseModel``): Gmax 40 uS (r_on
    25 kOhm), Gmin 1 uS (r_off 1 MOhm), and the conductance-dependent spread of the fit at 1 s, 1 day and
    2 days (it includes the programming error, so ``variation.program_noise`` stays 0)."""
    return ChipConfig(cell=CellConfig(r_on=25e3, r_off=1e6), relaxation=RelaxationConfig(model="wan2022"))


#: Named presets, each a factory whose docstring cites its source.
PRESETS: dict[str, Callable[[], ChipConfig]] = {
    "default": _preset_default,
    "date17": _preset_date17,
    "quantized-4bit": _preset_quantized4,
    "hfo2-4mb": _preset_hfo2_4mb,
    "cmo-hfox": _preset_cmo_hfox,
    "neurram": _preset_neurram,
}


@dataclass(frozen=True)
class RefreshConfig(_Section):
    """Settings of a refresh under a write budget (:mod:`ittrna.methods.refresh`): a host-side step at a
    later time, not part of the chip."""

    _section: ClassVar[str] = "refresh"

    budget: float = 0.01
    """Writes allowed, as a fraction of the writes of re-programming the whole chip (every cell the layers
    use). Accepted (0, 1]."""

    min_error: float = 0.0
    """Only cells whose expected rms deviation at their age exceeds this fraction of Gmax are candidates.
    Accepted [0, 1]."""

    images: int = 256
    """Training images the importance is computed on. Accepted [16, 100000]."""

    batch_size: int = 32
    """Images per mini-batch of the importance (one squared gradient per batch). Accepted [1, 4096]."""

    quantiles: int = 16
    """Fixed quantiles of the relaxation model's N(0, 1) draw the expected deviation averages over.
    Accepted [2, 256]."""

    rank: str = "importance"
    """How the candidates are ranked. ``importance``: expected squared deviation × the weight's importance
    (the default, after SWIM); ``deviation``: the expected squared deviation alone (every weight alike);
    ``random``: a random order of the candidates (the baselines a ranking is measured against). Accepted
    ``importance``, ``deviation``, ``random``."""

    def __post_init__(self) -> None:
        self._range("budget", 0.0, 1.0, lo_open=True)
        self._range("min_error", 0.0, 1.0)
        self._int_range("images", 16, 100_000)
        self._int_range("batch_size", 1, 4096)
        self._int_range("quantiles", 2, 256)
        self._choice("rank", ("importance", "deviation", "random"))
