"""Monte-Carlo sweeps of a trained model over chip settings (e.g. the accuracy collapse with SAF rate and
sigma), resumable through a :class:`ResultStore`."""

from __future__ import annotations

import hashlib
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


def collapse_points(saf_rates: Sequence[float], sigmas: Sequence[float]) -> list[SweepPoint]:
    """The two classic collapse curves: SAF rate with sigma = 0, and sigma with no faults."""
    pts = [SweepPoint("saf_rate", r, {"faults.rate": r, "variation.sigma": 0.0}) for r in saf_rates]
    pts += [SweepPoint("sigma", s, {"faults.rate": 0.0, "variation.sigma": s}) for s in sigmas]
    return pts


def _key(model_id: str, data_id: str, cfg: ChipConfig, seed: int) -> str:
    """Identity of one evaluation: model, data, the full chip config and the chip seed."""
    text = json.dumps({"model": model_id, "data": data_id, "config": cfg.to_json_dict(), "seed": seed},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def run_sweep(
    model: nn.Module,
    base: ChipConfig,
    points: Sequence[SweepPoint],
    seeds: Sequence[int],
    data: Split,
    store: ResultStore,
    *,
    model_id: str,
    data_id: str,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate ``model`` on one chip per (point, seed), skipping evaluations already in ``store``.

    Every point uses the same chip seeds, so points differ only in their settings (and, with independent
    random streams per quantity, the same dies). A stored record is reused only when the model, the data,
    the full chip configuration and the seed all match. Returns the records of these points.

    Args:
        model_id: identifies the model's weights (e.g. the checkpoint's sha256).
        data_id: identifies the evaluation data (e.g. ``mnist/test``).
    """
    configs = [base.override(p.overrides) for p in points]  # one validated config per point
    keyed = [(p, c, s, _key(model_id, data_id, c, s)) for p, c in zip(points, configs, strict=True) for s in seeds]
    done = store.keys()
    todo = [(p, c, s, k) for p, c, s, k in keyed if k not in done]
    for point, cfg, seed, key in tqdm(todo, desc="sweep", unit="chip", disable=None if progress else True):
        chip = Chip.fabricate(model, cfg, seed)
        acc = evaluate(model, chip, data)
        store.append({"key": key, "axis": point.axis, "value": point.value, "overrides": point.overrides,
                      "seed": seed, "accuracy": acc, "model": model_id, "data": data_id})
    wanted = {k for *_, k in keyed}
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
