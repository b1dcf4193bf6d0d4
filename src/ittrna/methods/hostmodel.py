"""The host's differentiable model of a chip, built from the measured defect map (never the true chip).

For every mapped layer the host knows, per logical weight (row k, column n), the two cells that hold it —
as the scheme's :class:`~ittrna.mapping.Converter` says (:meth:`~ittrna.mapping.Converter.pair_cells`): for
``differential`` the pair (G+, G-), for ``offset`` the weight's cell and its tile's reference cell, a fixed
partner — through the layer's digital :class:`~ittrna.mapping.LayerLayout`, and what the test reported about
them: stuck (and at which state) or healthy with a measured theta. From that it predicts what the chip will
realise for a weight under a programming rule:

- ``plain``: the chip's standard converter (active cell carries |w|, the other sits at Gmin); faults and
  theta act on it uncorrected. What a defect-unaware host programs.
- ``pair`` (defect-aware programming): each cell's *readable* range is [Gmin e^theta, Gmax e^theta] when
  healthy and a single point when stuck (Gmin for ``stuck_off``, Gmax for ``stuck_on``; a stuck cell carries
  no theta). The desired difference d = w / a is clamped into the pair's reachable interval
  [lo+ - hi-, hi+ - lo-], realised with the lowest conductances that give it (the partner of a stuck cell
  cancels or shifts it), and each healthy cell's target is its read value divided by its measured e^theta.
  Targets are rounded to the cell levels like the chip does.

The effective weight is exact in the forward pass; its gradient is straight-through (1) wherever at least
one cell of the pair is programmable and 0 where both are stuck ("gradients to healthy cells").
Units: conductances in siemens, weights in the layer's weight units; a (weight units per siemens) is the
converter's :meth:`~ittrna.mapping.Converter.weight_per_siemens` of the layer scale s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ittrna.config import CellConfig, ChipConfig, RelaxationConfig
from ittrna.device import HEALTHY, STUCK_ON, quantize_levels
from ittrna.device.cells import read_conductance
from ittrna.device.ir_drop import transfer_tiles
from ittrna.device.relaxation import relax_healthy
from ittrna.errors import InputError
from ittrna.host import MeasuredMap
from ittrna.mapping import CONVERTERS, Converter, LayerLayout, TileGrid
from ittrna.methods.configs import WIRE_CELLS

__all__ = ["RULES", "CellView", "HostChip", "realise", "realise_relaxed", "sample_view"]

RULES = ("plain", "pair")


@dataclass
class CellView:
    """Logical (K, N) view of the cells holding a layer's weights, as the host models them."""

    fault_p: torch.Tensor
    """int8 (K, N) fault code of the cell carrying the positive part (G+, or the offset scheme's cell)."""
    theta_p: torch.Tensor
    """float32 (K, N) measured theta of that cell."""
    fault_n: torch.Tensor
    """int8 (K, N) fault code of the negative cell (G-, or the tile's reference cell)."""
    theta_n: torch.Tensor
    """float32 (K, N) measured theta of that cell."""
    sign: torch.Tensor
    """(N,) column polarity (+1 / -1)."""
    converter: Converter
    """The mapping scheme: its gain, and whether the negative cell is a fixed (never per-weight programmed)
    partner (:meth:`~ittrna.mapping.Converter.fixed_partner`)."""
    _bounds: tuple[torch.Tensor, torch.Tensor] | None = None

    def diff_bounds(self, cell: CellConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, N) reachable interval [lo+ - hi-, hi+ - lo-] of the read difference (siemens), cached."""
        if self._bounds is None:
            lo_p, hi_p = _ranges(self.fault_p, self.theta_p, cell)
            reference = self.converter.fixed_partner(cell)
            if reference is not None:
                lo_n = hi_n = _reference(self.fault_n, self.theta_n, reference, cell)
            else:
                lo_n, hi_n = _ranges(self.fault_n, self.theta_n, cell)
            self._bounds = (lo_p - hi_n, hi_p - lo_n)
        return self._bounds

    def with_noise(self, theta_sigma: float, extra_fault_rate: float, stuck_on_share: float,
                   generator: torch.Generator) -> CellView:
        """A copy with the test's stated error injected: theta + N(0, theta_sigma^2) on every cell, and
        ``extra_fault_rate`` of the reported-healthy cells made stuck (faults the test may have missed)."""
        def perturb(fault: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if theta_sigma > 0:
                theta = theta + torch.randn(theta.shape, generator=generator).to(theta.device) * theta_sigma
            if extra_fault_rate > 0:
                u = torch.rand(fault.shape, generator=generator).to(fault.device)
                new = torch.where(u < extra_fault_rate * stuck_on_share, 2, 1).to(fault.dtype)
                fault = torch.where((u < extra_fault_rate) & (fault == HEALTHY), new, fault)
            return fault, theta

        fp, tp = perturb(self.fault_p, self.theta_p)
        if self.converter.shared_reference:  # a shared reference cell is kept as measured
            fn, tn = self.fault_n, self.theta_n
        else:
            fn, tn = perturb(self.fault_n, self.theta_n)
        return CellView(fp, tp, fn, tn, self.sign, self.converter)


def _ranges(fault: torch.Tensor, theta: torch.Tensor, cell: CellConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Readable conductance range [lo, hi] (siemens) of each cell: a point when stuck."""
    e = torch.exp(theta)
    stuck_val = torch.where(fault == STUCK_ON, cell.g_max, cell.g_min).to(theta.dtype)
    healthy = fault == HEALTHY
    return torch.where(healthy, cell.g_min * e, stuck_val), torch.where(healthy, cell.g_max * e, stuck_val)


def _reference(fault: torch.Tensor, theta: torch.Tensor, mid_q: float, cell: CellConfig) -> torch.Tensor:
    """Read value (siemens) of fixed reference cells, programmed at ``mid_q`` (the converter's Gref)."""
    stuck_val = torch.where(fault == STUCK_ON, cell.g_max, cell.g_min).to(theta.dtype)
    return torch.where(fault == HEALTHY, mid_q * torch.exp(theta), stuck_val)


def realise(
    w: torch.Tensor, view: CellView, scale: float, cell: CellConfig, rule: str, *, targets: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """What the chip realises for logical weights ``w`` (K, N) under ``rule``, and the targets it programs.

    Args:
        targets: also return the targets (False allows the fast path: with analog cells the ``pair`` rule
            realises exactly the desired difference clamped into the pair's reachable interval).

    Returns:
        (w_eff (K, N) with straight-through gradients, target of the positive cell (K, N), target of the
        negative cell (K, N)); targets are in siemens, already rounded to the cell levels (None when not
        asked for on the fast path).
    """
    span = cell.g_max - cell.g_min
    a = view.converter.weight_per_siemens(scale, cell)  # weight units per siemens of difference
    reference = view.converter.fixed_partner(cell)  # None: the negative cell is a programmable partner
    sign = view.sign.to(w.dtype).unsqueeze(0)  # (1, N)
    d = (w.detach() * sign) / a  # (K, N) desired difference, siemens
    if rule == "pair" and cell.levels is None and not targets:
        lo, hi = view.diff_bounds(cell)
        exact = torch.maximum(torch.minimum(d, hi), lo) * (a * sign)
        return _straight_through(w, exact, view), None, None
    lo_p, hi_p = _ranges(view.fault_p, view.theta_p, cell)
    healthy_p = view.fault_p == HEALTHY
    mid = reference if reference is not None else cell.g_min + 0.5 * span
    if reference is not None:  # reference cell programmed at Gref (on a level); the host predicts its read value
        healthy_n = torch.zeros_like(healthy_p)
        lo_n = hi_n = _reference(view.fault_n, view.theta_n, reference, cell)
    else:
        healthy_n = view.fault_n == HEALTHY
        lo_n, hi_n = _ranges(view.fault_n, view.theta_n, cell)
    if rule == "pair":
        dc = torch.maximum(torch.minimum(d, hi_p - lo_n), lo_p - hi_n)
        low_n = dc >= lo_p - lo_n
        gp = torch.where(low_n, dc + lo_n, lo_p)  # read values
        gn = torch.where(low_n, lo_n, lo_p - dc)
        tp = torch.where(healthy_p, gp / torch.exp(view.theta_p), cell.g_min)
        tn = torch.where(healthy_n, gn / torch.exp(view.theta_n), cell.g_min)
    elif rule == "plain":
        if reference is not None:
            tp = mid + (d.clamp(-0.5 * span, 0.5 * span))
        else:
            tp = cell.g_min + d.clamp(0, span)
        tn = cell.g_min + (-d).clamp(0, span)
    else:
        raise ValueError(f"programming rule {rule!r} is unknown; accepted one of {list(RULES)}")
    tp = quantize_levels(tp, cell)
    tn = mid * torch.ones_like(tn) if reference is not None else quantize_levels(tn, cell)
    read_p = torch.where(healthy_p, tp * torch.exp(view.theta_p), lo_p)
    read_n = lo_n if reference is not None else torch.where(healthy_n, tn * torch.exp(view.theta_n), lo_n)
    exact = (read_p - read_n) * a * sign  # (K, N)
    return _straight_through(w, exact, view), tp, tn


def realise_relaxed(
    w: torch.Tensor, view: CellView, scale: float, cell: CellConfig, relaxation: RelaxationConfig, age: float,
    z: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """What the chip realises for logical weights ``w`` under the ``pair`` rule ``age`` seconds after
    programming, for one draw ``z`` of the relaxation model's per-cell randomness: every healthy cell's read
    value right after its write (target · e^theta) relaxed at that age
    (:func:`ittrna.device.relaxation.relax_healthy`), stuck cells as they are. A host knows the model and its
    parameters (the design's ``relaxation`` section, a datasheet), not any cell's draw: ``z`` is the host's own
    sample, which makes this an injection of the model's spread at ``age``, not a prediction of the chip.

    Args:
        w: (K, N) logical weights.
        view: the layer's cells (:meth:`HostChip.view`).
        scale: the layer's scale (weight units at full conductance span).
        cell: the conductance range and levels.
        relaxation: the design's relaxation model and parameters.
        age: seconds after programming (0: :func:`realise`'s ``pair`` rule).
        z: (z+, z-), each (K, N), N(0, 1): the draw of each weight's positive and negative cell
            (:meth:`HostChip.relaxation_draw`; a shared reference cell has one value wherever it serves).

    Returns:
        (K, N) realised weights (weight units), straight-through gradients (:func:`realise`).
    """
    _, tp, tn = realise(w, view, scale, cell, "pair")
    assert tp is not None and tn is not None  # tn: Gref in a shared-reference scheme
    a = view.converter.weight_per_siemens(scale, cell)
    sign = view.sign.to(w.dtype).unsqueeze(0)  # (1, N)
    ages = torch.tensor(float(age), dtype=torch.float64, device=tp.device)  # broadcast over the cells
    reads = []
    for t, fault, theta, draw in ((tp, view.fault_p, view.theta_p, z[0]), (tn, view.fault_n, view.theta_n, z[1])):
        g0 = read_conductance(t.float(), fault, theta.float(), cell)  # (K, N) siemens right after the write
        reads.append(relax_healthy(g0, t.float(), ages, draw.to(g0.device), fault, relaxation, cell))
    exact = (reads[0] - reads[1]).to(w.dtype) * a * sign  # (K, N)
    return _straight_through(w, exact, view)


def _straight_through(w: torch.Tensor, exact: torch.Tensor, view: CellView) -> torch.Tensor:
    """``exact`` in the forward pass; gradient 1 to weights whose pair has a programmable cell, else 0."""
    if not (w.requires_grad and torch.is_grad_enabled()):
        return exact
    trainable = view.fault_p == HEALTHY
    if not view.converter.shared_reference:  # a programmable partner can carry the weight too
        trainable = trainable | (view.fault_n == HEALTHY)
    return torch.where(trainable, w + (exact - w).detach(), exact)


def sample_view(
    shape: tuple[int, int], fault_rate: float, stuck_on_share: float, sigma: float, converter: Converter,
    generator: torch.Generator, device: torch.device | str = "cpu",
) -> CellView:
    """A random, chip-agnostic cell view: i.i.d. faults at ``fault_rate`` and theta ~ N(0, sigma^2)
    (used by variation/fault-injection training, which must not depend on one chip's map)."""
    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(shape, generator=generator)
        fault = (u < fault_rate).to(torch.int8) + (u < fault_rate * stuck_on_share).to(torch.int8)
        theta = torch.randn(shape, generator=generator) * sigma
        return fault.to(device), theta.to(device)

    fp, tp = draw()
    fn, tn = draw()
    return CellView(fp, tp, fn, tn, torch.ones(shape[1], device=device), converter)


class HostChip:
    """The host's view of one chip: geometry and measured cells per layer, plus chosen layouts and scales.

    Built from a :class:`~ittrna.host.MeasuredMap` only. ``view(name)`` gives a layer's logical
    :class:`CellView` under its current layout; ``targets(name, w)`` the physical conductance targets to
    program; ``effective(name, w)`` the differentiable realised weight.
    """

    def __init__(self, measured: MeasuredMap, device: torch.device | str = "cpu"):
        self.measured = measured
        self.design: ChipConfig = measured.design
        self.cell = measured.design.cell
        self.converter: Converter = CONVERTERS[measured.design.mapping.scheme]
        self.device = torch.device(device)
        self.grids: dict[str, TileGrid] = {n: measured.grid(n) for n in measured.layers}
        self.layouts: dict[str, LayerLayout] = {n: LayerLayout.identity(g) for n, g in self.grids.items()}
        self.scales: dict[str, float] = {}
        self._views: dict[str, CellView] = {}
        for name, arrays in measured.layers.items():
            expected = self.converter.array_shapes(self.grids[name])
            if set(arrays) != set(expected):
                raise InputError(f"measured map layer {name!r} has arrays {sorted(arrays)}; the design's "
                                 f"scheme {measured.design.mapping.scheme!r} has {list(expected)}")

    @property
    def names(self) -> list[str]:
        return list(self.grids)

    def weight_shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(v) for v in self.measured.meta[name]["weight_shape"])

    def set_layout(self, name: str, layout: LayerLayout) -> None:
        layout.check(self.grids[name], f"layer {name!r} layout")
        self.layouts[name] = layout
        self._views.pop(name, None)

    def physical_cells(self, name: str) -> dict[str, dict[str, torch.Tensor]]:
        """The measured arrays of a layer (physical shapes)."""
        return self.measured.layers[name]

    def view(self, name: str) -> CellView:
        """Logical (K, N) cell view of layer ``name`` under its current layout (cached)."""
        if name in self._views:
            return self._views[name]
        grid, layout = self.grids[name], self.layouts[name]
        pos, neg = self._pair_cells(name, self.measured.layers[name])

        def logical(t: torch.Tensor) -> torch.Tensor:
            return grid.unpad(t).to(self.device)

        view = CellView(logical(pos["fault"]), logical(pos["theta"].float()), logical(neg["fault"]),
                        logical(neg["theta"].float()), layout.col_sign[grid.column_index].to(self.device),
                        self.converter)
        self._views[name] = view
        return view

    def effective_matrix(self, name: str, matrix: torch.Tensor, scale: float, rule: str = "pair",
                         view: CellView | None = None) -> torch.Tensor:
        """Realised (K, N) matrix for logical ``matrix`` (differentiable, straight-through)."""
        return realise(matrix, view or self.view(name), scale, self.cell, rule, targets=False)[0]

    def relaxed_matrix(self, name: str, matrix: torch.Tensor, scale: float, age: float,
                       generator: torch.Generator, view: CellView | None = None) -> torch.Tensor:
        """Realised (K, N) matrix for logical ``matrix`` at ``age`` seconds after programming, for a fresh draw of
        the design's relaxation model from the host's ``generator`` (:func:`realise_relaxed`; differentiable,
        straight-through)."""
        return realise_relaxed(matrix, view or self.view(name), scale, self.cell, self.design.relaxation, age,
                               self.relaxation_draw(name, generator))

    def relaxation_draw(self, name: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One host-side draw of the relaxation model's N(0, 1) per-cell randomness for layer ``name``: (z+, z-),
        each (K, N), of every weight's positive and negative cell. Where each cell carries one weight the draw
        is per weight; a scheme with a shared reference cell draws per physical cell and gathers through the
        layout as :meth:`view` gathers the map, so the reference has one value for every weight it serves."""
        grid = self.grids[name]
        if not self.converter.shared_reference:
            shape = tuple(self.view(name).fault_p.shape)  # (K, N)
            return (torch.randn(shape, generator=generator).to(self.device),
                    torch.randn(shape, generator=generator).to(self.device))
        arrays = {a: {"z": torch.randn(shape, generator=generator)}
                  for a, shape in self.converter.array_shapes(grid).items()}  # physical arrays
        pos, neg = self._pair_cells(name, arrays)
        return grid.unpad(pos["z"]).to(self.device), grid.unpad(neg["z"]).to(self.device)

    def _pair_cells(self, name: str, arrays: dict[str, dict[str, torch.Tensor]]
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-cell fields of layer ``name``'s physical ``arrays`` gathered to each padded logical entry's
        positive and negative cell under the current layout (:meth:`Converter.pair_cells`)."""
        grid, layout = self.grids[name], self.layouts[name]
        idx = layout.index(grid)  # (Kp, Np) physical row of each logical entry
        cols = torch.arange(grid.padded[1]).unsqueeze(0)  # (1, Np)
        return self.converter.pair_cells(arrays, idx, cols, grid)

    def presented(self, name: str, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The conductances (siemens, physical arrays) the host expects the layer's cells to present for
        ``targets``, from the map: target · e^theta where healthy, Gmin / Gmax where reported stuck (the
        chip's :func:`~ittrna.device.cells.read_conductance` on the measured cells)."""
        cells = self.measured.layers[name]
        return {a: read_conductance(t.float(), cells[a]["fault"], cells[a]["theta"].float(), self.cell)
                for a, t in targets.items()}

    def wire_through(self, name: str, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per array, what the cells the host expects for ``targets`` (:meth:`presented`) present through
        each tile's wires (the design's ``wires.r_wire`` and ``wires.solver``,
        :func:`~ittrna.device.ir_drop.transfer_tiles`): the (rows, cols) transfer matrices, siemens."""
        wires = self.design.wires
        tiles = self.converter.array_tiles(self.grids[name])
        return {a: transfer_tiles(g, tiles[a], wires.r_wire, wires.solver)
                for a, g in self.presented(name, targets).items()}

    def wire_need(self, name: str, targets: dict[str, torch.Tensor],
                  through: dict[str, torch.Tensor] | None = None, cells: str = "written") -> float:
        """How far above Gmax the first pass of :meth:`wire_compensated` would take the highest target it lifts,
        as a factor (<= 1: every target fits): a layer scale times this factor leaves the room it needs.
        ``through``: :meth:`wire_through` of ``targets`` if already solved; ``cells``: which cells are lifted
        (:meth:`wire_lifts`)."""
        if self.design.wires.r_wire == 0:
            return 0.0
        got = self.presented(name, targets)
        through = through if through is not None else self.wire_through(name, targets)
        need = 0.0
        for a, t in targets.items():
            lifted = t.float() * got[a] / through[a].clamp_min(1e-30)
            lifts = self.wire_lifts(name, a, t, cells)
            if lifts.any():
                need = max(need, float(lifted[lifts].max()) / self.cell.g_max)
        return need

    def wire_lifts(self, name: str, array: str, target: torch.Tensor, cells: str = "written") -> torch.Tensor:
        """Bool mask of the cells of layer ``name``'s ``array`` that wire compensation may lift: the healthy
        ones (by the map) whose ``target`` is above Gmin (``cells = "written"``: the cells programming writes
        anyway; one left at Gmin stays unwritten) or every healthy one (``"all"``)."""
        if cells not in WIRE_CELLS:
            raise InputError(f"wire compensation cells = {cells!r}; accepted one of {list(WIRE_CELLS)}")
        healthy = self.measured.layers[name][array]["fault"] == HEALTHY
        return healthy & (target > self.cell.g_min) if cells == "written" else healthy

    def wire_compensated(self, name: str, targets: dict[str, torch.Tensor], iterations: int = 2,
                         through: dict[str, torch.Tensor] | None = None, cells: str = "written"
                         ) -> dict[str, torch.Tensor]:
        """Targets pre-distorted for IR drop: each tile's transfer matrix through its wires (the design's
        ``wires.r_wire`` and ``wires.solver``, :func:`~ittrna.device.ir_drop.transfer_tiles`) taken on the
        conductances the host expects (:meth:`presented`), and every lifted cell's target (:meth:`wire_lifts`:
        healthy by the map and, with ``cells = "written"``, above Gmin, so that no cell is written that
        programming leaves alone) multiplied by the ratio of what it should present to what it presents
        through the wires, ``iterations`` times (a fixed-point iteration: were each cell's attenuation its own,
        one pass would be exact; the coupling through the shared wires is what the next passes take up),
        within [Gmin, Gmax]. At ``r_wire = 0`` the targets are returned as they are. Cells reported stuck keep
        their targets. ``through``: :meth:`wire_through` of ``targets`` if already solved (the first pass then
        solves nothing)."""
        if self.design.wires.r_wire == 0 or iterations == 0:
            return targets
        want = self.presented(name, targets)  # what the cells would present on ideal wires
        lifts = {a: self.wire_lifts(name, a, t, cells) for a, t in targets.items()}  # fixed by the plain targets
        out = {a: t.float().clone() for a, t in targets.items()}
        for i in range(iterations):
            now = through if i == 0 and through is not None else self.wire_through(name, out)  # (rows, cols)
            for a in out:
                lift = lifts[a] & (now[a] > 0)
                lifted = out[a] * want[a] / now[a].clamp_min(1e-30)  # each cell by its own attenuation
                out[a] = torch.where(lift, lifted.clamp(self.cell.g_min, self.cell.g_max), out[a])
        return {a: quantize_levels(t, self.cell) for a, t in out.items()}

    def targets(self, name: str, matrix: torch.Tensor, scale: float, rule: str = "pair") -> dict[str, torch.Tensor]:
        """Physical target conductances (siemens) per array that make the chip realise ``matrix``.

        Cells the map reports stuck, padding and unused spare rows are left at Gmin (never written);
        the offset scheme's reference cells are programmed at mid-range.
        """
        grid, layout = self.grids[name], self.layouts[name]
        with torch.no_grad():
            _, tp, tn = realise(matrix.detach(), self.view(name), scale, self.cell, rule)
        assert tp is not None and tn is not None
        return self.converter.place_targets(tp, tn, grid, layout, self.cell)
