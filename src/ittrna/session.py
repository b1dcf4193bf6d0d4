"""Chip in the loop: a session on the true chip that offers a host only what real hardware offers.

An on-device method (:mod:`ittrna.methods.ondevice`) receives a :class:`ChipSession` typed as the
:class:`~ittrna.host.ChipAccess` protocol. Through it the host can

- run inputs through the chip and read the logits and each crossbar layer's input and output (true faults,
  variation, programming and read noise, converters and registers included);
- program target conductances, or weights through the chip's converter;
- set the digital periphery, which costs no cell writes: layouts and per-column gain/offset registers;
- read what it did itself: writes issued, forward passes, on-device iterations, what its budget leaves.

It never reveals true theta, fault codes, programmed levels or per-cell wear: every chip access happens inside
the session's own :func:`~ittrna.boundary.chip_side`, and a method (run on the host side) that reaches for the
chip by any other route gets a :class:`~ittrna.boundary.BoundaryError` (:mod:`ittrna.boundary`). Writes are
accounted honestly: each changed target is one issued write (both cells of a pair counted as they change); a
request that would exceed the write budget or start an on-device iteration past the limit raises
:class:`~ittrna.errors.WriteBudgetError` and writes nothing; programming noise is redrawn per write and cells
past their endurance stick (:class:`~ittrna.chip.Chip`).

An *on-device iteration* is a programming round: the first write after a forward pass (or after the
deployment) opens one; writes before the next forward pass belong to it. The initial deployment is not an
iteration and does not count against the budget (its writes are counted in ``writes_issued``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ittrna.boundary import chip_side, in_session
from ittrna.chip import Chip, check_registers
from ittrna.errors import InputError, WriteBudgetError
from ittrna.host import Deployment
from ittrna.mapping import LayerLayout
from ittrna.nn import _AnalogLayer, deploy

__all__ = ["ChipSession", "in_session"]


def _finite(t: torch.Tensor, what: str) -> torch.Tensor:
    """A detached float copy of ``t``; InputError unless it is a finite floating-point tensor."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or not bool(torch.isfinite(t).all()):
        raise InputError(f"{what} must be a finite floating-point tensor")
    return t.detach().clone()


def _scale(scale: float, name: str) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise InputError(f"layer {name!r}: scale = {scale!r}; accepted a finite number > 0")
    return float(scale)

_gate = chip_side  # the session's own chip access (ittrna.boundary): allowed while a method runs


class ChipSession:
    """A chip-in-the-loop session on ``chip`` for ``model``'s architecture (see the module docstring).

    Args:
        chip: the true chip, as fabricated (the session programs it; the evaluator reads it afterwards).
        model: the network (its crossbar weights are ignored: the chip provides them).
        write_budget: on-device writes allowed after the deployment; None = unlimited. Accepted >= 0.
        max_iterations: on-device iterations allowed; None = unlimited. Accepted >= 0.
        calibration: inputs on which ADCs (if configured) are calibrated after the deployment.
    """

    def __init__(self, chip: Chip, model: nn.Module, *, write_budget: int | None = None,
                 max_iterations: int | None = None, calibration: torch.Tensor | None = None):
        for what, v in (("write_budget", write_budget), ("max_iterations", max_iterations)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise InputError(f"session {what} = {v!r}; accepted None or an integer >= 0")
        with _gate():
            chip.check_model(model)
            self.__chip = chip
            self.__names = list(chip.layers)
        self.__model = copy.deepcopy(model).cpu().eval()
        self.__net: nn.Module | None = None
        self.__calibration = calibration
        self.__budget = write_budget
        self.__max_iterations = max_iterations
        self.__deployed = False
        self.__round_open = False
        self.__issued = 0
        self.__ondevice = 0
        self.__iterations = 0
        self.__forward_passes = 0
        self.__images = 0
        self.__closed = False

    def close(self) -> None:
        """End the session: every later call is refused (the evaluator closes it when the method returns)."""
        self.__closed = True
        self.__net = None

    # --- what the host may read -------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return list(self.__names)

    @property
    def writes_issued(self) -> int:
        return self.__issued

    @property
    def ondevice_writes(self) -> int:
        """Writes issued after the deployment (what the budget limits)."""
        return self.__ondevice

    @property
    def writes_left(self) -> int | None:
        return None if self.__budget is None else self.__budget - self.__ondevice

    @property
    def iterations(self) -> int:
        return self.__iterations

    @property
    def iterations_left(self) -> int | None:
        return None if self.__max_iterations is None else self.__max_iterations - self.__iterations

    @property
    def forward_passes(self) -> int:
        """Batches run through the chip."""
        return self.__forward_passes

    def counts(self) -> dict[str, int]:
        """The session's own counts (host-visible): writes issued (all, on-device), iterations, forward passes
        (batches) and images run."""
        return {"writes_issued": self.__issued, "ondevice_writes": self.__ondevice,
                "iterations": self.__iterations, "forward_passes": self.__forward_passes, "images": self.__images}

    def scale(self, name: str) -> float:
        self._check_name(name)
        with _gate():
            return self.__chip.layer(name).scale

    def registers(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_name(name)
        with _gate():
            n = self.__chip.layer(name).grid.n
            regs = self.__chip.registers(name)
            if regs is None:
                return torch.ones(n), torch.zeros(n)
            return regs[0].detach().cpu().clone(), regs[1].detach().cpu().clone()

    # --- running inputs ---------------------------------------------------------------------------------
    def set_digital(self, params: Mapping[str, torch.Tensor]) -> None:
        """Load digital parameters/buffers by the model's own names (``fc1.bias``); crossbar weights are
        skipped (the chip holds them), unknown names are an error."""
        net = self._net()
        own = dict(net.state_dict())
        crossbar = {f"{n}.weight" for n in self.__names}
        load: dict[str, torch.Tensor] = {}
        for key, value in params.items():
            if key in crossbar:
                continue
            parts = key.rsplit(".", 1)
            mapped = f"{parts[0]}.digital.{parts[1]}" if len(parts) == 2 and parts[0] in self.__names else key
            if mapped not in own:
                raise InputError(f"set_digital: the model has no digital parameter {key!r}")
            load[mapped] = value.detach().to(own[mapped].device, own[mapped].dtype)
        with torch.no_grad():
            for key, value in load.items():
                own[key].copy_(value)

    def forward(self, x: torch.Tensor, *, record: bool = False, taps: Sequence[str] = ()
                ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Run a batch through the chip in eval mode; with ``record`` also each crossbar layer's (input,
        output) as the layer's periphery delivers them (registers and bias applied); a layer called k times in
        the pass gives its k calls' inputs and outputs stacked along the batch dimension, in call order.

        ``taps`` names digital modules (e.g. BatchNorm layers, which the host computes itself) whose input the
        host reads on this pass; each comes back under ``taps:NAME`` as (input, input), a module called k
        times giving its k calls' inputs stacked along the batch dimension, like a crossbar layer's."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2 or x.shape[0] < 1:
            raise InputError("session.forward takes a non-empty float tensor batch (batch first)")
        net = self._net()
        seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # every call of each crossbar layer
        hooks = []
        modules = dict(net.named_modules())
        if isinstance(taps, str):
            raise InputError(f"session.forward: taps = {taps!r}; accepted a list of module names")
        for name in taps:
            target = modules.get(name)
            inside = any(name == n or name.startswith(f"{n}.") for n in self.__names)  # a crossbar layer's own
            if target is None or isinstance(target, _AnalogLayer) or inside:
                raise InputError(f"session.forward: tap {name!r} is not a digital module of the model")
            def tap(_m: nn.Module, inp: tuple[torch.Tensor, ...], name: str = name) -> None:
                x = inp[0].detach()
                calls.setdefault(f"taps:{name}", []).append((x, x))  # every call's input

            hooks.append(target.register_forward_pre_hook(tap))
        if record:
            for name, module in net.named_modules():
                if isinstance(module, _AnalogLayer):
                    hooks.append(module.register_forward_hook(
                        lambda _m, inp, out, name=name: calls.setdefault(name, []).append(
                            (inp[0].detach(), out.detach()))))
        failed = None
        try:
            with _gate(), torch.no_grad():
                logits = net(x.detach().cpu())
        except (RuntimeError, ValueError, IndexError) as exc:  # e.g. a wrong input shape: no chip in its frames
            failed = f"session.forward failed on an input of shape {tuple(x.shape)}: {str(exc).splitlines()[0]}"
        finally:
            for h in hooks:
                h.remove()
        if failed is not None:
            raise InputError(failed)
        for name, recorded in calls.items():  # a layer called k times: its k calls stacked along the batch
            if len(recorded) == 1:
                seen[name] = recorded[0]
            elif any(i.shape[1:] != recorded[0][0].shape[1:] for i, _ in recorded):
                raise InputError(f"session.forward: {'module' if name.startswith('taps:') else 'layer'} "
                                 f"{name.removeprefix('taps:')!r} is called {len(recorded)} times with inputs of "
                                 "different shapes; accepted one shape per layer")
            else:
                seen[name] = (torch.cat([i for i, _ in recorded]), torch.cat([o for _, o in recorded]))
        self.__forward_passes += 1
        self.__images += int(x.shape[0])
        self.__round_open = False
        return logits, seen

    # --- programming ------------------------------------------------------------------------------------
    def deploy(self, deployment: Deployment) -> int:
        """Program a deployment (layouts, scales, targets or weights, registers) as the chip's first
        programming; allowed once, before any other write."""
        self._check_open()
        if self.__deployed:
            raise InputError("the session's chip is deployed already; later writes go through program_*")
        model = self._loaded(deployment)
        with _gate():
            if any(layer.scale != 0.0 for layer in self.__chip):
                raise InputError("the session's chip has been programmed already; start from a fabricated chip")
            self._check_deployment(deployment)  # everything checked before the first write: all or nothing
            issued = self.__chip.program_deployment(deployment)
        self.__deployed = True
        self.__issued += issued
        self.__model = model
        self.__net = None
        return issued

    def adopt(self, deployment: Deployment) -> None:
        """Take a chip the evaluator has already programmed with ``deployment`` (e.g. for zero-write
        compensation later, :mod:`ittrna.methods.compensate`): nothing is written; the deployment's digital
        state becomes the session's. Refused on a chip never programmed or a session deployed already."""
        self._check_open()
        if self.__deployed:
            raise InputError("the session's chip is deployed already")
        model = self._loaded(deployment)
        with _gate():
            if any(layer.scale == 0.0 for layer in self.__chip):
                raise InputError("adopt: the session's chip was never programmed; use deploy")
            self._check_deployment(deployment)
        self.__deployed = True
        self.__model = model
        self.__net = None

    def _loaded(self, deployment: Deployment) -> nn.Module:
        """A copy of the session's network with the deployment's state (one-line error if it does not fit)."""
        model = copy.deepcopy(self.__model)
        try:
            model.load_state_dict(deployment.state_dict)
        except (RuntimeError, KeyError) as exc:
            first = str(exc).splitlines()[0]
            raise InputError(f"the deployment's state_dict does not fit the model: {first}") from None
        return model

    def _check_deployment(self, deployment: Deployment) -> None:
        for name, layer in self.__chip.layers.items():
            weight = deployment.state_dict.get(f"{name}.weight")
            if weight is None or tuple(weight.shape) != layer.weight_shape:
                raise InputError(f"the deployment has no weight of shape {layer.weight_shape} for layer {name!r}")
            _finite(weight, f"layer {name!r} weight")
            scale = deployment.scales.get(name)
            if scale is not None and not (math.isfinite(scale) and scale > 0):
                raise InputError(f"layer {name!r}: scale = {scale!r}; accepted a finite number > 0")
            layout = deployment.layouts.get(name)
            if layout is not None:
                layout.check(layer.grid, f"layer {name!r} layout")
            targets = deployment.targets.get(name)
            if targets is not None:
                for a, t in targets.items():
                    _finite(t, f"layer {name!r} array {a!r} targets")
                self.__chip.count_issued(name, dict(targets))  # shapes
            reg = deployment.registers.get(name)
            if reg is not None:
                check_registers(name, layer.grid.n, reg["gain"], reg["offset"])

    def program_targets(self, name: str, targets: Mapping[str, torch.Tensor]) -> int:
        self._check_name(name)
        self._check_deployed()
        targets = {a: _finite(t, f"layer {name!r} array {a!r} targets") for a, t in targets.items()}
        return self._write(lambda: self.__chip.count_issued(name, targets), lambda: self.__chip.program(name, targets))

    def rewrite(self, name: str, cells: Mapping[str, torch.Tensor]) -> int:
        """Write the masked cells again with the targets the host programmed there (a refresh after
        relaxation: one write issued per masked cell, admitted by the budget like any other write). ``cells``:
        array name -> bool mask of the physical array's shape. Nothing is revealed of the cells."""
        self._check_name(name)
        self._check_deployed()
        own = {a: m.detach().to("cpu").clone() for a, m in cells.items()}  # no alias to the host
        return self._write(lambda: self.__chip.count_rewrites(name, own), lambda: self.__chip.rewrite(name, own))

    def program_weights(self, name: str, weight: torch.Tensor, *, scale: float | None = None) -> int:
        self._check_name(name)
        self._check_deployed()
        weight = _finite(weight, f"layer {name!r} weight")
        with _gate():
            layer = self.__chip.layer(name)
            if tuple(weight.shape) != layer.weight_shape:
                raise InputError(f"layer {name!r}: weight shape {tuple(weight.shape)} != {layer.weight_shape}")
            s = layer.scale if scale is None else _scale(scale, name)
            targets = self.__chip.weight_targets(name, weight, s)
            count = self.__chip.count_issued(name, targets)
            if count == 0 and s == layer.scale:
                return 0
            self._admit(count)
            issued = self.__chip.program_weights(name, weight, scale=s, targets=targets)
            self._recalibrate()
        self.__issued += issued
        self.__ondevice += issued
        return issued

    def count_writes(self, name: str, targets: Mapping[str, torch.Tensor]) -> int:
        self._check_name(name)
        targets = {a: _finite(t, f"layer {name!r} array {a!r} targets") for a, t in targets.items()}
        with _gate():
            return self.__chip.count_issued(name, targets)

    def weight_targets(self, name: str, weight: torch.Tensor, scale: float | None = None) -> dict[str, torch.Tensor]:
        """Target conductances the chip's converter gives ``weight`` (design knowledge: the converter)."""
        self._check_name(name)
        weight = _finite(weight, f"layer {name!r} weight")
        if scale is None:
            self._check_deployed()
        with _gate():
            layer = self.__chip.layer(name)
            if tuple(weight.shape) != layer.weight_shape:
                raise InputError(f"layer {name!r}: weight shape {tuple(weight.shape)} != {layer.weight_shape}")
            return self.__chip.weight_targets(name, weight, layer.scale if scale is None else _scale(scale, name))

    def set_registers(self, name: str, gain: torch.Tensor, offset: torch.Tensor) -> None:
        self._check_name(name)
        self._check_deployed()
        with _gate():
            self.__chip.set_registers(name, _finite(gain, f"layer {name!r} gain register"),
                                      _finite(offset, f"layer {name!r} offset register"))

    def set_layout(self, name: str, layout: LayerLayout) -> None:
        """Change a layer's digital routing (no cell writes: the cells keep their conductances)."""
        self._check_name(name)
        self._check_deployed()
        own = LayerLayout(layout.row_map.detach().clone(), layout.col_sign.detach().clone())  # no alias to the host
        with _gate():
            self.__chip.set_layout(name, own)  # checked against the layer; the layer then reads anew
            self._recalibrate()

    # --- internals --------------------------------------------------------------------------------------
    def _write(self, count: Callable[[], int], write: Callable[[], int]) -> int:
        """Count a write request (checked: nothing written on an error), admit it against the budget and the
        iteration limit, perform it and recalibrate; returns the writes issued."""
        with _gate():
            n = count()
            if n == 0:
                return 0
            self._admit(n)
            issued = write()
            self._recalibrate()
        assert issued == n
        self.__issued += issued
        self.__ondevice += issued
        return issued

    def _recalibrate(self) -> None:
        """After programming, calibrate the ADCs (if any) on the session's calibration inputs, as the evaluator
        does, so the method sees the converter state it will be scored with (not counted as a forward pass)."""
        if self.__calibration is None or self.__net is None or self.__chip.config.mapping.adc_bits is None:
            return
        self.__chip.reset_adc()
        with torch.no_grad():
            self.__net(self.__calibration)

    def _check_open(self) -> None:
        if self.__closed:
            raise InputError("the chip session is closed (the method has returned)")

    def _admit(self, count: int) -> None:
        """Refuse (before writing anything) a write past the budget or an iteration past the limit."""
        if not self.__round_open and self.__max_iterations is not None and self.__iterations >= self.__max_iterations:
            raise WriteBudgetError(f"on-device iteration {self.__iterations + 1} refused: the session allows "
                                   f"{self.__max_iterations}")
        left = self.writes_left
        if left is not None and count > left:
            raise WriteBudgetError(f"{count} writes refused: the session's write budget has {left} of "
                                   f"{self.__budget} left")
        if not self.__round_open:
            self.__round_open = True
            self.__iterations += 1

    def _check_name(self, name: str) -> None:
        self._check_open()
        if name not in self.__names:
            raise InputError(f"the chip has no crossbar layer {name!r}; it holds {self.__names}")

    def _check_deployed(self) -> None:
        if not self.__deployed:
            raise InputError("deploy a first programming before on-device writes")

    def _net(self) -> nn.Module:
        self._check_open()
        self._check_deployed()
        if self.__net is None:
            with _gate():
                self.__net = deploy(self.__model, self.__chip, program=False, calibration=self.__calibration)
            self.__net.eval()
        return self.__net

    def __deepcopy__(self, memo: dict[int, Any]) -> ChipSession:
        raise TypeError("a chip session cannot be copied (it is the one link to a physical chip)")

    def __getstate__(self) -> Any:
        raise TypeError("a chip session cannot be pickled (it is the one link to a physical chip)")
