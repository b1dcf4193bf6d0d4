"""The simulation benchmark before and after a change, side by side in one run.

Exports the tree of a git revision (``--before``, default ``HEAD~1``) to a temporary folder and runs
``benchmarks/bench_evaluate.py`` (this tree's script) against both source trees in turn — before, after,
before, after, … — so machine drift hits both alike. Prints, per model, the median seconds per simulated
chip and its ratio to plain PyTorch inference (measured in the same process) for each tree, and the
after/before ratio of seconds per chip paired round by round. Run: ``make bench-compare BEFORE=REV``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_evaluate.py"


def export(rev: str, dst: Path) -> Path:
    """The source tree of ``rev`` under ``dst`` (git archive: no worktree, nothing of the checkout changes)."""
    archive = dst / "tree.tar"
    with archive.open("wb") as fh:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True, stdout=fh)
    with tarfile.open(archive) as tar:
        tar.extractall(dst / "tree", filter="data")
    return dst / "tree" / "src"


def run(src: Path, chips: int) -> dict[str, dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, str(BENCH), "--chips", str(chips), "--json"], check=True, env=env,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="HEAD~1", help="git revision to compare against (default HEAD~1)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (each runs both trees)")
    ap.add_argument("--chips", type=int, default=6, help="chips per bench_evaluate run")
    args = ap.parse_args()
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.before], check=True,
                         capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="ittrna-before-") as tmp:
        before_src = export(args.before, Path(tmp))
        runs: dict[str, list[dict[str, dict[str, float]]]] = {"before": [], "after": []}
        for i in range(args.rounds):
            for label, src in (("before", before_src), ("after", ROOT / "src")):
                runs[label].append(run(src, args.chips))
                print(f"round {i + 1}/{args.rounds} {label} done", file=sys.stderr, flush=True)
    print(f"before = {rev}, after = working tree; {args.rounds} alternating rounds of {args.chips} chips "
          "(SAF 10 %, sigma 0.5, 10k MNIST test images); medians over rounds")
    print(f"{'model':<8} {'before s/chip':>13} {'ratio':>6} {'after s/chip':>12} {'ratio':>6} {'after/before':>12} "
          f"{'sweep point before':>18} {'after':>6}")
    for model in runs["after"][0]:
        b = [r[model] for r in runs["before"]]
        a = [r[model] for r in runs["after"]]
        paired = statistics.median(x["per_chip_s"] / y["per_chip_s"] for x, y in zip(a, b, strict=True))
        print(f"{model:<8} {statistics.median(r['per_chip_s'] for r in b):>13.4f} "
              f"{statistics.median(r['ratio_per_chip'] for r in b):>6.2f} "
              f"{statistics.median(r['per_chip_s'] for r in a):>12.4f} "
              f"{statistics.median(r['ratio_per_chip'] for r in a):>6.2f} {paired:>12.2f} "
              f"{statistics.median(r['ratio_sweep_point'] for r in b):>18.2f} "
              f"{statistics.median(r['ratio_sweep_point'] for r in a):>6.2f}")


if __name__ == "__main__":
    main()
