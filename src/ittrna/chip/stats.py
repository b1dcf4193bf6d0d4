"""Evaluator-only statistics of a chip: the cells that carry weights, realised fault fractions, theta
spread, wear (:func:`used_cells`, :func:`stats`, :func:`summary`, :func:`write_stats`)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ittrna.chip.state import ChipState
from ittrna.device import STUCK_OFF, STUCK_ON
from ittrna.mapping import used_cells as tiling_used_cells

__all__ = ["stats", "summary", "used_cells", "write_stats"]


def used_cells(chip: ChipState, name: str) -> dict[str, torch.Tensor]:
    """Per array, a bool mask of the cells that carry a weight under the layer's layout (padding and
    unused spare rows excluded; for the offset scheme, reference cells on rows that carry weights)."""
    layer = chip.layer(name)
    return tiling_used_cells(layer.grid, layer.get_layout(),
                             {a: (int(arr.fault.shape[0]), int(arr.fault.shape[1])) for a, arr in layer.arrays.items()})


def stats(chip: ChipState) -> list[dict[str, Any]]:
    """Per-layer statistics over the cells that carry weights (``cells``; ``cells_total`` adds padding
    and spare rows): realised stuck-on/off fractions, theta spread, largest write count."""
    rows = []
    for layer in chip.layers.values():
        used = used_cells(chip, layer.name)
        arrays = layer.arrays.items()
        faults = torch.cat([a.fault.cpu()[used[n]] for n, a in arrays])
        theta = torch.cat([a.theta.cpu()[used[n]] for n, a in arrays])
        writes = torch.cat([a.writes.cpu().flatten() for _, a in arrays])
        n = max(faults.numel(), 1)
        rows.append({
            "layer": layer.name, "kind": layer.kind, "matrix": [layer.grid.k, layer.grid.n],
            "tiles": list(layer.grid.tiles), "cells": faults.numel(), "cells_total": writes.numel(),
            "stuck_on_fraction": float((faults == STUCK_ON).sum()) / n,
            "stuck_off_fraction": float((faults == STUCK_OFF).sum()) / n,
            "theta_std": float(theta.float().std()) if faults.numel() > 1 else 0.0,
            "max_writes": int(writes.max()),
        })
    return rows


def summary(chip: ChipState) -> dict[str, Any]:
    """Whole-chip totals over the cells that carry weights (``cells_total`` adds padding): realised
    stuck-on/stuck-off fractions, tiles."""
    per = stats(chip)
    cells = max(sum(r["cells"] for r in per), 1)
    return {
        "cells": sum(r["cells"] for r in per),
        "cells_total": sum(r["cells_total"] for r in per),
        "tiles": sum(math.prod(r["tiles"]) for r in per),
        "stuck_on_fraction": sum(r["stuck_on_fraction"] * r["cells"] for r in per) / cells,
        "stuck_off_fraction": sum(r["stuck_off_fraction"] * r["cells"] for r in per) / cells,
    }


def write_stats(chip: ChipState) -> dict[str, Any]:
    """Evaluator-only wear figures: writes issued (host-visible) and performed (healthy cells whose target
    changed, counted as wear or not), and from the wear counters (the first programming counts only with
    ``endurance.count_initial_programming``): the largest count on one cell, the fraction of cells
    written and the cells worn out."""
    writes = torch.cat([a.writes.flatten() for layer in chip for a in layer.arrays.values()])
    return {
        "writes_issued": chip.writes_issued,
        "writes_performed": chip.writes_performed,
        "max_writes_per_cell": int(writes.max()) if writes.numel() else 0,
        "fraction_cells_written": float((writes > 0).float().mean()) if writes.numel() else 0.0,
        "cells_worn_out": int((writes > chip.config.endurance.endurance).sum()),
    }
