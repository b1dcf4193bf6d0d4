"""BatchNorm re-estimation: zero-write compensation for networks with normalisation layers.

A chip's errors shift every activation's statistics, while a trained network's BatchNorm layers keep the
running mean and variance of the software model: each BatchNorm then re-centres and re-scales wrongly, and
the error grows through the layers. Re-estimating those statistics on the imperfect network (Joshi et al.,
Nat. Commun. 11, 2473 (2020), "Accurate deep neural network inference using computational phase-change
memory": BN-based compensation; AdaBN, Li et al. 2016) costs forward passes and no cell write.

- ``bn`` (off-device): ``program``, then every BatchNorm layer's statistics re-estimated on training
  images through the host model of the measured map (the weights the host predicts the chip realises).
- ``bn-chip`` (on-device): ``program``, then the statistics re-estimated from the chip's own forward passes
  (the host computes BatchNorm digitally, so it reads each BatchNorm layer's input on the chip).

Both go layer by layer along the data flow, so each layer's statistics are those of its input with every
earlier layer already re-estimated. The running variance is the unbiased estimate, as BatchNorm keeps it.
:func:`reestimate` is the step itself, for any method to use with its own way of reading the inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ittrna.graph import dataflow_order
from ittrna.host import ChipAccess, Deployment, MeasuredMap
from ittrna.methods.base import Context, register
from ittrna.methods.configs import BnChipConfig, BnConfig
from ittrna.methods.ondevice import _digital_state, chip_accuracy, session_counts
from ittrna.methods.retrain import Pipeline

__all__ = ["norm_layers", "reestimate", "reestimate_on_chip"]


def norm_layers(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The model's BatchNorm layers that track running statistics and that a forward pass calls, in data-flow
    order (a layer the pass never calls has no input to estimate from)."""
    found = {n: m for n, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
             and m.running_mean is not None}
    order = dataflow_order(model, example, list(found), uncalled=False) if found else []
    return [(n, found[n]) for n in order]


def reestimate(norms: list[tuple[str, nn.modules.batchnorm._BatchNorm]], images: torch.Tensor, batch_size: int,
               read_input: Callable[[torch.Tensor, str], torch.Tensor | list[torch.Tensor]],
               after: Callable[[str], None]) -> None:
    """Re-estimate each layer's running mean and variance from its inputs, layer by layer.

    Args:
        norms: (name, BatchNorm) in data-flow order; their buffers are set in place.
        images: the inputs the statistics are taken on.
        batch_size: images per pass.
        read_input: ``(batch, name) -> the input of layer name`` (N, C, ...) on that batch, computed with the
            statistics set so far; for a layer called several times in one pass, a list of every call's input
            (its statistics are pooled over all calls, as training's running averages see them all).
        after: called with a layer's name once its statistics are set (e.g. to hand them to the chip).
    """
    for name, bn in norms:
        total = torch.zeros(bn.num_features, dtype=torch.float64)
        square = torch.zeros(bn.num_features, dtype=torch.float64)
        count = 0
        for start in range(0, images.shape[0], batch_size):
            got = read_input(images[start : start + batch_size], name)
            for x in (got if isinstance(got, list) else [got]):  # each (N, C, ...)
                x = x.double()
                dims = [0, *range(2, x.dim())]
                total += x.sum(dims).cpu()
                square += (x * x).sum(dims).cpu()
                count += x.numel() // x.shape[1]
        mean = total / count
        var = (square / count - mean * mean).clamp_min(0) * (count / max(count - 1, 1))  # unbiased, as BN keeps it
        with torch.no_grad():
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.copy_(mean.to(bn.running_mean))
            bn.running_var.copy_(var.to(bn.running_var))
        after(name)


def reestimate_on_chip(session: ChipAccess, model: nn.Module, names: list[str], images: torch.Tensor,
                       batch_size: int) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """:func:`reestimate` from the chip's own forward passes (zero writes): each BatchNorm layer's input is
    read on the chip (``taps``) with the earlier layers' new statistics already handed to it; ``model`` (the
    host's copy, crossbar layers ``names``) gets the statistics in place. Returns the layers re-estimated."""
    norms = norm_layers(model, images[:1])

    def read_input(x: torch.Tensor, name: str) -> torch.Tensor:
        return session.forward(x, taps=[name])[1][f"taps:{name}"][0]

    def hand_over(_name: str) -> None:
        session.set_digital(_digital_state(model, names))

    session.set_digital(_digital_state(model, names))
    reestimate(norms, images, batch_size, read_input, hand_over)
    return norms


def _images(cfg: BnConfig, ctx: Context) -> torch.Tensor:
    n = min(cfg.images, len(ctx.train))
    return ctx.train.x[torch.randperm(len(ctx.train), generator=ctx.generator(61))[:n]]


@register("bn", "off-device", BnConfig, 1,
          "program, then BatchNorm statistics re-estimated through the host model of the measured map (zero "
          "writes; Joshi et al., Nat. Commun. 2020)",
          builds_on=("program",))
def _bn(model: nn.Module, measured: MeasuredMap, cfg: BnConfig, ctx: Context) -> Deployment:
    p = Pipeline(model, measured, ctx)
    p.choose_scales(cfg.program)
    norms = norm_layers(p.model, ctx.train.x[:1].to(ctx.device))
    modules = dict(p.model.named_modules())
    weights = {f"{n}.weight": p.effective(n, p.scales[n], "pair") for n in p.mods}  # what the chip realises

    def read_input(x: torch.Tensor, name: str) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []  # every call's input
        hook = modules[name].register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].detach()))
        try:
            with torch.no_grad():
                functional_call(p.model, weights, (x.to(ctx.device),))
        finally:
            hook.remove()
        return seen

    reestimate(norms, _images(cfg, ctx), cfg.batch_size, read_input, lambda _n: None)
    p.report.update(norm_layers=len(norms))
    return p.deployment("pair")


@register("bn-chip", "on-device", BnChipConfig, 1,
          "program, then BatchNorm statistics re-estimated from the chip's own forward passes, layer by layer "
          "(zero writes)",
          builds_on=("program",))
def _bn_chip(model: nn.Module, measured: MeasuredMap, cfg: BnChipConfig, ctx: Context,
             session: ChipAccess) -> Deployment:
    p = Pipeline(model, measured, ctx)
    p.model.cpu()
    p.choose_scales(cfg.program)
    session.deploy(p.deployment("pair"))
    names = list(p.mods)
    norms = reestimate_on_chip(session, p.model, names, _images(cfg, ctx), cfg.batch_size)
    val = ctx.val.subset(min(2000, len(ctx.val)))
    report: dict[str, Any] = {"norm_layers": len(norms), **session_counts(session)}
    out = p.deployment("pair")
    out.report.update(report, val_accuracy=chip_accuracy(session, p.model, names, val))
    return out
