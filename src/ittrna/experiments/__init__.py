"""Experiments: sweeps from a TOML grid (local or Ray), a crash-safe result store (JSONL + CSV), reports."""

from ittrna.experiments.grid import SweepSpec, load_spec, parse_spec
from ittrna.experiments.store import ResultStore
from ittrna.experiments.sweep import SweepOutcome, run_spec

__all__ = ["ResultStore", "SweepOutcome", "SweepSpec", "load_spec", "parse_spec", "run_spec"]
