"""What the study scripts (`offdevice_study.py`, `ondevice_study.py`) share: the resumable JSONL record file,
the list of runs still to do, and the process pool that runs them.

A study is a list of jobs ``(setting, method, chip_seed, method_overrides)``; each finished job is one JSON
line in OUT/results.jsonl, so a rerun skips what is there.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Job = tuple[str, str, int, dict[str, Any]]


def load_records(store: Path) -> list[dict[str, Any]]:
    """The records in ``store`` (a cut or unreadable line is skipped: that run is simply done again)."""
    records = []
    if store.exists():
        for line in store.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def pending(records: list[dict[str, Any]], settings: list[str], methods: list[str], seeds: Iterable[int],
            overrides: dict[str, Any]) -> list[Job]:
    """The jobs not yet in ``records``, chip by chip (a partial run has every method on the same chips); each
    method gets only the overrides that are its settings."""
    from ittrna.methods import get_method

    done = {(r["setting"], r["method"], r["chip_seed"]) for r in records}
    own = {m: {k: v for k, v in overrides.items() if k.removeprefix("method.") in get_method(m).config().to_dict()}
           for m in methods}
    return [(s, m, seed, own[m]) for s in settings for seed in seeds for m in methods if (s, m, seed) not in done]


def run_jobs(store: Path, jobs: list[Job], records: list[dict[str, Any]], workers: int,
             init: Callable[..., None], initargs: tuple[Any, ...], run: Callable[[Job], dict[str, Any]],
             describe: Callable[[dict[str, Any]], str]) -> None:
    """Run ``jobs`` on a spawned pool, appending each record to ``store`` (and ``records``) as it finishes."""
    print(f"{len(jobs)} runs to do ({len(records)} stored)", flush=True)
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=init, initargs=initargs) as pool, open(store, "a", encoding="utf-8") as fh:
        for i, rec in enumerate(pool.imap_unordered(run, jobs), 1):
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            records.append(rec)
            print(f"[{i}/{len(jobs)} {time.perf_counter() - t0:.0f}s] {rec['setting']} {rec['method']} seed "
                  f"{rec['chip_seed']}: {describe(rec)}", flush=True)


def parse_args(doc: str | None, argv: list[str] | None, *, settings: str, all_settings: list[str], methods: str,
               seeds: int, device: bool = False) -> tuple[Any, list[str], list[str], dict[str, Any]]:
    """The study scripts' shared command line: (args, settings, methods, method overrides)."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="software checkpoint (converged)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--settings", default=settings, help=f"comma list of {all_settings}")
    p.add_argument("--methods", default=methods)
    p.add_argument("--seeds", type=int, default=seeds, help="first chip seed")
    p.add_argument("--chips", type=int, default=5)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    if device:
        p.add_argument("--device", default="cpu", help="where methods compute (cpu, cuda)")
    p.add_argument("--table-only", action="store_true", help="print the tables of what OUT holds; run nothing")
    p.add_argument("--set", action="append", default=[], metavar="method.FIELD=VALUE")
    args = p.parse_args(argv)
    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    args.out.mkdir(parents=True, exist_ok=True)
    return args, args.settings.split(","), args.methods.split(","), overrides
