"""ittrna: deep neural networks on imperfect RRAM crossbars.

Layers (each imports only those above it): :mod:`ittrna.config` -> :mod:`ittrna.device` (physics) ->
:mod:`ittrna.mapping` (weight <-> conductance, tiling) -> :mod:`ittrna.chip` (fabricated chips, defect maps)
-> :mod:`ittrna.nn` (deploy / evaluate) -> :mod:`ittrna.experiments` -> :mod:`ittrna.cli`. Beside them:
:mod:`ittrna.data`, :mod:`ittrna.models` and :mod:`ittrna.training`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ittrna.chip import Chip, MeasuredMap
    from ittrna.config import PRESETS, ChipConfig, ConfigError
    from ittrna.nn import deploy, evaluate, monte_carlo, undeploy

__version__ = "0.1.0"

# The names below are imported on first use (PEP 562), so that `import ittrna.cli` or `ittrna.registry`
# does not load torch: `ittrna --help` answers at once.
_LAZY = {"Chip": "ittrna.chip", "MeasuredMap": "ittrna.chip", "PRESETS": "ittrna.config",
         "ChipConfig": "ittrna.config", "ConfigError": "ittrna.config", "deploy": "ittrna.nn",
         "evaluate": "ittrna.nn", "monte_carlo": "ittrna.nn", "undeploy": "ittrna.nn"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ittrna' has no attribute {name!r}")

__all__ = [
    "PRESETS",
    "Chip",
    "ChipConfig",
    "ConfigError",
    "MeasuredMap",
    "__version__",
    "deploy",
    "evaluate",
    "monte_carlo",
    "undeploy",
]
