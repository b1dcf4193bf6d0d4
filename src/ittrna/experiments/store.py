"""An append-only JSONL result store: one record per (sweep point, chip seed); resumable by construction."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["ResultStore"]


class ResultStore:
    """Records appended one JSON line at a time (flushed and fsynced), so an interrupted sweep loses at
    most the record being written; a truncated last line is ignored on reading."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue  # a partial line from an interrupted write

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
