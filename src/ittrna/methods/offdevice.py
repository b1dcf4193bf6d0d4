"""Off-device tolerance methods: from the software model and one chip's measured map to a deployment.

Each method builds on the previous ones (the gain of every step shows in the tables):

- ``none``: the software weights, programmed plainly (the loss to beat).
- ``noise``: chip-agnostic variation/fault-injection training (Vortex, Liu et al., DAC 2015; aihwkit's
  hardware-aware training): every batch sees freshly drawn faults and theta at the rates the map shows.
- ``program``: defect-aware programming, closed form: the pair rule of :mod:`ittrna.methods.hostmodel` and a
  per-layer scale s = h * max|w|, h chosen on validation data through the host model.
- ``remap``: ``program`` plus the optimal per-tile row routing and column polarity (:mod:`.remap`).
- ``aft``: accelerator-friendly training (Chen et al., DATE 2017; ITT-RNA part 1) after ``remap``: weights on
  imperfect cells are shrunk and frozen progressively, most damaging first, while the rest retrain.
- ``dynamic``: ITT-RNA part 2 (our reconstruction): layer by layer from the input, each layer's imperfect
  weights are frozen with a threshold set from the error measured at that layer, and the layers from it on
  retrain against the imperfect outputs of the layers before it.
- ``fat``: exact fault-aware retraining (Liu et al., DAC 2017): the host model in the forward pass,
  straight-through gradients to every weight with a programmable cell; with an imperfect test, the test's
  stated error is injected while retraining.
- ``remap-fat``: ``remap`` then ``fat``.
"""


from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ittrna.host import Deployment, MeasuredMap
from ittrna.mapping import matrix_to_weight, weight_scale, weight_to_matrix
from ittrna.methods.base import Context, register
from ittrna.methods.configs import (
    AftConfig,
    DynamicConfig,
    FatConfig,
    NoiseConfig,
    NoneConfig,
    ProgramConfig,
    RemapConfig,
    RemapFatConfig,
)
from ittrna.methods.hostmodel import realise
from ittrna.methods.retrain import (
    Frozen,
    HostEffective,
    Injected,
    Pipeline,
    parametrized,
    retrain,
    retrain_fat,
    steps_of,
    test_error,
)
from ittrna.training import TrainHooks

__all__: list[str] = []  # the methods are reached through the registry; their settings live in methods.configs


# --- methods ----------------------------------------------------------------------------------------------
@register("none", "off-device", NoneConfig, 1, "program the software weights as they are (the loss to beat)")
def _none(model: nn.Module, measured: MeasuredMap, cfg: NoneConfig, ctx: Context) -> Deployment:
    return Pipeline(model, measured, ctx).deployment("plain")


@register("noise", "off-device", NoiseConfig, 2,
          "chip-agnostic fault/variation injection training (Liu et al., DAC 2015 'Vortex'; aihwkit HWA training)")
def _noise(model: nn.Module, measured: MeasuredMap, cfg: NoiseConfig, ctx: Context) -> Deployment:
    p = Pipeline(model, measured, ctx)
    sig_err, _, share = test_error(p.host, measured)
    thetas = torch.cat([f["theta"].flatten().float() for arrs in measured.layers.values() for f in arrs.values()])
    sigma = cfg.sigma if cfg.sigma >= 0 else math.sqrt(max(float(thetas.var()) - sig_err**2, 0.0))
    rate = cfg.fault_rate if cfg.fault_rate >= 0 else min(measured.fault_fraction(), 0.99)
    p.report.update(injected_sigma=sigma, injected_fault_rate=rate)
    if rate == 0 and sigma == 0:  # nothing to inject: retraining would only be label training of a trained model
        p.report.update(epochs=0)
        return p.deployment("plain")
    gen = ctx.generator(21)
    with parametrized(p.model, {n: [Injected(p.host, rate, share, sigma, gen)] for n in p.mods}, keep=False):
        rep = retrain(p.model, lambda: p.teacher, cfg, ctx, desc="noise")
    p.scales = {n: weight_scale(m.weight, 100.0) for n, m in p.mods.items()}
    p.report.update(epochs=rep.epochs)
    return p.deployment("plain")


@register("program", "off-device", ProgramConfig, 2,
          "defect-aware programming: pair partner cancels a stuck cell, measured e^theta divided out, "
          "per-layer scale chosen on validation data (closed form, no retraining)")
def _program(model: nn.Module, measured: MeasuredMap, cfg: ProgramConfig, ctx: Context) -> Deployment:
    p = Pipeline(model, measured, ctx)
    p.choose_scales(cfg)
    return p.deployment("pair")


def _program_and_remap(model: nn.Module, measured: MeasuredMap, cfg: RemapConfig, ctx: Context,
                       remap: bool = True) -> Pipeline:
    p = Pipeline(model, measured, ctx)
    p.choose_scales(cfg)
    if remap:
        p.remap(cfg)
        p.choose_scales(cfg)
    return p


@register("remap", "off-device", RemapConfig, 2,
          "program + per-tile optimal row routing and column polarity by linear assignment, spare rows used "
          "(DATE'17; Liu et al., DAC 2017)",
          builds_on=("program",))
def _remap(model: nn.Module, measured: MeasuredMap, cfg: RemapConfig, ctx: Context) -> Deployment:
    return _program_and_remap(model, measured, cfg, ctx).deployment("pair")


@register("aft", "off-device", AftConfig, 2,
          "accelerator-friendly training: weights on imperfect cells shrunk and frozen progressively, healthy "
          "weights retrain (Chen et al., DATE 2017; ITT-RNA part 1)",
          builds_on=("remap",))
def _aft(model: nn.Module, measured: MeasuredMap, cfg: AftConfig, ctx: Context) -> Deployment:
    p = _program_and_remap(model, measured, cfg, ctx, remap=cfg.remap)
    start = p.snapshot()
    imp = p.importance(cfg.importance_images)
    frozen: dict[str, Frozen] = {}
    order: dict[str, torch.Tensor] = {}
    for n, m in p.mods.items():
        bad = p.imperfect(n, cfg.tau)
        dmg = torch.where(bad, p.damage(n, imp[n]), -1.0).flatten()
        order[n] = torch.argsort(dmg, descending=True)[: int(bad.sum())]  # imperfect, most damaging first
        frozen[n] = Frozen(tuple(m.weight.shape), ctx.device)
    phases = max(cfg.epochs, 1)

    def freeze_phase(epoch: int) -> None:
        for n, m in p.mods.items():
            idx = order[n]
            lo, hi = (epoch * idx.numel()) // phases, ((epoch + 1) * idx.numel()) // phases
            chunk = idx[lo:hi]
            if chunk.numel() == 0:
                continue
            with torch.no_grad():
                raw = m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight
                w = frozen[n](raw.detach())
                eff = realise(weight_to_matrix(cfg.shrink * w), p.host.view(n), p.scales[n], p.host.cell,
                              "pair", targets=False)[0]
                vals = matrix_to_weight(eff, tuple(w.shape)).flatten()
                frozen[n].values.view(-1)[chunk] = vals[chunk]
                frozen[n].mask.view(-1)[chunk] = True

    with parametrized(p.model, {n: [frozen[n]] for n in p.mods}, keep=True):
        if cfg.epochs == 0:
            freeze_phase(0)
        rep = retrain(p.model, lambda: p.teacher, cfg, ctx, desc="aft", hooks=TrainHooks(before_epoch=freeze_phase))
    p.keep_if_better(start, cfg)
    p.report.update(epochs=rep.epochs, frozen={n: int(f.mask.sum()) for n, f in frozen.items()})
    return p.deployment("pair")


@register("dynamic", "off-device", DynamicConfig, 3,
          "ITT-RNA part 2 (reconstructed): layer by layer from the input, each layer moves onto the chip model "
          "with its imperfect weights frozen under a threshold set by the error measured there, while all "
          "layers keep retraining against the imperfect outputs before them",
          builds_on=("remap",))
def _dynamic(model: nn.Module, measured: MeasuredMap, cfg: DynamicConfig, ctx: Context) -> Deployment:
    p = _program_and_remap(model, measured, cfg, ctx, remap=cfg.remap)
    start = p.snapshot()
    names = list(p.mods)
    probe = ctx.val.subset(min(1000, len(ctx.val)))
    gen = ctx.generator(31)
    steps = steps_of(cfg, ctx.train)
    starts = [(li * steps) // len(names) for li in range(len(names))]  # phase li begins at this step
    taus: dict[str, float] = {}
    errors: dict[str, float] = {}
    frozen_counts: dict[str, int] = {}

    def enter(li: int) -> None:
        """Phase li: measure layer li's error on the imperfect outputs of the layers before it (already on the
        chip model), freeze its imperfect weights under the adjusted threshold, put it on the chip model."""
        name, m = names[li], p.mods[names[li]]
        was_training = p.model.training
        p.model.eval()
        captured: list[torch.Tensor] = []
        h = m.register_forward_hook(lambda _m, inp, _o, out=captured: out.append(inp[0].detach()))
        with torch.no_grad():
            p.model(probe.x.to(ctx.device))
        h.remove()
        x = captured[0]
        with torch.no_grad():
            w = m.weight.detach()
            w_eff = p.effective(name, p.scales[name], "pair")
            conv = isinstance(m, (nn.Conv1d, nn.Conv2d))
            y_sw = m._conv_forward(x, w, None) if conv else F.linear(x, w)
            y_eff = m._conv_forward(x, w_eff, None) if conv else F.linear(x, w_eff)
        err = float((y_eff - y_sw).norm() / y_sw.norm().clamp_min(1e-12))
        tau = cfg.tau * max(1.0, err / cfg.error_ref)  # more error here: more weights left free to compensate
        taus[name], errors[name] = tau, err
        frozen = Frozen(tuple(w.shape), ctx.device)
        bad = p.imperfect(name, tau)
        frozen.mask.copy_(bad)
        frozen.values.copy_(p.effective(name, p.scales[name], "pair", shrink=cfg.shrink))
        frozen_counts[name] = int(bad.sum())
        parametrize.register_parametrization(m, "weight", frozen)
        parametrize.register_parametrization(m, "weight", HostEffective(p.host, name, p.scales[name], None, gen))
        p.model.train(was_training)

    entered = 0

    def after_step(step: int) -> None:
        nonlocal entered
        while entered < len(names) and step >= starts[entered]:
            enter(entered)
            entered += 1

    # phases add their parametrizations as training reaches them; leaving bakes the realised weights in
    # (programming them realises them again)
    with parametrized(p.model, {}, keep=True):
        after_step(0)
        rep = retrain(p.model, lambda: p.teacher, cfg, ctx, desc="dynamic", hooks=TrainHooks(after_step=after_step))
        after_step(steps + 1)  # any phase not reached (e.g. epochs = 0)
    p.keep_if_better(start, cfg)
    p.report.update(epochs=rep.epochs, tau=taus, layer_error=errors, frozen=frozen_counts)
    return p.deployment("pair")


@register("fat", "off-device", FatConfig, 2,
          "exact fault-aware retraining through the measured effective-weight function, gradients to healthy "
          "cells (Liu et al., DAC 2017), after program",
          builds_on=("remap",))
def _fat(model: nn.Module, measured: MeasuredMap, cfg: FatConfig, ctx: Context) -> Deployment:
    p = _program_and_remap(model, measured, cfg, ctx, remap=cfg.remap)
    retrain_fat(p, cfg, measured)
    return p.deployment("pair")


@register("remap-fat", "off-device", RemapFatConfig, 2,
          "remap + program + fat: optimal routing, defect-aware programming, then fault-aware retraining",
          builds_on=("fat",))
def _remap_fat(model: nn.Module, measured: MeasuredMap, cfg: RemapFatConfig, ctx: Context) -> Deployment:
    return _fat(model, measured, cfg, ctx)
