"""Development check (not a report): the headroom search of `program` and `remap` on the converged resnet20 (Fashion-
MNIST), `search = "output"` against `search = "accuracy"` (at 1000 images, 4 headrooms, 1 pass: the defaults would
take several minutes per chip), on development chip seed 1 at SAF 20 % (stuck-on share 0.162) without and with sigma
1.0; tuning on validation images 2000-4999, judged on validation images 0-1999. Output: docs/results/own-
network/dev-search-check.txt.

    python benchmarks/dev_search_check.py
"""

import time

import torch

from ittrna.chip import Chip
from ittrna.config import ChipConfig
from ittrna.data import Split, load
from ittrna.experiments.tolerate import tolerate
from ittrna.models import load_checkpoint

torch.set_num_threads(2)
train, val = load("fashion-mnist", "train"), load("fashion-mnist", "val")
judged, tune = val.subset(2000), Split(val.x[2000:], val.y[2000:])
model, meta = load_checkpoint("docs/results/own-network/models/resnet20-fashion-mnist-converged-augmented-30.pt")
for over in (
    {"faults.rate": 0.2, "faults.stuck_on_share": 0.162},
    {"faults.rate": 0.2, "faults.stuck_on_share": 0.162, "variation.sigma": 1.0},
):
    cfg = ChipConfig().override(over)
    for method, st in (
        ("program", {"search": "output"}),
        ("program", {"search_images": 1000, "headroom_steps": 4, "search_passes": 1}),
        ("remap", {"search": "output"}),
        ("remap", {"search_images": 1000, "headroom_steps": 4, "search_passes": 1}),
        ("bn", {"program": {"search": "output"}}),
    ):
        t0 = time.perf_counter()
        r, dep = tolerate(model, Chip.fabricate(model, cfg, 1), method, train=train, val=tune, test=judged, settings=st)
        print(
            over.get("variation.sigma", 0),
            method,
            st,
            f"{100 * r['chip_accuracy']:.2f}",
            f"total {time.perf_counter() - t0:.1f}s method {dep.report.get('seconds', float('nan')):.1f}s",
            flush=True,
        )
