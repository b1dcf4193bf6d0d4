"""What a host knows about a chip and what it hands back: the measured defect map and a deployment.

A real host (the computer that trains a network and programs an RRAM chip) knows the chip's *design* —
cell range and levels, mapping scheme, tile geometry, periphery, the process's programming precision and
the test's stated accuracy — and the result of the post-fabrication test. It never knows the true cell state
(which faults the test missed, the exact theta, the programmed levels, the wear) nor anything that rebuilds
it (the fabrication seed). This module holds exactly that host-side view, below :mod:`ittrna.chip`:

- :class:`MeasuredMap`: per layer and cell array, the fault codes and theta the test reported, the design
  config (:func:`design_config`: the fabricated fault statistics and device-to-device sigma removed) and an
  opaque ``chip_id`` that matches a map to its chip without revealing the seed.
- :class:`Deployment`: what a tolerance method returns for the evaluator to program onto the true chip —
  the model's weights, each layer's scale and digital layout, (where a method programs cell by cell)
  explicit target conductances in the physical arrays' shapes, and per-column gain/offset registers.
- :class:`ChipAccess`: what an on-device method may do with the true chip through a chip-in-the-loop
  session (run inputs, program, set the digital periphery, read its own write count) — nothing that reveals
  the cells. The session itself lives above the chip (:mod:`ittrna.session`); methods see only this protocol.

Files are ``.npz`` with a JSON header (no pickle).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ittrna._io import load_npz, save_npz
from ittrna._validate import MAP_FIELDS, _check_cells, _check_keys, _config, _fail, _format, _geometry, _short
from ittrna.config import TIME_MAX_S, ChipConfig, FaultConfig
from ittrna.errors import FileFormatError
from ittrna.mapping import CONVERTERS, LayerLayout, TileGrid

__all__ = [
    "ChipAccess",
    "Deployment",
    "MeasuredMap",
    "check_measured_map",
    "design_config",
]

MAP_FORMAT = 2


def design_config(config: ChipConfig) -> ChipConfig:
    """The part of a chip config a host knows from the design: the fabricated fault statistics
    (``faults``) and the device-to-device spread (``variation.sigma``) are reset to their defaults — the
    test reports those per cell instead. Cell range and levels, mapping and periphery, programming and read
    noise (process specifications), endurance and the test's stated precision are kept."""
    return replace(config, faults=FaultConfig(), variation=replace(config.variation, sigma=0.0))


@dataclass
class MeasuredMap:
    """What the post-fabrication test reports: per layer and array, fault codes and measured theta.

    It may miss faults (``test.miss_rate``) and carry measurement error on theta (``test.theta_noise``).
    It carries nothing from which the true chip can be rebuilt: no seed, and a :func:`design_config`.
    """

    design: ChipConfig
    """The chip's design as the host knows it (see :func:`design_config`)."""
    chip_id: str
    """Opaque identity of the tested chip (a salted hash; the seed cannot be read from it)."""
    layers: dict[str, dict[str, dict[str, torch.Tensor]]]
    """layer -> array -> {"fault": int8 codes, "theta": float32}, each of the physical array's shape."""
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    """layer -> {"kind", "weight_shape", "k", "n"} (geometry of the chip it came from)."""
    taken_at: float = 0.0
    """When the test ran, on the chip's clock (seconds since fabrication): a map older than the last
    programming says nothing of how the cells have relaxed since (the design's ``relaxation`` section is the
    datasheet a host may use for that)."""

    def __post_init__(self) -> None:
        # whatever config it is built or loaded with, a map carries only the design part
        self.design = design_config(self.design)

    def grid(self, name: str) -> TileGrid:
        """The tile grid of layer ``name`` (from the design's tile geometry)."""
        m = self.meta[name]
        return TileGrid.on(self.design.mapping, int(m["k"]), int(m["n"]), int(m.get("groups", 1)))

    def fault_fraction(self) -> float:
        """Fraction of reported-stuck cells over all arrays (padding included)."""
        stuck = sum(int((f["fault"] != 0).sum()) for arrs in self.layers.values() for f in arrs.values())
        cells = sum(f["fault"].numel() for arrs in self.layers.values() for f in arrs.values())
        return stuck / max(cells, 1)

    def for_method(self) -> MeasuredMap:
        """The copy a method receives: without the chip id (the evaluator matches maps to chips)."""
        return MeasuredMap(self.design, "", self.layers, self.meta, self.taken_at)

    def save(self, path: str | Path) -> None:
        """Write to ``.npz`` (JSON header, no pickle), atomically."""
        arrays = {
            f"{lname}|{aname}|{fname}": t.cpu().numpy()
            for lname, arrs in self.layers.items()
            for aname, fields in arrs.items()
            for fname, t in fields.items()
        }
        header = {"kind": "measured-map", "format": MAP_FORMAT, "config": self.design.to_json_dict(),
                  "chip_id": self.chip_id, "meta": self.meta, "taken_at": self.taken_at}
        save_npz(path, header, arrays)

    @classmethod
    def load(cls, path: str | Path) -> MeasuredMap:
        """Read a map written by :meth:`save`.

        Raises:
            ValueError: unreadable file, not a measured map, or another format version.
        """
        header, arrays = load_npz(path, "measured-map")
        design = check_measured_map(path, header, arrays)  # every field: type, dtype, shape, range, codes
        layers: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        for key, value in arrays.items():
            lname, aname, fname = key.split("|")
            layers.setdefault(lname, {}).setdefault(aname, {})[fname] = torch.from_numpy(value)
        return cls(design, str(header.get("chip_id", "")), layers, dict(header.get("meta", {})),
                   float(header.get("taken_at", 0.0)))


@dataclass
class Deployment:
    """A method's result for one chip: what the evaluator programs onto the true chip.

    Every chip layer gets ``scales[name]`` and ``layouts[name]``; a layer listed in ``targets`` is
    programmed with those conductances (siemens, physical array shapes), any other layer with its weight from
    ``state_dict`` through the chip's converter. Parameters outside the chip layers (biases) stay digital.
    """

    state_dict: dict[str, torch.Tensor]
    """The network's weights after the method (the full ``state_dict``)."""
    scales: dict[str, float] = field(default_factory=dict)
    """layer -> weight scale s (weight units per conductance span); absent: the chip's default."""
    layouts: dict[str, LayerLayout] = field(default_factory=dict)
    """layer -> digital layout; absent: the identity layout."""
    targets: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """layer -> array -> target conductances (siemens), for layers programmed cell by cell."""
    report: dict[str, Any] = field(default_factory=dict)
    """Method report: validation accuracy, epochs, seconds, chosen settings (JSON-safe values)."""
    registers: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """layer -> ``gain`` and ``offset`` (N,): digital per-column registers applied to each output column
    (``gain * column + offset``, before the bias); absent: gain 1, offset 0. They cost no cell writes."""

    def to_payload(self) -> dict[str, Any]:
        """Plain nested dicts of tensors and JSON values (``torch.load(weights_only=True)``-safe)."""
        return {
            "registers": {n: {k: t.cpu() for k, t in r.items()} for n, r in self.registers.items()},
            "scales": dict(self.scales),
            "layouts": {n: {"row_map": lay.row_map.cpu(), "col_sign": lay.col_sign.cpu()}
                        for n, lay in self.layouts.items()},
            "targets": {n: {a: t.cpu() for a, t in arrs.items()} for n, arrs in self.targets.items()},
            "report": dict(self.report),
        }

    @classmethod
    def from_payload(cls, state_dict: dict[str, torch.Tensor], payload: dict[str, Any]) -> Deployment:
        """Inverse of :meth:`to_payload`."""
        try:
            layouts = {str(n): LayerLayout(d["row_map"], d["col_sign"]) for n, d in payload["layouts"].items()}
            scales = {str(n): float(s) for n, s in payload["scales"].items()}
            targets = {str(n): {str(a): t for a, t in arrs.items()} for n, arrs in payload["targets"].items()}
            registers = {str(n): {str(k): t for k, t in r.items()} for n, r in payload.get("registers", {}).items()}
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise FileFormatError(f"deployment record is malformed ({exc!r})") from None
        for n, lay in layouts.items():
            if not (isinstance(lay.row_map, torch.Tensor) and isinstance(lay.col_sign, torch.Tensor)):
                raise FileFormatError(f"deployment layout of layer {n!r} is not a pair of tensors")
        for n, s in scales.items():
            if not (s > 0 and s < float("inf")):
                raise FileFormatError(f"deployment scale of layer {n!r} = {s!r}; accepted a finite number > 0")
        for n, arrs in targets.items():
            for a, t in arrs.items():
                if not isinstance(t, torch.Tensor) or not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                    raise FileFormatError(f"deployment targets {n!r}/{a!r} must be finite floating-point tensors")
        for n, r in registers.items():
            if sorted(r) != ["gain", "offset"] or not all(
                    isinstance(t, torch.Tensor) and t.dim() == 1 and t.is_floating_point()
                    and bool(torch.isfinite(t).all()) for t in r.values()) or r["gain"].shape != r["offset"].shape:
                raise FileFormatError(f"deployment registers of layer {n!r} must be finite 1-d tensors gain and "
                                      "offset of one length")
        return cls(dict(state_dict), scales, layouts, targets, dict(payload.get("report", {})), registers)


class ChipAccess(Protocol):
    """A chip-in-the-loop session as an on-device method sees it: what real hardware offers a host.

    The host may run inputs through the chip and read the outputs of each crossbar layer (with the true
    faults, variation, programming and read noise and converters), program target conductances or weights,
    and set digital periphery that costs no cell writes (layouts, per-column gain/offset registers). It learns
    the writes *it issued*, its budget and its counts — never true theta, fault codes, programmed levels or
    per-cell wear. Programming raises :class:`~ittrna.errors.WriteBudgetError` (and writes nothing) past the
    session's write budget or iteration limit. Implemented by :class:`ittrna.session.ChipSession`.
    """

    @property
    def layer_names(self) -> list[str]:
        """The crossbar layers, in the model's order."""
        ...

    def set_digital(self, params: Mapping[str, torch.Tensor]) -> None:
        """Load the model's digital parameters and buffers (anything outside the crossbar weights)."""
        ...

    def forward(self, x: torch.Tensor, *, record: bool = False, taps: Sequence[str] = ()
                ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Run a batch on the chip (eval mode): (logits, {layer: (layer input, layer output)} if ``record``,
        plus ``taps:NAME`` -> (input, input) for each digital module named in ``taps``)."""
        ...

    def deploy(self, deployment: Deployment) -> int:
        """The first programming of the chip (once, before any on-device iteration); returns writes issued."""
        ...

    def program_weights(self, name: str, weight: torch.Tensor, *, scale: float | None = None) -> int:
        """Program a layer's weight through the chip's converter; returns writes issued."""
        ...

    def program_targets(self, name: str, targets: Mapping[str, torch.Tensor]) -> int:
        """Program explicit target conductances (siemens, physical array shapes); returns writes issued."""
        ...

    def rewrite(self, name: str, cells: Mapping[str, torch.Tensor]) -> int:
        """Write the masked cells (array -> bool mask, physical shape) again with their programmed targets (a
        refresh); returns writes issued."""
        ...

    def weight_targets(self, name: str, weight: torch.Tensor, scale: float | None = None
                       ) -> dict[str, torch.Tensor]:
        """Targets the chip's converter gives ``weight`` (design knowledge), for :meth:`count_writes`."""
        ...

    def count_writes(self, name: str, targets: Mapping[str, torch.Tensor]) -> int:
        """Writes that ``program_targets(name, targets)`` would issue (the host knows what it programmed)."""
        ...

    def set_layout(self, name: str, layout: LayerLayout) -> None:
        """Change a layer's digital routing and polarity (no cell writes: the cells keep their state)."""
        ...

    def counts(self) -> dict[str, int]:
        """The session's own counts: writes issued (all, on-device), iterations, forward passes, images."""
        ...

    def set_registers(self, name: str, gain: torch.Tensor, offset: torch.Tensor) -> None:
        """Set a layer's per-column gain and offset registers (N,) (digital: no cell writes)."""
        ...

    def registers(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A layer's current (gain, offset) registers."""
        ...

    def scale(self, name: str) -> float:
        """The weight scale the layer was last programmed with (a host setting)."""
        ...

    @property
    def writes_issued(self) -> int:
        """Writes issued through this session so far (deployment included)."""
        ...

    @property
    def writes_left(self) -> int | None:
        """On-device writes still allowed (None: no budget)."""
        ...

    @property
    def iterations(self) -> int:
        """On-device iterations so far (programming rounds after the deployment)."""
        ...

    @property
    def iterations_left(self) -> int | None:
        """On-device iterations still allowed (None: no limit)."""
        ...


def check_measured_map(path: Any, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> ChipConfig:
    """Check every field of a measured defect map (as read by ``load_npz(path, "measured-map")``).

    Header: ``format`` (2), ``config`` (the design config), ``chip_id`` (a string), ``meta`` (layer name
    -> ``kind``, ``weight_shape``, ``k``, ``n``). Arrays ``layer|array|field`` for every layer of ``meta``,
    every array of the scheme and the fields ``fault`` (int8 codes 0/1/2) and ``theta`` (finite float32
    within +/- 60), shaped as the tiling gives.

    Raises:
        FileFormatError: naming the file and the first bad field.
    """
    _format(path, header, (2,))
    config = _config(path, header)
    if not isinstance(header.get("chip_id"), str):
        raise _fail(path, "chip_id", f"= {_short(header.get('chip_id'))} is invalid; accepted a string")
    taken_at = header.get("taken_at", 0.0)  # absent in older files: tested at fabrication
    if isinstance(taken_at, bool) or not isinstance(taken_at, (int, float)) or not 0 <= taken_at <= TIME_MAX_S:
        raise _fail(path, "taken_at", f"= {_short(taken_at)} is invalid; accepted seconds in [0, {TIME_MAX_S:g}]")
    meta = header.get("meta")
    if not isinstance(meta, Mapping) or not meta:
        raise _fail(path, "meta", f"= {_short(meta)} is invalid; accepted an object of layer records")
    m = config.mapping
    expected: set[str] = set()
    planned: list[tuple[str, tuple[int, int], str]] = []
    for name, rec in meta.items():
        if not name or "|" in name:
            raise _fail(path, "meta", f"has layer name {name!r}; accepted non-empty names without '|'")
        _, _, k, n, groups = _geometry(path, f"meta[{name!r}]", rec)
        for aname, shape in CONVERTERS[m.scheme].array_shapes(TileGrid.on(m, k, n, groups)).items():
            for fname, dtype in MAP_FIELDS:
                key = f"{name}|{aname}|{fname}"
                expected.add(key)
                planned.append((key, shape, dtype))
    _check_keys(path, arrays, expected)
    for key, shape, dtype in planned:
        _check_cells(path, key, arrays[key], dtype, shape, config)
    return config
