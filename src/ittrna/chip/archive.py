"""The chip file: ``.npz`` with a JSON header, no pickle (:func:`save`, :func:`load`), and its field-by-field
validation (:func:`check_chip_archive`).

Format 4 (:data:`FORMAT_VERSION`) holds, per layer, a header record (geometry, scale, version, array names,
ADC calibration, registers) and the arrays ``layer|array|field`` for every cell field (:data:`CHIP_FIELDS`;
``delta``, the additive programming error, only for a config with ``program_error``) plus the layout
``layer|_layout|row_map`` / ``layer|_layout|col_sign``, and the chip's clock ``now``. Format 3 files (no
programming error), format 2 files (no write times: every cell written at 0, the clock at 0) and format 1
files (no layouts either, no issued-write count) are read too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ittrna import boundary
from ittrna._io import load_npz, save_npz
from ittrna._validate import (
    MAX_SEED,
    _check_cells,
    _check_keys,
    _config,
    _fail,
    _format,
    _geometry,
    _short,
    _want_int,
)
from ittrna.chip.state import CellArray, ChipState, LayerTiles
from ittrna.config import TIME_MAX_S, ChipConfig, ConfigError
from ittrna.errors import FileFormatError, InputError
from ittrna.mapping import CONVERTERS, LayerLayout, TileGrid

__all__ = ["FORMAT_VERSION", "check_chip_archive", "load", "save"]

FORMAT_VERSION = 4
_READABLE_FORMATS = (1, 2, 3, 4)  # 3: no programming error; 2: no write times (all 0); 1: no layouts, issued count

#: (field, numpy dtype) of every per-cell array of a chip, in :class:`~ittrna.chip.CellArray` order.
CHIP_FIELDS: tuple[tuple[str, str], ...] = (
    ("fault", "int8"), ("theta", "float32"), ("g", "float32"), ("eps", "float32"), ("writes", "int64"),
    ("written_at", "float64"), ("delta", "float32"),
)
_FIELDS = tuple(f for f, _ in CHIP_FIELDS)
_LATER_FIELDS = {"written_at": 3, "delta": 4}
"""Cell fields added in a format version: absent from older files (zeros there)."""


def _fields(version: int, config: ChipConfig) -> tuple[tuple[str, str], ...]:
    """The cell fields a file of format ``version`` holds for a chip of ``config`` (``delta`` only where the
    config has a programming-error model)."""
    return tuple((f, d) for f, d in CHIP_FIELDS if version >= _LATER_FIELDS.get(f, 1)
                 and (f != "delta" or config.program_error.model != "none"))


# --- writing -----------------------------------------------------------------------------------------------
def save(chip: ChipState, path: str | Path) -> None:
    """Write the whole chip state to ``.npz`` (JSON header, no pickle), atomically; lossless."""
    arrays: dict[str, np.ndarray] = {}
    meta = []
    for layer in chip.layers.values():
        adc = layer.adc_fs.cpu().tolist() if layer.adc_fs is not None else None
        meta.append({"name": layer.name, **layer.shape_meta(), "scale": layer.scale, "version": layer.version,
                     "drift_ref": list(layer.drift_ref) if layer.drift_ref is not None else None,
                     "arrays": list(layer.arrays), "adc_fs": adc, "adc_version": layer.adc_version,
                     "gain": layer.gain.cpu().tolist() if layer.gain is not None else None,
                     "offset": layer.offset.cpu().tolist() if layer.offset is not None else None})
        for aname, arr in layer.arrays.items():
            for f, _ in _fields(FORMAT_VERSION, chip.config):
                arrays[f"{layer.name}|{aname}|{f}"] = getattr(arr, f).cpu().numpy()  # delta: set iff the config has it
        lay = layer.get_layout()
        arrays[f"{layer.name}|_layout|row_map"] = lay.row_map.cpu().numpy()
        arrays[f"{layer.name}|_layout|col_sign"] = lay.col_sign.cpu().numpy()
    header = {"kind": "chip", "format": FORMAT_VERSION, "config": chip.config.to_json_dict(),
              "seed": chip.seed, "write_epoch": chip.write_epoch, "writes_issued": chip.writes_issued,
              "writes_performed": chip.writes_performed, "now": chip.now,
              "layers": meta}
    save_npz(path, header, arrays)


# --- reading -----------------------------------------------------------------------------------------------
S = TypeVar("S", bound=ChipState)


def load(cls: type[S], path: str | Path) -> S:
    """A chip of class ``cls`` read from a file written by :func:`save` (see :meth:`Chip.load
    <ittrna.chip.Chip.load>`).

    Raises:
        FileFormatError: unreadable file, not a chip, unsupported format version, or inconsistent arrays.
    """
    boundary.check("Chip.load (a true chip file)")
    header, arrays = load_npz(path, "chip")
    check_chip_archive(path, header, arrays)  # every field: type, dtype, shape, range, codes, layouts
    try:
        config = ChipConfig.from_dict(header["config"])
    except ConfigError as exc:
        raise FileFormatError(f"{path}: invalid chip config: {exc}") from None
    present = {f for f, _ in _fields(int(header["format"]), config)}
    layers = {}
    for m in header["layers"]:
        grid = TileGrid.on(config.mapping, int(m["k"]), int(m["n"]), int(m.get("groups", 1)))
        arrs = {}
        for aname in m["arrays"]:
            try:
                fields = {f: torch.from_numpy(arrays[f"{m['name']}|{aname}|{f}"]) for f in _FIELDS if f in present}
            except KeyError as exc:
                raise FileFormatError(f"{path}: missing array {exc.args[0]!r}") from None
            if "written_at" not in fields:  # an older file: every cell written at 0
                fields["written_at"] = torch.zeros(fields["g"].shape, dtype=torch.float64)
            if config.program_error.model != "none" and "delta" not in fields:
                fields["delta"] = torch.zeros(fields["g"].shape)
            arrs[aname] = CellArray(**fields)
        layout = None
        if f"{m['name']}|_layout|row_map" in arrays:
            layout = LayerLayout(torch.from_numpy(arrays[f"{m['name']}|_layout|row_map"]),
                                 torch.from_numpy(arrays[f"{m['name']}|_layout|col_sign"]))
            try:
                layout.check(grid, f"{path}: layer {m['name']!r} layout")
            except InputError as exc:
                raise FileFormatError(str(exc)) from None
        layers[m["name"]] = LayerTiles(m["name"], m["kind"], tuple(m["weight_shape"]), grid, arrs,
                                       float(m["scale"]), int(m["version"]), layout,
                                       *_adc_calibration(path, m, grid), *_registers(path, m, grid.n),
                                       _drift_ref(path, m))
    return cls(config, int(header["seed"]), layers, int(header["write_epoch"]), int(header.get("writes_issued", 0)),
               int(header.get("writes_performed", 0)), float(header.get("now", 0.0)))


def _adc_calibration(path: str | Path, rec: dict[str, Any], grid: TileGrid) -> tuple[torch.Tensor | None, int]:
    """A layer record's ADC calibration (absent in older files): finite, > 0, one value per tile."""
    fs, version = rec.get("adc_fs"), rec.get("adc_version", -1)
    if fs is None:
        return None, -1
    try:
        t = torch.tensor(fs, dtype=torch.float32)
    except (TypeError, ValueError):
        raise FileFormatError(f"{path}: layer {rec['name']!r} field adc_fs is not a table of numbers") from None
    if tuple(t.shape) != grid.tiles or not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise FileFormatError(f"{path}: layer {rec['name']!r} field adc_fs must be {grid.tiles} finite values >= 0")
    if isinstance(version, bool) or not isinstance(version, int):
        raise FileFormatError(f"{path}: layer {rec['name']!r} field adc_version = {version!r}; accepted an integer")
    return t, version


def _drift_ref(path: str | Path, rec: dict[str, Any]) -> tuple[int, float] | None:
    """A layer record's drift-compensation reference (absent in older files): [version, finite value >= 0]."""
    value = rec.get("drift_ref")
    if value is None:
        return None
    if not rec.get("scale"):
        raise FileFormatError(f"{path}: layer {rec['name']!r} has a drift_ref but was never programmed; accepted "
                              "null for an unprogrammed layer")
    ok = (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int) and not isinstance(value[0], bool)
          and value[0] == rec.get("version")
          and isinstance(value[1], (int, float)) and not isinstance(value[1], bool) and 0 <= value[1] < 1e30)
    if not ok:
        raise FileFormatError(f"{path}: layer {rec['name']!r} field drift_ref = {_short(value)} is invalid; accepted "
                              "[the layer's version, a number >= 0] or null")
    return int(value[0]), float(value[1])


def _registers(path: str | Path, rec: dict[str, Any], n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A layer record's per-column gain/offset registers (absent in older files): n finite values each."""
    out: list[torch.Tensor | None] = []
    for key in ("gain", "offset"):
        value = rec.get(key)
        if value is None:
            out.append(None)
            continue
        try:
            t = torch.tensor(value, dtype=torch.float32)
        except (TypeError, ValueError):
            raise FileFormatError(f"{path}: layer {rec['name']!r} field {key} is not a list of numbers") from None
        if tuple(t.shape) != (n,) or not bool(torch.isfinite(t).all()) or bool((t.abs() > 1e6).any()):
            raise FileFormatError(f"{path}: layer {rec['name']!r} field {key} must be {n} finite values within "
                                  "+/- 1e6")
        out.append(t)
    return out[0], out[1]


# --- validation --------------------------------------------------------------------------------------------
def _want_number(path: Any, field: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise _fail(path, field, f"= {_short(value)} is invalid; accepted a number in [{lo:g}, {hi:g}]")
    return float(value)


def check_chip_archive(path: Any, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> ChipConfig:
    """Check every field of a chip archive (as read by ``load_npz(path, "chip")``) and return its config.

    Header: ``format`` (1 to 4), ``config`` (a valid chip config), ``seed`` (integer in [0, 2**63 - 1]),
    ``write_epoch`` (integer >= 0), ``writes_issued`` (format 2, integer >= 0), ``layers`` (a non-empty list
    of records with a unique ``name``, ``kind``, ``weight_shape``, ``k``, ``n`` consistent with each other,
    ``scale`` (finite, >= 0), ``version`` (integer >= 0) and ``arrays``, the scheme's array names). Arrays:
    exactly one per (layer, array, field), with the field's dtype, the shape the tiling gives, fault codes
    in {0, 1, 2}, finite theta/eps within +/- 60, conductances within [Gmin, Gmax], write counts >= 0;
    format 2 adds each layer's layout (``layer|_layout|row_map`` int64 (tiles along N, Kp) and
    ``layer|_layout|col_sign`` float32 (Np,); the routing itself is checked by ``LayerLayout.check`` on load).

    Raises:
        FileFormatError: naming the file and the first bad field.
    """
    version = _format(path, header, _READABLE_FORMATS)
    config = _config(path, header)
    _want_int(path, "seed", header.get("seed"), 0, MAX_SEED)
    _want_int(path, "write_epoch", header.get("write_epoch"), 0, MAX_SEED)
    now = 0.0
    if version >= 3 or "now" in header:  # the clock, in every format that carries one
        now = _want_number(path, "now", header.get("now"), 0.0, TIME_MAX_S)
    if version >= 2:
        _want_int(path, "writes_issued", header.get("writes_issued"), 0, MAX_SEED)
        if "writes_performed" in header:
            _want_int(path, "writes_performed", header.get("writes_performed"), 0, MAX_SEED)
    layers = header.get("layers")
    if not isinstance(layers, list) or not layers:
        raise _fail(path, "layers", f"= {_short(layers)} is invalid; accepted a non-empty list of layer records")
    m = config.mapping
    expected: set[str] = set()
    planned: list[tuple[str, tuple[int, ...], str]] = []
    names: set[str] = set()
    for i, rec in enumerate(layers):
        field = f"layers[{i}]"
        _, _, k, n, groups = _geometry(path, field, rec)
        name = rec.get("name")
        if not isinstance(name, str) or not name or "|" in name or name in names:
            raise _fail(path, f"{field}.name", f"= {_short(name)} is invalid; accepted a unique non-empty "
                                               "string without '|'")
        names.add(name)
        _want_number(path, f"{field}.scale", rec.get("scale"), 0.0, 1e30)
        _want_int(path, f"{field}.version", rec.get("version"), 0, MAX_SEED)
        shapes = CONVERTERS[m.scheme].array_shapes(TileGrid.on(m, k, n, groups))
        anames = rec.get("arrays")
        if not isinstance(anames, list) or sorted(map(str, anames)) != sorted(shapes) or len(anames) != len(shapes):
            raise _fail(path, f"{field}.arrays", f"= {_short(anames)} is invalid; accepted {sorted(shapes)} for "
                                                 f"mapping.scheme {m.scheme!r}")
        for aname, shape in shapes.items():
            for fname, dtype in _fields(version, config):
                key = f"{name}|{aname}|{fname}"
                expected.add(key)
                planned.append((key, shape, dtype))
        if version >= 2:
            grid = TileGrid.on(m, k, n, groups)
            tc, (kp, np_) = grid.tiles[1], grid.padded
            layout_arrays: tuple[tuple[str, str, tuple[int, ...]], ...] = (
                (f"{name}|_layout|row_map", "int64", (tc, kp)), (f"{name}|_layout|col_sign", "float32", (np_,)))
            for key, dtype, lshape in layout_arrays:
                expected.add(key)
                planned.append((key, lshape, dtype))
    _check_keys(path, arrays, expected)
    for key, pshape, dtype in planned:
        if "|_layout|" in key:
            arr = arrays[key]
            if arr.dtype != np.dtype(dtype) or arr.shape != pshape:
                raise FileFormatError(f"{path}: array {key!r} has {arr.dtype} {arr.shape}; accepted {dtype} {pshape}")
            continue
        if key.endswith("|written_at"):
            _check_write_times(path, key, arrays[key], (pshape[0], pshape[1]), now)
            continue
        _check_cells(path, key, arrays[key], dtype, (pshape[0], pshape[1]), config)
    return config


def _check_write_times(path: Any, key: str, arr: np.ndarray, shape: tuple[int, int], now: float) -> None:
    """A cell array's write times: float64 of the array's shape, finite, in [0, now] (no write in the future)."""
    if arr.dtype != np.float64 or arr.shape != shape:
        raise FileFormatError(f"{path}: array {key!r} has {arr.dtype} {arr.shape}; accepted float64 {shape}")
    if arr.size and (not np.isfinite(arr).all() or float(arr.min()) < 0 or float(arr.max()) > now):
        raise FileFormatError(f"{path}: array {key!r} holds write times outside [0, now = {now:g}] s")
