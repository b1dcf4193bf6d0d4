"""Small file helpers shared by every layer: atomic writes and pickle-free ``.npz`` archives.

Writes go to a temporary file beside the target (``.NAME.PID-RANDOM.tmp``, NAME hashed for a name near the
file system's 255-byte limit), are flushed to disk, then renamed over the target, so a reader sees the old
file or the new one, never a partial one. Folders made for the target are removed again when the write
cannot start. The temporary
file is removed when the write fails, when the process gets SIGTERM during the write, and, if a crash
(SIGKILL, power loss) left one behind, by the next write of the same target. Files are created with the
usual permissions (0666 minus the umask, e.g. 0644), like ``open(path, "w")``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import threading
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from ittrna._resources import check_memory
from ittrna.errors import FileFormatError

__all__ = ["atomic_write", "atomic_write_text", "load_npz", "save_npz"]

_PENDING: set[Path] = set()
"""Temporary files of writes in progress (removed by the SIGTERM handler)."""
_LOCK = threading.Lock()


def _on_sigterm(previous: Any) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        with _LOCK:
            for tmp in list(_PENDING):
                tmp.unlink(missing_ok=True)
            _PENDING.clear()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:  # default action: die by the same signal
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return handler


_NAME_MAX = 255
"""Longest file name (bytes) of the common Linux file systems."""


def _tmp_stem(target: Path) -> str:
    """The name part of ``target``'s temporary files: its own name, or a hash of it where the temporary
    file's name (``.NAME.PID-RANDOM.tmp``, up to 30 bytes more) would exceed the file system's limit."""
    if len(target.name.encode()) + 32 <= _NAME_MAX:
        return target.name
    return "~" + hashlib.sha256(target.name.encode()).hexdigest()[:24]


def _clear_stale(target: Path) -> None:
    """Remove temporary files of earlier writes of ``target`` whose writing process no longer exists."""
    prefix = f".{_tmp_stem(target)}."
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        middle = name[len(prefix):-4]
        pid_text, dash, token = middle.partition("-")
        ours = pid_text.isdigit() and dash and len(token) == 8 and all(c in "0123456789abcdef" for c in token)
        legacy = len(middle) == 8 and all(c in "abcdefghijklmnopqrstuvwxyz0123456789_" for c in middle)  # mkstemp
        if not (ours or legacy):
            continue  # not a temporary file of ours (e.g. a user's ".c.npz.notes.tmp"): never touched
        if ours and _alive(int(pid_text)):
            continue  # a concurrent write in progress
        entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _create_tmp(target: Path) -> Path:
    for _ in range(100):
        tmp = target.parent / f".{_tmp_stem(target)}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot create a temporary file beside {target}")


def _remove_folders(created: list[Path]) -> None:
    """Remove the folders a failed write made (deepest first), where they are still empty."""
    for folder in created:
        with contextlib.suppress(OSError):
            folder.rmdir()


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash leaves either the old file or the new one, never a partial file; the temporary file is removed
    on failure and on SIGTERM (in the main thread), and stale ones of earlier crashed writes are cleared.
    """
    target = Path(path)
    created = [d for d in (target.parent, *target.parent.parents) if not d.exists()]  # deepest first
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(target)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main else None
    try:
        tmp_path = _create_tmp(target)
    except OSError as exc:  # name the file asked for, not the temporary one beside it; leave no new folders
        _remove_folders(created)
        raise OSError(exc.errno, f"{exc.strerror or exc} (writing it through a temporary file beside it)",
                      str(target)) from None
    with _LOCK:
        _PENDING.add(tmp_path)
    if in_main:
        signal.signal(signal.SIGTERM, _on_sigterm(previous))
    try:
        writer(tmp_path)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        _remove_folders(created)
        if exc.filename == str(tmp_path) or getattr(exc, "filename2", None) == str(target):  # the rename
            raise OSError(exc.errno, f"{exc.strerror or exc} (writing it through a temporary file beside it)",
                          str(target)) from None
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        _remove_folders(created)
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        with _LOCK:
            _PENDING.discard(tmp_path)
        tmp_path.unlink(missing_ok=True)


def load_torch(path: Path, what: str) -> Any:
    """A file written with ``torch.save``, loaded pickle-free (``weights_only``: tensors and plain values, no
    code runs); a foreign or damaged file is a one-line :class:`FileFormatError` "PATH: not WHAT (why)"."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileFormatError(f"{path}: not {what} ({first[:120]})") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    atomic_write(path, write)


def save_npz(path: str | Path, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Save arrays plus a JSON header to a compressed ``.npz`` atomically (no pickled objects).

    Raises:
        FileFormatError: ``path`` does not end in ``.npz``.
    """
    p = Path(path)
    if p.suffix != ".npz":
        raise FileFormatError(f"{p}: an archive is written as .npz; got suffix {p.suffix!r}")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            payload: dict[str, Any] = {"__header__": np.array(json.dumps(dict(header))), **arrays}
            np.savez_compressed(fh, **payload)

    atomic_write(p, write)


_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, NotImplementedError)


def _declared_bytes(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """The bytes a member's ``.npy`` header declares (its shape times its item size), read before any data: a
    small member may declare a huge array, which loading would try to allocate."""
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)  # (shape, fortran order, dtype)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:  # a format ittrna never writes: np.load refuses or the reader checks it
            return 0
    n = 1
    for d in shape:
        n *= int(d)
    return n * int(dtype.itemsize)


def load_npz(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Load an archive written by :func:`save_npz` without executing code.

    The uncompressed size is checked against the available memory before anything is read. Only the
    container is checked here (a readable zip of arrays with a JSON-object header of the right kind); the
    fields are checked by the reader of each kind (see :mod:`ittrna._validate`).

    Args:
        path: the ``.npz`` file.
        kind: the ``header["kind"]`` expected (e.g. ``"chip"``); another kind is an error.

    Raises:
        FileFormatError: missing or unreadable file, not an ittrna archive, or of another kind.
        ResourceError: the archive would not fit in memory.
    """
    p = Path(path)
    if not p.exists():
        raise FileFormatError(f"{p}: no such file")
    if not p.is_file():
        raise FileFormatError(f"{p}: not a regular file; accepted a .npz archive")
    try:
        with zipfile.ZipFile(p) as zf:
            size = sum(info.file_size for info in zf.infolist())
            declared = sum(_declared_bytes(zf, info) for info in zf.infolist() if info.filename.endswith(".npy"))
    except _NPZ_ERRORS as exc:
        raise FileFormatError(f"{p}: not a readable .npz archive ({_first_line(exc)})") from None
    check_memory(max(size, declared), f"reading {p} ({max(size, declared)} bytes as its arrays declare)")
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except _NPZ_ERRORS as exc:
        raise FileFormatError(f"{p}: not a readable .npz archive ({_first_line(exc)})") from None
    raw = arrays.pop("__header__", None)
    if raw is None:
        raise FileFormatError(f"{p}: not an ittrna archive (no header)")
    for key, value in [("__header__", raw), *arrays.items()]:
        if not isinstance(value, np.ndarray):
            raise FileFormatError(f"{p}: member {key!r} is not a NumPy array; not an ittrna archive")
    if raw.shape != () or raw.dtype.kind != "U":
        raise FileFormatError(f"{p}: header is a {raw.dtype} array of shape {raw.shape}; accepted a JSON string")
    from ittrna._plain import loads_json

    header = loads_json(str(raw), f"{p}: header", FileFormatError, unique_keys=True)
    if not isinstance(header, dict):
        raise FileFormatError(f"{p}: header is a JSON {type(header).__name__}; accepted a JSON object")
    if header.get("kind") != kind:
        raise FileFormatError(f"{p}: holds a {header.get('kind')!r}, expected a {kind!r}")
    return header, arrays


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:160] if text else type(exc).__name__)
