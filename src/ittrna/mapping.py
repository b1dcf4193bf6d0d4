"""Weight <-> conductance mapping, tiling over crossbars, Conv2d unrolling and the tile periphery.

A layer's weight becomes a matrix of K rows (inputs, word lines) by N columns (outputs, bit lines):
``Linear`` (out, in) -> its transpose (in, out); ``Conv2d`` (Cout, Cin, kh, kw) -> (Cin*kh*kw, Cout), the
im2col unrolling. The matrix is tiled over ``rows x cols`` crossbars; the physical cell arrays are padded to
a whole number of tiles (padding cells are fabricated, faulty or not, but carry no weight). Each tile may
have ``spare`` extra word lines (``mapping.spare_rows``), so a physical array has (Kph, Np) =
(tiles along K * (rows + spare), tiles along N * cols) cells.

A :class:`LayerLayout` is the layer's digital periphery, which costs no cell writes: a per-tile row routing
(logical input -> physical word line, within the tile row, spare lines included) and a per-column polarity.
:func:`to_physical` / :func:`to_logical` move a matrix between the logical (K, N) and physical (Kph, Np)
views; converters work on the physical view.

Converters (explicit registry :data:`CONVERTERS`) turn a matrix into named cell arrays of target
conductances and back:

- ``differential`` (default): w = s * (G+ - G-) / (Gmax - Gmin); the active cell carries |w|, the
  inactive one sits at Gmin. Arrays ``pos`` and ``neg``, each (Kph, Np).
- ``offset``: w = 2 s * (G - Gref) / (Gmax - Gmin) with one cell per weight around mid-range and a
  reference column per tile at Gref = (Gmin + Gmax)/2, whose current every column of that tile subtracts.
  Arrays ``main`` (Kph, Np) and ``ref`` (Kph, tiles along N).

``s`` is the per-layer weight scale: the ``clip_percentile`` percentile of |w| (100 = max |w|).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ittrna.config import CellConfig
from ittrna.errors import InputError

__all__ = [
    "CONVERTERS",
    "Converter",
    "Differential",
    "LayerLayout",
    "Offset",
    "TileGrid",
    "matrix_to_weight",
    "quantize_signed",
    "tiled_matmul",
    "to_logical",
    "to_physical",
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
    spare: int = 0
    """Spare word lines per tile beyond ``rows`` (physical rows per tile = rows + spare); a layout's row
    permutation may route a logical row onto a spare one."""

    @property
    def tiles(self) -> tuple[int, int]:
        """(tiles along K, tiles along N)."""
        return math.ceil(self.k / self.rows), math.ceil(self.n / self.cols)

    @property
    def padded(self) -> tuple[int, int]:
        """(Kp, Np): the logical matrix padded to whole tiles."""
        tr, tc = self.tiles
        return tr * self.rows, tc * self.cols

    @property
    def tile_rows(self) -> int:
        """Physical word lines per tile (rows + spare)."""
        return self.rows + self.spare

    @property
    def physical(self) -> tuple[int, int]:
        """(Kph, Np): rows and columns of a physical cell array (spare rows included)."""
        tr, tc = self.tiles
        return tr * self.tile_rows, tc * self.cols


@dataclass(frozen=True, eq=False)
class LayerLayout:
    """Digital layout of one layer on its tiles: input routing and column polarity (costs no cell writes).

    - ``row_map`` (tc, Kp) int64: for tile column ``c``, logical (padded) row ``k`` drives physical word line
      ``row_map[c, k]`` of the same tile row (rows of tile row ``i`` go to physical rows
      ``[i * (rows + spare), (i + 1) * (rows + spare))``); unused physical rows get no input.
    - ``col_sign`` (Np,) float32 of +/-1: -1 swaps the roles of a column's cells (G+ holds the negative
      part) and the periphery negates that column's output digitally.
    """

    row_map: torch.Tensor
    """(tiles along N, Kp) int64 logical row -> physical word line, per tile column."""
    col_sign: torch.Tensor
    """(Np,) float32 column polarity, +1 or -1."""

    @classmethod
    def identity(cls, grid: TileGrid) -> LayerLayout:
        """Logical row k of tile row i on physical row i * (rows + spare) + k % rows; all polarities +1."""
        kp, np_ = grid.padded
        k = torch.arange(kp)
        rows = (k // grid.rows) * grid.tile_rows + k % grid.rows
        return cls(rows.unsqueeze(0).repeat(grid.tiles[1], 1), torch.ones(np_))

    def check(self, grid: TileGrid, where: str = "layout") -> None:
        """Raise ValueError unless this layout fits ``grid`` (shapes, same-tile routing, no shared line)."""
        tc = grid.tiles[1]
        kp, np_ = grid.padded
        if tuple(self.row_map.shape) != (tc, kp) or self.row_map.dtype != torch.int64:
            raise InputError(f"{where}: row_map must be int64 of shape {(tc, kp)}, got "
                             f"{self.row_map.dtype} {tuple(self.row_map.shape)}")
        if tuple(self.col_sign.shape) != (np_,):
            raise InputError(f"{where}: col_sign must have shape {(np_,)}, got {tuple(self.col_sign.shape)}")
        if not bool(((self.col_sign == 1) | (self.col_sign == -1)).all()):
            raise InputError(f"{where}: col_sign values must be +1 or -1")
        tile_of_logical = torch.arange(kp) // grid.rows
        if not bool((self.row_map // grid.tile_rows == tile_of_logical).all()) or int(self.row_map.min()) < 0:
            raise InputError(f"{where}: row_map routes a row outside its own tile row")
        if any(torch.unique(r).numel() != kp for r in self.row_map):
            raise InputError(f"{where}: row_map routes two logical rows onto one word line")

    def is_identity(self, grid: TileGrid) -> bool:
        """True for the identity layout without spare rows (then the physical view is a zero-padded logical
        one; cached)."""
        cached = self.__dict__.get("_identity")
        if cached is None:
            ident = LayerLayout.identity(grid)
            cached = grid.spare == 0 and bool((self.col_sign == 1).all()) and torch.equal(
                self.row_map.cpu(), ident.row_map)
            object.__setattr__(self, "_identity", cached)
        return bool(cached)

    def index(self, grid: TileGrid) -> torch.Tensor:
        """(Kp, Np) physical row of every logical (padded) matrix entry."""
        return self.row_map.repeat_interleave(grid.cols, dim=0).t().contiguous()

    def to(self, device: torch.device | str) -> LayerLayout:
        return LayerLayout(self.row_map.to(device), self.col_sign.to(device))

    def equals(self, other: LayerLayout) -> bool:
        return torch.equal(self.row_map.cpu(), other.row_map.cpu()) and torch.equal(
            self.col_sign.cpu(), other.col_sign.cpu())


def to_physical(matrix: torch.Tensor, grid: TileGrid, layout: LayerLayout | None = None) -> torch.Tensor:
    """(K, N) logical weight matrix -> (Kph, Np) matrix as the physical arrays hold it (spare rows 0)."""
    kp, np_ = grid.padded
    padded = torch.nn.functional.pad(matrix, (0, np_ - grid.n, 0, kp - grid.k))  # (Kp, Np)
    if grid.spare == 0 and (layout is None or layout.is_identity(grid)):
        return padded
    if layout is None:
        layout = LayerLayout.identity(grid)
    idx = layout.index(grid).to(matrix.device)  # (Kp, Np)
    out = torch.zeros(grid.physical, dtype=matrix.dtype, device=matrix.device)
    return out.scatter(0, idx, padded * layout.col_sign.to(matrix.device, matrix.dtype))


def to_logical(physical: torch.Tensor, grid: TileGrid, layout: LayerLayout | None = None) -> torch.Tensor:
    """Inverse of :func:`to_physical`: (Kph, Np) -> (K, N), polarity undone digitally. An identity layout's
    ``physical`` may also be just its (K, N) corner."""
    if grid.spare == 0 and (layout is None or layout.is_identity(grid)):
        return physical[: grid.k, : grid.n]
    if layout is None:
        layout = LayerLayout.identity(grid)
    idx = layout.index(grid).to(physical.device)  # (Kp, Np)
    logical = physical.gather(0, idx) * layout.col_sign.to(physical.device, physical.dtype)
    return logical[: grid.k, : grid.n]


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
        """Ideal target conductances (siemens) for a physical (Kph, Np) matrix (a (K, N) one is placed with
        the identity layout)."""
        ...

    def to_matrix(
        self, g: dict[str, torch.Tensor], scale: float, cell: CellConfig, grid: TileGrid
    ) -> torch.Tensor:
        """The (Kph, Np) physical weight matrix that conductances ``g`` realise (see :func:`to_logical`)."""
        ...


def _pad(matrix: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """A (K, N) logical matrix (identity layout) or an already physical (Kph, Np) one -> (Kph, Np)."""
    if tuple(matrix.shape) == grid.physical:
        return matrix
    return to_physical(matrix, grid)


class Differential:
    """w = s * (G+ - G-) / (Gmax - Gmin); the inactive cell of each pair at Gmin."""

    name = "differential"

    def array_shapes(self, grid: TileGrid) -> dict[str, tuple[int, int]]:
        return {"pos": grid.physical, "neg": grid.physical}

    def array_tiles(self, grid: TileGrid) -> dict[str, tuple[int, int]]:
        return {"pos": (grid.tile_rows, grid.cols), "neg": (grid.tile_rows, grid.cols)}

    def to_conductance(
        self, matrix: torch.Tensor, scale: float, cell: CellConfig, grid: TileGrid
    ) -> dict[str, torch.Tensor]:
        span = cell.g_max - cell.g_min
        wc = _pad(matrix, grid).clamp(-scale, scale).mul_(span / scale)  # (Kph, Np) in [-span, span]
        return {"pos": wc.clamp_min(0).add_(cell.g_min), "neg": wc.neg_().clamp_min_(0).add_(cell.g_min)}

    def to_matrix(
        self, g: dict[str, torch.Tensor], scale: float, cell: CellConfig, grid: TileGrid
    ) -> torch.Tensor:
        span = cell.g_max - cell.g_min
        return (g["pos"] - g["neg"]) * (scale / span)  # (Kph, Np)


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
        kph, np_ = grid.physical
        return {"main": (kph, np_), "ref": (kph, grid.tiles[1])}

    def array_tiles(self, grid: TileGrid) -> dict[str, tuple[int, int]]:
        return {"main": (grid.tile_rows, grid.cols), "ref": (grid.tile_rows, 1)}

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
        wc = _pad(matrix, grid).clamp(-scale, scale) / scale  # (Kph, Np)
        kph = grid.physical[0]
        main = (ref + half * wc).clamp(cell.g_min, cell.g_max)
        return {"main": main, "ref": torch.full((kph, grid.tiles[1]), ref, dtype=matrix.dtype,
                                                device=matrix.device)}

    def to_matrix(
        self, g: dict[str, torch.Tensor], scale: float, cell: CellConfig, grid: TileGrid
    ) -> torch.Tensor:
        half = 0.5 * (cell.g_max - cell.g_min)
        main = g["main"]  # (Kph, Np), or a top-left corner of it
        ref = g["ref"].repeat_interleave(grid.cols, dim=1)[:, : main.shape[1]]  # each tile's reference column
        return (main - ref) * (scale / half)


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


def tile_partials(x: torch.Tensor, matrix: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """Per-tile partial sums before the ADC: (B, K) inputs, (K, N) matrix -> (B, tiles along K,
    tiles along N, cols)."""
    tr, tc = grid.tiles
    kp, np_ = grid.padded
    b = x.shape[0]
    xt = torch.nn.functional.pad(x, (0, kp - grid.k)).view(b, tr, grid.rows)  # (B, tr, R)
    wt = torch.nn.functional.pad(matrix, (0, np_ - grid.n, 0, kp - grid.k)).view(tr, grid.rows, np_)  # (tr, R, Np)
    return torch.einsum("btr,trn->btn", xt, wt).view(b, tr, tc, grid.cols)  # (B, tr, tc, C)


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
        x: (B, K) inputs.
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
        return x @ matrix
    tr, tc = grid.tiles
    np_ = grid.padded[1]
    b = x.shape[0]
    partial = tile_partials(x, matrix, grid)  # (B, tr, tc, C)
    fs = (full_scale.to(partial.dtype).view(1, tr, tc, 1) if full_scale is not None
          else partial.abs().amax(dim=(0, 3), keepdim=True))  # (1, tr, tc, 1): one full scale per tile
    partial = quantize_signed(partial, adc_bits, fs)
    return partial.sum(dim=1).reshape(b, np_)[:, : grid.n]
