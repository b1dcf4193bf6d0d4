"""Mapping schemes: one :class:`Converter` per scheme turns a weight matrix into named cell arrays of target
conductances and back, and tells the host which cells hold each weight.

Converters (explicit registry :data:`CONVERTERS`, the only list of scheme names):

- ``differential`` (default): w = s * (G+ - G-) / (Gmax - Gmin); the active cell carries |w|, the
  inactive one sits at Gmin. Arrays ``pos`` and ``neg``, each (Kph, Np).
- ``offset``: w = 2 s * (G - Gref) / (Gmax - Gmin) with one cell per weight around mid-range and a
  reference column per tile at Gref = (Gmin + Gmax)/2, whose current every column of that tile subtracts.
  Arrays ``main`` (Kph, Np) and ``ref`` (Kph, tiles along N).

``s`` is the per-layer weight scale: the ``clip_percentile`` percentile of |w| (100 = max |w|).

Every scheme is, per logical weight, a *pair* of cells whose read difference carries it: a positive cell and
a negative one that is either a programmable partner (``differential``) or a fixed reference programmed at
:meth:`Converter.reference` (``offset``). The chip, the host model (:mod:`ittrna.methods.hostmodel`) and
remapping (:mod:`ittrna.methods.remap`) all ask the converter for that pair (:meth:`Converter.pair_cells`),
its gain (:meth:`Converter.weight_per_siemens`) and where targets go (:meth:`Converter.place_targets`), so a
new scheme is one class here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from ittrna import registry as _registry
from ittrna.config import CellConfig
from ittrna.mapping.tiling import LayerLayout, TileGrid, to_physical
from ittrna.registry import Registry

__all__ = ["CONVERTERS", "Converter", "Differential", "Offset", "weight_scale"]


def weight_scale(weight: torch.Tensor, clip_percentile: float) -> float:
    """Per-layer scale s: the ``clip_percentile`` percentile of |w| (100 = max |w|); 1.0 for all-zero."""
    a = weight.detach().abs().flatten().float()
    s = float(a.max()) if clip_percentile >= 100 else float(torch.quantile(a.cpu(), clip_percentile / 100))
    return s if s > 0 else 1.0


class Converter(Protocol):
    """Turns a weight matrix into named arrays of target conductances and back."""

    name: str
    shared_reference: bool
    """True when every weight's negative cell is a shared reference cell at :meth:`fixed_partner`, never
    programmed per weight; False when it is the weight's own programmable partner."""

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

    # what the host needs to model the scheme (methods/hostmodel.py, methods/remap.py)
    def fixed_partner(self, cell: CellConfig) -> float | None:
        """The target (siemens) of every weight's negative cell when that cell is a shared reference that is
        never programmed per weight; None when it is a programmable partner."""
        ...

    def weight_per_siemens(self, scale: float, cell: CellConfig) -> float:
        """Weight units per siemens of read difference (positive minus negative cell) at layer scale s."""
        ...

    def pair_cells(
        self, arrays: Mapping[str, Mapping[str, torch.Tensor]], rows: torch.Tensor, cols: torch.Tensor,
        grid: TileGrid,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-cell fields (e.g. ``fault``, ``theta``) of the positive and of the negative cell of the weights
        at physical rows ``rows`` and columns ``cols`` (broadcast index tensors) of a layer's ``arrays``."""
        ...

    def place_targets(
        self, target_p: torch.Tensor, target_n: torch.Tensor, grid: TileGrid, layout: LayerLayout,
        cell: CellConfig,
    ) -> dict[str, torch.Tensor]:
        """Physical target arrays from (K, N) targets of every weight's positive and negative cell (cells
        that carry no weight at the scheme's idle value)."""
        ...


def _gather(fields: Mapping[str, torch.Tensor], rows: torch.Tensor, cols: torch.Tensor) -> dict[str, torch.Tensor]:
    return {f: t[rows, cols] for f, t in fields.items()}


def _place(t: torch.Tensor, fill: float, grid: TileGrid, layout: LayerLayout) -> torch.Tensor:
    """(K, N) values -> a physical (Kph, Np) array under ``layout``, ``fill`` where no weight lies (CPU)."""
    padded = grid.pad(t.to(torch.float32), fill)  # (Kp, Np)
    out = torch.full(grid.physical, fill, dtype=torch.float32, device=t.device)
    return out.scatter(0, layout.index(grid).to(t.device), padded).cpu()


def _pad(matrix: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """A (K, N) logical matrix (identity layout) or an already physical (Kph, Np) one -> (Kph, Np)."""
    if tuple(matrix.shape) == grid.physical:
        return matrix
    return to_physical(matrix, grid)


class Differential:
    """w = s * (G+ - G-) / (Gmax - Gmin); the inactive cell of each pair at Gmin."""

    name = "differential"
    shared_reference = False

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

    def fixed_partner(self, cell: CellConfig) -> float | None:
        return None

    def weight_per_siemens(self, scale: float, cell: CellConfig) -> float:
        return 1.0 * scale / (cell.g_max - cell.g_min)

    def pair_cells(
        self, arrays: Mapping[str, Mapping[str, torch.Tensor]], rows: torch.Tensor, cols: torch.Tensor,
        grid: TileGrid,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return _gather(arrays["pos"], rows, cols), _gather(arrays["neg"], rows, cols)

    def place_targets(
        self, target_p: torch.Tensor, target_n: torch.Tensor, grid: TileGrid, layout: LayerLayout,
        cell: CellConfig,
    ) -> dict[str, torch.Tensor]:
        return {"pos": _place(target_p, cell.g_min, grid, layout), "neg": _place(target_n, cell.g_min, grid, layout)}


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
    shared_reference = True

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

    def fixed_partner(self, cell: CellConfig) -> float | None:
        return self.reference(cell)

    def weight_per_siemens(self, scale: float, cell: CellConfig) -> float:
        return 2.0 * scale / (cell.g_max - cell.g_min)

    def pair_cells(
        self, arrays: Mapping[str, Mapping[str, torch.Tensor]], rows: torch.Tensor, cols: torch.Tensor,
        grid: TileGrid,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return _gather(arrays["main"], rows, cols), _gather(arrays["ref"], rows, cols // grid.cols)

    def place_targets(
        self, target_p: torch.Tensor, target_n: torch.Tensor, grid: TileGrid, layout: LayerLayout,
        cell: CellConfig,
    ) -> dict[str, torch.Tensor]:
        ref = self.reference(cell)  # unused main cells at Gref: they then contribute nothing against it
        return {"main": _place(target_p, ref, grid, layout), "ref": torch.full((grid.physical[0], grid.tiles[1]), ref)}


#: Mapping schemes by the name used in ``MappingConfig.scheme``: the names are declared once, in
#: :data:`ittrna.registry.SCHEMES` (which the config validates against); a new scheme registers there too.
CONVERTERS: Registry[Converter] = _registry.SCHEMES
CONVERTERS.register("differential", Differential(), home=__name__)
CONVERTERS.register("offset", Offset(), home=__name__)
