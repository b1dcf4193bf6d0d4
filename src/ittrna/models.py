"""Reference networks, registered by name, plus pickle-free checkpoints.

Every model is built from plain ``Linear``/``Conv2d``/ReLU/pooling layers (no batch norm, no dropout), so
each weight layer maps onto crossbars and nothing draws from global random state. Parameters are
initialised from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ittrna import registry as _registry
from ittrna._io import atomic_write
from ittrna._validate import _fail, _is_int, _short, _want_int, check_memory, check_seed
from ittrna.errors import FileFormatError, InputError, ResourceError, UnknownNameError
from ittrna.registry import Registry

__all__ = ["MODELS", "ModelSpec", "build", "load_checkpoint", "load_checkpoint_payload", "register_model",
           "save_checkpoint"]

CHECKPOINT_FORMAT = 1

MAX_IN_SIDE = 65536
"""Largest accepted checkpoint input dimension (channels, height, width)."""

MAX_CLASSES = 1_000_000
"""Largest accepted number of classes in a checkpoint."""


@dataclass(frozen=True)
class ModelSpec:
    """A registered reference network."""

    name: str
    description: str
    factory: Callable[[tuple[int, int, int], int], nn.Module]


def _mlp(widths: tuple[int, ...]) -> Callable[[tuple[int, int, int], int], nn.Module]:
    def make(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        prev = math.prod(in_shape)
        for w in widths:
            layers += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        layers.append(nn.Linear(prev, num_classes))
        return nn.Sequential(*layers)

    return make


def _lenet5(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    c, h, _ = in_shape
    pad = 2 if h == 28 else 0  # 28x28 inputs are padded to the classic 32x32
    side = ((h + 2 * pad - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def _vgg_small(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    c, h, _ = in_shape
    layers: list[nn.Module] = []
    for width in (64, 128, 256):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                   nn.ReLU(), nn.MaxPool2d(2)]
        c = width
    side = h // 8
    layers += [nn.Flatten(), nn.Linear(c * side * side, 256), nn.ReLU(), nn.Linear(256, num_classes)]
    return nn.Sequential(*layers)


MODELS: Registry[ModelSpec] = _registry.MODELS
"""Reference networks by name: the open registry of :mod:`ittrna.registry` (:func:`register_model` adds one)."""


def register_model(spec: ModelSpec, *, _home: str | None = None) -> ModelSpec:
    """Add a model definition to :data:`MODELS` under ``spec.name`` (a name may be registered once)."""
    return MODELS.register(spec.name, spec, home=_home)


for _spec_ in (
    ModelSpec("mlp", "784-256-128-10 MLP, ReLU (3 weight layers)", _mlp((256, 128))),
    ModelSpec("mlp-deep", "784-256-256-256-256-128-10 MLP, ReLU (6 weight layers)", _mlp((256, 256, 256, 256, 128))),
    ModelSpec("lenet5", "LeNet-5: conv 6@5x5, pool, conv 16@5x5, pool, fc 120, fc 84, fc 10 (ReLU, max-pool)",
              _lenet5),
    ModelSpec("vgg-small", "VGG-style CIFAR net: 2x conv64, 2x conv128, 2x conv256 (3x3), fc 256, fc 10",
              _vgg_small),
):
    register_model(_spec_, _home=__name__)


def _spec(name: object) -> ModelSpec:
    if not isinstance(name, str) or name not in MODELS:
        raise UnknownNameError(f"unknown model {name!r}; accepted one of {sorted(MODELS)}")
    return MODELS[name]


def _check_shape(name: str, in_shape: object, num_classes: object) -> tuple[int, int, int]:
    """(C, H, W) after checking that ``name`` builds for it on the meta device and fits in memory."""
    if (not isinstance(in_shape, (tuple, list)) or len(in_shape) != 3
            or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_IN_SIDE for d in in_shape)):
        raise InputError(f"in_shape = {in_shape!r} is invalid; accepted 3 integers (C, H, W) in [1, {MAX_IN_SIDE}]")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
        raise InputError(f"num_classes = {num_classes!r} is invalid; accepted an integer in [1, {MAX_CLASSES}]")
    shape = (int(in_shape[0]), int(in_shape[1]), int(in_shape[2]))
    try:
        with torch.device("meta"):
            probe = MODELS[name].factory(shape, num_classes)
            out = probe(torch.empty(1, *shape))
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise InputError(f"model {name!r} cannot take in_shape {list(shape)}: {first}") from None
    if tuple(out.shape) != (1, num_classes):
        raise InputError(f"model {name!r} with in_shape {list(shape)} gives outputs {tuple(out.shape)[1:]}; "
                         f"expected ({num_classes},)")
    params = sum(p.numel() for p in probe.parameters())
    check_memory(params * 4 * 3, f"model {name!r} with in_shape {list(shape)} ({params:.3g} parameters)")
    return shape


def build(
    name: str, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, *, seed: int = 0
) -> nn.Module:
    """Build a registered model, initialised deterministically from ``seed``.

    Weights use PyTorch's default (Kaiming-uniform) scheme, drawn from a private ``torch.Generator``.

    The model is first built on the ``meta`` device (no memory) and run once there, so a shape that does not
    fit the architecture, or a model too large for the available memory, is refused before allocation.

    Raises:
        UnknownNameError: unknown model name (a ``KeyError``; the message lists the accepted names).
        InputError: ``in_shape``, ``num_classes`` or ``seed`` invalid for this model.
        ResourceError: the model would not fit in the available memory.
    """
    spec = _spec(name)
    shape = _check_shape(name, in_shape, num_classes)
    check_seed(seed)
    model = spec.factory(shape, num_classes)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=gen)
                if module.bias is not None:
                    bound = 1.0 / math.sqrt(module.weight[0].numel())
                    nn.init.uniform_(module.bias, -bound, bound, generator=gen)
    return model


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
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileFormatError(f"{p}: not an ittrna checkpoint ({first[:120]})") from None
    meta = check_checkpoint(p, payload, CHECKPOINT_FORMAT, MODELS)
    try:
        _check_shape(meta["model"], list(meta["in_shape"]), int(meta["num_classes"]))
    except ResourceError as exc:
        raise ResourceError(f"{p}: {exc}") from None
    except InputError as exc:
        raise FileFormatError(f"{p}: field meta.in_shape/num_classes: {exc}") from None
    model = build(meta["model"], tuple(meta["in_shape"]), int(meta["num_classes"]))
    check_state_fits(p, payload["state_dict"], model, meta["model"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, meta, payload


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
