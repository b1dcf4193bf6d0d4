"""Development check of the refresh's ranking: the same write budget spent on the cells ranked by expected
relaxation x weight importance (``importance``, the default), by expected relaxation alone (``deviation``)
and at random (``random``), one year after programming, on a model where relaxation has a spread to repair
(``power-law`` with a spread of nu). Development chip seeds, validation images: not a report.

    python benchmarks/dev_refresh_check.py --model docs/results/ir-drop/models/mlp-mnist-143314a55ac3-6d9695b0.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _dev import dev_setup, print_losses


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--seeds", nargs="+", type=int, default=[100, 101, 102, 103, 104], help="development seeds")
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.01, 0.05])
    ap.add_argument("--method", default="program")
    ap.add_argument("--time", default="1y")
    ap.add_argument("--nu", nargs=2, type=float, default=[0.05, 0.02], metavar=("MEAN", "STD"))
    ap.add_argument("--saf-rate", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)


    from ittrna.chip import Chip
    from ittrna.config import ChipConfig, RefreshConfig
    from ittrna.experiments.tolerate import evaluate_run, run_method

    model, meta, train, judged, tune = dev_setup(args.model, args.threads)
    ds = str(meta["dataset"])
    cfg = ChipConfig().override({"faults.rate": args.saf_rate, "relaxation.model": "power-law",
                                 "relaxation.nu_mean": args.nu[0], "relaxation.nu_std": args.nu[1]})
    rows: dict[str, list[float]] = {}
    for seed in args.seeds:
        run = run_method(model, Chip.fabricate(model, cfg, seed), args.method, train=train, val=tune,
                         test_seed=seed, seed=seed)
        cases = [("t = 0", 0.0, None, ()), ("1 y", args.time, None, ()), ("1 y, registers", args.time, None,
                                                                           ("registers",))]
        for budget in args.budgets:
            for rank in ("importance", "deviation", "random"):
                cases.append((f"1 y, registers, refresh {100 * budget:g} % by {rank}", args.time,
                               RefreshConfig(budget=budget, rank=rank), ("registers",)))
        for label, at, fresh, comp in cases:
            out = evaluate_run(model, run, train=train, test=judged, time=at, compensation=comp, refresh=fresh,
                               seed=seed, in_place=False)
            rows.setdefault(label, []).append(100 * (out["ideal_accuracy"] - out["chip_accuracy"]))
        print(f"seed {seed} done", flush=True)
    print_losses(f"{args.method} on {ds}, SAF {args.saf_rate:g}, power-law nu {args.nu[0]:g} +- {args.nu[1]:g}; "
                 f"loss in pp on {len(judged)} validation images, mean +- std over seeds {args.seeds}", rows, 48)


if __name__ == "__main__":
    main()
