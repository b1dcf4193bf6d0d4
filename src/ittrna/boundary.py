"""The host/chip boundary, enforced while a method runs.

A method stands where a real host stands: it sees the design, the chip's measured map and — on-device — a
session that offers forward passes and writes. :func:`ittrna.methods.apply_method` runs every method inside
:func:`host_side`; the session does its own chip access inside :func:`chip_side`. On the host side, outside the
session's own access,

- any attribute of a true chip object (:class:`~ittrna.chip.Chip`, its layers and cell arrays), reached by any
  route — the session's private attributes, a closure, a module global — raises :class:`BoundaryError`;
- :meth:`Chip.load <ittrna.chip.Chip.load>`, :meth:`Chip.fabricate <ittrna.chip.Chip.fabricate>` and
  :meth:`Chip.test <ittrna.chip.Chip.test>` raise :class:`BoundaryError` (a method lazily importing
  ``ittrna.chip`` gets nothing from it);
- walking the garbage collector (``gc.get_objects``, ``gc.get_referrers``, ``gc.get_referents``) and opening
  an ``.npz`` archive (a chip or map file next to the inputs) raise :class:`BoundaryError`, through an audit
  hook (PEP 578).

Why this is enough, and where it stops: Python has no private memory, so a method that is written to cheat
can still reach the cell tensors, e.g. through ``object.__getattribute__`` on an object it already holds, or
by entering :func:`chip_side` itself. The
guard stops every careless route and the known clever ones with an error at the first access; what remains is
caught by the counterfactual tests (``tests/test_boundary.py``): every registered method, run for two chips
whose measured maps are equal bit for bit but whose truth differs, must give identical deployments — a
method that learns the truth by any route changes its deployment and fails them. A separate chip process
behind a handle (the way a real chip sits behind a driver) would make the boundary structural; its cost, an
IPC round trip per forward pass and per write, is what this in-process design avoids. The guard itself costs
one thread-local look-up per chip attribute access (``benchmarks/bench_evaluate.py`` shows the evaluation
overhead, all of it outside the host side).

This module imports nothing of ittrna.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["BoundaryError", "check", "chip_side", "host_side", "in_session", "on_host_side"]


class BoundaryError(RuntimeError):
    """A method reached for the true chip: a bug in the method (never bad input)."""


_STATE = threading.local()


def _depth(name: str) -> int:
    return int(getattr(_STATE, name, 0))


@contextlib.contextmanager
def _entered(name: str) -> Iterator[None]:
    setattr(_STATE, name, _depth(name) + 1)
    try:
        yield
    finally:
        setattr(_STATE, name, _depth(name) - 1)


def host_side() -> contextlib.AbstractContextManager[None]:
    """A method's run: the true chip is out of reach (see the module docstring)."""
    return _entered("host")


def chip_side() -> contextlib.AbstractContextManager[None]:
    """The session's (or the evaluator's) own access to the chip, allowed on the host side too."""
    return _entered("chip")


def in_session() -> bool:
    """Whether the current thread is inside a session's own chip access."""
    return _depth("chip") > 0


def on_host_side() -> bool:
    """Whether the current thread runs a method, outside the session's own chip access."""
    return _depth("host") > 0 and _depth("chip") == 0


def check(what: str) -> None:
    """Raise :class:`BoundaryError` if a method (outside its session) is reaching for ``what``."""
    if _depth("host") > 0 and _depth("chip") == 0:
        raise BoundaryError(f"a method reached for {what}; a method sees only the design, the measured map and its "
                            "chip-in-the-loop session (ittrna.boundary)")


class Guarded:
    """Base of the true chip's objects: every attribute read checks the boundary first."""

    def __getattribute__(self, name: str) -> Any:
        if _depth("host") > 0 and _depth("chip") == 0:
            check(f"{type(self).__name__}.{name} of the true chip")
        return object.__getattribute__(self, name)


_WATCHED = {"gc.get_objects", "gc.get_referrers", "gc.get_referents"}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _depth("host") == 0 or _depth("chip") > 0:
        return
    if event in _WATCHED:
        check(f"the garbage collector ({event})")
    elif event == "open" and args and str(args[0]).endswith(".npz"):
        check(f"the archive {args[0]}")


sys.addaudithook(_audit)
