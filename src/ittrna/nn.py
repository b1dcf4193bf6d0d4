"""``torch.nn`` conversion: run a model on a chip.

- :func:`deploy` returns a copy of the model whose chip-mapped ``Linear``/``Conv2d`` layers compute with the
  chip's effective weights (programming the weights first, by default); :func:`undeploy` is its inverse.
- :func:`evaluate` measures accuracy on one chip, :func:`monte_carlo` over many fabricated chips.
- :func:`digital_layers` lets some layers of a deployed model compute digitally for a while;
  :func:`layer_ablation` uses it to say which layers carry a chip's loss.

Deployed layers compute with :meth:`Chip.read_weight <ittrna.chip.Chip.read_weight>`, which the chip keeps
until the layer is reprogrammed, so an ideal-periphery chip costs one ordinary ``F.linear``/``F.conv2d`` per
layer. With read noise every forward pass re-reads the cells (one draw per batch); with DAC/ADC bits the
layer computes tile by tile, each tile's ADC full scale calibrated once after programming (on ``deploy``'s
calibration inputs, else the first batch). The chip's periphery (ADC calibration, registers) is read and
changed only through the chip's own methods.
Deployed layers hold their chip privately: code standing where a host stands never gets it from them.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ittrna._validate import check_seeds
from ittrna.chip import Chip
from ittrna.config import ChipConfig
from ittrna.data import Split
from ittrna.errors import InputError
from ittrna.mapping import conv_rows, rows_to_output, tiled_matmul
from ittrna.training import accuracy

__all__ = ["AnalogConv", "AnalogConv2d", "AnalogLinear", "deploy", "digital_layers", "evaluate", "layer_ablation",
           "monte_carlo", "undeploy"]


class _AnalogLayer(nn.Module):
    """Common part: a digital original plus a chip layer it reads its weights from.

    The chip is held privately (``_chip``): a deployed model computes with the chip but does not offer it;
    code that stands where a host stands (:mod:`ittrna.methods`) never receives a deployed model anyway.
    """

    def __init__(self, digital: nn.Module, chip: Chip, name: str):
        super().__init__()
        self.digital = digital
        """The original layer (kept for :func:`undeploy`; its weight is not used in forward)."""
        self._chip = chip
        self._chip_layer = name
        cfg = chip.config
        self._ideal_periphery = cfg.mapping.dac_bits is None and cfg.mapping.adc_bits is None

    _SHAPE_ATTRS = frozenset({"in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride",
                              "padding", "dilation", "groups", "padding_mode"})

    @property
    def weight(self) -> torch.Tensor:
        """A copy of the weight the chip realises, for code around the layer that reads ``.weight`` (e.g.
        ``nn.TransformerEncoderLayer``'s fused path, which then computes with it and never calls
        :meth:`forward`). Only where that is what the chip computes: with DAC/ADC or per-column registers the
        layer's output is not ``x @ weight``, so reading it is refused rather than silently wrong."""
        if not self._ideal_periphery or self._has_registers():
            raise InputError(f"chip layer {self._chip_layer!r} computes with DAC/ADC quantisation or per-column "
                             "registers: code that reads its .weight to compute (e.g. a fused attention path) would "
                             "skip them; run that module in training mode or without converters")
        return self.effective_weight().detach().clone()

    @property
    def bias(self) -> torch.Tensor | None:
        """The digital bias of the original layer."""
        bias = getattr(self.digital, "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    def __getattr__(self, name: str) -> Any:
        if name in _AnalogLayer._SHAPE_ATTRS:  # the original layer's geometry (in_features, kernel_size, ...)
            return getattr(self._modules["digital"], name)
        return super().__getattr__(name)

    def effective_weight(self) -> torch.Tensor:
        """Weight as the chip realises it now (weight shape, on the chip's device): a fresh read-noise draw
        per call with read noise, else the chip's read kept until the layer is reprogrammed."""
        return self._chip.read_weight(self._chip_layer)

    def _tiled(self, cols: torch.Tensor) -> torch.Tensor:
        """(B, K) inputs through the tiles with DAC/ADC -> (B, N).

        The ADC full scale of each tile is calibrated on the first inputs after (re)programming and then
        kept fixed, so an input's output never depends on the other inputs of its batch."""
        layer = self._chip.layer(self._chip_layer)
        matrix = self.effective_weight().reshape(layer.weight_shape[0], -1).t()  # (K, N)
        m = self._chip.config.mapping
        fs = None
        if m.adc_bits is not None:
            fs = self._chip.adc_calibration(self._chip_layer)
            if fs is None:  # never calibrated, or reprogrammed since: calibrate on these inputs
                fs = self._chip.calibrate_adc(self._chip_layer, cols, matrix)
        return tiled_matmul(cols, matrix, layer.grid, m.dac_bits, m.adc_bits, fs)

    def _registers(self, out: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """Apply the layer's digital per-column gain/offset registers (if set) along ``channel_dim``."""
        regs = self._chip.registers(self._chip_layer)
        if regs is None:
            return out
        gain, offset = regs
        shape = [1] * out.dim()
        shape[channel_dim] = -1
        return out * gain.view(shape).to(out.dtype) + offset.view(shape).to(out.dtype)

    def _has_registers(self) -> bool:
        return self._chip.registers(self._chip_layer) is not None


class AnalogLinear(_AnalogLayer):
    """A ``Linear`` layer computed on crossbar tiles; the bias is added digitally."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lin = self.digital
        assert isinstance(lin, nn.Linear)
        if self._ideal_periphery and not self._has_registers():
            return F.linear(x, self.effective_weight().to(x.dtype), lin.bias)
        if self._ideal_periphery:
            out = F.linear(x, self.effective_weight().to(x.dtype))
        else:
            lead = x.shape[:-1]
            out = self._tiled(x.reshape(-1, x.shape[-1])).reshape(*lead, -1)
        out = self._registers(out, out.dim() - 1)
        return out + lin.bias if lin.bias is not None else out


class AnalogConv(_AnalogLayer):
    """A ``Conv1d``/``Conv2d`` layer computed on crossbar tiles (im2col unrolling); the bias is added
    digitally."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.digital
        assert isinstance(conv, (nn.Conv1d, nn.Conv2d))
        spread = (1, -1) + (1,) * (x.dim() - 2)  # a per-channel vector against (B, C, *spatial)
        if self._ideal_periphery:
            # the layer's own convolution (any padding and padding mode) with the chip's weight
            if not self._has_registers():
                return conv._conv_forward(x, self.effective_weight().to(x.dtype), conv.bias)
            out = self._registers(conv._conv_forward(x, self.effective_weight().to(x.dtype), None), 1)
            return out + conv.bias.view(spread) if conv.bias is not None else out
        rows, spatial = conv_rows(x, conv)  # (B*L, Cin*prod(kernel))
        out = rows_to_output(self._tiled(rows), x.shape[0], spatial)  # (B, Cout, *out_spatial)
        out = self._registers(out, 1)
        return out + conv.bias.view(spread) if conv.bias is not None else out


AnalogConv2d = AnalogConv
"""The name the layer had when only ``Conv2d`` mapped."""


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def deploy(model: nn.Module, chip: Chip, *, program: bool = True, inplace: bool = False,
           calibration: torch.Tensor | None = None) -> nn.Module:
    """Put ``model`` on ``chip``: every chip layer is replaced by an analog layer reading the chip.

    Args:
        model: a network with the layers the chip was fabricated for.
        chip: the chip (its state is shared, not copied).
        program: first write the model's weights onto the chip (cell writes are counted as wear per
            ``endurance.count_initial_programming`` on a fresh chip). False: use what the chip holds.
        inplace: modify ``model`` instead of a deep copy.
        calibration: inputs (a batch of the data's shape, never the test data) on which each tile's ADC full
            scale is calibrated now, when the chip has ADCs; without them the first batch run calibrates.

    Raises:
        ValueError: the model's layers do not match the chip's.
    """
    chip.check_model(model)
    target = model if inplace else copy.deepcopy(model)
    modules = dict(target.named_modules())
    if program:
        chip.program_model(target)
    elif any(layer.scale == 0.0 for layer in chip):
        raise ValueError("the chip has never been programmed; deploy with program=True")
    for name in chip.layers:
        module = modules[name]
        analog: nn.Module = (AnalogConv(module, chip, name) if isinstance(module, (nn.Conv1d, nn.Conv2d))
                             else AnalogLinear(module, chip, name))
        _set_module(target, name, analog)
    chip.forget_reads()  # a fresh deployment reads the chip as it is now
    if calibration is not None and chip.config.mapping.adc_bits is not None:
        chip.reset_adc()
        was_training = target.training
        target.eval()
        with torch.no_grad():
            target(calibration.to(next((p.device for p in target.parameters()), torch.device("cpu"))))
        target.train(was_training)
    return target


def undeploy(model: nn.Module, *, effective: bool = False, inplace: bool = False) -> nn.Module:
    """Inverse of :func:`deploy`: analog layers become plain ``Linear``/``Conv2d`` again.

    Args:
        model: a deployed model.
        effective: bake the chip's effective weights into the plain layers (default: the original weights).
        inplace: modify ``model`` instead of a copy.
    """
    target = model if inplace else _copy_without_chip(model)
    for name, module in list(target.named_modules()):
        if isinstance(module, _AnalogLayer):
            digital = module.digital  # target is a copy already, or the caller asked for in place
            if effective:
                regs = module._chip.registers(module._chip_layer)
                with torch.no_grad():
                    w = module.effective_weight()
                    if regs is not None:  # bake the per-column registers in
                        gain, offset = regs
                        w = w * gain.view(-1, *([1] * (w.dim() - 1))).to(w)
                        bias = digital.bias
                        if bias is None:
                            digital.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype))
                        digital.bias += offset.to(w)  # type: ignore[operator]
                    digital.weight.copy_(w)  # type: ignore[operator]
            _set_module(target, name, digital)
    return target


def _analog_layers(model: nn.Module) -> dict[str, tuple[str, _AnalogLayer]]:
    """The deployed (analog) layers of ``model`` by chip layer name, each with its module path, in the order
    of the chips' layers (data-flow order)."""
    found = {m._chip_layer: (path, m) for path, m in model.named_modules() if isinstance(m, _AnalogLayer)}
    chips = {id(m._chip): m._chip for _, m in found.values()}
    return {n: found[n] for chip in chips.values() for n in chip.layers if n in found}


@contextlib.contextmanager
def digital_layers(model: nn.Module, names: Sequence[str]) -> Iterator[nn.Module]:
    """Within the block, the deployed layers ``names`` (chip layer names) of ``model`` compute digitally with
    their own weights (the deployed network's, as the method meant them: no cell, no periphery, no
    registers); the rest stays on the chip. ``model`` is changed in place and restored on exit.

    Raises:
        InputError: a name that is not a deployed layer of ``model``.
    """
    analog = _analog_layers(model)
    unknown = [n for n in names if n not in analog]
    if unknown:
        raise InputError(f"layer {unknown[0]!r} is not on the chip of this deployed model; accepted {list(analog)}")
    swapped = [analog[n] for n in dict.fromkeys(names)]
    try:
        for path, layer in swapped:
            _set_module(model, path, layer.digital)
        yield model
    finally:
        for path, layer in swapped:
            _set_module(model, path, layer)


def layer_ablation(model: nn.Module, data: Split, *, batch_size: int = 2000,
                   layers: Sequence[str] | None = None) -> dict[str, Any]:
    """Which layers carry a deployed model's loss: its accuracy on ``data`` on the chip as a whole, all
    digital (the deployed weights in software), and per chip layer (data-flow order) with that layer ideal
    and the rest on the chip (``ideal``), and with only that layer on the chip (``alone``). The chip's read
    noise restarts before every pass (:meth:`Chip.restart_reads <ittrna.chip.Chip.restart_reads>`); with read
    noise on, a layer made digital draws none, so the layers after it see other draws (the rows then carry
    that resampling noise too). Nothing is written.

    Args:
        model: a deployed model (:func:`deploy`), programmed as it is to be judged.
        data: the images judged (a report: the test split).
        layers: the chip layers to ablate (default all).

    Returns:
        ``chip`` and ``digital`` accuracies and ``layers``: one row per layer with ``layer``, ``ideal``,
        ``alone`` (accuracies), ``gain_if_ideal`` (ideal - chip) and ``loss_alone`` (digital - alone).
    """
    analog = _analog_layers(model)
    if not analog:
        raise InputError("the model has no deployed layer; deploy it on a chip first (ittrna.nn.deploy)")
    names = list(analog) if layers is None else list(layers)
    chips = list({id(m._chip): m._chip for _, m in analog.values()}.values())

    def judged() -> float:
        for chip in chips:
            chip.restart_reads()
        return accuracy(model, data, batch_size=batch_size)

    on_chip = judged()
    with digital_layers(model, list(analog)):
        digital = judged()
    rows = []
    for n in names:
        with digital_layers(model, [n]):
            ideal = judged()
        with digital_layers(model, [m for m in analog if m != n]):
            alone = judged()
        rows.append({"layer": n, "ideal": ideal, "alone": alone, "gain_if_ideal": ideal - on_chip,
                     "loss_alone": digital - alone})
    return {"chip": on_chip, "digital": digital, "layers": rows}


def _copy_without_chip(model: nn.Module) -> nn.Module:
    """Deep copy sharing (not copying) the chips that analog layers point to."""
    memo: dict[int, object] = {}
    for module in model.modules():
        if isinstance(module, _AnalogLayer):
            memo[id(module._chip)] = module._chip
    return copy.deepcopy(model, memo)


def evaluate(model: nn.Module, chip: Chip, data: Split, *, program: bool = True, batch_size: int = 2000,
             calibration: torch.Tensor | None = None, time: float = 0.0) -> float:
    """Accuracy (fraction in [0, 1]) of ``model`` deployed on ``chip``, measured on ``data`` ``time`` seconds
    after deploying (ADCs calibrated on ``calibration`` inputs at deployment, see :func:`deploy`; the chip then
    waits, its cells relaxing, :meth:`Chip.wait <ittrna.chip.Chip.wait>`)."""
    deployed = deploy(model, chip, program=program, calibration=calibration)
    if time:
        chip.wait(time)
    return accuracy(deployed, data, batch_size=batch_size)


def monte_carlo(
    model: nn.Module,
    config: ChipConfig,
    seeds: Sequence[int],
    data: Split,
    *,
    batch_size: int = 2000,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    calibration: torch.Tensor | None = None,
    time: float = 0.0,
) -> list[float]:
    """Accuracy of ``model`` on one freshly fabricated chip per seed (same order as ``seeds``); ADCs, if any,
    calibrated on ``calibration`` inputs (see :func:`deploy`); measured ``time`` seconds after programming."""
    seeds = check_seeds(seeds)  # a non-empty list of seeds in [0, 2**63 - 1]
    work = copy.deepcopy(model)  # one working copy, deployed in place on each chip and undeployed after
    if device is not None:
        work = work.to(device)
    accs = []
    for seed in tqdm(seeds, desc="chips", unit="chip", disable=None if progress else True, leave=False):
        chip = Chip.fabricate(work, config, seed, filter_fn=filter_fn, device=device)
        deployed = deploy(work, chip, inplace=True, calibration=calibration)
        if time:
            chip.wait(time)
        try:
            accs.append(accuracy(deployed, data, batch_size=batch_size))
        finally:
            undeploy(deployed, inplace=True)
    return accs
