"""Refresh under a write budget: re-program, at a later time, only the cells whose relaxation costs the network
most (selective write-verify ranked by weight importance, after SWIM: Yan et al., DAC 2022).

After programming, cells relax (``relaxation``): the longer the chip waits, the further each cell strays from
what the host wrote. Re-programming the whole chip undoes it at the cost of a write per cell, and every write
wears the cells. A refresh spends a small budget instead (``budget``, a fraction of the writes of
re-programming the whole chip) where it removes the most expected loss. The host ranks every cell it may
write (healthy in the measured map, carrying a weight) by

    score = F(w) * (dw/dG)^2 * E[(G(t) - G0)^2],

where

- ``F(w)`` is the weight's importance (``rank = "importance"``; ``deviation`` takes every weight alike, and
  ``random`` orders the candidates at random: the baselines), the diagonal of the empirical Fisher
  information of the deployed network (squared gradients of the cross-entropy against the network's own
  predictions, on training images, summed over mini-batches): SWIM's second-derivative ranking, in its
  first-order form;
- ``dw/dG`` is the converter's weight per siemens at the layer's scale (design knowledge);
- ``E[(G(t) - G0)^2]`` is the relaxation model's expected squared deviation at the cell's age, computed from
  the model and its parameters (the datasheet, the design's ``relaxation`` section), at the conductance the
  host predicts right after the write (its target times the measured variation factor e^theta), as the mean
  over ``quantiles`` fixed quantiles of the model's N(0, 1) draw. The host never reads a cell's own
  trajectory: a cell's fixed random part is truth.

It then rewrites the best-ranked cells (:meth:`ittrna.session.ChipSession.rewrite`: same target, fresh
programming noise, age 0), at most ``floor(budget * full)`` of them, ``full`` being the cells the network's
layers use (every cell a whole re-programming writes), and only cells whose expected deviation exceeds
``min_error`` (a fraction of Gmax). The session's write budget enforces the limit; the report states what was
spent. The host assumes every cell's age is the time since the deployment was programmed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ittrna.config import CellConfig, RefreshConfig, RelaxationConfig
from ittrna.device.relaxation import relax
from ittrna.host import ChipAccess, Deployment, MeasuredMap
from ittrna.mapping import LayerLayout, to_physical, used_cells, weight_to_matrix
from ittrna.mapping.converters import CONVERTERS

__all__ = ["RefreshConfig", "expected_sq_deviation", "full_writes", "importance", "refresh"]


def importance(model: nn.Module, names: list[str], images: torch.Tensor, batch_size: int = 32
               ) -> dict[str, torch.Tensor]:
    """Per crossbar layer, the diagonal empirical Fisher information of its weight (the weight's shape):
    squared gradients of the cross-entropy against the network's own predictions, summed over mini-batches
    of ``images``. ``model`` runs in eval mode (frozen BatchNorm statistics) and is not changed."""
    modules = dict(model.named_modules())
    weights = {n: modules[n].weight for n in names}
    fisher = {n: torch.zeros_like(w, dtype=torch.float64) for n, w in weights.items()}
    was = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            with torch.enable_grad():
                logits = model(x)
                loss = F.cross_entropy(logits, logits.detach().argmax(1), reduction="sum")
                grads = torch.autograd.grad(loss, [weights[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads, strict=True):
                if g is not None:
                    fisher[n] += g.detach().double() ** 2
    finally:
        model.train(was)
    return {n: f.float() for n, f in fisher.items()}


def expected_sq_deviation(g0: torch.Tensor, target: torch.Tensor, age: float, cfg: RelaxationConfig,
                          cell: CellConfig, quantiles: int = 16) -> torch.Tensor:
    """E[(G(age) - G0)^2] (siemens^2) of cells written to ``target`` that presented ``g0`` right after the
    write: the relaxation model's deviation averaged over ``quantiles`` fixed quantiles of its N(0, 1) draw
    (no randomness; any shape, float32)."""
    if cfg.model == "none" or age <= 0.0:
        return torch.zeros_like(g0)
    p = (torch.arange(quantiles, dtype=torch.float64) + 0.5) / quantiles
    zs = torch.special.ndtri(p).to(torch.float32)  # (Q,)
    ages = torch.full(g0.shape, float(age), dtype=torch.float64)
    total = torch.zeros(g0.shape, dtype=torch.float64)
    for z in zs:  # Q whole-tensor evaluations of the model
        g = relax(g0, target, ages, torch.full_like(g0, float(z)), cfg, cell)
        total += (g.double() - g0.double()) ** 2
    return (total / quantiles).float()


def _per_array(values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Physical (Kph, Np) values onto an array of ``shape``: itself, or summed per tile of columns (a reference
    column per tile: the offset scheme)."""
    if tuple(values.shape) == tuple(shape):
        return values
    rows, tiles = shape
    return values.reshape(rows, tiles, -1).sum(-1)


def full_writes(measured: MeasuredMap, deployment: Deployment) -> int:
    """Writes of re-programming the whole chip: every cell the network's layers use (both cells of a pair,
    the offset scheme's reference cells on rows that carry weights), under the deployment's layouts."""
    converter = CONVERTERS[measured.design.mapping.scheme]
    total = 0
    for name in measured.layers:
        grid = measured.grid(name)
        layout = deployment.layouts.get(name, LayerLayout.identity(grid))
        total += sum(int(m.sum()) for m in used_cells(grid, layout, converter.array_shapes(grid)).values())
    return total


def refresh(session: ChipAccess, model: nn.Module, measured: MeasuredMap, deployment: Deployment,
            cfg: RefreshConfig, age: float, images: torch.Tensor, seed: int = 0) -> dict[str, Any]:
    """Rewrite the best-ranked cells within the budget (see the module docstring).

    Args:
        session: the chip, programmed with ``deployment`` (its write budget should be the refresh's own).
        model: the host's copy of the deployed network (its digital state; not changed).
        measured: the chip's measured map (faults and theta the test reported; the design).
        deployment: what was programmed (weights, scales, layouts, explicit targets).
        cfg: the refresh's settings.
        age: seconds since the deployment was programmed (every cell's age, as the host counts it).
        images: training images for the importance (never test data).
        seed: seeds the ``random`` rank's order (unused by the others).

    Returns:
        A report: ``refresh_writes`` (issued), ``refresh_full_writes``, ``refresh_candidates`` (cells over
        the bound), ``refresh_expected_removed`` (share of the candidates' summed score the rewritten cells
        carry) and the writes per layer.
    """
    design = measured.design
    cell, relaxation = design.cell, design.relaxation
    converter = CONVERTERS[design.mapping.scheme]
    names = session.layer_names
    fisher = importance(model, names, images[:cfg.images], cfg.batch_size) if cfg.rank == "importance" else None
    scores: dict[tuple[str, str], torch.Tensor] = {}
    for name in names:
        grid = measured.grid(name)
        layout = deployment.layouts.get(name, LayerLayout.identity(grid))
        weight = deployment.state_dict[f"{name}.weight"]
        scale = session.scale(name)
        targets: Mapping[str, torch.Tensor] = deployment.targets.get(name) or session.weight_targets(name, weight)
        if fisher is not None:
            imp = to_physical(weight_to_matrix(fisher[name]).float(), grid, layout).abs()  # (Kph, Np)
        else:  # every weight alike
            imp = to_physical(torch.ones_like(weight_to_matrix(weight.detach())).float(), grid, layout).abs()
        used = used_cells(grid, layout, converter.array_shapes(grid))
        per_siemens = converter.weight_per_siemens(scale, cell)
        for aname, t in targets.items():
            t = t.detach().float().cpu()
            m = measured.layers[name][aname]
            shape = (int(t.shape[0]), int(t.shape[1]))
            g0 = t * torch.exp(m["theta"].float())  # what the host expects the write presented
            e2 = expected_sq_deviation(g0, t, age, relaxation, cell, cfg.quantiles)  # (rows, cols) S^2
            ok = used[aname] & (m["fault"] == 0) & (e2 > (cfg.min_error * cell.g_max) ** 2)
            score = _per_array(imp, shape) * per_siemens ** 2 * e2.double()
            scores[(name, aname)] = torch.where(ok & (score > 0), score, torch.zeros_like(score))
    full = full_writes(measured, deployment)
    allowed = math.floor(cfg.budget * full)
    flat = torch.cat([s.flatten() for s in scores.values()]) if scores else torch.zeros(0, dtype=torch.float64)
    candidates = int((flat > 0).sum())
    scored = flat  # the ranking's own score (what "removed" is measured in)
    if cfg.rank == "random":  # a random order of the same candidates: the baseline of a ranking
        gen = torch.Generator().manual_seed(int(seed) ^ 0x52465348)
        flat = torch.where(flat > 0, torch.rand(flat.shape, generator=gen, dtype=torch.float64) + 1e-12, flat)
    k = min(allowed, candidates)
    # ties at the threshold: top-k chooses among them (the same on every run of one build), never past the budget
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    threshold = None
    if k > 0:
        top = torch.topk(flat, k, sorted=False)
        chosen[top.indices] = True
        threshold = float(top.values.min())
    removed = float(scored[chosen].sum() / scored.sum()) if candidates else 0.0
    per_layer: dict[str, int] = {}
    offset = 0
    masks: dict[str, dict[str, torch.Tensor]] = {}
    for (name, aname), s in scores.items():
        n = s.numel()
        masks.setdefault(name, {})[aname] = chosen[offset:offset + n].reshape(s.shape)
        offset += n
    written = 0
    for name, arrays in masks.items():
        per_layer[name] = session.rewrite(name, arrays)
        written += per_layer[name]
    return {"refresh_writes": written, "refresh_full_writes": full, "refresh_allowed": allowed,
            "refresh_candidates": candidates, "refresh_expected_removed": removed,
            "refresh_threshold": threshold, "refresh_per_layer": per_layer, "age": age}
