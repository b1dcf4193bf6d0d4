"""On-device (chip-in-the-loop) tolerance methods: they also get a :class:`~ittrna.host.ChipAccess` session.

The session offers what real hardware offers — forward passes through the true chip (logits and each crossbar
layer's input and output), programming (every changed target is one write, counted against the budget) and
zero-write digital periphery (per-column gain/offset registers). Gradients are computed in software: the
host model (:mod:`.hostmodel`, from the measured map) gives the backward pass, while the forward values are
the chip's own (:class:`_ChipLoop`: each crossbar layer's output is replaced by the chip's, straight-through).

- ``ondevice``: full chip-in-the-loop retraining — forward on the chip, backward in software, every changed
  weight written after every step (the accuracy ceiling and the write cost to beat).
- ``threshold``: the same loop, but a weight is written only when its accumulated update exceeds a threshold
  (Xia et al., DAC 2017, "Fault-tolerant training with on-line fault detection for RRAM-based neural
  computing systems": threshold-training to save writes).
- ``codesign``: ITT-RNA part 3, our reconstruction of its abstract — the off-device result (``aft``, or
  ``dynamic`` for MLPs), then the hardware half: per-column digital gain/offset calibrated on the chip from a
  few batches (zero writes); then at most K on-device iterations under a total write budget, each estimating
  every layer's realised weights from the chip's layer outputs (least squares, zero writes) and rewriting
  the weights whose measured error costs the most, pre-compensated by the measured error; finally the
  digital parameters (gain, offset, bias) are retrained against the estimated chip (zero writes), kept only
  if the chip's own validation accuracy improves.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ittrna._resources import check_memory
from ittrna.data import Split
from ittrna.graph import dataflow_order
from ittrna.host import ChipAccess, Deployment, MeasuredMap
from ittrna.mapping import (
    conv_rows,
    grouped_matmul,
    groups_of,
    matrix_to_weight,
    output_to_rows,
    row_statistic,
    weight_to_matrix,
)
from ittrna.methods.base import Context, config_name, register, run
from ittrna.methods.configs import ChipLoopConfig, CodesignConfig, ThresholdConfig
from ittrna.methods.hostmodel import HostChip
from ittrna.methods.retrain import HostEffective, Pipeline, parametrized, retrain, steps_of
from ittrna.training import FitReport, TrainHooks, fit

__all__ = ["chip_accuracy", "session_counts"]


# --- shared machinery -------------------------------------------------------------------------------------
def _digital_state(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The model's state without the crossbar weights (biases, buffers: what the host sets digitally)."""
    crossbar = {f"{n}.weight" for n in names}
    return {k: v for k, v in model.state_dict().items()
            if k not in crossbar and ".parametrizations." not in k}


def _raw_weight(m: nn.Module) -> torch.Tensor:
    """A layer's trainable weight under any parametrization."""
    if parametrize.is_parametrized(m, "weight"):
        return m.parametrizations.weight.original  # type: ignore[union-attr,return-value]
    return m.weight  # type: ignore[return-value]


FROZEN: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
"""Layers kept in eval mode while a chip-in-the-loop method trains: the chip runs the network in eval mode
(BatchNorm's running statistics, no Dropout), so the host model does too."""


class _ChipLoop(nn.Module):
    """The host model run with the chip in the loop: every crossbar layer's output is the chip's (recorded on
    the same batch), with the host model's gradient (straight-through), so the loss is the chip's loss and
    the backward pass runs at the chip's activations."""

    def __init__(self, model: nn.Module, session: ChipAccess, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names
        self.__dict__["_session"] = session  # not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session: ChipAccess = self.__dict__["_session"]
        session.set_digital(_digital_state(self.model, self.names))
        _, rec = session.forward(x, record=True)
        modules = dict(self.model.named_modules())
        taken = dict.fromkeys(self.names, 0)  # rows of each layer's recording used by its earlier calls

        def chip_output(_m: nn.Module, _i: Any, out: torch.Tensor, n: str) -> torch.Tensor:
            rows = out.shape[0]
            chip = rec[n][1][taken[n]: taken[n] + rows]  # this call's part of the chip's recording
            taken[n] += rows
            return out + (chip.to(out) - out).detach()

        hooks = [modules[n].register_forward_hook(
            lambda m, i, out, n=n: chip_output(m, i, out, n)) for n in self.names]
        try:
            out: torch.Tensor = self.model(x)
            return out
        finally:
            for h in hooks:
                h.remove()


def chip_accuracy(session: ChipAccess, model: nn.Module, names: list[str], data: Split) -> float:
    """Accuracy on ``data`` of the chip with ``model``'s digital parameters (forward passes only)."""
    session.set_digital(_digital_state(model, names))
    correct = 0
    for x, y in data.batches(1000):
        logits, _ = session.forward(x)
        correct += int((logits.argmax(1) == y).sum())
    return correct / max(len(data), 1)


def _loop_train(model: nn.Module, measured: MeasuredMap, cfg: ChipLoopConfig, ctx: Context,
                session: ChipAccess, threshold: float | None) -> Deployment:
    """``ondevice`` (threshold None: write every change) and ``threshold``: the ``program`` deployment
    (defect-aware pair rule, scale search), then chip-in-the-loop retraining, writing after every step through
    the same rule, the host model giving the backward pass."""
    p = Pipeline(model, measured, ctx)
    p.model.cpu()
    p.choose_scales(cfg.program)
    session.deploy(p.deployment("pair"))
    names = list(p.mods)
    written = {n: p.mods[n].weight.detach().clone() for n in names}
    gen = ctx.generator(51)
    with parametrized(p.model, {n: [HostEffective(p.host, n, p.scales[n], None, gen)] for n in names}, keep=False):
        rep, history, stopped = _loop_steps(p, cfg, ctx, session, threshold, written)
    with torch.no_grad():
        for n, m in p.mods.items():
            m.weight.copy_(written[n])  # the weights the chip holds
    best = max(history, key=lambda h: (h["val_accuracy"], -h["writes"]))
    p.report.update(epochs=rep.epochs, history=history, best_val_accuracy=best["val_accuracy"],
                    writes_at_best=best["writes"], budget_stopped=stopped, **session_counts(session))
    out = p.deployment("pair")
    out.report["val_accuracy"] = history[-1]["val_accuracy"]
    return out


def _loop_steps(p: Pipeline, cfg: ChipLoopConfig, ctx: Context, session: ChipAccess, threshold: float | None,
                written: dict[str, torch.Tensor]) -> tuple[FitReport, list[dict[str, float]], bool]:
    """The chip-in-the-loop training of :func:`_loop_train` (weights parametrized by the host model):
    (fit report, accuracy-versus-writes history, whether the budget stopped the writing)."""
    names = list(p.mods)

    def targets(n: str, w: torch.Tensor) -> dict[str, torch.Tensor]:
        return p.host.targets(n, weight_to_matrix(w), p.scales[n], "pair")
    loop = _ChipLoop(p.model, session, names)
    val = ctx.val.subset(min(cfg.eval_images, len(ctx.val)))
    history: list[dict[str, float]] = []
    stopped = {"budget": False}

    def measure(step: int) -> None:
        acc = chip_accuracy(session, p.model, names, val)
        history.append({"step": step, "writes": session.writes_issued, "ondevice_writes":
                        session.writes_issued - history_base, "val_accuracy": acc})

    def after_step(step: int) -> None:
        if not stopped["budget"]:
            planned: dict[str, torch.Tensor] = {}
            for n, m in p.mods.items():
                raw = _raw_weight(m).detach()
                if threshold is None:
                    planned[n] = raw.clone()
                else:
                    move = (raw - written[n]).abs() >= threshold * p.scales[n]
                    planned[n] = torch.where(move, raw, written[n])
            plan = {n: targets(n, planned[n]) for n in names}
            left = session.writes_left
            if left is not None and sum(session.count_writes(n, plan[n]) for n in names) > left:
                stopped["budget"] = True
            else:
                for n in names:
                    session.program_targets(n, plan[n])
                    written[n] = planned[n]
        if step % cfg.eval_every == 0:
            measure(step)

    history_base = session.writes_issued
    measure(0)
    rep = retrain(loop, lambda: p.teacher, cfg, ctx, hooks=TrainHooks(after_step=after_step, frozen=FROZEN),
                  desc="ondevice" if threshold is None else "threshold")
    steps = steps_of(cfg, ctx.train)
    if not history or history[-1]["step"] != steps:
        measure(steps)
    return rep, history, stopped["budget"]


def session_counts(session: ChipAccess) -> dict[str, int]:
    """The session's host-visible counts, for the report."""
    return dict(session.counts())


# --- codesign ---------------------------------------------------------------------------------------------
class _LayerIO:
    """One crossbar layer's geometry for turning recorded (input, output) into matrix rows."""

    def __init__(self, module: nn.Module):
        self.m = module
        self.groups = groups_of(module)
        """Column groups (a grouped convolution's), each driven by inputs of its own."""

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """Layer input -> (rows, groups * K) inputs of the matrix (group-major)."""
        if isinstance(self.m, (nn.Conv1d, nn.Conv2d)):
            return conv_rows(x, self.m)[0]
        return x.reshape(-1, x.shape[-1])

    def cols(self, y: torch.Tensor) -> torch.Tensor:
        """Layer output (B, N, *spatial) or (..., N) -> (rows, N), in the row order of :meth:`rows`."""
        if isinstance(self.m, (nn.Conv1d, nn.Conv2d)):
            return output_to_rows(y)
        return y.reshape(-1, y.shape[-1])

    def bias(self) -> torch.Tensor:
        b = getattr(self.m, "bias", None)
        return b.detach() if isinstance(b, torch.Tensor) else torch.zeros(())


def _safe(gain: torch.Tensor) -> torch.Tensor:
    """A gain register safe to divide by (a zero gain erases its column: nothing to invert)."""
    return torch.where(gain.abs() < 1e-6, torch.full_like(gain, 1e-6), gain)


def _record(session: ChipAccess, model: nn.Module, names: list[str], images: torch.Tensor, batch: int = 256
            ) -> Any:
    """Yield the chip's recorded {layer: (input, output)} over ``images`` in batches."""
    session.set_digital(_digital_state(model, names))
    for i in range(0, len(images), batch):
        _, rec = session.forward(images[i: i + batch], record=True)
        yield rec


def _fit_registers(session: ChipAccess, model: nn.Module, names: list[str], want: dict[str, torch.Tensor],
                   images: torch.Tensor) -> dict[str, list[float]]:
    """Per-column gain/offset, layer by layer from the input, so each layer's chip output (given the chip's
    own input to it) matches what the host intended (``want``: intended (K, N) matrices); zero writes."""
    modules = dict(model.named_modules())

    def intended(n: str, x: torch.Tensor, _batch: int) -> torch.Tensor:
        io = _LayerIO(modules[n])
        return grouped_matmul(io.rows(x), want[n], io.groups)

    return fit_columns(session, model, names, images, intended)


def fit_columns(session: ChipAccess, model: nn.Module, names: list[str], images: torch.Tensor,
                expected: Callable[[str, torch.Tensor, int], torch.Tensor]) -> dict[str, list[float]]:
    """Per-column gain/offset registers, layer by layer from the input (zero writes): each layer's output
    column, less its bias, is fitted by least squares to ``expected(name, layer input, batch index)``
    ((rows, N), the rows of :class:`_LayerIO`) over ``images`` in batches of 256, the earlier layers' new
    registers already set. Gains are kept in [0.25, 4]. Returns each layer's [min, max] gain."""
    modules = dict(model.named_modules())
    gains: dict[str, list[float]] = {}
    for n in names:
        io = _LayerIO(modules[n])
        sx = sy = sxx = sxy = None
        count = 0
        for b, rec in enumerate(_record(session, model, names, images)):
            x, y = rec[n]
            g0, o0 = session.registers(n)
            raw = ((io.cols(y) - io.bias() - o0) / _safe(g0)).double()  # (rows, N) the crossbar's own outputs
            exp = expected(n, x, b).double()  # (rows, N) what the column should give
            sx = raw.sum(0) if sx is None else sx + raw.sum(0)
            sy = exp.sum(0) if sy is None else sy + exp.sum(0)
            sxx = (raw * raw).sum(0) if sxx is None else sxx + (raw * raw).sum(0)
            sxy = (raw * exp).sum(0) if sxy is None else sxy + (raw * exp).sum(0)
            count += raw.shape[0]
        assert sx is not None and sy is not None and sxx is not None and sxy is not None
        mx, my = sx / count, sy / count
        var = sxx / count - mx * mx
        gain = torch.where(var > 1e-12, (sxy / count - mx * my) / var.clamp_min(1e-12), torch.ones_like(var))
        gain = gain.clamp(0.25, 4.0)
        offset = my - gain * mx
        session.set_registers(n, gain.float(), offset.float())
        gains[n] = [float(gain.min()), float(gain.max())]
    return gains


def _estimate(session: ChipAccess, model: nn.Module, names: list[str], prior: dict[str, torch.Tensor],
              images: torch.Tensor, ridge: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each layer's realised (K, N) matrix from the chip's layer inputs and outputs (ridge least squares
    toward ``prior``), and each row's mean input power as a (K, N)-broadcastable matrix
    (:func:`~ittrna.mapping.row_statistic`); zero writes. A grouped convolution's groups are fitted apart, each
    from its own inputs."""
    modules = dict(model.named_modules())
    io = {n: _LayerIO(modules[n]) for n in names}
    # the normal equations hold a (K, K) and a (K, N / G) float64 matrix per group of each layer, all layers
    # at once, and the solve needs about as much again for the largest layer
    ks = {n: int(modules[n].weight[0].numel()) for n in names}
    ns = {n: int(modules[n].weight.shape[0]) for n in names}
    gs = {n: io[n].groups for n in names}
    need = sum(8 * ks[n] * (gs[n] * ks[n] + ns[n]) for n in names) + max(
        16 * ks[n] * (gs[n] * ks[n] + ns[n]) for n in names)
    check_memory(need, f"codesign's chip estimate ({len(names)} layers, largest K = {max(ks.values())})")
    xtx: dict[str, torch.Tensor] = {}
    xty: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}
    regs = {n: session.registers(n) for n in names}
    for rec in _record(session, model, names, images):
        for n in names:
            x, y = rec[n]
            g0, o0 = regs[n]
            g = gs[n]
            xr = io[n].rows(x).double().reshape(-1, g, ks[n])  # (rows, G, K)
            raw = ((io[n].cols(y) - io[n].bias() - o0) / _safe(g0)).double().reshape(-1, g, ns[n] // g)
            xtx[n] = xtx.get(n, 0) + torch.einsum("rgk,rgl->gkl", xr, xr)  # (G, K, K)
            xty[n] = xty.get(n, 0) + torch.einsum("rgk,rgm->gkm", xr, raw)  # (G, K, N / G)
            rows[n] = rows.get(n, 0) + xr.shape[0]
    est, power = {}, {}
    for n in names:
        g, k, cols = gs[n], ks[n], ns[n]
        a = xtx[n] / rows[n]  # (G, K, K)
        b = xty[n] / rows[n]  # (G, K, N / G)
        diag = torch.diagonal(a, dim1=1, dim2=2)  # (G, K)
        lam = ridge * float(diag.mean().clamp_min(1e-12))
        eye = torch.eye(k, dtype=a.dtype)
        pull = prior[n].double().reshape(k, g, cols // g).permute(1, 0, 2)  # (G, K, N / G)
        fitted = torch.linalg.solve(a + lam * eye, b + lam * pull)  # (G, K, N / G)
        est[n] = fitted.permute(1, 0, 2).reshape(k, cols).float()
        power[n] = row_statistic(diag.reshape(-1).float(), g, cols)
    return est, power


def _retrain_digital(model: nn.Module, names: list[str], est: dict[str, torch.Tensor],
                     regs: dict[str, tuple[torch.Tensor, torch.Tensor]], ctx: Context, epochs: int, lr: float,
                     batch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Train biases and per-column gain/offset of a host copy whose crossbar weights are the estimated chip
    (fixed); returns the new registers and leaves the new biases in ``model``. Zero writes."""
    modules = dict(model.named_modules())
    gains = {n: nn.Parameter(regs[n][0].clone()) for n in names}
    offsets = {n: nn.Parameter(regs[n][1].clone()) for n in names}
    hooks = []
    for n in names:
        m = modules[n]
        with torch.no_grad():
            m.weight.copy_(matrix_to_weight(est[n], tuple(m.weight.shape)))
        m.weight.requires_grad_(False)

        def hook(mod: nn.Module, _i: Any, out: torch.Tensor, n: str = n) -> torch.Tensor:
            bias = getattr(mod, "bias", None)
            b: torch.Tensor | None = bias if isinstance(bias, torch.Tensor) else None
            shape = [1] * out.dim()
            shape[1 if isinstance(mod, (nn.Conv1d, nn.Conv2d)) else -1] = -1  # the channel dimension
            pre = out - (b.view(shape) if b is not None else 0)
            post = pre * gains[n].view(shape) + offsets[n].view(shape)
            return post + (b.view(shape) if b is not None else 0)

        hooks.append(m.register_forward_hook(hook))
    params = [*gains.values(), *offsets.values(),
              *(p for p in model.parameters() if p.requires_grad)]
    try:
        fit(model, ctx.train, epochs=epochs, lr=lr, batch_size=batch_size, seed=ctx.seed + 7, params=params,
            progress=ctx.progress, desc="digital", hooks=TrainHooks(frozen=FROZEN))
    finally:
        for h in hooks:
            h.remove()
    return {n: (gains[n].detach().clone(), offsets[n].detach().clone()) for n in names}


def _codesign_base(model: nn.Module, measured: MeasuredMap, cfg: CodesignConfig, ctx: Context) -> Deployment:
    """The off-device start, run through the registry with its own config."""
    base = cfg.base_for(any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in model.modules()))
    dep = run(base, model, measured, ctx)
    dep.report["base"] = config_name(type(base))
    return dep


def _codesign(model: nn.Module, measured: MeasuredMap, cfg: CodesignConfig, ctx: Context,
              session: ChipAccess) -> Deployment:
    dep = _codesign_base(model, measured, cfg, ctx)
    report: dict[str, Any] = {"base": dep.report.get("base"), "base_val_accuracy": dep.report.get("val_accuracy")}
    session.deploy(dep)
    host = HostChip(measured)
    for n, lay in dep.layouts.items():
        host.set_layout(n, lay)
    net = copy.deepcopy(model).cpu().eval()
    net.load_state_dict(dep.state_dict)
    names = dataflow_order(model, ctx.train.x[:1], session.layer_names)  # layer by layer along the data flow
    modules = dict(net.named_modules())
    scales = {n: dep.scales[n] for n in names}
    cmd = {n: weight_to_matrix(modules[n].weight.detach()).clone() for n in names}  # (K, N) commanded

    def predict(n: str) -> torch.Tensor:
        with torch.no_grad():
            return host.effective_matrix(n, cmd[n], scales[n], "pair")

    want = {n: predict(n) for n in names}  # what the off-device training optimised for
    gen = ctx.generator(41)
    perm = torch.randperm(len(ctx.train), generator=gen)[: cfg.calib_images]
    images = ctx.train.x[perm]
    val = ctx.val.subset(min(2000, len(ctx.val)))
    history: list[dict[str, Any]] = [{"stage": "deployed", "writes": session.writes_issued, "val_accuracy":
                chip_accuracy(session, net, names, val)}]
    report["register_gain_range"] = _fit_registers(session, net, names, want, images)
    history.append({"stage": "registers", "writes": session.writes_issued,
                    "val_accuracy": chip_accuracy(session, net, names, val)})
    corrections = {n: torch.zeros_like(cmd[n], dtype=torch.int64) for n in names}
    chosen_total = 0
    for it in range(cfg.iterations):
        left = session.writes_left
        if left is not None and left < 2:
            break
        est, power = _estimate(session, net, names, {n: predict(n) for n in names}, images, cfg.ridge)
        sal = {}
        for n in names:
            err = est[n] - want[n]  # (K, N)
            signal = (want[n] ** 2 * power[n]).sum(0).clamp_min(1e-12)  # (N,)
            s = err**2 * power[n] / signal  # share of each column's output power in error
            sal[n] = torch.where(corrections[n] >= cfg.max_corrections, torch.zeros_like(s), s)
        flat = torch.cat([sal[n].flatten() for n in names])
        budget_now = (left if left is not None else 10**12) // max(cfg.iterations - it, 1)
        m = min(int(budget_now // 2), int((flat > 0).sum()))
        if m <= 0:
            break
        while m > 0:
            cut = torch.topk(flat, m).values[-1]
            plans: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
            need = 0
            for n in names:
                pick = (sal[n] >= cut) & (sal[n] > 0)
                if not bool(pick.any()):
                    continue
                e, w = est[n], want[n]
                ratio = w / torch.where(e.abs() > 1e-12, e, torch.ones_like(e))
                mult = (torch.sign(e) == torch.sign(w)) & (e.abs() > 0.1 * w.abs()) & (cmd[n] != 0)
                fixed = torch.where(mult, cmd[n] * ratio.clamp(0.5, 2.0), cmd[n] + (w - e))
                new = torch.where(pick, fixed, cmd[n])
                targets = host.targets(n, new, scales[n], "pair")
                need += session.count_writes(n, targets)
                plans[n] = (new, targets)
            if left is None or need <= left:
                break
            m //= 2
        if m <= 0:
            break
        for n, (new, targets) in plans.items():
            session.program_targets(n, targets)
            corrections[n] += (new != cmd[n]).to(torch.int64)
            cmd[n] = new
        chosen_total += m
        # the rewritten weights changed their columns: refit the registers to them (zero writes), so they
        # never keep compensating an error the rewrite removed
        _fit_registers(session, net, names, want, images)
        history.append({"stage": f"iteration {it + 1}", "writes": session.writes_issued,
                        "val_accuracy": chip_accuracy(session, net, names, val)})
    if cfg.digital_epochs > 0:
        est, _ = _estimate(session, net, names, {n: predict(n) for n in names}, images, cfg.ridge)
        before = history[-1]["val_accuracy"]
        old_regs = {n: session.registers(n) for n in names}
        old_digital = _digital_state(net, names)
        trial = copy.deepcopy(net)
        new_regs = _retrain_digital(trial, names, est, old_regs, ctx, cfg.digital_epochs, cfg.digital_lr,
                                    cfg.batch_size)
        for n in names:
            session.set_registers(n, *new_regs[n])
        digital = _digital_state(trial, names)
        net.load_state_dict({**net.state_dict(), **digital})
        after = chip_accuracy(session, net, names, val)
        if after < before:  # the chip says no: restore the registers and biases
            for n in names:
                session.set_registers(n, *old_regs[n])
            net.load_state_dict({**net.state_dict(), **old_digital})
        history.append({"stage": "digital", "writes": session.writes_issued,
                        "val_accuracy": max(after, before), "kept": after >= before})
    # the final deployment: the chip's current targets, registers and digital parameters
    with torch.no_grad():
        for n in names:
            modules[n].weight.copy_(matrix_to_weight(cmd[n], tuple(modules[n].weight.shape)))
    final = {n: host.targets(n, cmd[n], scales[n], "pair") for n in names}
    registers = {n: dict(zip(("gain", "offset"), session.registers(n), strict=True)) for n in names}
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    report.update(history=history, weights_rewritten=chosen_total, val_accuracy=history[-1]["val_accuracy"],
                  **session_counts(session))
    return Deployment(state, scales, dict(dep.layouts), final, report, registers)


# --- registry ---------------------------------------------------------------------------------------------
OnDeviceFn = Callable[[nn.Module, MeasuredMap, Any, Context, ChipAccess], Deployment]


@register("ondevice", "on-device", ChipLoopConfig, 2,
          "full chip-in-the-loop retraining: forward on the chip, backward in software, every changed weight "
          "written each step (the accuracy ceiling and the write cost to beat)",
          builds_on=("program",))
def _ondevice(model: nn.Module, measured: MeasuredMap, cfg: ChipLoopConfig, ctx: Context,
              session: ChipAccess) -> Deployment:
    return _loop_train(model, measured, cfg, ctx, session, None)


@register("threshold", "on-device", ThresholdConfig, 2,
          "chip-in-the-loop retraining writing a weight only when its accumulated update exceeds a threshold "
          "(Xia et al., DAC 2017)",
          builds_on=("ondevice",))
def _threshold(model: nn.Module, measured: MeasuredMap, cfg: ThresholdConfig, ctx: Context,
               session: ChipAccess) -> Deployment:
    return _loop_train(model, measured, cfg, ctx, session, cfg.threshold)


@register("codesign", "on-device", CodesignConfig, 4,
          "ITT-RNA part 3 (reconstructed): dynamic (MLPs) or remap-fat (CNNs) off-device, zero-write per-column "
          "gain/offset from the chip, then at most K budgeted rewrite iterations steered by the chip's measured "
          "layer errors",
          builds_on=("aft", "dynamic", "remap-fat"))
def _codesign_method(model: nn.Module, measured: MeasuredMap, cfg: CodesignConfig, ctx: Context,
                     session: ChipAccess) -> Deployment:
    return _codesign(model, measured, cfg, ctx, session)
