"""Device physics as whole-tensor functions: conductance range and levels, lognormal variation,
stuck-at fault maps, programming/read noise and endurance. Imports only :mod:`ittrna.config`."""

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
