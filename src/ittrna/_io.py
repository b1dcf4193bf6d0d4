"""Small file helpers shared by every layer: atomic writes and pickle-free ``.npz`` archives."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write", "atomic_write_text", "load_npz", "save_npz"]


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash leaves either the old file or the new one, never a partial file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    atomic_write(path, write)


def save_npz(path: str | Path, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Save arrays plus a JSON header to a compressed ``.npz`` atomically (no pickled objects)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            payload: dict[str, Any] = {"__header__": np.array(json.dumps(dict(header))), **arrays}
            np.savez_compressed(fh, **payload)

    atomic_write(path, write)


def load_npz(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Load an archive written by :func:`save_npz` without executing code.

    Args:
        path: the ``.npz`` file.
        kind: the ``header["kind"]`` expected (e.g. ``"chip"``); another kind is an error.

    Raises:
        ValueError: unreadable file, not an ittrna archive, or of another kind.
    """
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise ValueError(f"{p}: no such file") from None
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{p}: not a readable .npz archive ({exc})") from None
    if "__header__" not in arrays:
        raise ValueError(f"{p}: not an ittrna archive (no header)")
    header = json.loads(str(arrays.pop("__header__")))
    if header.get("kind") != kind:
        raise ValueError(f"{p}: holds a {header.get('kind')!r}, expected a {kind!r}")
    return header, arrays
