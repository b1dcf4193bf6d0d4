"""An append-only JSONL result store: one record per (sweep point, chip seed); resumable by construction."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ittrna.errors import FileFormatError

__all__ = ["ResultStore"]


def _check_record(path: Path, line: int, record: Any) -> None:
    where = f"{path}: line {line}"
    if not isinstance(record, dict):
        raise FileFormatError(f"{where} holds a JSON {type(record).__name__}; accepted a JSON object per line")
    if "key" not in record:
        return
    ok = (isinstance(record["key"], str) and isinstance(record.get("axis"), str)
          and _number(record.get("value")) and _number(record.get("accuracy")) and 0 <= record["accuracy"] <= 1)
    if not ok:
        raise FileFormatError(f"{where}: record needs a string key and axis, a finite value and an accuracy in "
                              "[0, 1]; remove the line or the file to recompute")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ResultStore:
    """Records appended one JSON line at a time (flushed and fsynced), so an interrupted sweep loses at
    most the record being written; a truncated last line is ignored on reading."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Stored records in order; a line that is not valid JSON (a partial write) is skipped.

        Raises:
            FileFormatError: a line holds JSON that is not an object, or a keyed record lacks a valid
                ``axis``, ``value`` or ``accuracy`` (the file was edited or is not a result store).
        """
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    continue  # a partial line from an interrupted write
                _check_record(self.path, n, record)
                yield record

    def keys(self) -> set[str]:
        """The ``key`` of every stored record."""
        return {r["key"] for r in self if "key" in r}

    def append(self, record: dict[str, Any]) -> None:
        """Append one record durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
