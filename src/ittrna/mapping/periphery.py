"""The tile periphery: DAC input and per-tile ADC output quantisation, and the tile-by-tile matmul."""

from __future__ import annotations

import torch

from ittrna.mapping.tiling import TileGrid
from ittrna.mapping.unfold import grouped_matmul

__all__ = ["adc_full_scale", "quantize_signed", "tile_partials", "tiled_matmul"]


def quantize_signed(x: torch.Tensor, bits: int, full_scale: torch.Tensor) -> torch.Tensor:
    """Uniform signed quantisation to ``2**(bits-1) - 1`` steps per polarity over +/- ``full_scale``
    (broadcast against ``x``); values beyond full scale saturate. 1 bit gives {-fs, 0, fs}."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bits = {bits} is out of range; accepted an integer in [1, 32]")
    steps = max(2 ** (bits - 1) - 1, 1)
    fs = full_scale.clamp_min(torch.finfo(x.dtype).tiny)
    return torch.round((x / fs).clamp(-1, 1) * steps) / steps * fs


def tile_partials(x: torch.Tensor, matrix: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """Per-tile partial sums before the ADC: (B, groups * K) inputs (group-major, see
    :func:`~ittrna.mapping.unfold.grouped_matmul`), (K, N) matrix -> (B, tiles along K, tiles along N, cols)."""
    tr, tc = grid.tiles
    kp, np_ = grid.padded
    b, g = x.shape[0], grid.groups
    xt = torch.nn.functional.pad(x.view(b, g, grid.k), (0, kp - grid.k)).view(b, g, tr, grid.rows)  # (B, G, tr, R)
    wt = grid.pad(matrix).view(tr, grid.rows, g, np_ // g)  # (tr, R, G, Np / G): each group's own tile columns
    return torch.einsum("bgtr,trgn->btgn", xt, wt).reshape(b, tr, tc, grid.cols)  # (B, tr, tc, C)


def adc_full_scale(partial: torch.Tensor, percentile: float) -> torch.Tensor:
    """Calibrated full scale per tile: the ``percentile`` of |partial sum| over the batch and the tile's
    columns. ``partial`` (B, tr, tc, C) -> (tr, tc)."""
    b, tr, tc, c = partial.shape
    a = partial.detach().abs().permute(1, 2, 0, 3).reshape(tr * tc, b * c)  # (tiles, samples)
    if percentile >= 100:
        return a.amax(dim=1).view(tr, tc)
    limit = max(1, (1 << 24) // max(tr * tc, 1))  # torch.quantile's input limit
    if a.shape[1] > limit:
        a = a[:, torch.linspace(0, a.shape[1] - 1, limit, device=a.device).long()]
    return torch.quantile(a.float(), percentile / 100, dim=1).to(partial.dtype).view(tr, tc)


def tiled_matmul(
    x: torch.Tensor, matrix: torch.Tensor, grid: TileGrid, dac_bits: int | None, adc_bits: int | None,
    full_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ matrix`` computed tile by tile with DAC input and per-tile ADC output quantisation.

    DAC: each input vector is quantised with its own full scale max |x|. ADC: each tile's partial sums are
    quantised with the tile's calibrated ``full_scale`` (tr, tc) (see :func:`adc_full_scale`); without one,
    with the largest |partial sum| of that tile over this batch (an ideal converter re-ranged per batch).
    Partial sums of the tiles along K are then added digitally.

    Args:
        x: (B, groups * K) inputs (each column group's own, group-major).
        matrix: (K, N) effective weights.
        grid: tiling of the matrix.
        dac_bits / adc_bits: resolutions, None = ideal.
        full_scale: (tiles along K, tiles along N) calibrated ADC full scales.

    Returns:
        (B, N) outputs.
    """
    if dac_bits is not None:
        x = quantize_signed(x, dac_bits, x.abs().amax(dim=1, keepdim=True))
    if adc_bits is None:
        return grouped_matmul(x, matrix, grid.groups)
    tr, tc = grid.tiles
    np_ = grid.padded[1]
    b = x.shape[0]
    partial = tile_partials(x, matrix, grid)  # (B, tr, tc, C)
    fs = (full_scale.to(partial.dtype).view(1, tr, tc, 1) if full_scale is not None
          else partial.abs().amax(dim=(0, 3), keepdim=True))  # (1, tr, tc, 1): one full scale per tile
    partial = quantize_signed(partial, adc_bits, fs)
    out = partial.sum(dim=1).reshape(b, np_)  # (B, Np)
    return out[:, : grid.n] if grid.groups == 1 else out.index_select(1, grid.column_index.to(out.device))
