"""Monte-Carlo evaluation overhead: seconds per simulated chip versus plain PyTorch inference.

For `mlp` and `lenet5` on the 10k MNIST test images, measured side by side in one run:

- plain: ``accuracy(model, test)`` with ordinary PyTorch layers;
- per chip: fabricate a chip (faults + variation), program the weights (deploying a working copy in place,
  undeploying it after), run the 10k images on the deployed model — what ``monte_carlo`` does for each
  chip — and its parts.

Plain and per-chip runs alternate and medians are compared, so drift of the machine hits both alike.
Prints seconds per chip and the ratio to plain inference (targets: mlp <= 1.3, lenet5 <= 1.05); "infer
ratio" is the deployed model's inference alone (the first forward includes reading the effective weights);
"sweep point ratio" is one more setting (fault rate or sigma) on a die already drawn — fabricated from the
kept draws, programmed, run — against plain inference (target <= 1.1). Run: ``make bench``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from ittrna.chip import Chip
from ittrna.config import ChipConfig
from ittrna.data import load
from ittrna.models import build
from ittrna.nn import deploy, undeploy
from ittrna.training import accuracy


def _timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench(name: str, chips: int, batch_size: int) -> dict[str, float]:
    test = load("mnist", "test")
    model = build(name, seed=0).eval()
    cfg = ChipConfig().override({"faults.rate": 0.1, "variation.sigma": 0.5})
    accuracy(model, test, batch_size=batch_size)  # warm-up
    # plain and per-chip runs alternate, so machine drift affects both alike
    plain, fab, prog, infer, total = [], [], [], [], []
    work = copy.deepcopy(model)  # as monte_carlo does: one working copy, deployed in place per chip
    for seed in range(chips):
        plain.append(_timed(lambda: accuracy(model, test, batch_size=batch_size))[0])
        t_fab, chip = _timed(lambda s=seed: Chip.fabricate(work, cfg, s))
        t_prog, dep = _timed(lambda c=chip: deploy(work, c, inplace=True))
        t_inf, _ = _timed(lambda d=dep: accuracy(d, test, batch_size=batch_size))
        t_undo, _ = _timed(lambda d=dep: undeploy(d, inplace=True))
        fab.append(t_fab)
        prog.append(t_prog + t_undo)
        infer.append(t_inf)
        total.append(t_fab + t_prog + t_inf + t_undo)
    # a sweep over settings on one die (seed 0, drawn once above): faults 0.05..0.3 at sigma 0.5, sigma
    # 0.25..1.5 at SAF 10 %, each point fabricated again (from the kept draws), programmed and run
    sweep_plain, sweep = [], []
    points = [{"faults.rate": r, "variation.sigma": 0.5} for r in (0.05, 0.15, 0.2, 0.3)]
    points += [{"faults.rate": 0.1, "variation.sigma": s} for s in (0.25, 1.0, 1.5)]
    for o in points:
        sweep_plain.append(_timed(lambda: accuracy(model, test, batch_size=batch_size))[0])
        c = ChipConfig().override(o)
        t0 = time.perf_counter()
        dep = deploy(work, Chip.fabricate(work, c, 0), inplace=True)
        accuracy(dep, test, batch_size=batch_size)
        undeploy(dep, inplace=True)
        sweep.append(time.perf_counter() - t0)
    p = statistics.median(plain)
    return {"plain_s": p, "fabricate_s": statistics.median(fab), "program_s": statistics.median(prog),
            "inference_s": statistics.median(infer), "per_chip_s": statistics.median(total),
            "ratio_per_chip": statistics.median(total) / p, "ratio_inference": statistics.median(infer) / p,
            "sweep_point_s": statistics.median(sweep),
            "ratio_sweep_point": statistics.median(sweep) / statistics.median(sweep_plain)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chips", type=int, default=20, help="chips (and plain runs, interleaved)")
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--check", action="store_true",
                    help="CI smoke run: exit 1 unless every figure is finite and positive and an ideal chip gives "
                         "plain PyTorch's accuracy (what the benchmark times is checked, never its speed)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    results = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 10k MNIST test images, "
          f"{args.chips} chips (SAF 10 %, sigma 0.5)")
    print(f"{'model':<8} {'plain s':>8} {'fab s':>8} {'prog s':>8} {'infer s':>8} {'chip s':>8} "
          f"{'ratio':>6} {'infer ratio':>11} {'sweep point ratio':>17}")
    for name in ("mlp", "lenet5"):
        r = bench(name, args.chips, args.batch_size)
        results[name] = r
        print(f"{name:<8} {r['plain_s']:>8.4f} {r['fabricate_s']:>8.4f} {r['program_s']:>8.4f} "
              f"{r['inference_s']:>8.4f} {r['per_chip_s']:>8.4f} {r['ratio_per_chip']:>6.2f} "
              f"{r['ratio_inference']:>11.2f} {r['ratio_sweep_point']:>17.2f}")
    if args.json:
        print(json.dumps(results))
    if args.check:
        import math

        bad = [f"{m}.{k} = {v}" for m, r in results.items() for k, v in r.items() if not (math.isfinite(v) and v > 0)]
        test = load("mnist", "test")
        for name in ("mlp", "lenet5"):
            model = build(name, seed=0).eval()
            plain, chip = accuracy(model, test), accuracy(deploy(model, Chip.fabricate(model, ChipConfig(), 0)), test)
            if abs(plain - chip) > 1e-3:
                bad.append(f"{name}: an ideal chip gives {chip:.4f}, plain PyTorch {plain:.4f}")
        if bad:
            raise SystemExit("bench_evaluate --check failed: " + "; ".join(bad))
        print("check: every figure finite and positive; ideal chips equal plain PyTorch")


if __name__ == "__main__":
    main()
