"""A user's own network, named by its definition: ``FILE.py:FUNCTION`` or ``package.module:FUNCTION``.

The function returns an ``nn.Module``; it is called with the keyword arguments given (``--model-args``), plus
``in_shape`` and ``num_classes`` when its signature takes them. It runs with the global random state forked
and seeded from the build seed (restored after), so the same seed builds the same network and nothing of
the caller's random state changes.

A checkpoint of such a model stays pickle-free: it records the definition (the file's path as given, or the
module; the function; the arguments) and, for a file, its sha256. A checkpoint never runs code by itself:
loading one runs only a definition the user has named in this process (:func:`trust_definition`; on the
command line ``--definition FILE.py:FUNCTION``, and a sweep config's own model names), with the same function
and the same file hash; anything else is a one-line error saying what to name. The file's bytes are read once,
hashed and run from those bytes (no cached bytecode, no second read).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ittrna._plain import check_plain
from ittrna.errors import FileFormatError, InputError

__all__ = ["Definition", "is_definition", "parse_definition", "trust_definition", "trusted"]

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_FUNCTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_SOURCE_BYTES = 16 * 2**20
"""Largest definition file read (a model definition, not a dataset)."""


def is_definition(text: str) -> bool:
    """Whether ``text`` names a definition (``FILE.py:FUNCTION`` or ``module:FUNCTION``) rather than a zoo
    name or a checkpoint file."""
    head, sep, tail = str(text).rpartition(":")
    return bool(sep) and bool(_FUNCTION.fullmatch(tail)) and (head.endswith(".py") or bool(_MODULE.fullmatch(head)))


@dataclass(frozen=True)
class Definition:
    """Where a user's network is defined and how it is called."""

    source: str
    """``path/to/file.py`` (as given) or ``package.module``."""
    function: str
    """The function (or class) that returns the network."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments (plain JSON values)."""
    sha256: str | None = None
    """For a file: the sha256 of its bytes when the definition was recorded (None: not yet read)."""

    @property
    def is_file(self) -> bool:
        return self.source.endswith(".py")

    @property
    def name(self) -> str:
        """How the definition is named in tables and messages: ``file.py:build``."""
        return f"{self.source}:{self.function}"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "function": self.function, "args": dict(self.args), "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Definition:
        """A recorded definition (a checkpoint's ``meta.definition``), every field checked."""
        if not isinstance(data, dict) or set(data) - {"source", "function", "args", "sha256"}:
            raise FileFormatError(f"{where}: meta.definition is invalid; accepted an object with source, function, "
                                  "args and sha256")
        source, function = data.get("source"), data.get("function")
        args, digest = data.get("args", {}), data.get("sha256")
        if not isinstance(source, str) or not isinstance(function, str) or not is_definition(f"{source}:{function}"):
            raise FileFormatError(f"{where}: meta.definition names {source!r}:{function!r}; accepted FILE.py:FUNCTION "
                                  "or module:FUNCTION")
        if not isinstance(args, dict):
            raise FileFormatError(f"{where}: meta.definition.args is not an object")
        if source.endswith(".py") and (not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise FileFormatError(f"{where}: meta.definition.sha256 = {digest!r}; accepted 64 hex digits")
        return cls(source, function, dict(args), digest)

    def resolve(self, base: Path | None = None) -> Path:
        """The definition file's path (relative paths against ``base``, else the working directory)."""
        path = Path(self.source).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        return path

    def with_hash(self, base: Path | None = None) -> Definition:
        """This definition with the current sha256 of its file (a module definition: unchanged)."""
        if not self.is_file:
            return self
        return Definition(self.source, self.function, self.args, _sha256(self.resolve(base)))

    def build(self, in_shape: tuple[int, int, int], num_classes: int, *, seed: int = 0,
              base: Path | None = None) -> nn.Module:
        """Import the definition (a file only if its hash matches a recorded one) and build the network."""
        fn = self._load(base)
        params = _parameters(fn)
        kwargs = dict(self.args)
        for key, value in (("in_shape", tuple(in_shape)), ("num_classes", num_classes)):
            if key in params and key not in kwargs:
                kwargs[key] = value
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = fn(**kwargs)
            except TypeError as exc:
                raise InputError(f"model {self.name} cannot be called with {sorted(kwargs)}: {exc}") from None
        if not isinstance(model, nn.Module):
            raise InputError(f"model {self.name} returned {type(model).__name__}; accepted a torch.nn.Module")
        return model

    def _load(self, base: Path | None) -> Any:
        if self.is_file:
            path = self.resolve(base)
            data = _read(path)  # read once: the bytes hashed are the bytes run (no cached bytecode, no race)
            digest = hashlib.sha256(data).hexdigest()
            if self.sha256 is not None and digest != self.sha256:
                raise InputError(f"model definition {path} has changed since the checkpoint was made (sha256 "
                                 f"{digest[:12]}..., recorded {self.sha256[:12]}...); accepted the same file")
            module_name = f"ittrna_user_model_{digest[:16]}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
            module = sys.modules.get(module_name)
            if module is None:
                module = types.ModuleType(module_name)
                module.__file__ = str(path)
                sys.modules[module_name] = module
                try:
                    exec(compile(data, str(path), "exec"), module.__dict__)
                except Exception:
                    del sys.modules[module_name]
                    raise
        else:
            try:
                module = importlib.import_module(self.source)
            except ImportError as exc:
                raise InputError(f"model definition module {self.source!r} cannot be imported: {exc}") from None
        fn = getattr(module, self.function, None)
        if not callable(fn):
            raise InputError(f"model definition {self.name}: {self.function!r} is not a function of "
                             f"{self.source}")
        return fn


def parse_definition(text: str, args: Any = None) -> Definition:
    """``FILE.py:FUNCTION`` or ``module:FUNCTION`` with keyword arguments ``args`` (a JSON object).

    Raises:
        InputError: the text names no definition, the file is missing, or the arguments are not an object.
    """
    if not is_definition(text):
        raise InputError(f"--model {text!r} is not a zoo name, a checkpoint or a definition; accepted "
                         "FILE.py:FUNCTION or package.module:FUNCTION")
    source, _, function = str(text).rpartition(":")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise InputError(f"--model-args = {args!r}; accepted a JSON object of keyword arguments")
    check_plain(args, "--model-args", InputError)
    return Definition(source, function, dict(args)).with_hash()


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise InputError(f"model definition file {path} is missing or not a file")
    size = path.stat().st_size
    if size > MAX_SOURCE_BYTES:
        raise InputError(f"model definition file {path} has {size} bytes; accepted at most {MAX_SOURCE_BYTES}")
    return path.read_bytes()


def _sha256(path: Path) -> str:
    return hashlib.sha256(_read(path)).hexdigest()


def _parameters(fn: Any) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


_TRUSTED: dict[tuple[str, str], Definition] = {}
"""Definitions the user named in this process: (function, file sha256 or module name) -> the definition."""


def _trust_key(defn: Definition) -> tuple[str, str]:
    return defn.function, (defn.sha256 or "") if defn.is_file else defn.source


def trust_definition(defn: Definition | str, args: Any = None) -> Definition:
    """Name a definition whose code checkpoints of it may run in this process (hashed now); returns it."""
    named = defn.with_hash() if isinstance(defn, Definition) else parse_definition(defn, args)
    _TRUSTED[_trust_key(named)] = named
    return named


def trusted(recorded: Definition, where: str) -> Definition:
    """The user-named definition a checkpoint's recorded one stands for (same function, same file hash or
    module), with the checkpoint's recorded arguments.

    Raises:
        InputError: no such definition was named (a checkpoint never runs code by itself).
    """
    named = _TRUSTED.get(_trust_key(recorded))
    if named is None:
        raise InputError(f"{where} is a checkpoint of your own network {recorded.name}; loading it runs that "
                         f"definition's code, so it loads only with the definition named: --definition "
                         f"{recorded.name} (library: ittrna.models.trust_definition), the file unchanged")
    return Definition(named.source, recorded.function, dict(recorded.args), recorded.sha256)

