"""Conductance-dependent programming error: the residual error of a write, whose spread depends on the target.

A healthy cell written to the target G presents G e^(theta + eps) + delta with delta = scale * sigma(G) * z,
z ~ N(0, 1) drawn at every performed write (:func:`ittrna.chip.program.program`), the sum clamped at 0 S
(:func:`ittrna.device.cells.read_conductance`). Units: siemens; the published fits are in microsiemens.
Whole-tensor (any shape), float32 in and out; sigma is evaluated in float64.

Models (``program_error.model``; the names are declared in :data:`ittrna.registry.PROGRAM_ERROR_MODELS`):

- ``none``: sigma = 0 (nothing is drawn: a chip without this model is the chip of earlier versions).
- ``crosssim-wan``: Sandia CrossSim's ``RRAMWan`` (``simulator/devices/custom/RRAM_Wan.py``), a cubic fit to
  the NeuRRAM chip's programming error (Wan et al., Nature 608, 2022, Extended Data Fig. 3, t = 1 s):
  sigma = 1.536e-4 G^3 - 1.167e-2 G^2 + 0.2374 G + 1.053 uS with G in uS. Valid for Gmax <= 39.26 uS (the
  config refuses a larger Gmax).
- ``aihwkit-pcm``: aihwkit's ``PCMLikeNoiseModel.apply_programming_noise_to_conductance``
  (``src/aihwkit/inference/noise/pcm.py``; Nandakumar et al., ICECS 2019): sigma = 0.26348 + 1.9650 x
  - 1.1731 x^2 uS, x = G / Gmax, fitted at Gmax = 25 uS and scaled by Gmax / 25 uS.
- ``polynomial``: sigma = c0 + c1 x + c2 x^2 + c3 x^3 uS, x = G / Gmax, scaled by Gmax / ``g_ref_us``.

Every sigma is clamped at 0, as both sources do.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ittrna import registry as _registry
from ittrna.config import CellConfig, ProgramErrorConfig
from ittrna.registry import Registry

__all__ = ["AIHWKIT_PCM_COEFFS", "CROSSSIM_WAN_COEFFS", "MODELS", "sample_delta", "sigma"]

US = 1e-6
"""One microsiemens in siemens."""

CROSSSIM_WAN_COEFFS = (1.053, 2.374e-1, -1.167e-2, 1.536e-4)
"""sigma(G) = sum_i c_i G^i in uS with G in uS (c0 first): CrossSim's ``RRAMWan`` cubic."""

AIHWKIT_PCM_COEFFS = (0.26348, 1.9650, -1.1731)
"""sigma(x) = sum_i c_i x^i in uS, x = G / Gmax (c0 first), at :data:`AIHWKIT_PCM_GMAX_REF`."""
AIHWKIT_PCM_GMAX_REF = 25.0 * US
"""The Gmax (siemens) aihwkit's PCM programming polynomial was fitted at."""


def _horner(x: torch.Tensor, coeffs: tuple[float, ...]) -> torch.Tensor:
    """sum_i c_i x^i (c0 first) by Horner's rule."""
    out = torch.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * x + c
    return out


def _none(target: torch.Tensor, cfg: ProgramErrorConfig, cell: CellConfig) -> torch.Tensor:
    return torch.zeros_like(target)


def _crosssim_wan(target: torch.Tensor, cfg: ProgramErrorConfig, cell: CellConfig) -> torch.Tensor:
    return _horner(target / US, CROSSSIM_WAN_COEFFS) * US


def _aihwkit_pcm(target: torch.Tensor, cfg: ProgramErrorConfig, cell: CellConfig) -> torch.Tensor:
    return _horner(target / cell.g_max, AIHWKIT_PCM_COEFFS) * (US * cell.g_max / AIHWKIT_PCM_GMAX_REF)


def _polynomial(target: torch.Tensor, cfg: ProgramErrorConfig, cell: CellConfig) -> torch.Tensor:
    coeffs = (cfg.c0, cfg.c1, cfg.c2, cfg.c3)
    return _horner(target / cell.g_max, coeffs) * US * (cell.g_max / (cfg.g_ref_us * US))


SigmaFn = Callable[[torch.Tensor, ProgramErrorConfig, CellConfig], torch.Tensor]

#: sigma(G) laws by ``program_error.model`` (names declared in :data:`ittrna.registry.PROGRAM_ERROR_MODELS`).
MODELS: Registry[SigmaFn] = _registry.PROGRAM_ERROR_MODELS
for _name, _fn in (("none", _none), ("crosssim-wan", _crosssim_wan), ("aihwkit-pcm", _aihwkit_pcm),
                   ("polynomial", _polynomial)):
    MODELS.register(_name, _fn, home=__name__)


def sigma(target: torch.Tensor, cfg: ProgramErrorConfig, cell: CellConfig) -> torch.Tensor:
    """The programming error's standard deviation (siemens) at each target conductance.

    Args:
        target: programmed targets (siemens), any shape.
        cfg: the model and its parameters (``scale`` included).
        cell: the conductance range (the relative models' Gmax).

    Returns:
        float32 tensor of ``target``'s shape, >= 0 (zeros for ``none``).
    """
    t = target.detach().to(torch.float64)
    return (MODELS[cfg.model](t, cfg, cell).clamp(min=0.0) * cfg.scale).to(torch.float32)


def sample_delta(target: torch.Tensor, cfg: ProgramErrorConfig, cell: CellConfig,
                 generator: torch.Generator) -> torch.Tensor:
    """One write's additive error (siemens) per cell: sigma(target) * z, z ~ N(0, 1) from ``generator``
    (a CPU generator; the draw has ``target``'s shape and is moved to its device)."""
    z = torch.randn(tuple(target.shape), generator=generator).to(target.device)
    return sigma(target, cfg, cell) * z
