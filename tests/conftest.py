"""Shared fixtures. Real-data fixtures skip when the data is absent, unless ITTRNA_REQUIRE_DATA=1 (set by
`make test`, which fetches the data first), where absence is a failure.

CI refuses silent skips: with ``CI=true`` (as `.ci/run` runs) every skip that :func:`skip_unless_ci` guards
(a missing browser, data set or Ray) is a failure instead."""

from __future__ import annotations

import importlib
import os
from typing import Any, NoReturn

import pytest
import torch

from ittrna.data import DataError, Split, load, status


def strict(env: str) -> bool:
    """Whether a skip for ``env``'s resource must fail instead: on CI (``CI=true``) or with ``env=1``."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get(env) == "1"


def skip_unless_ci(reason: str, env: str) -> NoReturn:
    """Skip with ``reason`` on a developer's machine; fail where :func:`strict` holds."""
    if strict(env):
        pytest.fail(f"{reason} (a skip that CI refuses: {env} / CI=true)")
    pytest.skip(reason)


def import_or_fail(module: str, env: str) -> Any:
    """``pytest.importorskip`` that fails where :func:`strict` holds."""
    try:
        return importlib.import_module(module)
    except ImportError:
        skip_unless_ci(f"{module} is not installed", env)


def _real(name: str, split: str) -> Split:
    if not status(name).startswith("ok"):
        if strict("ITTRNA_REQUIRE_DATA"):
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
