"""The result store of a sweep: ``DIR/results.jsonl`` (one flat record per point, appended and fsynced)
mirrored to ``DIR/results.csv``.

- One writer at a time: :meth:`ResultStore.open_writer` takes an exclusive lock (``DIR/.results.lock``); a
  second writer gets a one-line :class:`StoreLockedError`. The lock is the kernel's (``flock``), so a killed
  writer never leaves it held.
- A record is one ``write`` of one line, flushed and fsynced before the point counts as done; a crash can
  cut only the last line. The writer sets such a partial last line (no newline at the end of the file) aside
  in ``results.jsonl.partial-N`` and truncates the store to its last whole line; it is never merged. A last
  line that is a whole valid record of a new point but for its newline (a write cut just before it, a file
  edited by hand) is read and kept: the writer adds the newline.
- Every record is validated on reading and before writing (:func:`check_record`): a record with a wrong type
  (a string for a number, a list, an accuracy outside [0, 1]) or repeating another's key is an error naming
  the file and the line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ittrna._io import atomic_write, atomic_write_text
from ittrna._plain import loads_json
from ittrna.errors import FileFormatError, InputError

__all__ = ["MEASURES", "RECORD_FIELDS", "ResultStore", "StoreLockedError", "check_record", "records_to_csv"]

_ACC = "accuracy"
_COUNT = "count"
_NONNEG = "nonneg"
_STR = "str"
_INT = "int"
_FRACTION = "fraction"
_SPREAD = "spread"
_MAX_INT = 2**63 - 1

#: Required fields of a record and their kinds.
RECORD_FIELDS: dict[str, str] = {
    "key": _STR,
    "model": _STR,
    "dataset": _STR,
    "method": _STR,
    "chip_seed": _INT,
    "software_accuracy": _ACC,
    "chip_accuracy": _ACC,
    "chip_accuracy_before": _ACC,
    "writes": _COUNT,
    "writes_performed": _COUNT,
    "seconds": _NONNEG,
    "method_version": _INT,
    "ittrna_version": _STR,
    "model_sha256": _STR,
}
#: Known optional fields and their kinds (other fields must be plain scalars).
OPTIONAL_FIELDS: dict[str, str] = {
    "saf_rate": _FRACTION, "sigma": _SPREAD, "stuck_on_share": _FRACTION, "program_noise": _SPREAD,
    "read_noise": _SPREAD, "miss_rate": _FRACTION, "theta_noise": _SPREAD, "pattern": _STR,
    "wall_seconds": _NONNEG, "max_writes_per_cell": _COUNT, "cells_worn_out": _COUNT,
    "fraction_cells_written": _NONNEG, "val_accuracy": _ACC, "torch_version": _STR,
    "iterations": _COUNT, "forward_passes": _COUNT, "ondevice_writes": _COUNT, "compensation": _STR,
    "refresh": _FRACTION, "compensation_writes": _COUNT, "compensation_forward_passes": _COUNT,
    "refresh_writes": _COUNT, "refresh_full_writes": _COUNT,
}
#: Measured fields (the rest of a record describes the point).
MEASURES = ("software_accuracy", "chip_accuracy", "chip_accuracy_before", "writes", "writes_performed",
            "seconds", "wall_seconds", "max_writes_per_cell", "cells_worn_out", "fraction_cells_written",
            "iterations", "forward_passes", "ondevice_writes", "val_accuracy", "compensation_writes",
            "compensation_forward_passes", "refresh_writes", "refresh_full_writes")


class StoreLockedError(InputError):
    """Another process is writing the store."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _problem(kind: str, value: Any) -> str | None:
    if kind == _STR:
        return None if isinstance(value, str) else "is not a string"
    if kind == _INT:
        return None if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_INT else \
            "is not an integer in [0, 2**63 - 1]"
    if kind == _COUNT:
        return None if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_INT else \
            "is not a count (an integer in [0, 2**63 - 1])"
    if not _is_number(value):
        return "is not a finite number"
    if kind == _ACC and not 0 <= value <= 1:
        return "is outside [0, 1] (accuracies are fractions)"
    if kind == _NONNEG and not 0 <= value <= 1e12:
        return "is outside [0, 1e12]"
    if kind == _SPREAD and not 0 <= value <= 3:
        return "is outside [0, 3] (the configs' range for a lognormal spread)"
    if kind == _FRACTION and not 0 <= value <= 1:
        return "is outside [0, 1] (a rate or share)"
    return None


def check_record(record: Any, where: str) -> None:
    """Raise :class:`FileFormatError` (``where``: ``FILE: line N``) unless ``record`` is a valid result."""
    if not isinstance(record, dict):
        raise FileFormatError(f"{where} holds a JSON {type(record).__name__}; accepted a JSON object (one "
                              "record) per line")
    for name, value in record.items():
        kind = RECORD_FIELDS.get(name) or OPTIONAL_FIELDS.get(name)
        if kind is not None:
            if value is None and name in OPTIONAL_FIELDS:
                continue
            bad = _problem(kind, value)
        elif isinstance(value, (dict, list)):
            bad = "is a JSON " + ("object" if isinstance(value, dict) else "list") + "; records are flat"
        elif isinstance(value, float) and not math.isfinite(value):
            bad = "is not finite"
        else:
            bad = None
        if bad:
            shown = json.dumps(value)[:60] if not isinstance(value, float) else repr(value)
            raise FileFormatError(f"{where}: field {name} = {shown} {bad}; remove the line (it will be "
                                  "recomputed) or the folder")
    missing = [n for n in RECORD_FIELDS if n not in record]
    if missing:
        raise FileFormatError(f"{where}: field {missing[0]} is missing; accepted a sweep record with "
                              f"{list(RECORD_FIELDS)} (remove the line or the folder)")


def records_to_csv(records: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of flat records: the union of their fields as columns, in first-seen order."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow(dict(r))
    return buf.getvalue() if records else ""


def _parse_lines(path: Path, data: bytes) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        where = f"{path}: line {n}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FileFormatError(f"{where} is not a JSON record (not UTF-8); remove the line (it will be "
                                  "recomputed) or the folder") from None
        record = loads_json(text, f"{where} is not a JSON record (remove the line: it will be recomputed)",
                            FileFormatError)
        check_record(record, where)
        key = record["key"]
        if key in seen:
            raise FileFormatError(f"{where} repeats the point of line {seen[key]} (key {key[:12]}…); a point is "
                                  "stored once: remove one of the lines")
        seen[key] = n
        records.append(record)
    return records


def _complete_record(path: Path, tail: bytes, keys: set[str]) -> dict[str, Any] | None:
    """The last line without its newline, when it is a whole valid record of a new point (a write cut just
    before its newline, or a file edited by hand); None for a partial line (a write in progress or cut)."""
    if not tail.strip():
        return None
    try:
        (record,) = _parse_lines(path, tail)
    except (FileFormatError, ValueError):
        return None
    return record if record["key"] not in keys else None


class ResultStore:
    """``DIR/results.jsonl`` + ``DIR/results.csv``. Read with :meth:`read`; write through
    :meth:`open_writer` (a context manager holding the lock)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / "results.jsonl"
        self.csv_path = self.folder / "results.csv"
        self.lock_path = self.folder / ".results.lock"
        self._records: list[dict[str, Any]] = []
        self._keys: set[str] = set()
        self._lock: Any = None
        self.set_aside: Path | None = None
        """Where the writer put a partial last line it found (None: there was none)."""

    # --- reading ---------------------------------------------------------------------------------------------
    def read(self) -> list[dict[str, Any]]:
        """The stored records, validated. A partial last line (a write in progress or cut by a crash) is
        skipped, not read; a whole record without its newline is read.

        Raises:
            FileFormatError: a whole line is not a valid record, or repeats another's key (names the line).
        """
        if not self.path.exists():
            return []
        data = self._read_bytes()
        cut = data.rfind(b"\n") + 1
        records = _parse_lines(self.path, data[:cut])
        last = _complete_record(self.path, data[cut:], {r["key"] for r in records})
        return records + ([last] if last is not None else [])

    def _read_bytes(self) -> bytes:
        """The store file's bytes, once it is known to be a regular file that fits in memory (a named pipe would
        block forever, a sparse file of 200 GB exhaust the memory)."""
        import stat

        from ittrna._resources import check_memory

        st = os.stat(self.path)
        if not stat.S_ISREG(st.st_mode):
            raise FileFormatError(f"{self.path} is not a regular file (a named pipe or device); accepted the "
                                  "store's own results.jsonl")
        check_memory(2 * st.st_size, f"reading {self.path} ({st.st_size} bytes)")
        return self.path.read_bytes()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._records if self._lock is not None else self.read())

    def keys(self) -> set[str]:
        """Keys of the stored records."""
        return set(self._keys) if self._lock is not None else {r["key"] for r in self.read()}

    # --- writing ---------------------------------------------------------------------------------------------
    def open_writer(self) -> ResultStore:
        """Take the writer's lock, set a partial last line aside, load the records; use as ``with``.

        Raises:
            StoreLockedError: another process holds the lock.
            FileFormatError: a stored record is invalid.
        """
        from filelock import FileLock, Timeout

        self.folder.mkdir(parents=True, exist_ok=True)
        for f in (self.path, self.csv_path, self.lock_path):  # appends through a link would write elsewhere
            if f.is_symlink():
                raise InputError(f"{f} is a symbolic link; the store writes its own files in {self.folder} "
                                 "(remove the link or choose another --out)")
        lock = FileLock(str(self.lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise StoreLockedError(f"{self.folder} is being written by another sweep (lock {self.lock_path} is "
                                   "held); wait for it to finish or choose another --out") from None
        try:
            self._recover()
            self._records = _parse_lines(self.path, self._read_bytes()) if self.path.exists() else []
            self._keys = {r["key"] for r in self._records}
            self._write_csv()
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        return self

    def __enter__(self) -> ResultStore:
        if self._lock is None:
            self.open_writer()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _recover(self) -> None:
        """Move a partial last line to ``results.jsonl.partial-N`` and cut the store to whole lines."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        whole = {r["key"] for r in _parse_lines(self.path, data[:cut])}
        if _complete_record(self.path, data[cut:], whole) is not None:  # whole but for its newline: keep it
            with open(self.path, "ab") as end:
                end.write(b"\n")
                end.flush()
                os.fsync(end.fileno())
            return
        n = 1
        while (self.folder / f"results.jsonl.partial-{n}").exists():
            n += 1
        aside = self.folder / f"results.jsonl.partial-{n}"
        tail = data[cut:]

        def write_tail(tmp: Path) -> None:
            tmp.write_bytes(tail)  # the bytes as they were: nothing re-encoded

        atomic_write(aside, write_tail)
        with open(self.path, "r+b") as fh:
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
        self.set_aside = aside

    def append(self, record: dict[str, Any]) -> None:
        """Append one record durably (one write, flushed and fsynced) and refresh the CSV mirror.

        Raises:
            RuntimeError: the store is not open for writing, or the key is stored already (a bug).
        """
        if self._lock is None:
            raise RuntimeError("the store is not open for writing (use `with store.open_writer():`)")
        check_record(record, f"record for {self.path}")
        if record["key"] in self._keys:
            raise RuntimeError(f"point {record['key']} is stored already")
        data = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
        with open(self.path, "ab") as fh:
            if _pause_here(len(self._records)):  # fault injection (tests): die in the middle of this write
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
                _pause()
                data = data[len(data) // 2:]
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self._records.append(record)
        self._keys.add(record["key"])
        self._write_csv()

    def _write_csv(self) -> None:
        if self._records or self.csv_path.exists():
            atomic_write_text(self.csv_path, records_to_csv(self._records))


# --- fault injection for the crash-safety tests ------------------------------------------------------------
PAUSE_ENV = "ITTRNA_TEST_PAUSE_IN_WRITE"
"""Tests set ``PATH:N``: the append of record N (0-based, counted in this process) writes half its line,
fsyncs it, creates PATH and sleeps, so a test can kill the writer in the middle of a record."""


def _pause_here(index: int) -> bool:
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return False
    _, _, n = spec.rpartition(":")
    return n.isdigit() and int(n) == index


def _pause() -> None:
    import time

    marker, _, _ = os.environ[PAUSE_ENV].rpartition(":")
    Path(marker).touch()
    time.sleep(600)
