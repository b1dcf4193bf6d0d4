"""The :class:`Chip` façade: a fabricated chip's state (:class:`~ittrna.chip.state.ChipState`) with every
operation of the chip's submodules as a method (each a thin delegation; the work lives in its owner)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ittrna.chip import archive, program, readout, state, stats
from ittrna.chip import test as fab_test
from ittrna.chip.state import ChipState
from ittrna.config import ChipConfig, TestConfig
from ittrna.host import Deployment, MeasuredMap
from ittrna.mapping import LayerLayout

__all__ = ["Chip"]


class Chip(ChipState):
    """A simulated RRAM chip holding one model's layers. Build with :meth:`fabricate` or :meth:`load`."""

    # --- construction ------------------------------------------------------------------------------------
    @classmethod
    def fabricate(
        cls,
        model: nn.Module,
        config: ChipConfig,
        seed: int,
        *,
        filter_fn: Callable[[nn.Module, str], bool] | None = None,
        device: torch.device | str | None = None,
    ) -> Chip:
        """Fabricate a chip sized for ``model``'s ``Linear``/``Conv2d`` layers (weights not yet written).

        Args:
            model: the network whose layer shapes size the chip.
            config: chip configuration.
            seed: fabrication seed; the same seed gives a bit-identical chip.
            filter_fn: ``(module, name) -> bool`` choosing which layers go on crossbars (default: all).
            device: where the cell state lives (draws are made on the CPU, so results match across devices).

        Raises:
            InputError: a bad argument, or a model with no ``Linear``/``Conv2d`` layer to map;
                ResourceError: the chip would not fit in memory.
        """
        chip = state.fabricate(cls, model, config, seed, filter_fn)
        return chip.to(device) if device is not None else chip

    def to(self, device: torch.device | str) -> Chip:
        """Move the cell state to ``device`` (in place); returns self."""
        state.move_cells(self, device)
        readout.move_periphery(self, device)
        return self

    # --- programming (ittrna.chip.program) ---------------------------------------------------------------
    def program(self, name: str, targets: dict[str, torch.Tensor], *, count_wear: bool = True) -> int:
        """Write target conductances (siemens) into a layer's arrays.

        Targets are clamped to [Gmin, Gmax] and rounded to the cell levels. Every cell whose target changes
        is one write *issued* (the host cannot tell a stuck cell from a healthy one, so it pays for both); a
        stuck cell ignores it, so only healthy cells perform the write (counted as wear when
        ``count_wear``), draw fresh programming noise, and may wear out past their endurance.

        Returns:
            The number of cell writes issued (what a host sees; writes performed are in :meth:`write_stats`).
        """
        return program.program(self, name, targets, count_wear=count_wear)

    def rewrite(self, name: str, cells: dict[str, torch.Tensor], *, count_wear: bool = True) -> int:
        """Write the cells masked in ``cells`` (array -> bool mask of the array's shape) again with the targets
        they hold: one write issued per masked cell, performed by the healthy ones (fresh programming noise,
        age 0 on the chip's clock), as a refresh after relaxation does. Returns the writes issued."""
        return program.rewrite(self, name, cells, count_wear=count_wear)

    def count_rewrites(self, name: str, cells: dict[str, torch.Tensor]) -> int:
        """Writes :meth:`rewrite` would issue for ``cells`` (the masks checked; no state change)."""
        return program.count_rewrites(self, name, cells)

    def count_issued(self, name: str, targets: dict[str, torch.Tensor]) -> int:
        """Writes :meth:`program` would issue for ``targets`` (no state change): changed quantised targets."""
        return program.count_issued(self, name, targets)

    def weight_targets(self, name: str, weight: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
        """Target conductances the chip's converter gives ``weight`` at ``scale`` under the layer's layout."""
        return program.weight_targets(self, name, weight, scale)

    def program_weights(
        self,
        name: str,
        weight: torch.Tensor,
        *,
        scale: float | None = None,
        layout: LayerLayout | None = None,
        targets: dict[str, torch.Tensor] | None = None,
        count_wear: bool | None = None,
    ) -> int:
        """Map a weight tensor to conductances with the chip's converter and program it.

        Args:
            name: layer name.
            weight: tensor of the layer's weight shape.
            scale: weight scale s; default from ``mapping.clip_percentile`` of |w|.
            layout: digital layout to set first (costs no writes); default: keep the layer's.
            targets: explicit target conductances per array (physical shapes) instead of the converter's.
            count_wear: default ``endurance.count_initial_programming`` for a never-programmed layer, else True.

        Returns:
            Cell writes issued.

        Raises:
            InputError: a weight of another shape than the layer's, a bad scale, layout or targets.
        """
        return program.program_weights(self, name, weight, scale=scale, layout=layout, targets=targets,
                                       count_wear=count_wear)

    def program_model(self, model: nn.Module) -> int:
        """Program every chip layer from the same-named layer of ``model``; returns total writes issued."""
        return program.program_model(self, model)

    def program_deployment(self, deployment: Deployment) -> int:
        """Program a method's :class:`~ittrna.host.Deployment`: per layer its layout, scale and either its
        explicit targets or its weight through the converter. Returns total writes issued."""
        return program.program_deployment(self, deployment)

    def check_model(self, model: nn.Module) -> None:
        """Raise InputError unless ``model`` has every chip layer with the same weight shape."""
        program.check_model(self, model)

    # --- periphery (ittrna.chip.readout) -----------------------------------------------------------------
    def set_registers(self, name: str, gain: torch.Tensor | None, offset: torch.Tensor | None) -> None:
        """Set (None: clear) a layer's per-column digital gain/offset registers; no cell is written."""
        readout.set_registers(self, name, gain, offset)

    def registers(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The layer's (gain, offset) registers (the chip's own tensors: read only), None when not set."""
        return readout.registers(self, name)

    def set_layout(self, name: str, layout: LayerLayout) -> None:
        """Change a layer's digital routing (no cell writes); the layer reads anew afterwards."""
        readout.set_layout(self, name, layout)

    def adc_calibration(self, name: str) -> torch.Tensor | None:
        """The layer's ADC full scale per tile valid for its current programming, or None."""
        return readout.adc_calibration(self, name)

    def calibrate_adc(self, name: str, inputs: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """Calibrate the layer's ADCs on ``inputs`` (B, K) meeting ``matrix`` (K, N); returns the full scale."""
        return readout.calibrate_adc(self, name, inputs, matrix)

    def reset_adc(self, name: str | None = None) -> None:
        """Forget the ADC calibration of one layer (or all): the next inputs calibrate it again."""
        readout.reset_adc(self, name)

    # --- reading (ittrna.chip.readout) -------------------------------------------------------------------
    def restart_reads(self) -> None:
        """Restart the read-noise stream (as after fabrication), so that a measurement repeated on the same
        chip state draws the same read noise (evaluations are reproducible)."""
        readout.restart_reads(self)

    def conductances(self, name: str, *, read_noise: bool = False, used_only: bool = False
                     ) -> dict[str, torch.Tensor]:
        """Conductances (siemens) the layer's arrays present; with ``read_noise`` a fresh read-noise draw.

        ``used_only`` with the identity layout reads only the corner of each array that holds weights (the
        rest is padding), the same values as the full read's corner."""
        return readout.conductances(self, name, read_noise=read_noise, used_only=used_only)

    def effective_matrix(self, name: str, *, read_noise: bool = False) -> torch.Tensor:
        """(K, N) matrix the layer really computes (weight units)."""
        return readout.effective_matrix(self, name, read_noise=read_noise)

    def effective_weight(self, name: str, *, read_noise: bool = False) -> torch.Tensor:
        """The layer's effective weight in its own shape (``Linear``: (out, in); ``Conv2d``: OIHW)."""
        return readout.effective_weight(self, name, read_noise=read_noise)

    def read_weight(self, name: str) -> torch.Tensor:
        """The weight a deployed layer computes with now: a fresh noisy read per call with read noise, else
        one read kept until the layer is reprogrammed (the chip's own tensor: read only)."""
        return readout.read_weight(self, name)

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass (in [0, 10 years]): the chip's clock :attr:`now` advances and every cell reads
        at its new age (``relaxation``); nothing is written, the periphery stays as it is."""
        readout.wait(self, seconds)

    def forget_reads(self, name: str | None = None) -> None:
        """Drop the reads :meth:`read_weight` keeps (one layer's, or all): the next call reads the cells."""
        readout.forget_reads(self, name)

    # --- test (ittrna.chip.test) -------------------------------------------------------------------------
    @property
    def chip_id(self) -> str:
        """Opaque identity shared by the chip and its measured maps (a salted hash of the seed, the fabricated
        config — the test's own settings excluded — and the layer geometry)."""
        return fab_test.chip_id(self)

    def test(self, seed: int = 0, test: TestConfig | None = None) -> MeasuredMap:
        """Post-fabrication test: the measured defect map (faults, theta) with the configured imperfections.

        Args:
            seed: seeds the test's own imperfections (which faults it misses, theta measurement error);
                accepted [0, 2**63 - 1].
            test: the test's imperfections, if not the chip config's own ``test`` section (the chip is not
                changed; the map's design states the test it came from).
        """
        return fab_test.test(self, seed, test)

    # --- statistics (ittrna.chip.stats) ------------------------------------------------------------------
    def used_cells(self, name: str) -> dict[str, torch.Tensor]:
        """Per array, a bool mask of the cells that carry a weight under the layer's layout (padding and
        unused spare rows excluded; for the offset scheme, reference cells on rows that carry weights)."""
        return stats.used_cells(self, name)

    def stats(self) -> list[dict[str, Any]]:
        """Per-layer statistics over the cells that carry weights (``cells``; ``cells_total`` adds padding
        and spare rows): realised stuck-on/off fractions, theta spread, largest write count."""
        return stats.stats(self)

    def summary(self) -> dict[str, Any]:
        """Whole-chip totals over the cells that carry weights (``cells_total`` adds padding): realised
        stuck-on/stuck-off fractions, tiles."""
        return stats.summary(self)

    def write_stats(self) -> dict[str, Any]:
        """Evaluator-only wear figures: writes issued (host-visible) and performed (healthy cells whose target
        changed, counted as wear or not), the largest count on one cell, the fraction of cells written and
        the cells worn out."""
        return stats.write_stats(self)

    # --- persistence (ittrna.chip.archive) ---------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the whole chip state to ``.npz`` (JSON header, no pickle), atomically; lossless."""
        archive.save(self, path)

    @classmethod
    def load(cls, path: str | Path, *, device: torch.device | str | None = None) -> Chip:
        """Read a chip written by :meth:`save`.

        Raises:
            FileFormatError: unreadable file, not a chip, unsupported format version, or inconsistent arrays.
        """
        chip = archive.load(cls, path)
        return chip.to(device) if device is not None else chip
