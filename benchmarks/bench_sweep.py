"""Sweep throughput: points per minute of the same tiny grid with the local backend (one process), a local
pool of 2 processes and Ray with 2 workers, side by side in one run.

    python benchmarks/bench_sweep.py [--chips 6] [--test-size 2000] [--methods none,program]

The software model is trained once, before the timings, and copied into each run's folder, so every run
evaluates the same points and only the points are timed. "startup" is the backend's start (Ray: starting the
local cluster); "points/min" counts the whole run after it, the workers' first import of torch and the data
included (what a user waits for). Every backend must give the same records (checked).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

GRID = """
[grid]
model = ["mlp"]
dataset = ["mnist"]
saf_rate = [0.1, 0.2]
sigma = [0.5]
method = {methods}
chip_seed = {seeds}

[train]
epochs = 1

[data]
train_size = 5000
test_size = {test_size}
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chips", type=int, default=6, help="chip seeds per (setting, method)")
    p.add_argument("--test-size", type=int, default=2000, help="test images per point")
    p.add_argument("--methods", default="none,program")
    p.add_argument("--backends", default="local,local-2,ray-2", help="comma list of local, local-2, ray-2")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from ittrna.experiments.backends import LocalBackend, make_backend
    from ittrna.experiments.grid import parse_spec
    from ittrna.experiments.sweep import run_spec

    try:
        import tomllib
    except ImportError:  # pragma: no cover
        import tomli as tomllib

    methods = [m for m in args.methods.split(",") if m]
    text = GRID.format(methods=methods, seeds=list(range(1000, 1000 + args.chips)), test_size=args.test_size)
    spec = parse_spec(tomllib.loads(text))
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        warm = run_spec(parse_spec(tomllib.loads(text.replace("[0.1, 0.2]", "[0.0]").replace(
            f"chip_seed = {list(range(1000, 1000 + args.chips))}", "chip_seed = [1]"))), root / "warm",
            progress=False)  # trains the model (untimed) and warms this process's data cache
        assert warm.trained
        rows = []
        reference = None
        for name in args.backends.split(","):
            out = root / name
            shutil.copytree(root / "warm" / "models", out / "models")
            t0 = time.perf_counter()
            if name == "local":
                backend = LocalBackend(1)
            elif name == "local-2":
                backend = LocalBackend(2)
            elif name == "ray-2":
                try:
                    backend = make_backend("ray", workers=2)
                except Exception as exc:  # Ray not installed
                    print(f"{name}: skipped ({exc})")
                    continue
            else:
                raise SystemExit(f"unknown backend {name!r}")
            startup = time.perf_counter() - t0
            t1 = time.perf_counter()
            with backend:
                outcome = run_spec(spec, out, backend=backend, progress=False)
            run = time.perf_counter() - t1
            assert outcome.computed == len(spec.points) and not outcome.trained
            same = {r["key"]: (r["chip_accuracy"], r["writes"]) for r in outcome.records}
            reference = reference or same
            assert same == reference, f"{name} gave other records than the first backend"
            rows.append((name, len(spec.points), startup, run, 60 * len(spec.points) / run))
        print(f"{len(spec.points)} points: mlp, 2 settings x {len(methods)} methods x {args.chips} chips, "
              f"{args.test_size} test images; {os.cpu_count()} CPUs")
        print(f"{'backend':<10} {'points':>6} {'startup s':>10} {'run s':>7} {'points/min':>11} {'vs local':>9}")
        base = rows[0][4] if rows else 1.0
        for name, n, startup, run, ppm in rows:
            print(f"{name:<10} {n:>6} {startup:>10.1f} {run:>7.1f} {ppm:>11.1f} {ppm / base:>9.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    raise SystemExit(main())
