"""Development check of relaxation-anticipating training: ``remap-fat`` trained for the chip as programmed
(``horizon = 0``) and for the chip one year later (``horizon = 1y``), each evaluated at t = 0 and at one year,
without and with the zero-write register compensation, under a relaxation model with a spread between cells
(``power-law`` with a spread of nu, or ``cmo-hfox``). Development chip seeds, validation images: not a report.

    python benchmarks/dev_horizon_check.py --model docs/results/ir-drop/models/mlp-mnist-143314a55ac3-6d9695b0.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _dev import dev_setup, print_losses


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--seeds", nargs="+", type=int, default=[100, 101, 102, 103, 104], help="development seeds")
    ap.add_argument("--method", default="remap-fat")
    ap.add_argument("--time", default="1y")
    ap.add_argument("--relaxation", default="power-law", choices=["power-law", "cmo-hfox"])
    ap.add_argument("--nu", nargs=2, type=float, default=[0.05, 0.02], metavar=("MEAN", "STD"))
    ap.add_argument("--cmo-scale", type=float, default=1.0, help="cmo-hfox: relaxation.scale")
    ap.add_argument("--saf-rate", type=float, default=0.1)
    ap.add_argument("--sigma", type=float, default=0.0)
    ap.add_argument("--epochs", type=int, default=None, help="retraining epochs (default: the method's)")
    ap.add_argument("--horizons", nargs="+", default=["0", "1y"], help="the horizon of each training")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)


    from ittrna.chip import Chip
    from ittrna.config import ChipConfig
    from ittrna.experiments.tolerate import evaluate_run, run_method

    model, meta, train, judged, tune = dev_setup(args.model, args.threads)
    ds = str(meta["dataset"])
    over: dict[str, object] = {"faults.rate": args.saf_rate, "variation.sigma": args.sigma,
                               "relaxation.model": args.relaxation}
    if args.relaxation == "power-law":
        over.update({"relaxation.nu_mean": args.nu[0], "relaxation.nu_std": args.nu[1]})
    else:
        over["relaxation.scale"] = args.cmo_scale
    cfg = ChipConfig().override(over)
    rows: dict[str, list[float]] = {}
    for seed in args.seeds:
        for horizon in args.horizons:
            settings: dict[str, object] = {"horizon": horizon}
            if args.epochs is not None:
                settings["epochs"] = args.epochs
            run = run_method(model, Chip.fabricate(model, cfg, seed), args.method, train=train, val=tune,
                             settings=settings, test_seed=seed, seed=seed)
            tag = f"trained for {horizon}"
            for label, at, comp in (("at t = 0", 0.0, ()), (f"at {args.time}", args.time, ()),
                                    (f"at {args.time}, registers", args.time, ("registers",))):
                out = evaluate_run(model, run, train=train, test=judged, time=at, compensation=comp, seed=seed,
                                   in_place=False)
                rows.setdefault(f"{tag}, {label}", []).append(100 * (out["ideal_accuracy"] - out["chip_accuracy"]))
        print(f"seed {seed} done", flush=True)
    model_txt = (f"power-law nu {args.nu[0]:g} +- {args.nu[1]:g}" if args.relaxation == "power-law"
                 else f"cmo-hfox x{args.cmo_scale:g}")
    print_losses(f"{args.method} on {ds}, SAF {args.saf_rate:g}, sigma {args.sigma:g}, {model_txt}; loss in pp on "
                 f"{len(judged)} validation images, mean +- std over seeds {args.seeds}", rows, 44)


if __name__ == "__main__":
    main()
