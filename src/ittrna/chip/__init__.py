"""A fabricated chip: per-layer crossbar tiles holding the true state of every cell, and what it presents.

One owner per responsibility (:class:`Chip` is the façade whose methods delegate to them):

- :mod:`~ittrna.chip.state` — the cell state (:class:`CellArray`, :class:`LayerTiles`, the chip's config,
  seed and counters), the seed streams and fabrication (faults and theta per layer/array/quantity).
- :mod:`~ittrna.chip.program` — the only writer of cell state: programming targets, weights, models and
  deployments, and the issued/performed write counts.
- :mod:`~ittrna.chip.readout` — what the chip presents (conductances, effective matrices and weights, the
  cached read of a deployed layer, the read-noise stream) and the per-layer periphery it alone changes:
  layout, ADC calibration, gain/offset registers.
- :mod:`~ittrna.chip.test` — the post-fabrication test (:class:`~ittrna.host.MeasuredMap`) and the chip id.
- :mod:`~ittrna.chip.stats` — evaluator-only statistics: cells in use, fault fractions, theta spread, wear.
- :mod:`~ittrna.chip.archive` — the ``.npz`` chip file (JSON header, no pickle): save, load and its
  field-by-field validation.
- :mod:`~ittrna.chip.core` — the :class:`Chip` façade.
"""

from __future__ import annotations

from ittrna.chip.core import Chip
from ittrna.chip.readout import check_registers as check_registers
from ittrna.chip.state import CellArray, LayerTiles
from ittrna.host import MeasuredMap

__all__ = ["CellArray", "Chip", "LayerTiles", "MeasuredMap"]
