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

__all__ = ["BY_CONFIG", "METHODS", "Context", "MethodConfig", "MethodSpec", "config_name", "get_method", "lineage",
           "register", "run", "spec_for"]


class MethodConfig(_Section):
    """Base of every method's settings: a frozen dataclass whose fields carry docstrings and ranges,
    validated in ``__post_init__`` with one-line :class:`~ittrna.config.ConfigError` messages."""

    _section: ClassVar[str] = "method"

    _nested: ClassVar[dict[str, type[MethodConfig] | None]] = {}
    """Fields holding another method's config (composition, not inheritance): field -> its config class, or
    None for any registered method's config (a table naming the method: ``{method = "aft", epochs = 2}``)."""

    _added: ClassVar[dict[str, Any]] = {}
    """Fields added after results were stored, with the value that behaves as before they existed: at that
    value :meth:`identity_dict` leaves them out, so the store keys of earlier records stay what they were."""

    _acts_with: ClassVar[dict[str, tuple[str, Any]]] = {}
    """Fields that act only while another field holds a value: field -> (that field, its value). Otherwise
    :meth:`identity_dict` leaves them out (they change nothing), so the store keys of records they cannot
    affect stay what they were."""

    def to_dict(self) -> dict[str, Any]:
        return self._as_dict(identity=False)

    @classmethod
    def settings_from_identity(cls, identity: Mapping[str, Any]) -> dict[str, Any]:
        """The settings an :meth:`identity_dict` stands for: every field of :attr:`_added` it leaves out
        holds its earlier-behaviour value (which need not be today's default), so a stored point runs as it
        was keyed; a nested config's table likewise, by its own class."""
        out = {**{k: v for k, v in cls._added.items() if k not in identity}, **identity}
        for name, kind in cls._nested.items():
            table = out.get(name)
            if isinstance(table, Mapping):
                inner = kind if kind is not None else (METHODS[table["method"]].config
                                                       if table.get("method") in METHODS else None)
                if inner is not None:
                    rest = {k: v for k, v in table.items() if k != "method"}
                    out[name] = {**({"method": table["method"]} if "method" in table else {}),
                                 **inner.settings_from_identity(rest)}
        return out

    def identity_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the fields of :attr:`_added` that hold their earlier behaviour (nested
        configs likewise): what a store key is made of."""
        return self._as_dict(identity=True)

    def _as_dict(self, identity: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if identity and f.name in self._added and value == self._added[f.name]:
                continue
            if identity and f.name in self._acts_with:
                other, active = self._acts_with[f.name]
                if getattr(self, other) != active:
                    continue
            if isinstance(value, MethodConfig):
                inner = value._as_dict(identity)
                value = {"method": config_name(type(value)), **inner} if self._nested.get(f.name) is None else inner
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "method") -> MethodConfig:
        """Build from a dict (a nested config as a table); unknown keys are an error naming the accepted ones."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} settings must be a table/object")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown method field {where}.{unknown[0]}; accepted {sorted(known)}")
        values: dict[str, Any] = {}
        for k, v in data.items():
            if k in cls._nested:
                values[k] = cls._sub_config(k, v, f"{where}.{k}")
            else:
                values[k] = _coerce(v, hints[k], f"{where}.{k}")
        return cls(**values)

    def _check_nested(self) -> None:
        """Every nested field of a fixed config class holds exactly that class (see ``_nested``)."""
        for name, kind in self._nested.items():
            value = getattr(self, name)
            if kind is not None and type(value) is not kind:
                raise ConfigError(f"method.{name} = {value!r}; accepted a {kind.__name__} (a table of its settings)")

    @classmethod
    def _sub_config(cls, field: str, value: Any, where: str) -> MethodConfig | None:
        """A nested config field from a table (or a method name, for its defaults; None where allowed)."""
        kind = cls._nested[field]
        if value is None or isinstance(value, MethodConfig):
            return value
        if kind is None:
            if isinstance(value, str):
                value = {"method": value}
            if not isinstance(value, Mapping) or not isinstance(value.get("method"), str):
                raise ConfigError(f"{where} = {value!r}; accepted a method name or a table with its `method` "
                                  "name and settings")
            if value["method"] not in METHODS:
                raise ConfigError(f"{where}.method = {value['method']!r} is unknown; accepted one of {list(METHODS)}")
            kind = METHODS[value["method"]].config
            value = {k: v for k, v in value.items() if k != "method"}
        try:
            return kind.from_dict(value, where)
        except ConfigError as exc:  # a field check names method.FIELD: name it where it is, method.base.FIELD
            text = str(exc)
            raise ConfigError(where + text[len("method"):] if text.startswith("method.") else text) from None

    def override(self, changes: Mapping[str, Any]) -> MethodConfig:
        """A copy with fields changed (keys with or without the ``method.`` prefix, ``base.epochs`` for a
        field of a nested config); validated again."""
        data = self.to_dict()
        for key, value in changes.items():
            path = str(key).removeprefix("method.").split(".")
            table = data
            for i, part in enumerate(path):
                if not isinstance(table, dict) or (part not in table and not (part == "method" and i == len(path) - 1)):
                    accepted = sorted(table) if isinstance(table, dict) else []
                    raise ConfigError(f"unknown method field method.{'.'.join(path[: i + 1])}; accepted {accepted}")
                if i == len(path) - 1:
                    table[part] = value
                else:
                    if table[part] is None and part in type(self)._nested:  # a default nested config: fill it
                        table[part] = {}
                    sub = table[part]
                    if isinstance(sub, dict) and isinstance(sub.get("method"), str) and path[i + 1] not in sub:
                        # a base just named: its defaults, so that its fields can be set one by one
                        sub.update({k: v for k, v in get_method(sub["method"]).config().to_dict().items()
                                    if k not in sub})
                    table = sub
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

#: The same methods keyed by their config class (torchao's ``quantize_`` handlers): a config says which
#: method it is for, so a method that builds on another runs it as ``run(config, ...)``.
BY_CONFIG: dict[type[MethodConfig], str] = {}


def register(name: str, kind: str, config: type[MethodConfig], version: int, description: str,
             builds_on: tuple[str, ...] = ()) -> Callable[[OffDeviceFn], OffDeviceFn]:
    """Decorator adding a method to :data:`METHODS` (a name may be registered once; a built-in's name is
    declared in :mod:`ittrna.registry` for the module that registers it)."""
    def wrap(fn: OffDeviceFn) -> OffDeviceFn:
        builtin = fn.__module__ if fn.__module__.startswith("ittrna.") else None
        owner = BY_CONFIG.get(config)
        if owner is not None and owner in METHODS and owner != name:
            raise ConfigError(f"config class {config.__name__} already belongs to method {owner!r}; each method "
                              "has a config class of its own")
        METHODS.register(name, MethodSpec(name, kind, config, version, description, fn, builds_on), home=builtin)
        for stale in [c for c, n in BY_CONFIG.items() if n == name or n not in METHODS]:  # unregistered since
            del BY_CONFIG[stale]
        BY_CONFIG[config] = name
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


def spec_for(config: MethodConfig) -> MethodSpec:
    """The registered method a config belongs to (by its exact class)."""
    name = BY_CONFIG.get(type(config))
    if name is None or name not in METHODS:
        raise ConfigError(f"{type(config).__name__} is the config of no registered method")
    return METHODS[name]


def config_name(kind: type[MethodConfig]) -> str:
    """The name of the method whose config class is ``kind``."""
    name = BY_CONFIG.get(kind)
    if name is None:
        raise ConfigError(f"{kind.__name__} is the config of no registered method")
    return name


def run(config: MethodConfig, model: torch.nn.Module, measured: Any, ctx: Context, session: Any = None) -> Deployment:
    """Run the method ``config`` belongs to (a method building on another calls it this way, with that
    method's own config); an on-device method also needs ``session``. The caller is already on the host side."""
    spec = spec_for(config)
    if spec.kind == "on-device":
        return spec.fn(model, measured, config, ctx, session)
    return spec.fn(model, measured, config, ctx)


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``; a one-line error lists the accepted names."""
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; accepted one of {list(METHODS)}")
    return METHODS[name]
