"""Weight <-> conductance mapping, tiling over crossbars, Conv2d unrolling and the tile periphery.

A layer's weight becomes a matrix of K rows (inputs, word lines) by N columns (outputs, bit lines):
``Linear`` (out, in) -> its transpose (in, out); ``Conv2d`` (Cout, Cin, kh, kw) -> (Cin*kh*kw, Cout), the
im2col unrolling. The matrix is tiled over ``rows x cols`` crossbars; the physical cell arrays are padded to
a whole number of tiles (padding cells are fabricated, faulty or not, but carry no weight).

Converters (explicit registry :data:`CONVERTERS`) turn a matrix into named cell arrays of target
conductances and back:

- ``differential`` (default): w = s * (G+ - G-) / (Gmax - Gmin); the active cell carries |w|, the
  inactive one sits at Gmin. Arrays ``pos`` and ``neg``, each (Kp, Np).
- ``offset``: w = 2 s * (G - Gref) / (Gmax - Gmin) with one cell per weight around mid-range and a
  reference column per tile at Gref = (Gmin + Gmax)/2, whose current every column of that tile subtracts.
  Arrays ``main`` (Kp, Np) and ``ref`` (Kp, tiles along N).

``s`` is the per-layer weight scale: the ``clip_percentile`` percentile of |w| (100 = max |w|).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ittrna.config import CellConfig

__all__ = [
    "CONVERTERS",
    "Converter",
    "Differential",
    "Offset",
    "TileGrid",
    "matrix_to_weight",
    "quantize_signed",
    "tiled_matmul",
    "weight_scale",
    "weight_to_matrix",
]


@dataclass(frozen=True)
class TileGrid:
    """How a K x N matrix lies on ``rows x cols`` tiles."""

    k: int
    """Matrix rows (inputs)."""
    n: int
    """Matrix columns (outputs)."""
    rows: int
    """Tile rows."""
    cols: int
    """Tile columns."""

    @property
    def tiles(self) -> tuple[int, int]:
        """(tiles along K, tiles along N)."""
        return math.ceil(self.k / self.rows), math.ceil(self.n / self.cols)

    @property
    def padded(self) -> tuple[int, int]:
        """(Kp, Np): the matrix padded to whole tiles."""
        tr, tc = self.tiles
        return tr * self.rows, tc * self.cols


def weight_to_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) -> (in, out); (Cout, Cin, kh, kw) -> (Cin*kh*kw, Cout)."""
    return weight.reshape(weight.shape[0], -1).t()


def matrix_to_weight(matrix: torch.Tensor, weight_shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`weight_to_matrix`."""
    return matrix.t().reshape(weight_shape)


def mapped_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The ``Linear``/``Conv2d`` layers of ``model`` in definition order (grouped convs rejected)."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.groups != 1:
                raise ValueError(f"layer {name!r}: grouped Conv2d (groups={module.groups}) is not supported")
            found.append((name, module))
        elif isinstance(module, nn.Linear):
            found.append((name, module))
    return found


def weight_scale(weight: torch.Tensor, clip_percentile: float) -> float:
    """Per-layer scale s: the ``clip_percentile`` percentile of |w| (100 = max |w|); 1.0 for all-zero."""
    a = weight.detach().abs().flatten().float()
    s = float(a.max()) if clip_percentile >= 100 else float(torch.quantile(a.cpu(), clip_percentile / 100))
    return s if s > 0 else 1.0


class Converter(Protocol):
    """Turns a weight matrix into named arrays of target conductances and back."""

    name: str

    def array_shapes(self, grid: TileGrid) -> dict[str, tuple[int, int]]:
        """Name -> (rows, cols) of each physical cell array for this grid."""
        ...

    def array_tiles(self, grid: TileGrid) -> dict[str, tuple[int, int]]:
        """Name -> (rows, cols) of one tile of that array (what a broken line spans)."""
        ...

    def to_conductance(
        self, matrix: torch.Tensor, scale: float, cell: CellConfig, grid: TileGrid
    ) -> dict[str, torch.Tensor]:
        """Ideal target conductances (siemens) for a (K, N) matrix, padded to the arrays' shapes."""
        ...

    def to_matrix(
        self, g: dict[str, torch.Tensor], scale: float, cell: CellConfig, grid: TileGrid
    ) -> torch.Tensor:
        """The (K, N) weight matrix that conductances ``g`` realise."""
        ...


def _pad(matrix: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    kp, np_ = grid.padded
    return torch.nn.functional.pad(matrix, (0, np_ - grid.n, 0, kp - grid.k))


class Differential:
    """w = s * (G+ - G-) / (Gmax - Gmin); the inactive cell of each pair at Gmin."""

    name = "differential"

    def array_shapes(self, grid: TileGrid) -> dict[str, tuple[int, int]]:
        return {"pos": grid.padded, "neg": grid.padded}

    def array_tiles(self, grid: TileGrid) -> dict[str, tuple[int, int]]:
        return {"pos": (grid.rows, grid.cols), "neg": (grid.rows, grid.cols)}

    def to_conductance(
        self, matrix: torch.Tensor, scale: float, cell: CellConfig, grid: TileGrid
    ) -> dict[str, torch.Tensor]:
        span = cell.g_max - cell.g_min
        wc = _pad(matrix, grid).clamp(-scale, scale) / scale  # (Kp, Np) in [-1, 1]
        return {"pos": cell.g_min + span * wc.clamp_min(0), "neg": cell.g_min + span * (-wc).clamp_min(0)}

    def to_matrix(
        self, g: dict[str, torch.Tensor], scale: float, cell: CellConfig, grid: TileGrid
    ) -> torch.Tensor:
        span = cell.g_max - cell.g_min
        return ((g["pos"] - g["neg"]) * (scale / span))[: grid.k, : grid.n]


class Offset:
    """w = 2 s * (G - Gref) / (Gmax - Gmin); one reference column per tile at Gref.

    Gref is the mid-range conductance (Gmin + Gmax) / 2 for analog cells. With ``L`` levels it is the level
    nearest to mid-range, level (L - 1) // 2 (mid-range itself for odd L; for even L the level half a step
    below it, since mid-range falls between two levels). Weights map symmetrically around Gref, so the
    realised reference that every column subtracts is exactly the nominal one and a perfect chip reproduces
    each weight within the quantisation error s / (L - 1) (half a level step, in weight units). For even L the
    largest positive weights would need Gmax + step/2; they clamp to Gmax, an error of the same half step.
    (Before this fix Gref targeted mid-range and was rounded to a level like every cell, so with even L every
    weight shifted by -s / (L - 1).)
    """

    name = "offset"

    def array_shapes(self, grid: TileGrid) -> dict[str, tuple[int, int]]:
        kp, np_ = grid.padded
        return {"main": (kp, np_), "ref": (kp, grid.tiles[1])}

    def array_tiles(self, grid: TileGrid) -> dict[str, tuple[int, int]]:
        return {"main": (grid.rows, grid.cols), "ref": (grid.rows, 1)}

    @staticmethod
    def reference(cell: CellConfig) -> float:
        """Gref in siemens: mid-range for analog cells, else the level nearest to it (see the class)."""
        if cell.levels is None:
            return 0.5 * (cell.g_min + cell.g_max)
        step = (cell.g_max - cell.g_min) / (cell.levels - 1)
        return cell.g_min + ((cell.levels - 1) // 2) * step

    def to_conductance(
        self, matrix: torch.Tensor, scale: float, cell: CellConfig, grid: TileGrid
    ) -> dict[str, torch.Tensor]:
        ref = self.reference(cell)
        half = 0.5 * (cell.g_max - cell.g_min)
        wc = _pad(matrix, grid).clamp(-scale, scale) / scale  # (Kp, Np)
        kp = grid.padded[0]
        main = (ref + half * wc).clamp(cell.g_min, cell.g_max)
        return {"main": main, "ref": torch.full((kp, grid.tiles[1]), ref, dtype=matrix.dtype, device=matrix.device)}

    def to_matrix(
        self, g: dict[str, torch.Tensor], scale: float, cell: CellConfig, grid: TileGrid
    ) -> torch.Tensor:
        half = 0.5 * (cell.g_max - cell.g_min)
        ref = g["ref"].repeat_interleave(grid.cols, dim=1)  # (Kp, Np): each tile's reference column
        return ((g["main"] - ref) * (scale / half))[: grid.k, : grid.n]


#: Mapping schemes by the name used in ``MappingConfig.scheme``.
CONVERTERS: dict[str, Converter] = {"differential": Differential(), "offset": Offset()}


def quantize_signed(x: torch.Tensor, bits: int, full_scale: torch.Tensor) -> torch.Tensor:
    """Uniform signed quantisation to ``2**(bits-1) - 1`` steps per polarity over +/- ``full_scale``
    (broadcast against ``x``); values beyond full scale saturate. 1 bit gives {-fs, 0, fs}."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bits = {bits} is out of range; accepted an integer in [1, 32]")
    steps = max(2 ** (bits - 1) - 1, 1)
    fs = full_scale.clamp_min(torch.finfo(x.dtype).tiny)
    return torch.round((x / fs).clamp(-1, 1) * steps) / steps * fs


def tiled_matmul(
    x: torch.Tensor, matrix: torch.Tensor, grid: TileGrid, dac_bits: int | None, adc_bits: int | None
) -> torch.Tensor:
    """``x @ matrix`` computed tile by tile with DAC input and per-tile ADC output quantisation.

    DAC: each input vector is quantised with its own full scale max |x|. ADC: each tile's partial sums are
    quantised with a full scale equal to the largest |partial sum| of that tile over the batch (an ideally
    calibrated converter). Partial sums of the tiles along K are then added digitally.

    Args:
        x: (B, K) inputs.
        matrix: (K, N) effective weights.
        grid: tiling of the matrix.
        dac_bits / adc_bits: resolutions, None = ideal.

    Returns:
        (B, N) outputs.
    """
    if dac_bits is not None:
        x = quantize_signed(x, dac_bits, x.abs().amax(dim=1, keepdim=True))
    if adc_bits is None:
        return x @ matrix
    tr, tc = grid.tiles
    kp, np_ = grid.padded
    b = x.shape[0]
    xt = torch.nn.functional.pad(x, (0, kp - grid.k)).view(b, tr, grid.rows)  # (B, tr, R)
    wt = _pad(matrix, grid).view(tr, grid.rows, np_)  # (tr, R, Np)
    partial = torch.einsum("btr,trn->btn", xt, wt).view(b, tr, tc, grid.cols)  # (B, tr, tc, C)
    fs = partial.abs().amax(dim=(0, 3), keepdim=True)  # (1, tr, tc, 1): one full scale per tile
    partial = quantize_signed(partial, adc_bits, fs)
    return partial.sum(dim=1).reshape(b, np_)[:, : grid.n]
