"""Checks at the library's boundary: seeds, devices, output paths, memory estimates before allocation, and
field-by-field validation of loaded measured maps and checkpoints, with the field checks a chip archive
shares with them (the chip archive itself is checked by its owner, :func:`ittrna.chip.archive.check_chip_archive`).

Rank 0 (imports only :mod:`ittrna.errors` and :mod:`ittrna.config` from ittrna), so every layer may call
it. Every check raises an :class:`~ittrna.errors.InputError` subclass with a one-line message naming the
file, the field, the value and what is accepted.

The checks that belong to one concept live with its owner, which calls the shared field helpers here:
the chip archive in :mod:`ittrna.chip.archive`, the measured map in :mod:`ittrna.host`, a chip's memory
footprint in :mod:`ittrna.mapping.footprint` (cell arrays from the scheme's own converter, no mirror).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ittrna._resources import _size, available_memory, check_memory  # noqa: F401  (re-exported)
from ittrna.config import MAX_SEED, ChipConfig
from ittrna.errors import ConfigError, FileFormatError, InputError, ResourceError

__all__ = [
    "MAX_SEED",
    "available_memory",
    "check_device",
    "check_memory",
    "check_nonempty_split",
    "check_output",
    "check_seed",
    "check_seeds",
]

"""Largest accepted seed: seeds are mixed as 64-bit integers, so larger ones would alias smaller ones."""

MAX_LOG_FACTOR = 60.0
"""Largest accepted |theta| or |eps| in a file: 20 sigma at the largest sigma (3); e^60 still fits float32
products with any accepted conductance."""

#: (field, numpy dtype) of every per-cell array of a measured map.
MAP_FIELDS: tuple[tuple[str, str], ...] = (("fault", "int8"), ("theta", "float32"))
FAULT_CODES = (0, 1, 2)
"""healthy, stuck_off, stuck_on (:mod:`ittrna.device.faults`)."""



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


_KIND_DIMS = {"linear": 2, "conv1d": 3, "conv2d": 4}
"""Layer kinds a chip or map may hold, with their weight's number of dimensions."""


def _geometry(path: Any, field: str, meta: Any) -> tuple[str, tuple[int, ...], int, int, int]:
    """kind, weight_shape, k, n and column groups (1 when absent) of one layer's header record, consistent with
    each other."""
    if not isinstance(meta, Mapping):
        raise _fail(path, field, f"has type {type(meta).__name__}; accepted an object")
    for key in ("kind", "weight_shape", "k", "n"):
        if key not in meta:
            raise _fail(path, f"{field}.{key}", "is missing")
    kind = meta["kind"]
    if kind not in _KIND_DIMS:
        raise _fail(path, f"{field}.kind", f"= {_short(kind)} is invalid; accepted one of {list(_KIND_DIMS)}")
    ws = meta["weight_shape"]
    dims = _KIND_DIMS[kind]
    if (not isinstance(ws, list) or len(ws) != dims
            or not all(_is_int(d) and 1 <= d <= 2**31 for d in ws)):
        raise _fail(path, f"{field}.weight_shape", f"= {_short(ws)} is invalid; accepted {dims} positive "
                                                   f"integers for a {kind} layer")
    k = _want_int(path, f"{field}.k", meta["k"], 1, 2**40)
    n = _want_int(path, f"{field}.n", meta["n"], 1, 2**31)
    if k != math.prod(ws[1:]) or n != ws[0]:
        raise _fail(path, f"{field}.k/n", f"= {k}/{n} do not match weight_shape {ws}; accepted "
                                          f"k = {math.prod(ws[1:])}, n = {ws[0]}")
    groups = _want_int(path, f"{field}.groups", meta.get("groups", 1), 1, n)
    if n % groups or (groups > 1 and kind == "linear"):
        raise _fail(path, f"{field}.groups", f"= {groups} is invalid; accepted a divisor of n = {n} (a "
                                             "convolution's groups; 1 for a linear layer)")
    return kind, tuple(ws), k, n, groups


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
        elif fname == "delta":  # additive programming error (siemens): bounded by the model's range
            bound = 1e3 * max(config.cell.g_max, 1e-6)
            if float(np.abs(arr).max()) > bound:
                raise FileFormatError(f"{path}: array {key!r} holds a programming error of "
                                      f"{float(np.abs(arr).max()):g} S; accepted |value| <= {bound:g} S")
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
