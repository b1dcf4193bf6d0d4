"""A chip's memory footprint, estimated from the design before anything is allocated: the cell arrays each
mapped layer takes under the scheme's own :class:`~ittrna.mapping.Converter` (spare rows included), the
stored cell state and the temporaries of fabrication, programming and reading."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ittrna._resources import check_memory
from ittrna.config import ChipConfig
from ittrna.graph import FilterFn, mapped_modules
from ittrna.mapping.converters import CONVERTERS
from ittrna.mapping.tiling import TileGrid
from ittrna.mapping.unfold import groups_of

__all__ = ["check_fits", "estimate_chip_bytes", "mapped_matrices"]

_STORED_BYTES_PER_CELL = 29
"""fault int8 + theta, g, eps float32 + writes int64 + written_at float64."""
_WORK_BYTES_PER_CELL = 48
"""Peak temporaries per cell of the largest layer while programming and reading it (targets, masks,
conductances, effective matrix)."""
_FAULT_WORK_BYTES_PER_CELL = {"uniform": 8, "clustered": 40, "lines": 24}
"""Peak temporaries per cell of one array while its fault map is drawn."""


def mapped_matrices(model: nn.Module, filter_fn: FilterFn | None = None) -> list[tuple[int, int, int]]:
    """(K, N, column groups) of every layer of ``model`` that goes on a chip."""
    out = []
    for _, module in mapped_modules(model, filter_fn):
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        # (K, N) = (inputs per output, outputs)
        out.append((int(weight[0].numel()), int(weight.shape[0]), groups_of(module)))
    return out


def estimate_chip_bytes(matrices: Sequence[tuple[int, ...]], config: ChipConfig) -> tuple[int, int]:
    """Peak bytes and cell count of fabricating, programming and reading a chip for ``matrices``.

    Args:
        matrices: (K, N) or (K, N, column groups) of every layer put on the chip.
        config: the chip configuration (tile size, scheme, fault pattern and rate).

    Returns:
        (peak bytes, total cells). The peak is the stored cell state (29 bytes per cell), plus the largest
        layer's programming temporaries, plus the fault sampler's temporaries for the largest array (for
        ``lines``: the cells of the lines drawn in one round, each padded to the longer tile side).
    """
    m, f = config.mapping, config.faults
    conv = CONVERTERS[m.scheme]
    total = 0
    largest_layer = 0
    fault_work = 0
    for k, n, *groups in matrices:
        shapes = conv.array_shapes(TileGrid.on(m, k, n, *groups))
        cells = sum(h * w for h, w in shapes.values())
        total += cells
        largest_layer = max(largest_layer, cells)
        if f.rate == 0:
            continue
        for h, w in shapes.values():
            tile_r, tile_c = (m.rows, m.cols) if w % m.cols == 0 else (m.rows, 1)
            work = h * w * _FAULT_WORK_BYTES_PER_CELL.get(f.pattern, 40)
            if f.pattern == "lines":
                n_lines = h * (w // tile_c) + w * (h // tile_r)
                mean_len = 2 * h * w / n_lines
                drawn = min(n_lines, f.rate * h * w / mean_len + 1)
                work += int(drawn * max(tile_r, tile_c) * 24 + n_lines * 24)
            fault_work = max(fault_work, work)
    peak = total * _STORED_BYTES_PER_CELL + largest_layer * _WORK_BYTES_PER_CELL + fault_work
    return peak, total


def check_fits(model: nn.Module, config: ChipConfig, filter_fn: FilterFn | None = None) -> None:
    """Raise :class:`~ittrna.errors.ResourceError` unless a chip for ``model`` fits in the available memory."""
    matrices = mapped_matrices(model, filter_fn)
    peak, cells = estimate_chip_bytes(matrices, config)
    check_memory(peak, f"a chip of {len(matrices)} layer(s), {cells:.3g} cells on "
                       f"{config.mapping.rows}x{config.mapping.cols} tiles")
