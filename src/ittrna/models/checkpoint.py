"""Pickle-free checkpoints: a model's weights and metadata (``torch.save`` of tensors and plain values, loaded
with ``weights_only``), every field checked before a model is built."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ittrna._io import atomic_write, load_torch
from ittrna._validate import _fail, _is_int, _short, _want_int, check_memory
from ittrna.errors import FileFormatError, InputError, ResourceError
from ittrna.graph import fold_structure
from ittrna.models.definitions import Definition, trusted
from ittrna.models.registry import MAX_CLASSES, MAX_IN_SIDE, MODELS, build, check_shape

__all__ = ["CHECKPOINT_FORMAT", "check_checkpoint", "check_state_fits", "load_checkpoint", "load_checkpoint_payload",
           "model_ref", "save_checkpoint"]

CHECKPOINT_FORMAT = 1

_INTEGER_BUFFERS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
"""Integer dtypes a state dict may hold (counters such as BatchNorm's ``num_batches_tracked``)."""


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Save weights plus a metadata record (``model``, ``dataset``, ``in_shape``, ``num_classes``, ...)
    atomically, in a file that loads with ``torch.load(weights_only=True)``.

    Raises:
        InputError: ``path`` does not end in ``.pt``, or ``meta`` lacks ``model``, ``in_shape`` or
            ``num_classes``.
    """
    p = Path(path)
    if p.suffix != ".pt":
        raise InputError(f"{p}: a checkpoint is written as .pt; got suffix {p.suffix!r}")
    if not isinstance(meta, dict):
        raise InputError(f"checkpoint metadata is a {type(meta).__name__}; accepted a dict")
    for key in ("model", "in_shape", "num_classes"):
        if key not in meta:
            raise InputError(f"checkpoint metadata lacks {key!r}; accepted a dict with model, in_shape, num_classes")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "meta": dict(meta),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    atomic_write(p, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint` (no code executed); see
    :func:`load_checkpoint_payload`."""
    model, meta, _ = load_checkpoint_payload(path)
    return model, meta


def load_checkpoint_payload(path: str | Path) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Load a checkpoint (no code executed): the model, its metadata and the whole payload, whose extra
    entries (e.g. a tuned file's deployment) the caller may read.

    Every field is checked (see :func:`check_checkpoint`): the metadata's ``model``,
    ``in_shape`` and ``num_classes``, and every weight tensor (floating point, finite, the model's shape).

    Raises:
        FileFormatError: missing or unreadable file, not an ittrna checkpoint, or a bad field (named).
        ResourceError: the file or the model it describes would not fit in memory.
    """
    p = Path(path)
    if not p.exists():
        raise FileFormatError(f"{p}: no such file")
    if not p.is_file():
        raise FileFormatError(f"{p}: not a regular file; accepted a .pt checkpoint")
    check_memory(2 * p.stat().st_size, f"reading {p} ({p.stat().st_size} bytes)")
    if not zipfile.is_zipfile(p):
        raise FileFormatError(f"{p}: not an ittrna checkpoint (not a torch.save archive)")
    with zipfile.ZipFile(p) as zf:
        if "__header__.npy" in zf.namelist():
            raise FileFormatError(f"{p}: not an ittrna checkpoint (an ittrna .npz archive: a chip or a map)")
    payload = load_torch(p, "an ittrna checkpoint")
    meta = check_checkpoint(p, payload, CHECKPOINT_FORMAT, MODELS)
    ref = model_ref(meta, p)
    try:
        check_shape(ref, list(meta["in_shape"]), int(meta["num_classes"]))
    except ResourceError as exc:
        raise ResourceError(f"{p}: {exc}") from None
    except InputError as exc:
        raise FileFormatError(f"{p}: field meta.in_shape/num_classes: {exc}") from None
    model = build(ref, tuple(meta["in_shape"]), int(meta["num_classes"]))
    if "folded_batchnorm" in meta:  # BatchNorm folded into the layers before it (ittrna fold-bn)
        try:
            fold_structure(model, meta["folded_batchnorm"])
        except InputError as exc:
            raise _fail(p, "meta.folded_batchnorm", f"does not fit model {meta['model']!r}: {exc}") from None
    check_state_fits(p, payload["state_dict"], model, meta["model"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, meta, payload


def model_ref(meta: Mapping[str, Any], path: Path | None = None, *, vetted: bool = False) -> str | Definition:
    """What builds a checkpoint's network: its zoo name, or the definition the user named for its recorded
    one (:func:`~ittrna.models.definitions.trusted`: same function and file hash; a checkpoint never runs
    code by itself). ``vetted``: the metadata comes from a checkpoint already loaded that way, or from the
    caller's own training (a sweep's payload in memory): its recorded definition is used as it is."""
    if "definition" not in meta:
        return str(meta["model"])
    where = str(path) if path else "checkpoint"
    recorded = Definition.from_dict(meta["definition"], where)
    return recorded if vetted else trusted(recorded, where)


# --- checkpoint checks (field by field, before any model is built) --------------------------------------
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
    if "definition" in meta:  # a user's own network: its recorded definition (checked, nothing imported here)
        Definition.from_dict(meta["definition"], str(path))
        if not isinstance(meta["model"], str):
            raise _fail(path, "meta.model", f"= {_short(meta['model'])} is invalid; accepted the definition's name")
    elif not isinstance(meta["model"], str) or meta["model"] not in names:
        raise _fail(path, "meta.model", f"= {_short(meta['model'])} is invalid; accepted one of {names} or a "
                                        "recorded definition")
    shape = meta.get("in_shape")
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(_is_int(d) and 1 <= d <= MAX_IN_SIDE for d in shape)):
        raise _fail(path, "meta.in_shape", f"= {_short(shape)} is invalid; accepted 3 integers (C, H, W) in "
                                           f"[1, {MAX_IN_SIDE}]")
    _want_int(path, "meta.num_classes", meta.get("num_classes"), 1, MAX_CLASSES)
    folded = meta.get("folded_batchnorm", [])
    if (not isinstance(folded, list) or len(folded) > 100_000
            or not all(isinstance(f, list) and len(f) == 2 and all(isinstance(n, str) for n in f) for f in folded)):
        raise _fail(path, "meta.folded_batchnorm", f"= {_short(folded)} is invalid; accepted a list of "
                                                   "[layer, batchnorm] name pairs")
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
        if not value.is_floating_point() and value.dtype not in _INTEGER_BUFFERS:
            raise _fail(path, f"state_dict[{key!r}]", f"has dtype {value.dtype}; accepted a floating-point tensor "
                                                      "(or an integer buffer such as BatchNorm's num_batches_tracked)")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
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
        if value.is_floating_point() != want[key].is_floating_point():  # an integer weight, or a float counter
            raise _fail(path, f"state_dict[{key!r}]", f"has dtype {value.dtype}; model {name!r} holds "
                                                      f"{want[key].dtype} there")
        if tuple(value.shape) != tuple(want[key].shape):
            raise _fail(path, f"state_dict[{key!r}]", f"has shape {tuple(value.shape)}; model {name!r} needs "
                                                      f"{tuple(want[key].shape)}")
