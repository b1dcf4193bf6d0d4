"""Machine resources: the memory available to new allocations and the check against it.

A helper below everything (it imports only the errors), so that both the archive reader (:mod:`ittrna._io`) and
the validators (:mod:`ittrna._validate`) use it without importing each other.
"""

from __future__ import annotations

import os

from ittrna.errors import ResourceError

__all__ = ["available_memory", "check_memory"]


def available_memory() -> int | None:
    """Bytes available to new allocations: ``MemAvailable`` of ``/proc/meminfo`` (Linux), else free physical
    pages from ``sysconf``; None where neither is known (then no estimate is enforced)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _size(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.3g} MiB"


def check_memory(need: float, what: str) -> None:
    """Raise :class:`ResourceError` when ``need`` bytes exceed the available memory (see
    :func:`available_memory`); the message gives both."""
    have = available_memory()
    if have is not None and need > have:
        raise ResourceError(f"{what} needs about {_size(need)} of memory; {_size(have)} is available")
