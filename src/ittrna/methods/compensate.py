"""Zero-write compensation at a later time: what a host does when the chip's cells have relaxed since
programming, with forward passes only (no cell is written; every pass is counted by the session).

The host takes a **reference** right after programming (:func:`take_reference`): the output columns of every
crossbar layer on a few training images, as the periphery delivers them (registers applied, bias taken out).
Later (after ``Chip.wait``), :func:`compensate` runs the steps asked for, in this order:

- ``registers``: each layer's per-column gain/offset registers re-fitted by least squares so that its columns
  on the reference images give the reference again, layer by layer from the input (each layer fitted with the
  earlier layers already re-fitted, so its inputs are close to the reference's own). This undoes what
  relaxation does to a column as a whole (a mean shift, a common decay) and leaves the cell-by-cell spread.
  It is the per-column form of aihwkit's ``GlobalDriftCompensation`` (``relaxation.compensation = "global"``,
  one factor per layer) and uses the codesign registers' fit (:func:`ittrna.methods.ondevice.fit_columns`).
- ``bn``: every BatchNorm layer's running statistics re-estimated from the chip's own forward passes at that
  time (:func:`ittrna.methods.normalize.reestimate_on_chip`; Joshi et al., Nat. Commun. 2020).

The names are declared in :data:`COMPENSATIONS` (the CLI's choices come from it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ittrna import registry as _registry
from ittrna._resources import check_memory
from ittrna.errors import InputError
from ittrna.host import ChipAccess
from ittrna.methods.normalize import reestimate_on_chip
from ittrna.methods.ondevice import _LayerIO, _record, fit_columns

__all__ = ["COMPENSATIONS", "Reference", "compensate", "take_reference"]

COMPENSATIONS = _registry.COMPENSATIONS
"""The zero-write compensation steps, in the order :func:`compensate` runs them (one list,
:mod:`ittrna.registry`)."""


@dataclass
class Reference:
    """What the host read right after programming: the images and, per crossbar layer and batch of 256, its
    output columns less the bias ((rows, N), the rows of the layer's matrix view)."""

    images: torch.Tensor
    outputs: dict[str, list[torch.Tensor]]
    forward_passes: int


def check_steps(steps: Sequence[str], where: str = "compensate") -> tuple[str, ...]:
    """``steps`` as a tuple in :data:`COMPENSATIONS` order; one-line error for an unknown or repeated name."""
    if isinstance(steps, str):
        raise InputError(f"{where} = {steps!r}; accepted a list of {list(COMPENSATIONS)}")
    for s in steps:
        if s not in COMPENSATIONS:
            raise InputError(f"{where}: unknown step {s!r}; accepted {list(COMPENSATIONS)}")
    if len(set(steps)) != len(steps):
        raise InputError(f"{where} = {list(steps)} names a step twice; accepted each of {list(COMPENSATIONS)} once")
    return tuple(s for s in COMPENSATIONS if s in steps)


def take_reference(session: ChipAccess, model: nn.Module, images: torch.Tensor) -> Reference:
    """Record every crossbar layer's output columns on ``images`` (zero writes; a few forward passes).

    Args:
        session: the chip, programmed with the deployment whose digital state ``model`` holds.
        model: the host's copy of the deployed network (crossbar layers named as on the chip).
        images: training images (never test data), a batch of the data's shape.
    """
    names = session.layer_names
    modules = dict(model.named_modules())
    before = session.counts()["forward_passes"]
    outputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    held = 0
    for rec in _record(session, model, names, images):
        for n in names:
            io = _LayerIO(modules[n])
            y = (io.cols(rec[n][1]) - io.bias()).float()  # (rows, N)
            held += y.numel() * 4
            check_memory(held, f"the compensation reference ({len(images)} images, {len(names)} layers)")
            outputs[n].append(y)
    return Reference(images, outputs, session.counts()["forward_passes"] - before)


def compensate(session: ChipAccess, model: nn.Module, steps: Sequence[str], reference: Reference | None = None,
               *, images: torch.Tensor | None = None, batch_size: int = 256) -> dict[str, Any]:
    """Run the zero-write compensation ``steps`` on the chip now (see the module docstring).

    Args:
        session: the chip (any write is refused by its budget: run it with ``write_budget=0``).
        model: the host's copy of the deployed network; ``bn`` sets its BatchNorm statistics in place.
        steps: names of :data:`COMPENSATIONS`.
        reference: :func:`take_reference`'s record (``registers`` needs it).
        images: the images ``bn`` estimates on (default: the reference's).
        batch_size: images per pass of ``bn``.

    Returns:
        A report: the steps run, the forward passes they took, the registers' gain range per layer and the
        BatchNorm layers re-estimated.
    """
    steps = check_steps(steps)
    names = session.layer_names
    before = session.counts()["forward_passes"]
    report: dict[str, Any] = {"steps": list(steps)}
    if "registers" in steps:
        if reference is None:
            raise InputError("compensate: the registers step needs the reference taken right after programming")
        ref = reference

        def expected(n: str, _x: torch.Tensor, batch: int) -> torch.Tensor:
            return ref.outputs[n][batch]

        report["register_gain_range"] = fit_columns(session, model, names, ref.images, expected)
    if "bn" in steps:
        pool = images if images is not None else (reference.images if reference is not None else None)
        if pool is None:
            raise InputError("compensate: the bn step needs images (or a reference)")
        report["norm_layers"] = len(reestimate_on_chip(session, model, names, pool, batch_size))
    report["forward_passes"] = session.counts()["forward_passes"] - before
    return report
