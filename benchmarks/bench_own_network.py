"""Speed of the off-device methods on the BatchNorm CNNs, as a ratio to one epoch of the software model's
training on the same machine in the same run (issue "your own network", section 4), plus a development check
of their accuracy (validation images only, development chip seeds; not a report).

Per model: one training epoch's time is measured on ``--batches`` batches of the model's recipe
(``converged-augmented``: batch 128, augmented) and scaled to the whole training split; then, per chip (SAF 20 %,
stuck-on share 0.162, sigma 1.0), each method runs through ``tolerate`` (fabricate, test, tune, program,
measure); the method's own seconds (its report's ``seconds``: from receiving the map to its deployment) are
divided by that epoch, the whole chip run's (fabrication, test and the judged evaluation included) shown beside.
The methods search headrooms with ``search = "output"`` (the per-layer output-error search), tuning on
validation images 2000-4999; judged on validation images 0-1999.

    M=docs/results/own-network/models
    python benchmarks/bench_own_network.py --out /tmp/bench.jsonl \\
        --models $M/resnet20-fashion-mnist-converged-augmented-30.pt \\
        $M/mobilenet-tiny-fashion-mnist-converged-augmented-30.pt
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path


def method_settings(method: str, epochs: int | None) -> dict:
    """The benchmark's settings of ``method``: the ``output`` headroom search wherever a programming step is
    (its own fields, or its nested ``program`` / ``base``), and ``epochs`` for every retraining step."""
    from ittrna.methods import get_method

    def own(fields: dict, name: str) -> dict:
        out: dict = {}
        if "search" in fields:
            out["search"] = "output"
        if epochs is not None and "epochs" in fields:
            out["epochs"] = epochs
        if "program" in fields:
            out["program"] = {"search": "output"}
        if name == "codesign":
            base = "remap-fat"  # the auto base of a network with convolutions
            out["base"] = {"method": base, **own(get_method(base).config().to_dict(), base)}
        return out

    if method == "none":
        return {}
    return own(get_method(method).config().to_dict(), method)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", type=Path, required=True, help="checkpoints (Fashion-MNIST)")
    ap.add_argument("--methods", nargs="+", default=["none", "program", "remap", "bn"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2], help="development chip seeds")
    ap.add_argument("--batches", type=int, default=60, help="training batches timed for the epoch estimate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None,
                    help="retraining epochs of the methods that retrain (codesign: of its base); default theirs")
    ap.add_argument("--out", type=Path, default=None, help="append one JSON line per (model, seed, method)")
    args = ap.parse_args(argv)

    import torch

    from ittrna.chip import Chip
    from ittrna.config import ChipConfig
    from ittrna.data import Split, load
    from ittrna.experiments.tolerate import tolerate
    from ittrna.models import load_checkpoint
    from ittrna.training import RECIPES, accuracy, fit

    torch.set_num_threads(args.threads)
    train, val = load("fashion-mnist", "train"), load("fashion-mnist", "val")
    judged, tune = val.subset(2000), Split(val.x[2000:], val.y[2000:])
    cfg = ChipConfig().override({"faults.rate": 0.2, "faults.stuck_on_share": 0.162, "variation.sigma": 1.0})
    recipe = RECIPES["converged-augmented"]
    for path in args.models:
        model, meta = load_checkpoint(path)
        probe = copy.deepcopy(model).train()  # timed on a copy: the model itself stays as loaded
        n = args.batches * recipe.batch_size
        t0 = time.perf_counter()
        fit(probe, train.subset(n), epochs=1, lr=recipe.lr, batch_size=recipe.batch_size, seed=0, progress=False,
            augment=recipe.augmentation("fashion-mnist"))
        epoch = (time.perf_counter() - t0) * len(train) / n
        software = accuracy(model, judged)
        print(f"{meta['model']}: one epoch {epoch:.1f} s (from {args.batches} batches), software "
              f"{100 * software:.2f} %", flush=True)
        for seed in args.seeds:
            for method in args.methods:
                settings = method_settings(method, args.epochs)
                t0 = time.perf_counter()
                r, dep = tolerate(model, Chip.fabricate(model, cfg, seed), method, train=train, val=tune, test=judged,
                                  settings=settings)
                total = time.perf_counter() - t0
                sec = float(dep.report.get("seconds", total))  # the method's own run (none: no report of it)
                rec = {"model": meta["model"], "seed": seed, "method": method, "settings": settings,
                       "software": software,
                       "chip_accuracy": r["chip_accuracy"], "method_seconds": sec, "total_seconds": total,
                       "epoch_seconds": epoch, "epochs": sec / epoch, "writes": r["writes"],
                       "torch": str(torch.__version__)}
                print(f"  seed {seed} {method:8s} {100 * r['chip_accuracy']:6.2f} %  method {sec:6.1f} s = "
                      f"{sec / epoch:.3f} epochs (whole chip run {total:.1f} s)", flush=True)
                if args.out is not None:
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
