"""The built-in reference networks, registered through the open registry like any user's model.

Every zoo model is built from plain ``Linear``/``Conv2d``/ReLU/pooling layers (no batch norm, no dropout), so
each weight layer maps onto crossbars and nothing draws from global random state.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from ittrna.models.registry import ModelSpec, register_model

__all__: list[str] = []


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


for _spec_ in (
    ModelSpec("mlp", "784-256-128-10 MLP, ReLU (3 weight layers)", _mlp((256, 128))),
    ModelSpec("mlp-deep", "784-256-256-256-256-128-10 MLP, ReLU (6 weight layers)", _mlp((256, 256, 256, 256, 128))),
    ModelSpec("lenet5", "LeNet-5: conv 6@5x5, pool, conv 16@5x5, pool, fc 120, fc 84, fc 10 (ReLU, max-pool)",
              _lenet5),
    ModelSpec("vgg-small", "VGG-style CIFAR net: 2x conv64, 2x conv128, 2x conv256 (3x3), fc 256, fc 10",
              _vgg_small),
):
    register_model(_spec_, _home=__name__)
