"""Checks at the library's boundary: seeds, devices, output paths, memory estimates before allocation, and
field-by-field validation of loaded measured maps and checkpoints, with the field checks a chip archive
shares with them (the chip archive itself is checked by its owner, :func:`ittrna.chip.archive.check_chip_archive`).

Rank 0 (imports only :mod:`ittrna.errors` and :mod:`ittrna.config` from ittrna), so every layer may call
it. Every check raises an :class:`~ittrna.errors.InputError` subclass with a one-line message naming the
file, the field, the value and what is accepted.

The cell-array layout of each mapping scheme is mirrored in :func:`expected_array_shapes` (this module
cannot import :mod:`ittrna.mapping`); a test keeps the two in step.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ittrna._resources import _size, available_memory, check_memory  # noqa: F401  (re-exported)
from ittrna.config import MAX_SEED, ChipConfig
from ittrna.errors import ConfigError, FileFormatError, InputError, ResourceError

__all__ = [
    "MAX_SEED",
    "available_memory",
    "check_checkpoint",
    "check_device",
    "check_fabricate",
    "check_measured_map",
    "check_memory",
    "check_nonempty_split",
    "check_output",
    "check_seed",
    "check_seeds",
    "check_state_fits",
    "estimate_chip_bytes",
    "expected_array_shapes",
]

"""Largest accepted seed: seeds are mixed as 64-bit integers, so larger ones would alias smaller ones."""

MAX_LOG_FACTOR = 60.0
"""Largest accepted |theta| or |eps| in a file: 20 sigma at the largest sigma (3); e^60 still fits float32
products with any accepted conductance."""

MAX_IN_SIDE = 65536
"""Largest accepted checkpoint input dimension (channels, height, width)."""

MAX_CLASSES = 1_000_000
"""Largest accepted number of classes in a checkpoint."""

#: (field, numpy dtype) of every per-cell array of a measured map.
MAP_FIELDS: tuple[tuple[str, str], ...] = (("fault", "int8"), ("theta", "float32"))
FAULT_CODES = (0, 1, 2)
"""healthy, stuck_off, stuck_on (:mod:`ittrna.device.faults`)."""

_STORED_BYTES_PER_CELL = 21
"""fault int8 + theta, g, eps float32 + writes int64."""
_WORK_BYTES_PER_CELL = 48
"""Peak temporaries per cell of the largest layer while programming and reading it (targets, masks,
conductances, effective matrix)."""
_FAULT_WORK_BYTES_PER_CELL = {"uniform": 8, "clustered": 40, "lines": 24}
"""Peak temporaries per cell of one array while its fault map is drawn."""


# --- numbers -----------------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_seed(seed: Any, name: str = "seed") -> int:
    """Return ``seed`` as an int if it is an integer in [0, 2**63 - 1], else raise :class:`InputError`."""
    if not _is_int(seed) or not 0 <= int(seed) <= MAX_SEED:
        big = _is_int(seed) and abs(int(seed)) > 2**80
        shown = f"an integer of {int(seed).bit_length()} bits" if big else repr(seed)
        raise InputError(f"{name} = {shown} is invalid; accepted an integer in [0, 2**63 - 1]")
    return int(seed)


def check_seeds(seeds: Iterable[Any], name: str = "seeds") -> list[int]:
    """The seeds as a list, each checked by :func:`check_seed`; an empty collection is an error."""
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise InputError(f"{name} = {seeds!r} is invalid; accepted a non-empty sequence of integer seeds")
    out = [check_seed(s, f"{name}[{i}]") for i, s in enumerate(seeds)]
    if not out:
        raise InputError(f"{name} is empty; accepted a non-empty sequence of integer seeds, e.g. range(5)")
    return out


def check_nonempty_split(data: Any, what: str = "data") -> None:
    """Raise :class:`InputError` for a split with no examples (an accuracy of it is undefined)."""
    if len(data) == 0:
        raise InputError(f"{what} is empty (0 examples); accepted a split with at least one example")


def check_device(name: Any) -> torch.device:
    """A torch device that exists here: ``cpu``, ``cuda``/``cuda:N`` (with CUDA) or ``mps`` (with MPS).

    Raises:
        InputError: not a device name; ResourceError: the device is not present on this machine.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"device {name!r} is invalid; accepted cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ResourceError(f"device {name!r}: CUDA is not available on this machine; accepted cpu")
        if device.index is not None and device.index >= count:
            raise ResourceError(f"device {name!r}: this machine has {count} CUDA device(s); accepted "
                                f"cuda:0..cuda:{count - 1}")
        return device
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ResourceError(f"device {name!r}: MPS is not available on this machine; accepted cpu")
        return device
    raise InputError(f"device {name!r} is not supported; accepted cpu, cuda, cuda:N or mps")


# --- memory: ittrna._resources (re-exported here) ------------------------------------------------------------


def expected_array_shapes(scheme: str, k: int, n: int, rows: int, cols: int, spare: int = 0
                          ) -> dict[str, tuple[int, int]]:
    """Name -> (rows, cols) of each cell array of a K x N matrix on ``rows x cols`` tiles with ``spare``
    extra word lines per tile.

    Mirrors ``ittrna.mapping.CONVERTERS[scheme].array_shapes`` (differential: ``pos``/``neg`` padded to
    whole tiles; offset: ``main`` padded and ``ref`` with one column per tile along N).
    """
    tr, tc = -(-k // rows), -(-n // cols)
    kp, np_ = tr * (rows + spare), tc * cols
    if scheme == "differential":
        return {"pos": (kp, np_), "neg": (kp, np_)}
    if scheme == "offset":
        return {"main": (kp, np_), "ref": (kp, tc)}
    raise ConfigError(f"mapping.scheme = {scheme!r} has no array layout; accepted differential or offset")


def _mapped_matrices(model: nn.Module, filter_fn: Callable[[nn.Module, str], bool] | None) -> list[tuple[int, int]]:
    out = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and (filter_fn is None or filter_fn(module, name)):
            weight = module.weight
            out.append((int(weight[0].numel()), int(weight.shape[0])))
    return out


def estimate_chip_bytes(matrices: Sequence[tuple[int, int]], config: ChipConfig) -> tuple[int, int]:
    """Peak bytes and cell count of fabricating, programming and reading a chip for ``matrices``.

    Args:
        matrices: (K, N) of every layer put on the chip.
        config: the chip configuration (tile size, scheme, fault pattern and rate).

    Returns:
        (peak bytes, total cells). The peak is the stored cell state (21 bytes per cell), plus the largest
        layer's programming temporaries, plus the fault sampler's temporaries for the largest array (for
        ``lines``: the cells of the lines drawn in one round, each padded to the longer tile side).
    """
    m, f = config.mapping, config.faults
    total = 0
    largest_layer = 0
    fault_work = 0
    for k, n in matrices:
        shapes = expected_array_shapes(m.scheme, k, n, m.rows, m.cols)
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


def check_fabricate(
    model: Any, config: Any, seed: Any, filter_fn: Callable[[nn.Module, str], bool] | None = None
) -> None:
    """Arguments of ``Chip.fabricate``: a module, a :class:`ChipConfig`, a seed in [0, 2**63 - 1], and a chip
    that fits in the available memory (estimated before anything is allocated).

    Raises:
        InputError: a bad argument; ResourceError: the chip would not fit in memory.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model has type {type(model).__name__}; accepted a torch.nn.Module")
    if not isinstance(config, ChipConfig):
        raise InputError(f"config has type {type(config).__name__}; accepted an ittrna.ChipConfig")
    check_seed(seed)
    matrices = _mapped_matrices(model, filter_fn)
    peak, cells = estimate_chip_bytes(matrices, config)
    check_memory(peak, f"a chip of {len(matrices)} layer(s), {cells:.3g} cells on "
                       f"{config.mapping.rows}x{config.mapping.cols} tiles")


# --- output paths ------------------------------------------------------------------------------------------
def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, RuntimeError):
        return False


def check_output(out: Path, suffix: str | None, inputs: Mapping[str, Path | None], *, what: str,
                 flag: str = "--out") -> None:
    """An output path that destroys no input and fits what is written.

    Args:
        out: the path to write.
        suffix: the suffix it must have (``.pt``, ``.npz``, ``.png``); None for a folder.
        inputs: option -> path of every input file of the command (None entries are skipped).
        what: what is written, for the message (``"a chip"``).
        flag: the option that named ``out``.

    Raises:
        InputError: wrong suffix, a file where a folder is needed (or the reverse, also above ``out``), or
            the same file as an input (also through a symlink or a hard link).
    """
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{flag} {out}: {parent} is a file, not a folder; accepted a path in a folder")
    if suffix is not None and out.suffix != suffix:
        raise InputError(f"{flag} {out}: {what} is written as {suffix}; got suffix {out.suffix!r}")
    if suffix is not None and out.is_dir():
        raise InputError(f"{flag} {out} is a folder; accepted a {suffix} file path")
    if suffix is None and out.exists() and not out.is_dir():
        raise InputError(f"{flag} {out} is an existing file; accepted a folder")
    if out.is_symlink():  # a dangling link is a file to create; a loop can never be opened: refuse it now
        try:
            out.resolve(strict=False)
            os.stat(out)
        except FileNotFoundError:
            pass
        except (OSError, RuntimeError) as exc:
            reason = getattr(exc, "strerror", None) or "a symbolic link loop"
            raise InputError(f"{flag} {out} cannot be opened ({reason}); accepted a path that is not a "
                             "symbolic link loop") from None
    for opt, path in inputs.items():
        if path is not None and _same_file(out, path):
            raise InputError(f"{flag} {out} is the input {opt} {path} (the same file); choose another path "
                             "so the input is not overwritten")


# --- loaded files ------------------------------------------------------------------------------------------
def _fail(path: Any, field: str, problem: str) -> FileFormatError:
    return FileFormatError(f"{path}: field {field} {problem}")


def _want_int(path: Any, field: str, value: Any, lo: int, hi: int) -> int:
    if not _is_int(value) or not lo <= int(value) <= hi:
        raise _fail(path, field, f"= {_short(value)} is invalid; accepted an integer in [{lo}, {hi}]")
    return int(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _config(path: Any, header: Mapping[str, Any]) -> ChipConfig:
    if "config" not in header:
        raise _fail(path, "config", "is missing; accepted a chip config object")
    if not isinstance(header["config"], Mapping):
        raise _fail(path, "config", f"has type {type(header['config']).__name__}; accepted a chip config object")
    try:
        return ChipConfig.from_dict(header["config"])
    except ConfigError as exc:
        raise _fail(path, "config", f"is invalid: {exc}") from None


def _format(path: Any, header: Mapping[str, Any], versions: tuple[int, ...]) -> int:
    value = header.get("format")
    if not _is_int(value) or value not in versions:
        raise _fail(path, "format", f"= {_short(value)} is unsupported; accepted {' or '.join(map(str, versions))}")
    return int(value)


def _geometry(path: Any, field: str, meta: Any) -> tuple[str, tuple[int, ...], int, int]:
    """kind, weight_shape, k, n of one layer's header record, consistent with each other."""
    if not isinstance(meta, Mapping):
        raise _fail(path, field, f"has type {type(meta).__name__}; accepted an object")
    for key in ("kind", "weight_shape", "k", "n"):
        if key not in meta:
            raise _fail(path, f"{field}.{key}", "is missing")
    kind = meta["kind"]
    if kind not in ("linear", "conv2d"):
        raise _fail(path, f"{field}.kind", f"= {_short(kind)} is invalid; accepted 'linear' or 'conv2d'")
    ws = meta["weight_shape"]
    dims = 2 if kind == "linear" else 4
    if (not isinstance(ws, list) or len(ws) != dims
            or not all(_is_int(d) and 1 <= d <= 2**31 for d in ws)):
        raise _fail(path, f"{field}.weight_shape", f"= {_short(ws)} is invalid; accepted {dims} positive "
                                                   f"integers for a {kind} layer")
    k = _want_int(path, f"{field}.k", meta["k"], 1, 2**40)
    n = _want_int(path, f"{field}.n", meta["n"], 1, 2**31)
    if k != math.prod(ws[1:]) or n != ws[0]:
        raise _fail(path, f"{field}.k/n", f"= {k}/{n} do not match weight_shape {ws}; accepted "
                                          f"k = {math.prod(ws[1:])}, n = {ws[0]}")
    return kind, tuple(ws), k, n


def _check_cells(path: Any, key: str, arr: np.ndarray, dtype: str, shape: tuple[int, int],
                 config: ChipConfig) -> None:
    """dtype, shape and values of one per-cell array."""
    if arr.dtype != np.dtype(dtype):
        raise FileFormatError(f"{path}: array {key!r} has dtype {arr.dtype}; accepted {dtype}")
    if arr.shape != shape:
        raise FileFormatError(f"{path}: array {key!r} has shape {arr.shape}; accepted {shape}")
    fname = key.rsplit("|", 1)[1]
    if arr.size == 0:
        return
    if fname == "fault":
        bad = ~np.isin(arr, FAULT_CODES)
        if bad.any():
            raise FileFormatError(f"{path}: array {key!r} holds fault code {int(arr[bad][0])}; accepted "
                                  "0 (healthy), 1 (stuck_off), 2 (stuck_on)")
    elif fname == "writes":
        if int(arr.min()) < 0:
            raise FileFormatError(f"{path}: array {key!r} holds {int(arr.min())} writes; accepted >= 0")
    else:
        if not np.isfinite(arr).all():
            raise FileFormatError(f"{path}: array {key!r} holds NaN or inf; accepted finite values")
        if fname == "g":
            lo, hi = config.cell.g_min, config.cell.g_max
            if float(arr.min()) < lo * (1 - 1e-5) or float(arr.max()) > hi * (1 + 1e-5):
                raise FileFormatError(
                    f"{path}: array {key!r} holds conductances in [{float(arr.min()):g}, {float(arr.max()):g}] S; "
                    f"accepted [Gmin, Gmax] = [{lo:g}, {hi:g}] S of the file's cell config")
        elif float(np.abs(arr).max()) > MAX_LOG_FACTOR:
            raise FileFormatError(f"{path}: array {key!r} holds a log factor of {float(np.abs(arr).max()):g}; "
                                  f"accepted |value| <= {MAX_LOG_FACTOR:g}")


def _check_keys(path: Any, arrays: Mapping[str, np.ndarray], expected: set[str]) -> None:
    missing = sorted(expected - set(arrays))
    if missing:
        raise FileFormatError(f"{path}: array {missing[0]!r} is missing ({len(missing)} missing)")
    extra = sorted(set(arrays) - expected)
    if extra:
        raise FileFormatError(f"{path}: array {extra[0]!r} is unexpected; the header describes "
                              f"{len(expected)} arrays")


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
    meta = header.get("meta")
    if not isinstance(meta, Mapping) or not meta:
        raise _fail(path, "meta", f"= {_short(meta)} is invalid; accepted an object of layer records")
    m = config.mapping
    expected: set[str] = set()
    planned: list[tuple[str, tuple[int, int], str]] = []
    for name, rec in meta.items():
        if not name or "|" in name:
            raise _fail(path, "meta", f"has layer name {name!r}; accepted non-empty names without '|'")
        _, _, k, n = _geometry(path, f"meta[{name!r}]", rec)
        for aname, shape in expected_array_shapes(m.scheme, k, n, m.rows, m.cols, m.spare_rows).items():
            for fname, dtype in MAP_FIELDS:
                key = f"{name}|{aname}|{fname}"
                expected.add(key)
                planned.append((key, shape, dtype))
    _check_keys(path, arrays, expected)
    for key, shape, dtype in planned:
        _check_cells(path, key, arrays[key], dtype, shape, config)
    return config


def check_checkpoint(path: Any, payload: Any, version: int, models: Iterable[str]) -> dict[str, Any]:
    """Check a loaded checkpoint payload field by field and return its metadata.

    Payload: a dict with ``format`` (``version``), ``meta`` and ``state_dict`` (names -> floating-point
    tensors, all finite). Meta: ``model`` (one of ``models``), ``in_shape`` (3 integers in [1, 65536]),
    ``num_classes`` (integer in [1, 1e6]); ``dataset`` if present a string.

    Raises:
        FileFormatError: naming the file and the first bad field.
    """
    if not isinstance(payload, dict) or "meta" not in payload or "state_dict" not in payload:
        raise FileFormatError(f"{path}: not an ittrna checkpoint (format {version} expected)")
    if not _is_int(payload.get("format")) or payload["format"] != version:
        raise FileFormatError(f"{path}: not an ittrna checkpoint (format {_short(payload.get('format'))}; "
                              f"format {version} expected)")
    meta = payload["meta"]
    if not isinstance(meta, dict):
        raise _fail(path, "meta", f"has type {type(meta).__name__}; accepted an object")
    names = sorted(models)
    if "model" not in meta:
        raise _fail(path, "meta.model", f"is missing; accepted one of {names}")
    if not isinstance(meta["model"], str) or meta["model"] not in names:
        raise _fail(path, "meta.model", f"= {_short(meta['model'])} is invalid; accepted one of {names}")
    shape = meta.get("in_shape")
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(_is_int(d) and 1 <= d <= MAX_IN_SIDE for d in shape)):
        raise _fail(path, "meta.in_shape", f"= {_short(shape)} is invalid; accepted 3 integers (C, H, W) in "
                                           f"[1, {MAX_IN_SIDE}]")
    _want_int(path, "meta.num_classes", meta.get("num_classes"), 1, MAX_CLASSES)
    if "dataset" in meta and not isinstance(meta["dataset"], str):
        raise _fail(path, "meta.dataset", f"= {_short(meta['dataset'])} is invalid; accepted a dataset name")
    state = payload["state_dict"]
    if not isinstance(state, dict):
        raise _fail(path, "state_dict", f"has type {type(state).__name__}; accepted an object of tensors")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise _fail(path, f"state_dict[{key!r}]", f"has type {type(value).__name__}; accepted a tensor")
        if value.layout != torch.strided:
            raise _fail(path, f"state_dict[{key!r}]", f"is a {value.layout} tensor; accepted a dense tensor")
        if not value.is_floating_point():
            raise _fail(path, f"state_dict[{key!r}]", f"has dtype {value.dtype}; accepted a floating-point tensor")
        if not bool(torch.isfinite(value).all()):
            raise _fail(path, f"state_dict[{key!r}]", "holds NaN or inf; accepted finite weights")
    return meta


def check_state_fits(path: Any, state: Mapping[str, torch.Tensor], model: nn.Module, name: str) -> None:
    """The checkpoint's weights have exactly the model's parameter names and shapes.

    Raises:
        FileFormatError: naming the first missing, unexpected or misshapen tensor.
    """
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    if missing:
        raise _fail(path, f"state_dict[{missing[0]!r}]", f"is missing; model {name!r} needs {len(want)} tensors")
    extra = [k for k in state if k not in want]
    if extra:
        raise _fail(path, f"state_dict[{extra[0]!r}]", f"is not a tensor of model {name!r}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(want[key].shape):
            raise _fail(path, f"state_dict[{key!r}]", f"has shape {tuple(value.shape)}; model {name!r} needs "
                                                      f"{tuple(want[key].shape)}")
