"""Reference networks, registered by name, plus pickle-free checkpoints.

Every model is built from plain ``Linear``/``Conv2d``/ReLU/pooling layers (no batch norm, no dropout), so
each weight layer maps onto crossbars and nothing draws from global random state. Parameters are
initialised from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ittrna._io import atomic_write

__all__ = ["MODELS", "ModelSpec", "build", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = 1


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


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec("mlp", "784-256-128-10 MLP, ReLU (3 weight layers)", _mlp((256, 128))),
    "mlp-deep": ModelSpec(
        "mlp-deep", "784-256-256-256-256-128-10 MLP, ReLU (6 weight layers)", _mlp((256, 256, 256, 256, 128))
    ),
    "lenet5": ModelSpec(
        "lenet5", "LeNet-5: conv 6@5x5, pool, conv 16@5x5, pool, fc 120, fc 84, fc 10 (ReLU, max-pool)", _lenet5
    ),
    "vgg-small": ModelSpec(
        "vgg-small", "VGG-style CIFAR net: 2x conv64, 2x conv128, 2x conv256 (3x3), fc 256, fc 10", _vgg_small
    ),
}


def build(
    name: str, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, *, seed: int = 0
) -> nn.Module:
    """Build a registered model, initialised deterministically from ``seed``.

    Weights use PyTorch's default (Kaiming-uniform) scheme, drawn from a private ``torch.Generator``.

    Raises:
        KeyError: unknown model name (message lists the accepted names).
    """
    try:
        spec = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; accepted one of {sorted(MODELS)}") from None
    model = spec.factory(tuple(in_shape), num_classes)  # type: ignore[arg-type]
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
    atomically, in a file that loads with ``torch.load(weights_only=True)``."""
    for key in ("model", "in_shape", "num_classes"):
        if key not in meta:
            raise ValueError(f"checkpoint metadata lacks {key!r}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "meta": dict(meta),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    atomic_write(path, lambda p: torch.save(payload, p))


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint` (no code executed).

    Raises:
        ValueError: missing or unreadable file, or not an ittrna checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{p}: not an ittrna checkpoint ({first[:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "meta" not in payload:
        raise ValueError(f"{p}: not an ittrna checkpoint (format {CHECKPOINT_FORMAT} expected)")
    meta = payload["meta"]
    model = build(meta["model"], tuple(meta["in_shape"]), int(meta["num_classes"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{p}: weights do not fit model {meta['model']!r}: {str(exc).splitlines()[0]}") from None
    model.eval()
    return model, meta
