"""Device physics as whole-tensor functions: conductance range and levels, lognormal variation,
stuck-at fault maps, programming/read noise and endurance (here), the conductance-dependent programming error
(:mod:`ittrna.device.programming`), relaxation after programming
(:mod:`ittrna.device.relaxation`) and IR drop (:mod:`ittrna.device.ir_drop`). Imports only the helper layers
(:mod:`ittrna.config`, :mod:`ittrna.errors`, :mod:`ittrna.registry`, :mod:`ittrna._resources`)."""

from ittrna.device.cells import (
    clamp_to_range,
    quantize_levels,
    read_conductance,
    wear_out,
)
from ittrna.device.faults import HEALTHY, STUCK_OFF, STUCK_ON, sample_faults
from ittrna.device.variation import lognormal_factor_log, sample_theta

__all__ = [
    "HEALTHY",
    "STUCK_OFF",
    "STUCK_ON",
    "clamp_to_range",
    "lognormal_factor_log",
    "quantize_levels",
    "read_conductance",
    "sample_faults",
    "sample_theta",
    "wear_out",
]
