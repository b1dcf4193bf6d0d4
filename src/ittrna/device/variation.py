"""Lognormal conductance variation.

Model (Chen et al., DATE 2017; Song et al., ITT-RNA, IEEE TCAD 2020): a cell programmed to G reads
G' = G * exp(theta), theta ~ N(0, sigma^2). Units: theta is a natural-log factor (dimensionless);
valid sigma range [0, 3] (larger spreads are not physical for RRAM and overflow float32 products).
"""

from __future__ import annotations

import torch

__all__ = ["lognormal_factor_log", "sample_theta"]

SIGMA_MAX = 3.0


def _check_sigma(sigma: float, what: str) -> None:
    if not 0.0 <= sigma <= SIGMA_MAX:
        raise ValueError(f"{what} = {sigma!r} is out of range; accepted [0, {SIGMA_MAX:g}]")


def sample_theta(shape: tuple[int, ...], sigma: float, generator: torch.Generator, *,
                 normal: torch.Tensor | None = None) -> torch.Tensor:
    """Device-to-device log factors theta ~ N(0, sigma^2), fixed per cell per chip.

    Args:
        shape: cell-array shape, e.g. (rows, cols).
        sigma: standard deviation of theta (dimensionless), accepted [0, 3].
        generator: CPU generator the draw comes from.
        normal: the N(0, 1) draw of ``shape`` this generator would give first (a die drawn once and reused
            across sigmas; the result is the same bit for bit).

    Returns:
        float32 tensor of ``shape`` (zeros when sigma == 0, drawing nothing).
    """
    _check_sigma(sigma, "variation.sigma")
    if sigma == 0.0:
        return torch.zeros(shape)
    return (normal if normal is not None else torch.randn(shape, generator=generator)) * sigma


def lognormal_factor_log(
    shape: tuple[int, ...], sigma: float, generator: torch.Generator, *, device: torch.device | None = None
) -> torch.Tensor:
    """Log of a multiplicative noise factor N(0, sigma^2), redrawn at each write or read.

    Source: cycle-to-cycle programming/read variation modelled lognormally like device-to-device variation.
    Accepted sigma [0, 3]. Returns float32 zeros when sigma == 0.
    """
    _check_sigma(sigma, "noise sigma")
    if sigma == 0.0:
        return torch.zeros(shape, device=device)
    return (torch.randn(shape, generator=generator) * sigma).to(device)
