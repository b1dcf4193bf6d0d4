"""Tiling of a layer's (K, N) weight matrix over ``rows x cols`` crossbars, and its digital layout.

The matrix is tiled over ``rows x cols`` crossbars; the physical cell arrays are padded to a whole number of
tiles (padding cells are fabricated, faulty or not, but carry no weight). A grouped convolution's matrix
(K = its per-group fan-in, N = all output channels, ``groups`` blocks of N / groups columns) puts each group's
columns on tile columns of their own, because the word lines of a tile carry one group's inputs; no cell holds
the zeros of the equivalent block-diagonal matrix. The padded view then places group ``q``'s columns from
padded column ``q * (tiles per group) * cols`` on (:attr:`TileGrid.column_index`). Each tile may have ``spare`` extra
word lines (``mapping.spare_rows``), so a physical array has (Kph, Np) = (tiles along K * (rows + spare),
tiles along N * cols) cells.

A :class:`LayerLayout` is the layer's digital periphery, which costs no cell writes: a per-tile row routing
(logical input -> physical word line, within the tile row, spare lines included) and a per-column polarity.
:func:`to_physical` / :func:`to_logical` move a matrix between the logical (K, N) and physical (Kph, Np)
views; converters work on the physical view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ittrna.errors import InputError

__all__ = ["LayerLayout", "TileGrid", "to_logical", "to_physical", "used_cells"]


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
    groups: int = 1
    """Column groups with inputs of their own (a grouped convolution's ``groups``), each on its own tile
    columns; ``n`` is a multiple of it."""

    @classmethod
    def on(cls, mapping: object, k: int, n: int, groups: int = 1) -> TileGrid:
        """The grid of a (K, N) matrix in ``groups`` column groups on a design's tiles (``mapping``: a
        :class:`~ittrna.config.MappingConfig`, its ``rows``, ``cols`` and ``spare_rows``)."""
        return cls(k, n, mapping.rows, mapping.cols, mapping.spare_rows, groups)  # type: ignore[attr-defined]

    def __post_init__(self) -> None:
        if self.groups < 1 or self.n % self.groups:
            raise InputError(f"tile grid: {self.n} columns do not split into groups = {self.groups}; accepted a "
                             "divisor of the column count")

    @property
    def group_cols(self) -> int:
        """Logical columns per group (N / groups)."""
        return self.n // self.groups

    @property
    def group_tiles(self) -> int:
        """Tile columns per group."""
        return math.ceil(self.group_cols / self.cols)

    @property
    def tiles(self) -> tuple[int, int]:
        """(tiles along K, tiles along N)."""
        return math.ceil(self.k / self.rows), self.groups * self.group_tiles

    @property
    def column_index(self) -> torch.Tensor:
        """(N,) int64: the padded column of every logical column (``arange(N)`` without groups)."""
        j = torch.arange(self.n)
        if self.groups == 1:
            return j
        return (j // self.group_cols) * (self.group_tiles * self.cols) + j % self.group_cols

    def tile_span(self, c: int) -> tuple[int, int, int]:
        """Tile column ``c``'s logical columns ``[start, stop)`` and the padded column ``start`` lies on."""
        q, t = divmod(c, self.group_tiles)
        start = q * self.group_cols + t * self.cols
        stop = q * self.group_cols + min((t + 1) * self.cols, self.group_cols)
        return start, stop, c * self.cols

    def pad(self, matrix: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(K, N) -> (Kp, Np): the matrix on whole tiles, padding cells ``fill``."""
        kp, np_ = self.padded
        if self.groups == 1 and fill == 0.0:
            return torch.nn.functional.pad(matrix, (0, np_ - self.n, 0, kp - self.k))
        out = torch.full((kp, np_), fill, dtype=matrix.dtype, device=matrix.device)
        out[: self.k, self.column_index.to(matrix.device)] = matrix
        return out

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`pad`: (at least K rows, Np) -> (K, N); without groups a (K, N) corner suffices."""
        if self.groups == 1:
            return padded[: self.k, : self.n]
        return padded[: self.k].index_select(1, self.column_index.to(padded.device))

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
    """(K, N) logical weight matrix -> (Kph, Np) matrix as the physical arrays hold it (spare rows and padding
    0)."""
    padded = grid.pad(matrix)  # (Kp, Np)
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
        return grid.unpad(physical)
    if layout is None:
        layout = LayerLayout.identity(grid)
    idx = layout.index(grid).to(physical.device)  # (Kp, Np)
    logical = physical.gather(0, idx) * layout.col_sign.to(physical.device, physical.dtype)
    return grid.unpad(logical)


def used_cells(grid: TileGrid, layout: LayerLayout, shapes: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Per array (name -> physical shape, a converter's ``array_shapes``), a bool mask of the cells that carry a
    weight under ``layout``: padding and unused spare rows excluded; an array of one column per tile column (the
    offset scheme's reference) has the rows that carry weights there. Geometry only (CPU)."""
    idx = grid.unpad(layout.index(grid)).cpu()  # (K, N) physical row of each weight
    weights = torch.zeros(grid.physical, dtype=torch.bool)
    weights[idx, grid.column_index.unsqueeze(0)] = True
    out = {}
    for aname, shape in shapes.items():
        if tuple(shape) == grid.physical:
            out[aname] = weights
        else:  # one reference column per tile column: the rows that carry weights there
            ref = torch.zeros(tuple(shape), dtype=torch.bool)
            for c in range(grid.tiles[1]):
                ref[layout.row_map[c, : grid.k].cpu(), c] = True
            out[aname] = ref
    return out
