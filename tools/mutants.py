"""A mutation check of the test suite (`make mutants`; not part of the default suite).

Each mutant is one deliberate defect of the kind the suite exists to catch. For each, the source is copied to a
scratch folder, the defect applied (the original text must occur exactly once), and the default suite run
against the copy; the mutant is *killed* when at least one test fails. Prints a table, mutant -> failing tests,
and exits 1 if any mutant survives.

    python tools/mutants.py                 # every mutant
    python tools/mutants.py --only budget   # one
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHEAT = '''    p.choose_scales(cfg)
    import sys as _sys
    try:
        raise RuntimeError
    except RuntimeError as _exc:
        _f = _exc.__traceback__.tb_frame
    while _f is not None:  # MUTANT: a method finds the true chip in the evaluator's frame and reads its theta
        _c = _f.f_locals.get("chip")
        if type(_c).__name__ == "Chip":
            _layers = object.__getattribute__(_c, "layers")
            for _n in p.scales:
                _arr = next(iter(object.__getattribute__(_layers[_n], "arrays").values()))
                p.scales[_n] *= float(object.__getattribute__(_arr, "theta").exp().mean())
            break
        _f = _f.f_back
'''

_PROGRAM = '    p = Pipeline(model, measured, ctx)\n    p.choose_scales(cfg)\n    return p.deployment("pair")'
_BUDGET = "        left = self.writes_left\n        if left is not None and count > left:"

MUTANTS: dict[str, tuple[str, str, str, str]] = {
    # name: (file, original, replacement, what)
    "true-theta": ("src/ittrna/methods/offdevice.py",
                   _PROGRAM, _PROGRAM.replace("    p.choose_scales(cfg)\n", CHEAT),
                   "`program` reads the true theta of the chip (past the boundary guard)"),
    "store-drops-last": ("src/ittrna/experiments/store.py", "        records.append(record)\n    return records",
                         "        records.append(record)\n    return records[:-1]",
                         "the store's reader drops the last record"),
    "tile-off-by-one": ("src/ittrna/mapping/tiling.py",
                        "return math.ceil(self.k / self.rows), math.ceil(self.n / self.cols)",
                        "return self.k // self.rows + 1, math.ceil(self.n / self.cols)",
                        "an off-by-one in the tile grid (one tile too many when rows divide K)"),
    "stuck-on-as-off": ("src/ittrna/device/cells.py", "out.masked_fill_(fault == STUCK_ON, cell.g_max)",
                        "out.masked_fill_(fault == STUCK_ON, cell.g_min)",
                        "a stuck_on cell reads as stuck_off (Gmin instead of Gmax)"),
    "budget-ignored": ("src/ittrna/session.py", _BUDGET, _BUDGET.replace("= self.writes_left", "= None"),
                       "the session's write budget is not enforced"),
}


def run(name: str, python: str, timeout: int) -> tuple[list[str], float]:
    path, old, new, _ = MUTANTS[name]
    with tempfile.TemporaryDirectory(prefix=f"mutant-{name}-") as tmp:
        dst = Path(tmp) / "repo"
        shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".venv", ".git", "artifacts", "results", "__pycache__",
                                                                "*.egg-info", ".mypy_cache", ".ruff_cache"))
        if (ROOT.parent / "shared").exists():  # tests read ../shared (checksums) as beside the checkout
            (Path(tmp) / "shared").symlink_to(ROOT.parent / "shared")
        target = dst / path
        text = target.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"mutant {name}: the original text occurs {text.count(old)} times in {path}")
        target.write_text(text.replace(old, new))
        env = {**os.environ, "PYTHONPATH": str(dst / "src"), "OMP_NUM_THREADS": "1", "ITTRNA_REQUIRE_DATA": "1"}
        t0 = time.perf_counter()
        res = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--maxfail=3", "-x",
                              "tests"], cwd=dst, env=env, capture_output=True, text=True, timeout=timeout)
        failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", res.stdout, re.M)
        return failed, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=list(MUTANTS), default=None)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--timeout", type=int, default=1200)
    args = ap.parse_args(argv)
    survivors = []
    print("| mutant | defect | killed by | s |\n|---|---|---|---|")
    for name in args.only or list(MUTANTS):
        failed, seconds = run(name, args.python, args.timeout)
        if not failed:
            survivors.append(name)
        shown = ", ".join(f"`{f}`" for f in failed) or "**survived**"
        print(f"| {name} | {MUTANTS[name][3]} | {shown} | {seconds:.0f} |", flush=True)
    if survivors:
        print(f"survivors: {survivors}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
