"""Conductance relaxation after programming: what a healthy cell reads at an age (seconds since its write).

Each model maps the conductance a cell presented right after its write, ``g0`` (siemens), its programmed
target and its age to the conductance it reads then. The random part is one N(0, 1) draw ``z`` per cell,
fixed per chip (:func:`ittrna.chip.state.relaxation_draw`), so a cell's trajectory is one curve in time:
the same age reads the same, a later age continues it. Every model returns ``g0`` unchanged at age 0 and is
whole-tensor (any shape; float32 conductances, float64 ages).

Models (``relaxation.model``; the names are declared in :data:`ittrna.registry.RELAXATION_MODELS`):

- ``none``: no change.
- ``cmo-hfox``: IBM Research Zurich's analog CMO/HfOx ReRAM as fitted in aihwkit's ``ReRamCMONoiseModel``
  (``src/aihwkit/inference/noise/reram.py``; Falcone et al.): the conductance distribution's mean shifts by
  -0.08900206 ln(t) uS and its spread is 0.04201137 ln(t) + 0.41183342 uS (t in s), independent of G, at the
  model's Gmax of 88.2 uS; here both are scaled by Gmax / 88.2 uS. Valid for t in [1 s, 10 years]; a cell
  younger than 1 s reads its 1-s value (the first fitted time).
- ``wan2022``: NeuRRAM (Wan et al., Nature 608, 2022) as fitted in aihwkit's ``ReRamWan2022NoiseModel``:
  the deviation from the target has spread sigma(x) = c0 + c1 x + ... + c4 x^4 uS, x = target / Gmax, fitted
  at 1 s, 1 day and 2 days at Gmax = 40 uS (scaled by Gmax / 40 uS); between fitted times sigma is
  interpolated linearly in ln t; past 2 days it is refused unless ``extrapolate`` continues the last
  segment. The fit includes the programming error at 1 s: use it with ``variation.program_noise = 0``.
- ``power-law``: G(t) = G0 (t / t0)^-nu for t > t0, nu = clip(nu_mean + nu_std z, 0, 1) per cell (MemTorch's
  ``conductance_drift``, Boybat et al., NVMTS 2018; nu statistics after aihwkit's PCM model).

The additive models (``cmo-hfox``, ``wan2022``) keep a relaxed conductance within [Gmin, Gmax], and one that
device variation left outside the range is not moved further out (relaxation pulls a filament towards its
stable states, it does not create new ones); ``power-law`` only ever decays, every state alike, so it is not
clipped (Gmin is the smallest programmable state, not a floor of the decay).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ittrna import registry as _registry
from ittrna.config import TIME_MAX_S, CellConfig, RelaxationConfig, parse_time
from ittrna.device.faults import HEALTHY
from ittrna.errors import ConfigError, InputError
from ittrna.registry import Registry

__all__ = ["MODELS", "WAN2022_COEFFS", "check_fitted", "check_time", "relax", "relax_healthy"]

US = 1e-6
"""One microsiemens in siemens."""

CMO_GMAX_REF = 88.199997 * US
"""aihwkit's Gmax of the CMO/HfOx fit (``SingleDeviceConductanceConverter``'s default), in siemens."""
CMO_MEAN = -0.08900206 * US
"""Mean shift per unit ln(t/s), in siemens at :data:`CMO_GMAX_REF`."""
CMO_STD = (0.04201137 * US, 0.41183342 * US)
"""Spread = a ln(t/s) + b, in siemens at :data:`CMO_GMAX_REF`."""
CMO_T_MIN = 1.0
"""First fitted time (s)."""

WAN2022_GMAX_REF = 40.0 * US
"""The Gmax (siemens) at which aihwkit's NeuRRAM polynomials were fitted."""
WAN2022_COEFFS: dict[float, tuple[float, ...]] = {
    1.0: (0.348, 16.030, -43.853, 45.393, -16.815),
    86400.0: (0.701, 22.086, -50.773, 47.095, -16.458),
    172800.0: (0.782, 20.274, -43.507, 37.062, -11.934),
}
"""sigma(x) = sum_i c_i x^i in uS (x = target / Gmax), per fitted time in seconds (c0 first)."""


def check_time(t: object, what: str = "time") -> float:
    """A time after programming in seconds (a number, or a number with a unit, :func:`ittrna.config.parse_time`),
    in [0, 10 years]; returned as a float. Raises :class:`~ittrna.errors.ConfigError` (an ``InputError``)."""
    return parse_time(t, what)


def check_fitted(cfg: RelaxationConfig, t: float, where: str) -> None:
    """Refuse, before any work, a time ``t`` (seconds) past the relaxation model's fitted range: ``wan2022``
    without ``extrapolate`` is fitted up to 2 days. Raises :class:`~ittrna.errors.ConfigError` naming
    ``where`` (the setting that asked for the time)."""
    last = max(WAN2022_COEFFS)
    if cfg.model == "wan2022" and not cfg.extrapolate and t > last:
        raise ConfigError(f"{where} = {t:g} s is past relaxation.model = 'wan2022''s fit (up to {last:g} "
                          "s, 2 days); accepted times up to 2 days, or \"relaxation.extrapolate\" = true")


def relax_healthy(g0: torch.Tensor, target: torch.Tensor, age: torch.Tensor, z: torch.Tensor, fault: torch.Tensor,
                  cfg: RelaxationConfig, cell: CellConfig) -> torch.Tensor:
    """:func:`relax` for the healthy cells; a stuck cell (``fault`` not ``HEALTHY``, same shape) keeps ``g0``:
    it was never programmed and does not relax."""
    return torch.where(fault == HEALTHY, relax(g0, target, age, z, cfg, cell), g0)


def relax(g0: torch.Tensor, target: torch.Tensor, age: torch.Tensor, z: torch.Tensor, cfg: RelaxationConfig,
          cell: CellConfig) -> torch.Tensor:
    """The conductance (siemens) healthy cells read at ``age`` seconds after their write.

    Args:
        g0: conductances right after the write (siemens), any shape, float32.
        target: the programmed targets (siemens), same shape (``wan2022``'s spread depends on it).
        age: seconds since each cell's write, same shape (or broadcastable), >= 0.
        z: the cells' fixed N(0, 1) draws, same shape.
        cfg: the relaxation model and its parameters.
        cell: the conductance range (Gmin, Gmax).

    Returns:
        float32 tensor of ``g0``'s shape; equal to ``g0`` where ``age`` is 0 (and everywhere for ``none``).

    Raises:
        InputError: an age beyond the model's valid range (10 years; ``wan2022``: 2 days without
            ``extrapolate``).
    """
    if not cfg.active:
        return g0
    age = age.to(device=g0.device, dtype=torch.float64)
    oldest = float(age.max()) if age.numel() else 0.0
    if oldest > TIME_MAX_S:
        raise InputError(f"a cell's age {oldest:g} s is beyond the relaxation models' range; accepted at most "
                         f"{TIME_MAX_S:g} s (10 years)")
    moved = MODELS[cfg.model](g0, target, age, z.to(g0.device), cfg, cell)
    out = moved if cfg.model == "power-law" else _keep_in_range(g0, moved, cell)
    return torch.where(age > 0, out, g0)


def _keep_in_range(g0: torch.Tensor, moved: torch.Tensor, cell: CellConfig) -> torch.Tensor:
    """``moved`` clipped to [Gmin, Gmax], widened to include ``g0`` (never pushed further out of range)."""
    lo = torch.clamp(g0, max=cell.g_min)
    hi = torch.clamp(g0, min=cell.g_max)
    return torch.minimum(torch.maximum(moved, lo), hi)


def _none(g0: torch.Tensor, target: torch.Tensor, age: torch.Tensor, z: torch.Tensor, cfg: RelaxationConfig,
          cell: CellConfig) -> torch.Tensor:
    return g0


def _cmo_hfox(g0: torch.Tensor, target: torch.Tensor, age: torch.Tensor, z: torch.Tensor, cfg: RelaxationConfig,
              cell: CellConfig) -> torch.Tensor:
    k = cfg.scale * cell.g_max / CMO_GMAX_REF
    ln_t = torch.log(age.clamp(min=CMO_T_MIN))  # float64
    shift = CMO_MEAN * ln_t
    spread = (CMO_STD[0] * ln_t + CMO_STD[1]).clamp(min=0.0)
    return (g0.double() + k * (shift + spread * z.double())).to(g0.dtype)


def _wan_sigma(x: torch.Tensor, coeffs: tuple[float, ...]) -> torch.Tensor:
    """sum_i c_i x^i (uS), by Horner's rule, >= 0."""
    out = torch.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * x + c
    return out.clamp(min=0.0)


def _wan2022(g0: torch.Tensor, target: torch.Tensor, age: torch.Tensor, z: torch.Tensor, cfg: RelaxationConfig,
             cell: CellConfig) -> torch.Tensor:
    times = sorted(WAN2022_COEFFS)
    oldest = float(age.max()) if age.numel() else 0.0
    if oldest > times[-1] and not cfg.extrapolate:
        raise InputError(f"relaxation.model = 'wan2022' was fitted up to {times[-1]:g} s (2 days); a cell's age is "
                         f"{oldest:g} s; accepted ages up to 2 days, or relaxation.extrapolate = true")
    x = (target.double() / cell.g_max).clamp(0.0, 1.0)
    sig = [_wan_sigma(x, WAN2022_COEFFS[t]) for t in times]  # each: sigma at a fitted time, uS
    ln_t = torch.log(age.clamp(min=times[0]))
    ln = [math.log(t) for t in times]
    # piecewise linear in ln t through the fitted times; the last segment continues past them
    sigma = sig[0] + (sig[1] - sig[0]) * ((ln_t - ln[0]) / (ln[1] - ln[0])).clamp(0.0, 1.0)
    tail = sig[1] + (sig[2] - sig[1]) * ((ln_t - ln[1]) / (ln[2] - ln[1])).clamp(min=0.0)
    sigma = torch.where(ln_t > ln[1], tail, sigma).clamp(min=0.0)
    k = cfg.scale * cell.g_max / WAN2022_GMAX_REF * US
    return (g0.double() + k * sigma * z.double()).to(g0.dtype)


def _power_law(g0: torch.Tensor, target: torch.Tensor, age: torch.Tensor, z: torch.Tensor, cfg: RelaxationConfig,
               cell: CellConfig) -> torch.Tensor:
    nu = (cfg.nu_mean + cfg.nu_std * z.double()).clamp(0.0, 1.0) * cfg.scale
    ratio = (age / cfg.t0).clamp(min=1.0)
    return (g0.double() * torch.pow(ratio, -nu)).to(g0.dtype)


RelaxFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, RelaxationConfig, CellConfig],
                   torch.Tensor]

#: Relaxation laws by ``relaxation.model`` (names declared in :data:`ittrna.registry.RELAXATION_MODELS`).
MODELS: Registry[RelaxFn] = _registry.RELAXATION_MODELS
for _name, _fn in (("none", _none), ("cmo-hfox", _cmo_hfox), ("wan2022", _wan2022), ("power-law", _power_law)):
    MODELS.register(_name, _fn, home=__name__)
