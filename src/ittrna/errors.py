"""The one error family for bad input, shared by every layer (rank 0: imports nothing from ittrna).

Every error a user can cause (a bad value, a bad or foreign file, a missing dataset, a request too big for
this machine) is an :class:`InputError`. Its message is one line that names the value, the file or field,
and what is accepted. The command line shows an ``InputError`` as that one line (exit status 1, or 2 for a
bad setting) and lets any other exception surface as the bug it is, with its traceback.

``InputError`` subclasses ``ValueError``, so ``except ValueError`` in existing code still catches it.

Example:
    >>> try:
    ...     raise ConfigError("faults.rate = 2 is out of range; accepted [0, 1)")
    ... except InputError as exc:
    ...     print(exc)
    faults.rate = 2 is out of range; accepted [0, 1)
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "FileFormatError",
    "InputError",
    "ResourceError",
    "UnknownNameError",
    "WriteBudgetError",
]


class InputError(ValueError):
    """Bad input: the message is one line naming the value, the file or field, and what is accepted."""


class ConfigError(InputError):
    """A configuration value or setting is invalid; the message names the dotted field and the accepted
    range."""


class DataError(InputError, RuntimeError):
    """A dataset cannot be fetched, verified or read; the message says which file and why.

    Also a ``RuntimeError`` (its base before the error family existed), so older handlers still match.
    """


class FileFormatError(InputError):
    """A file (chip, measured map, checkpoint, config) is unreadable, foreign, or has a field of the wrong
    type, dtype, shape, range or code; the message names the file and the field."""


class ResourceError(InputError):
    """A request needs more of this machine than it has (memory, a CUDA device); the message gives the
    estimate and what is available."""


class UnknownNameError(InputError, KeyError):
    """An unknown registry name (model, preset, dataset); also a ``KeyError`` for lookups that expect one.

    Unlike ``KeyError``, ``str()`` gives the message itself, not its quoted ``repr``.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class WriteBudgetError(InputError):
    """A chip-in-the-loop session refused a programming operation: it would exceed the session's write
    budget or on-device iteration limit. Nothing was written; the message gives the request and what is left."""
