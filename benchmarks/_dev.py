"""What the development checks (``dev_*_check.py``) share: the converged model and the data they judge on.

A development check is not a report: it runs on development chip seeds and judges on the first 2,500
validation images, while the method tunes on the rest of the validation split (never the same images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

JUDGED = 2500
"""Validation images a development check judges on (the first of the split)."""


def dev_setup(model_path: Path, threads: int) -> tuple[Any, dict[str, Any], Any, Any, Any]:
    """(model, meta, train, judged, tune) for a development check of the checkpoint at ``model_path``, with
    torch limited to ``threads`` threads: its dataset's training split, the validation images judged on and
    the validation images the method tunes on."""
    import torch

    from ittrna.data import Split, load
    from ittrna.models import load_checkpoint

    torch.set_num_threads(threads)
    model, meta = load_checkpoint(model_path)
    ds = str(meta["dataset"])
    train, val = load(ds, "train"), load(ds, "val")
    return model, meta, train, val.subset(JUDGED), Split(val.x[JUDGED:], val.y[JUDGED:])


def print_losses(header: str, rows: dict[str, list[float]], width: int = 44) -> None:
    """Print ``header``, then each row's losses (points) as mean +- sample std over the seeds."""
    import statistics

    print(header)
    for label, losses in rows.items():
        print(f"  {label:{width}s} {statistics.fmean(losses):6.2f} +- {statistics.stdev(losses):.2f}")
