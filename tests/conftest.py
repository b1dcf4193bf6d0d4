"""Shared fixtures. Real-data fixtures skip when the data is absent, unless ITTRNA_REQUIRE_DATA=1 (set by
`make test`, which fetches the data first), where absence is a failure."""

from __future__ import annotations

import os

import pytest
import torch

from ittrna.data import DataError, Split, load, status


def _real(name: str, split: str) -> Split:
    if not status(name).startswith("ok"):
        if os.environ.get("ITTRNA_REQUIRE_DATA") == "1":
            pytest.fail(f"{name} is not in the cache ({status(name)}); run `ittrna data fetch {name}`")
        pytest.skip(f"{name} not fetched")
    try:
        return load(name, split, fetch_missing=False)
    except DataError as exc:  # pragma: no cover - reported as failure
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def mnist_train() -> Split:
    return _real("mnist", "train")


@pytest.fixture(scope="session")
def mnist_test() -> Split:
    return _real("mnist", "test")


@pytest.fixture(scope="session")
def trained_mlp(mnist_train: Split) -> torch.nn.Module:
    """An MLP trained one epoch on 20k MNIST images (~95 %): enough to see chip effects."""
    from ittrna.models import build
    from ittrna.training import train

    model = build("mlp", seed=0)
    return train(model, mnist_train.subset(20000), epochs=1, seed=0, progress=False)


@pytest.fixture(scope="session")
def small(mnist_train):
    """A small MLP trained on 4000 images, with 4000 training / 500 validation / 2000 test images."""
    import math

    from torch import nn

    from ittrna.training import train

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 48), nn.ReLU(), nn.Linear(48, 10))
    g = torch.Generator().manual_seed(0)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
    tr = mnist_train.subset(4000)
    train(model, tr, epochs=3, progress=False)
    val = load("mnist", "val").subset(500)
    test = load("mnist", "test").subset(2000)
    return model, tr, val, test
