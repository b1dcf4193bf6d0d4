"""Weight <-> conductance mapping: one module per concept.

- :mod:`.tiling`: :class:`TileGrid` (a (K, N) matrix on ``rows x cols`` tiles, spare word lines),
  :class:`LayerLayout` (row routing and column polarity) and the logical <-> physical views.
- :mod:`.unfold`: a weight as its crossbar matrix and a convolution's input as the rows that drive it
  (im2col, any stride/dilation/padding, grouped convolutions), with their inverses — the one owner of conv
  unrolling.
- :mod:`.converters`: the mapping schemes (:data:`CONVERTERS`), each one :class:`Converter` used by the chip,
  the host model and remapping alike; the per-layer weight scale.
- :mod:`.periphery`: DAC/ADC quantisation and the tile-by-tile matmul.

The names below are re-exported so that ``from ittrna.mapping import TileGrid`` keeps working.
"""

from __future__ import annotations

from ittrna.graph import mapped_modules
from ittrna.mapping.converters import CONVERTERS, Converter, Differential, Offset, weight_scale
from ittrna.mapping.periphery import adc_full_scale, quantize_signed, tile_partials, tiled_matmul
from ittrna.mapping.tiling import LayerLayout, TileGrid, to_logical, to_physical, used_cells
from ittrna.mapping.unfold import (
    conv_columns,
    conv_padding,
    conv_row_power,
    conv_rows,
    grouped_matmul,
    groups_of,
    matrix_to_weight,
    output_to_rows,
    row_statistic,
    rows_to_output,
    weight_to_matrix,
)

__all__ = [
    "CONVERTERS",
    "Converter",
    "Differential",
    "LayerLayout",
    "Offset",
    "TileGrid",
    "adc_full_scale",
    "conv_columns",
    "conv_padding",
    "conv_row_power",
    "conv_rows",
    "grouped_matmul",
    "groups_of",
    "mapped_modules",
    "matrix_to_weight",
    "output_to_rows",
    "quantize_signed",
    "row_statistic",
    "rows_to_output",
    "tile_partials",
    "tiled_matmul",
    "to_logical",
    "to_physical",
    "used_cells",
    "weight_scale",
    "weight_to_matrix",
]
