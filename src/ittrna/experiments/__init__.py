"""Experiments: resumable sweeps over chip settings, a result store (JSONL + CSV), tables and plots."""

from ittrna.experiments.store import ResultStore
from ittrna.experiments.sweep import SweepPoint, aggregate, collapse_points, run_sweep

__all__ = ["ResultStore", "SweepPoint", "aggregate", "collapse_points", "run_sweep"]
