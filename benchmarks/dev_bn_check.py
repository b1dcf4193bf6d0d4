"""Development check (not a report): BatchNorm re-estimation on a briefly trained resnet20.

resnet20 trained 2 epochs on 12k MNIST images, a chip with 20 % stuck-at faults (stuck-on share 0.162) on
development seeds 1 and 2; ``none``, ``program``, ``bn`` and ``bn-chip`` judged on validation images 0-1999,
the methods tuning on validation images 2000-3999 (never the test split). Records:
``docs/results/dev-bn-resnet20.jsonl``. Run: ``python benchmarks/dev_bn_check.py``.
"""

from __future__ import annotations

import json
import time

import torch

from ittrna.chip import Chip
from ittrna.config import ChipConfig
from ittrna.data import Split, load
from ittrna.experiments.tolerate import tolerate
from ittrna.models import build
from ittrna.training import accuracy, fit


def main() -> None:
    torch.set_num_threads(2)
    train, val = load("mnist", "train").subset(12000), load("mnist", "val")
    model = build("resnet20", (1, 28, 28), 10, seed=0)
    t0 = time.time()
    fit(model, train, epochs=2, lr=1e-3, batch_size=64, seed=0, progress=False)
    print("train s", round(time.time() - t0, 1))
    judged, tune = val.subset(2000), Split(val.x[2000:4000], val.y[2000:4000])
    print("software", accuracy(model, judged))
    cfg = ChipConfig().override({"faults.rate": 0.2, "faults.stuck_on_share": 0.162})
    search = {"search_images": 500, "headroom_steps": 4, "search_passes": 1}
    settings = {"program": search, "images": 1024}
    for seed in (1, 2):
        for method, st in (("none", {}), ("program", search), ("bn", settings), ("bn-chip", settings)):
            t0 = time.time()
            r, _ = tolerate(model, Chip.fabricate(model, cfg, seed), method, train=train, val=tune, test=judged,
                            settings=st)
            print(json.dumps({"seed": seed, "method": method, "chip_accuracy": round(r["chip_accuracy"], 4),
                              "writes": r["writes"], "seconds": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
