"""ittrna: deep neural networks on imperfect RRAM crossbars.

Layers (each imports only those above it): :mod:`ittrna.config` -> :mod:`ittrna.device` (physics) ->
:mod:`ittrna.mapping` (weight <-> conductance, tiling) -> :mod:`ittrna.chip` (fabricated chips, defect maps)
-> :mod:`ittrna.nn` (deploy / evaluate) -> :mod:`ittrna.experiments` -> :mod:`ittrna.cli`. Beside them:
:mod:`ittrna.data`, :mod:`ittrna.models` and :mod:`ittrna.training`.
"""

from ittrna.chip import Chip, MeasuredMap
from ittrna.config import PRESETS, ChipConfig, ConfigError
from ittrna.nn import deploy, evaluate, monte_carlo, undeploy

__version__ = "0.1.0"

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
