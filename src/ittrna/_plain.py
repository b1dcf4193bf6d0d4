"""Reading untrusted plain data — config files, sweep configs, archive headers, stored records — in one place.

Every reader of JSON or TOML text goes through :func:`loads_json` / :func:`loads_toml`, and every reader of a
small text file through :func:`read_small_text`, so that the hostile cases are refused alike everywhere with a
one-line error naming the place:

- nesting deeper than :data:`MAX_DEPTH` (the parsers recurse: thousands of levels were a ``RecursionError``);
- integers beyond ``±2**64`` (too long for Python's int-to-str limit, or for a float: a traceback before);
- a path that is not a regular file (reading a named pipe blocks forever).

This module imports nothing of ittrna but its errors.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ittrna.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["MAX_DEPTH", "MAX_INT", "check_plain", "loads_json", "loads_toml", "read_small_text"]

MAX_DEPTH = 32
"""Deepest nesting of tables/arrays accepted (ittrna's own files nest at most 4 deep)."""
MAX_INT = 2**64
"""Largest magnitude of an integer accepted (seeds are below 2**63)."""

Error = Callable[[str], InputError]


def check_plain(data: Any, where: str, error: Error) -> Any:
    """``data`` itself, after checking its nesting depth and integer sizes (iteratively: no recursion).

    Raises:
        error: one line naming ``where``, the place in the data and what is accepted.
    """
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, bool) or value is None or isinstance(value, float):
            continue
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise error(f"{where}: {path or 'value'} holds a lone surrogate (not Unicode text); accepted "
                            "UTF-8 text") from None
            continue
        if not isinstance(value, (int, dict, list)):  # TOML dates and times, or anything else
            raise error(f"{where}: {path or 'value'} is a {type(value).__name__} ({str(value)[:40]}); accepted "
                        "strings, numbers, booleans, lists and tables")
        if isinstance(value, int):
            if not -MAX_INT <= value <= MAX_INT:
                raise error(f"{where}: {path or 'value'} is an integer of {value.bit_length()} bits; accepted "
                            f"integers of magnitude at most 2**64")
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise error(f"{where}: nested more than {MAX_DEPTH} levels deep at {path or 'the top'}; accepted "
                            f"at most {MAX_DEPTH}")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                stack.append((v, f"{path}.{k}" if path else str(k), depth + 1))
    return data


def _parse(parse: Callable[[], Any], where: str, error: Error, kind: str) -> Any:
    try:
        return parse()
    except RecursionError:
        raise error(f"{where}: invalid {kind}: nested too deeply; accepted at most {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors, as is int-to-str's limit
        text = " ".join(str(exc).split())[:200]
        if "integer string conversion" in text or "digits" in text:
            text = "an integer with too many digits; accepted integers of magnitude at most 2**64"
        raise error(f"{where}: invalid {kind}: {text}") from None


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` object hook refusing a key given twice (JSON would silently keep the last value)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key[:40]!r} appears twice; accepted each key once")
        out[key] = value
    return out


def loads_json(text: str | bytes, where: str, error: Error, *, unique_keys: bool = False, **kwargs: Any) -> Any:
    """Parse JSON text (``kwargs`` go to :func:`json.loads`) and :func:`check_plain` it; with ``unique_keys``
    an object that gives a key twice is an error (a config or a file header, where the last would win)."""
    if unique_keys:
        kwargs["object_pairs_hook"] = _unique_pairs
    return check_plain(_parse(lambda: json.loads(text, **kwargs), where, error, "JSON"), where, error)


def loads_toml(text: str, where: str, error: Error) -> dict[str, Any]:
    """Parse TOML text and :func:`check_plain` it."""
    data: dict[str, Any] = _parse(lambda: tomllib.loads(text), where, error, "TOML")
    check_plain(data, where, error)
    return data


def read_small_text(path: str | Path, what: str, max_bytes: int, error: Error) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` bytes.

    Raises:
        error: the path is not a regular file (a folder, a named pipe, a device), is too large, cannot be read
            or is not UTF-8; one line naming the path.
    """
    p = Path(path)
    try:
        st = os.stat(p)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {p} is not a regular file (a folder, named pipe or device); accepted a file")
        if st.st_size > max_bytes:
            raise error(f"{what} {p} is {st.st_size} bytes; accepted at most {max_bytes}")
        with open(p, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise error(f"{what} {p} is more than {max_bytes} bytes; accepted at most {max_bytes}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {p} is not UTF-8 text (byte {exc.start}); accepted UTF-8 text") from None
