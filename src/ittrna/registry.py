"""Open registries whose names are known without importing what they name.

The command line lists datasets, models and methods in its ``--help``; importing their implementations loads
torch (seconds). A :class:`Registry` declares each built-in name with the module that registers it — as a
Python entry point names a module without importing it — and imports that module on the first lookup of an
item. The module then registers the implementation under the declared name. Names added at run time (a
user's own model or method) join the same registry, so every list of names has exactly one place: here for
the built-ins, :meth:`Registry.register` for the rest.

This module imports nothing of ittrna: any layer may fill a registry, and the CLI may read the names.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["COMPENSATIONS", "DATASETS", "FAULT_PATTERNS", "METHODS", "MODELS", "PROGRAM_ERROR_MODELS", "RECIPES",
           "RELAXATION_MODELS", "SCHEMES", "WIRE_SOLVERS", "Registry"]

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Names in a fixed order, each resolved to its item on first use.

    Args:
        kind: what the items are (``"model"``), for messages.
        builtins: each built-in name with the module that registers it, in listing order.
    """

    def __init__(self, kind: str, builtins: Mapping[str, str]) -> None:
        self.kind = kind
        self._home: dict[str, str | None] = dict(builtins)
        self._items: dict[str, T] = {}

    def names(self) -> list[str]:
        """Every name, built-ins first (in declaration order), then those registered at run time."""
        return list(self._home)

    def builtin_modules(self) -> dict[str, str]:
        """Each built-in name with its registering module."""
        return {n: m for n, m in self._home.items() if m is not None}

    def register(self, name: str, item: T, *, home: str | None = None) -> T:
        """Add ``item`` under ``name``.

        A built-in name is registered by its declared module (``home``); any other name is a run-time
        addition, and a module declared for no name cannot slip a built-in in unnoticed (its ``home`` must match).

        Raises:
            RuntimeError: the name is registered already, or a module registers a built-in declared elsewhere.
        """
        if name in self._items:
            raise RuntimeError(f"{self.kind} {name!r} registered twice")
        declared = self._home.get(name)
        if home is not None and declared != home:
            raise RuntimeError(f"{home} registers {self.kind} {name!r}, which ittrna.registry does not declare "
                               f"for it (declared: {declared!r}); add it to the built-ins there")
        self._home.setdefault(name, None)
        self._items[name] = item
        return item

    def unregister(self, name: str) -> None:
        """Remove a name registered at run time (built-ins stay)."""
        if self._home.get(name) is not None:
            raise RuntimeError(f"{self.kind} {name!r} is built in; it cannot be removed")
        self._items.pop(name, None)
        self._home.pop(name, None)

    def __setitem__(self, name: str, item: T) -> None:
        """Replace the item of a known name (a patched spec in a test; the name list stays as declared)."""
        if name not in self._home:
            raise KeyError(f"{self.kind} {name!r} is not registered; use register() to add a name")
        self[name]  # resolve a built-in first, so its module's own registration cannot overwrite the patch
        self._items[name] = item

    def __getitem__(self, name: str) -> T:
        if name not in self._items:
            home = self._home.get(name)
            if home is None:
                raise KeyError(name)
            importlib.import_module(home)
            if name not in self._items:
                raise RuntimeError(f"module {home} did not register {self.kind} {name!r}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._home

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._home))

    def __len__(self) -> int:
        return len(self._home)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


DATASETS: Registry = Registry("dataset", dict.fromkeys(("mnist", "fashion-mnist", "cifar10"), "ittrna.data"))
"""Datasets (:class:`ittrna.data.DatasetSpec`)."""

MODELS: Registry = Registry("model", dict.fromkeys(("mlp", "mlp-deep", "lenet5", "vgg-small", "resnet20",
                                                    "mobilenet-tiny"), "ittrna.models.zoo"))
"""Model definitions (:class:`ittrna.models.ModelSpec`)."""

METHODS: Registry = Registry("method", {
    **dict.fromkeys(("none", "noise", "program", "remap", "aft", "dynamic", "fat", "remap-fat"),
                    "ittrna.methods.offdevice"),
    "bn": "ittrna.methods.normalize",
    **dict.fromkeys(("ondevice", "threshold", "codesign"), "ittrna.methods.ondevice"),
    "bn-chip": "ittrna.methods.normalize",
})
"""Tolerance methods (:class:`ittrna.methods.MethodSpec`), in the order they build on each other."""

FAULT_PATTERNS: Registry = Registry("fault pattern", dict.fromkeys(("uniform", "clustered", "lines"),
                                                                   "ittrna.device.faults"))
"""Spatial fault-pattern samplers (``faults.pattern``), filled by :mod:`ittrna.device.faults`."""

SCHEMES: Registry = Registry("mapping scheme", dict.fromkeys(("differential", "offset"), "ittrna.mapping.converters"))
"""Mapping schemes (``mapping.scheme``): one :class:`ittrna.mapping.Converter` each."""


RELAXATION_MODELS: Registry = Registry("relaxation model", dict.fromkeys(("none", "cmo-hfox", "wan2022", "power-law"),
                                                                         "ittrna.device.relaxation"))
"""Conductance relaxation after programming (``relaxation.model``), filled by :mod:`ittrna.device.relaxation`."""

COMPENSATIONS: tuple[str, ...] = ("registers", "bn")
"""Zero-write compensation steps at a later time, in the order they run (:mod:`ittrna.methods.compensate`;
``ittrna tolerate --compensate``)."""

PROGRAM_ERROR_MODELS: Registry = Registry("programming-error model", dict.fromkeys(
    ("none", "crosssim-wan", "aihwkit-pcm", "polynomial"), "ittrna.device.programming"))
"""Conductance-dependent programming error sigma(G) (``program_error.model``), filled by
:mod:`ittrna.device.programming`."""

RECIPES: Registry = Registry("recipe", dict.fromkeys(("converged", "converged-augmented"), "ittrna.training"))
"""Named training recipes (:class:`ittrna.training.Recipe`; ``ittrna train --recipe``, a sweep's ``[train] recipe``)."""

WIRE_SOLVERS: Registry = Registry("wire solver", dict.fromkeys(("exact", "iterative", "block"),
                                                                          "ittrna.device.ir_drop"))
"""Solvers of a tile's resistive network under IR drop (``wires.solver``), filled by :mod:`ittrna.device.ir_drop`."""
