"""The post-fabrication test: the :class:`~ittrna.host.MeasuredMap` a test of the chip gives, and the chip id.

:func:`test` returns the measured map (faults and theta, with configurable misses and measurement noise; no
seed); methods see only that, accuracy is judged on the chip. :func:`chip_id` is the opaque identity the
chip and its measured maps share.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import torch

from ittrna import boundary
from ittrna._validate import check_seed
from ittrna.chip.state import ChipState, _derive_seed
from ittrna.config import TestConfig
from ittrna.errors import InputError
from ittrna.host import MeasuredMap, design_config

__all__ = ["chip_id", "test"]


def chip_id(chip: ChipState) -> str:
    """Opaque identity shared by the chip and its measured maps (a salted hash of the seed, the fabricated
    config — the test's own settings excluded — and the layer geometry)."""
    fabricated = {k: v for k, v in chip.config.identity_dict().items() if k != "test"}  # not the test's settings
    text = json.dumps({"salt": "ittrna-chip-id-v1", "seed": chip.seed, "config": fabricated,
                       "layers": {n: layer.shape_meta() for n, layer in chip.layers.items()}}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def test(chip: ChipState, seed: int = 0, config: TestConfig | None = None) -> MeasuredMap:
    """The measured defect map of ``chip`` (see :meth:`Chip.test <ittrna.chip.Chip.test>`)."""
    boundary.check("Chip.test (the true chip)")
    seed = check_seed(seed, "test seed")
    if config is not None and not isinstance(config, TestConfig):
        raise InputError(f"test = {config!r}; accepted a TestConfig or None")
    tcfg = config if config is not None else chip.config.test
    gen = torch.Generator().manual_seed(_derive_seed(chip.seed, 0x54455354, seed))
    layers: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for lname, layer in chip.layers.items():
        layers[lname] = {}
        for aname, arr in layer.arrays.items():
            fault = arr.fault.cpu().clone()
            if tcfg.miss_rate > 0:
                missed = torch.rand(fault.shape, generator=gen) < tcfg.miss_rate
                fault = torch.where(missed, torch.zeros_like(fault), fault)
            theta = arr.theta.cpu().clone()
            if tcfg.theta_noise > 0:
                theta = theta + torch.randn(theta.shape, generator=gen) * tcfg.theta_noise
            layers[lname][aname] = {"fault": fault, "theta": theta}
        meta[lname] = layer.shape_meta()
    return MeasuredMap(design_config(dataclasses.replace(chip.config, test=tcfg)), chip_id(chip), layers, meta,
                       chip.now)

