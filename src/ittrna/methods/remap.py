"""Defect-aware remapping: per tile, the row routing and column polarity that minimise the weighted
deviation sum_k imp_k sum_n |w_eff - w| by optimal assignment (DATE'17; Liu et al., DAC 2017).

Within one tile (a tile row i and a tile column c), logical row k may drive any of the tile's
``rows + spare`` physical word lines; each assignment is a bipartite matching between logical rows and word
lines whose cost is the deviation the programming rule leaves when row k's weights sit on line j's cells,
weighted by the importance of input k (its RMS activation: an input that is always zero, like an MNIST
border pixel, costs nothing wherever it goes). ``scipy.optimize.linear_sum_assignment`` solves it exactly
for fixed polarities; polarities and routing are then alternated (each step never increases the cost).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ittrna.mapping import LayerLayout
from ittrna.methods.hostmodel import CellView, HostChip, realise

__all__ = ["remap_layer"]


def _tile_errors(
    host: HostChip, name: str, w: torch.Tensor, scale: float, rule: str, r0: int, c0: int, c1: int, p0: int,
    j0: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """|w_eff - w| for every (logical row, physical row, column) of one tile (logical columns ``[c0, c1)`` on
    physical columns from ``p0``), for both polarities.

    Returns two (r, TR, Cc) tensors (polarity +1 and -1)."""
    grid = host.grids[name]
    tr_rows = grid.tile_rows
    rows = torch.arange(j0, j0 + tr_rows).unsqueeze(1)  # (TR, 1) the tile's physical word lines
    cols = torch.arange(p0, p0 + c1 - c0).unsqueeze(0)  # (1, Cc)
    pos, neg = host.converter.pair_cells(host.physical_cells(name), rows, cols, grid)  # each field (TR, Cc)
    view = CellView(pos["fault"].unsqueeze(0), pos["theta"].float().unsqueeze(0), neg["fault"].unsqueeze(0),
                    neg["theta"].float().unsqueeze(0), torch.ones(c1 - c0), host.converter)  # cells (1, TR, Cc)
    wt = w[r0 : r0 + grid.rows, c0:c1].unsqueeze(1)  # (r, 1, Cc)
    out = []
    for s in (1.0, -1.0):
        eff = realise(s * wt, view, scale, host.cell, rule, targets=False)[0]  # (r, TR, Cc)
        out.append((eff - s * wt).abs())
    return out[0], out[1]


def remap_layer(
    host: HostChip,
    name: str,
    matrix: torch.Tensor,
    scale: float,
    importance: torch.Tensor,
    *,
    rule: str = "pair",
    polarity: bool = True,
    rounds: int = 2,
) -> tuple[LayerLayout, float, float]:
    """The layout minimising the importance-weighted deviation of layer ``name`` (set on ``host`` too).

    Args:
        host: the host chip model (its measured map is all that is read).
        name: layer name.
        matrix: (K, N) logical weight matrix.
        scale: the layer's weight scale.
        importance: non-negative weight of each input row (e.g. its RMS activation): (K,), (K, 1), or (K, N)
            where columns meet inputs of their own (a grouped convolution's groups).
        rule: programming rule the deviation is measured under.
        polarity: also choose per-column polarity.
        rounds: alternations of routing and polarity.

    Returns:
        (layout, cost before, cost after) — costs under the identity layout and under the result.
    """
    grid = host.grids[name]
    k, n = grid.k, grid.n
    tr, tc = grid.tiles
    np_ = grid.padded[1]
    w = matrix.detach().float().cpu()
    imp = importance.detach().float().cpu().clamp_min(0)
    imp = (imp.reshape(-1, 1) if imp.dim() == 1 else imp).expand(k, n)  # (K, N)
    row_map = LayerLayout.identity(grid).row_map.clone()  # (tc, Kp)
    sign = torch.ones(np_)
    before = after = 0.0
    for i in range(tr):
        r0 = i * grid.rows
        r = min(grid.rows, k - r0)
        j0 = i * grid.tile_rows
        for c in range(tc):
            c0, c1, p0 = grid.tile_span(c)  # logical columns [c0, c1) on padded columns from p0
            e_pos, e_neg = _tile_errors(host, name, w, scale, rule, r0, c0, c1, p0, j0)  # (r, TR, Cc)
            wi = imp[r0 : r0 + r, c0:c1].unsqueeze(1)  # (r, 1, Cc)
            e_pos, e_neg = e_pos * wi, e_neg * wi
            sg = torch.ones(c1 - c0, dtype=torch.bool)  # True = polarity +1
            ident = torch.arange(r)
            before += float(e_pos[ident, ident].sum())
            cols = ident.numpy()
            for _ in range(max(rounds, 1)):
                cost = torch.where(sg.view(1, 1, -1), e_pos, e_neg).sum(dim=2)  # (r, TR)
                _, cols = linear_sum_assignment(cost.numpy())
                if not polarity:
                    break
                pick = torch.as_tensor(cols)
                sg = e_pos[ident, pick].sum(0) <= e_neg[ident, pick].sum(0)  # (Cc,)
            pick = torch.as_tensor(cols)
            after += float(torch.where(sg.view(1, -1), e_pos[ident, pick], e_neg[ident, pick]).sum())
            used = set(int(v) for v in cols)
            free = [j for j in range(grid.tile_rows) if j not in used]
            full = np.concatenate([cols, np.asarray(free[: grid.rows - r], dtype=np.int64)])
            row_map[c, r0 : r0 + grid.rows] = torch.as_tensor(full, dtype=torch.int64) + j0
            sign[p0 : p0 + c1 - c0] = torch.where(sg, 1.0, -1.0)
    layout = LayerLayout(row_map, sign)
    host.set_layout(name, layout)
    return layout, before, after
