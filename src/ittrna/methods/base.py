"""The method registry, validated method configs and the inputs every off-device method gets.

A method stands where a real host stands: it receives the software model, the training and validation
splits, the chip's :class:`~ittrna.host.MeasuredMap` (design + test result), its config and a seed — never a
:class:`~ittrna.chip.Chip`; an on-device method also gets a chip-in-the-loop session
(:class:`~ittrna.host.ChipAccess`) — and returns a :class:`~ittrna.host.Deployment` for the evaluator to program
onto the true chip. This package imports neither :mod:`ittrna.chip` nor :mod:`ittrna.nn` (tests/test_layering).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ittrna import registry as _registry
from ittrna.config import ConfigError, _coerce, _Section
from ittrna.data import Split
from ittrna.host import Deployment
from ittrna.registry import Registry

__all__ = ["METHODS", "Context", "MethodConfig", "MethodSpec", "get_method", "lineage", "register"]


class MethodConfig(_Section):
    """Base of every method's settings: a frozen dataclass whose fields carry docstrings and ranges,
    validated in ``__post_init__`` with one-line :class:`~ittrna.config.ConfigError` messages."""

    _section: ClassVar[str] = "method"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodConfig:
        """Build from a flat dict; unknown keys are an error naming the accepted ones."""
        if not isinstance(data, Mapping):
            raise ConfigError("method settings must be a table/object")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown method field method.{unknown[0]}; accepted {sorted(known)}")
        return cls(**{k: _coerce(v, hints[k], f"method.{k}") for k, v in data.items()})

    def override(self, changes: Mapping[str, Any]) -> MethodConfig:
        """A copy with fields changed (keys with or without the ``method.`` prefix); validated again."""
        data = self.to_dict()
        for key, value in changes.items():
            field = str(key).removeprefix("method.")
            if field not in data:
                raise ConfigError(f"unknown method field method.{field}; accepted {sorted(data)}")
            data[field] = value
        return type(self).from_dict(data)


@dataclass(frozen=True)
class Context:
    """Everything but the model, the map and the config that an off-device method receives."""

    train: Split
    """Training split (the method may train on it)."""
    val: Split
    """Validation split (the method may tune and early-stop on it; never the test split)."""
    seed: int = 0
    """Seeds every random choice of the method (shuffling, injected noise)."""
    progress: bool = False
    """Show progress bars."""
    device: str = "cpu"
    """Torch device for the method's computation."""

    def generator(self, stream: int) -> torch.Generator:
        """A CPU generator for one named random stream of this run."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + stream) & 0x7FFFFFFFFFFFFFFF)


OffDeviceFn = Callable[..., Deployment]
"""``fn(model, measured, cfg, ctx)`` for an off-device method; on-device methods take a fifth argument, the
chip-in-the-loop session (:class:`~ittrna.host.ChipAccess`)."""


@dataclass(frozen=True)
class MethodSpec:
    """A registered method."""

    name: str
    kind: str
    """``off-device`` (sees the measured map only) or ``on-device`` (also a chip-in-the-loop session)."""
    config: type[MethodConfig]
    version: int
    """Bumped whenever the method's behaviour changes (stored results key on it)."""
    description: str
    """One line, with its source."""
    fn: OffDeviceFn
    builds_on: tuple[str, ...] = ()
    """The registered methods whose logic this one runs (its identity covers their versions)."""

    def make_config(self, changes: Mapping[str, Any] | None = None) -> MethodConfig:
        """The default config with ``changes`` applied (validated)."""
        cfg = self.config()
        return cfg.override(changes) if changes else cfg


#: Methods by name, in the order they build on each other: the open registry of :mod:`ittrna.registry`
#: (names known without importing torch), filled by :func:`register`.
METHODS: Registry[MethodSpec] = _registry.METHODS


def register(name: str, kind: str, config: type[MethodConfig], version: int, description: str,
             builds_on: tuple[str, ...] = ()) -> Callable[[OffDeviceFn], OffDeviceFn]:
    """Decorator adding a method to :data:`METHODS` (a name may be registered once; a built-in's name is
    declared in :mod:`ittrna.registry` for the module that registers it)."""
    def wrap(fn: OffDeviceFn) -> OffDeviceFn:
        builtin = fn.__module__ if fn.__module__.startswith("ittrna.") else None
        METHODS.register(name, MethodSpec(name, kind, config, version, description, fn, builds_on), home=builtin)
        return fn

    return wrap


def lineage(name: str) -> dict[str, int]:
    """Every method that ``name`` builds on, transitively, with its version (``name`` itself excluded).

    A stored result is keyed on this too: a change to a base method's version invalidates every record of the
    methods built on it, and only those.
    """
    out: dict[str, int] = {}
    todo = list(get_method(name).builds_on)
    while todo:
        base = todo.pop(0)
        if base == name or base in out:
            continue
        spec = get_method(base)
        out[base] = spec.version
        todo.extend(spec.builds_on)
    return dict(sorted(out.items()))


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``; a one-line error lists the accepted names."""
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; accepted one of {list(METHODS)}")
    return METHODS[name]
