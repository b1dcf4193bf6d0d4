"""RRAM cell conductance: range, programmable levels, reading a (possibly stuck) cell, endurance wear.

Units: conductance in siemens. Gmax = 1/r_on (low-resistance state), Gmin = 1/r_off (high-resistance
state, 0 for r_off = inf). Source: two-terminal HfOx/TaOx RRAM cells read at low voltage; the weight model
of Chen et al. (DATE 2017) and ITT-RNA (IEEE TCAD 2020).
"""

from __future__ import annotations

import torch

from ittrna.config import CellConfig, EnduranceConfig
from ittrna.device.faults import HEALTHY, STUCK_OFF, STUCK_ON

__all__ = ["clamp_to_range", "quantize_levels", "read_conductance", "wear_out"]


def clamp_to_range(g: torch.Tensor, cell: CellConfig) -> torch.Tensor:
    """Clamp programming targets to the programmable range [Gmin, Gmax]."""
    return g.clamp(cell.g_min, cell.g_max)


def quantize_levels(g: torch.Tensor, cell: CellConfig) -> torch.Tensor:
    """Round (clamped) targets to the nearest of ``cell.levels`` evenly spaced levels; analog: unchanged.

    Valid input: conductances in siemens; values outside [Gmin, Gmax] are clamped first.
    """
    g = clamp_to_range(g, cell)
    if cell.levels is None:
        return g
    step = (cell.g_max - cell.g_min) / (cell.levels - 1)
    return cell.g_min + torch.round((g - cell.g_min) / step) * step


def read_conductance(
    g: torch.Tensor, fault: torch.Tensor, log_factor: torch.Tensor, cell: CellConfig,
    delta: torch.Tensor | None = None,
) -> torch.Tensor:
    """Conductance a cell actually presents (siemens).

    Healthy cells read ``g * exp(log_factor)`` (lognormal variation plus any programming/read noise; no
    clipping: variation may leave the nominal range), plus ``delta`` where given (the additive,
    conductance-dependent programming error of :mod:`ittrna.device.programming`; the sum clamped at 0 S).
    ``stuck_off`` cells read Gmin and ``stuck_on`` cells read Gmax whatever was programmed.

    Args:
        g: programmed targets (siemens), any shape.
        fault: int8 codes of the same shape (HEALTHY / STUCK_OFF / STUCK_ON).
        log_factor: theta (+ noise) of the same shape.
        cell: conductance range.
        delta: additive programming error (siemens) of the same shape, or None.
    """
    out = torch.exp(log_factor).mul_(g)  # healthy cells: g * e^(theta + noise)
    if delta is not None:
        out = out.add_(delta).clamp_(min=0.0)
    out.masked_fill_(fault == STUCK_OFF, cell.g_min)
    return out.masked_fill_(fault == STUCK_ON, cell.g_max)


def wear_out(writes: torch.Tensor, fault: torch.Tensor, cfg: EnduranceConfig) -> torch.Tensor:
    """Fault codes after wear: a healthy cell written more than ``cfg.endurance`` times gets stuck at
    ``cfg.failure_state``. Source: RRAM endurance failure (filament no longer switchable); units: writes."""
    state = STUCK_ON if cfg.failure_state == "stuck_on" else STUCK_OFF
    worn = (writes > cfg.endurance) & (fault == HEALTHY)
    return torch.where(worn, torch.full_like(fault, state), fault)
