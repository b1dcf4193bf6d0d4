"""Monte-Carlo sweeps of a trained model over chip settings (e.g. the accuracy collapse with SAF rate and
sigma), resumable through a :class:`ResultStore`."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from ittrna.chip import Chip
from ittrna.config import ChipConfig
from ittrna.data import Split
from ittrna.experiments.store import ResultStore
from ittrna.nn import evaluate

__all__ = ["SweepPoint", "aggregate", "collapse_points", "run_sweep"]


@dataclass(frozen=True)
class SweepPoint:
    """One setting of a sweep: a label, the axis it belongs to and its dotted config overrides."""

    axis: str
    value: float
    overrides: dict[str, Any]

    @property
    def key(self) -> str:
        return json.dumps({"axis": self.axis, "overrides": self.overrides}, sort_keys=True)


def collapse_points(saf_rates: Sequence[float], sigmas: Sequence[float]) -> list[SweepPoint]:
    """The two classic collapse curves: SAF rate with sigma = 0, and sigma with no faults."""
    pts = [SweepPoint("saf_rate", r, {"faults.rate": r, "variation.sigma": 0.0}) for r in saf_rates]
    pts += [SweepPoint("sigma", s, {"faults.rate": 0.0, "variation.sigma": s}) for s in sigmas]
    return pts


def run_sweep(
    model: nn.Module,
    base: ChipConfig,
    points: Sequence[SweepPoint],
    seeds: Sequence[int],
    data: Split,
    store: ResultStore,
    *,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate ``model`` on one chip per (point, seed), skipping pairs already in ``store``.

    Every point uses the same chip seeds, so points differ only in their settings. Returns all records of
    these points (old and new).
    """
    done = store.keys()
    todo = [(p, s) for p in points for s in seeds if f"{p.key}#{s}" not in done]
    for point, seed in tqdm(todo, desc="sweep", unit="chip", disable=None if progress else True):
        cfg = base.override(point.overrides)
        chip = Chip.fabricate(model, cfg, seed)
        acc = evaluate(model, chip, data)
        store.append({"key": f"{point.key}#{seed}", "axis": point.axis, "value": point.value,
                      "overrides": point.overrides, "seed": seed, "accuracy": acc})
    wanted = {f"{p.key}#{s}" for p in points for s in seeds}
    return [r for r in store if r.get("key") in wanted]


def aggregate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, std (sample, 0 for one chip), min and count of accuracy per (axis, value), sorted."""
    groups: dict[tuple[str, float], list[float]] = {}
    for r in records:
        groups.setdefault((r["axis"], float(r["value"])), []).append(float(r["accuracy"]))
    rows = []
    for (axis, value), accs in sorted(groups.items()):
        rows.append({"axis": axis, "value": value, "chips": len(accs), "mean": statistics.fmean(accs),
                     "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "min": min(accs)})
    return rows
