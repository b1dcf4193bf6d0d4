"""The built-in reference networks, registered through the open registry like any user's model.

``mlp``, ``mlp-deep``, ``lenet5`` and ``vgg-small`` are plain ``Linear``/``Conv2d``/ReLU/pooling stacks (no
BatchNorm, no dropout); ``resnet20`` (BatchNorm, residual additions, nested modules) and ``mobilenet-tiny``
(depthwise convolutions, BatchNorm, ReLU6) are the own-network issue's reference networks. Every network is
initialised by :func:`~ittrna.models.build` from an explicit generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ittrna.models.registry import ModelSpec, register_model

__all__ = ["MobileNetTiny", "ResNetCifar"]


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


# --- networks with BatchNorm and skip connections (the own-network issue's reference networks) ------------
class _BasicBlock(nn.Module):
    """He et al. (2016) CIFAR basic block: conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU. The
    shortcut is the identity, or a 1x1 convolution with BatchNorm where the shape changes (option B)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet for small images (He et al., CVPR 2016, section 4.2): a 3x3 stem, 3 stages of ``blocks`` basic
    blocks at ``widths`` channels (the 2nd and 3rd halve the resolution), global average pooling, one linear
    layer. ``blocks = 3`` is ResNet-20 (19 convolutions + 1 linear)."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, blocks: int = 3,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            layers = [_BasicBlock(cin if b == 0 else w, w, 2 if (i > 0 and b == 0) else 1) for b in range(blocks)]
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


class _Separable(nn.Module):
    """MobileNet block (Howard et al. 2017): depthwise 3x3 conv-BN-ReLU6, pointwise 1x1 conv-BN-ReLU6."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(self.bn1(self.depthwise(x)), 0, 6)
        return torch.clamp(self.bn2(self.pointwise(x)), 0, 6)


class MobileNetTiny(nn.Module):
    """A small depthwise-separable network: a 3x3 stem at 16 channels, then separable blocks
    (16->32 /2, 32->32, 32->64 /2, 64->64, 64->128 /2), global average pooling, one linear layer."""

    PLAN = ((16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2))

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU6())
        self.blocks = nn.Sequential(*(_Separable(a, b, s) for a, b, s in self.PLAN))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.PLAN[-1][1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


for _spec_ in (
    ModelSpec("mlp", "784-256-128-10 MLP, ReLU (3 weight layers)", _mlp((256, 128))),
    ModelSpec("mlp-deep", "784-256-256-256-256-128-10 MLP, ReLU (6 weight layers)", _mlp((256, 256, 256, 256, 128))),
    ModelSpec("lenet5", "LeNet-5: conv 6@5x5, pool, conv 16@5x5, pool, fc 120, fc 84, fc 10 (ReLU, max-pool)",
              _lenet5),
    ModelSpec("vgg-small", "VGG-style CIFAR net: 2x conv64, 2x conv128, 2x conv256 (3x3), fc 256, fc 10",
              _vgg_small),
    ModelSpec("resnet20", "ResNet-20 (He et al. 2016, CIFAR): 3 stages x 3 basic blocks, 16-32-64 channels, "
              "BatchNorm, identity/projection shortcuts", lambda shape, n: ResNetCifar(shape, n)),
    ModelSpec("mobilenet-tiny", "depthwise-separable CNN: 3x3 stem, 5 depthwise 3x3 + pointwise 1x1 blocks "
              "(16-128 channels), BatchNorm, ReLU6", lambda shape, n: MobileNetTiny(shape, n)),
):
    register_model(_spec_, _home=__name__)
