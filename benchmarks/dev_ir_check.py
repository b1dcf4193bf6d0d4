"""Development check of IR-drop-aware programming (``program`` with ``wires = "compensate"``): the converged
``mlp`` (MNIST) on a healthy chip whose wires have resistance, judged on validation images with a development
chip seed (not a report: the report is a sweep on held-out seeds).

    python benchmarks/dev_ir_check.py --model docs/results/ir-drop/models/mlp-mnist-143314a55ac3-6d9695b0.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _dev import dev_setup


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--tiles", nargs="+", type=int, default=[256])
    ap.add_argument("--r-wire", nargs="+", type=float, default=[2.5])
    ap.add_argument("--seed", type=int, default=1, help="a development chip seed")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)


    from ittrna.chip import Chip
    from ittrna.config import ChipConfig
    from ittrna.experiments.tolerate import tolerate

    model, _meta, train, judged, tune = dev_setup(args.model, args.threads)
    for tile in args.tiles:
        for r in args.r_wire:
            cfg = ChipConfig().override({"mapping.rows": tile, "mapping.cols": tile, "wires.r_wire": r})
            for method, settings in (("none", {}), ("program", {"method.wires": "ignore"}),
                                     ("program", {"method.wires": "compensate"})):
                t0 = time.perf_counter()
                chip = Chip.fabricate(model, cfg, args.seed)
                out, _ = tolerate(model, chip, method, train=train, val=tune, test=judged, settings=settings,
                                  seed=args.seed)
                label = method + (f" ({settings['method.wires']})" if settings else "")
                loss = 100 * (out["ideal_accuracy"] - out["chip_accuracy"])
                print(f"tile {tile} r_wire {r:g}: {label:22s} software {100 * out['ideal_accuracy']:.2f} chip "
                      f"{100 * out['chip_accuracy']:.2f} (loss {loss:.2f} pp), method {out['seconds']:.1f} s, "
                      f"chip run {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
