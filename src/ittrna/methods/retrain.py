"""The machinery every off-device method shares, and the one retraining helper.

- :class:`Pipeline`: the host-side state of one method run — a copy of the model, the host model of the
  measured map (:class:`~ittrna.methods.hostmodel.HostChip`), the layers in data-flow order and their scales —
  with the steps the methods are made of: the scale search, remapping, importance, snapshots and the
  keep-if-better rule, and the final :class:`~ittrna.host.Deployment`.
- Parametrizations: :class:`HostEffective` (weight -> what the host predicts the chip realises), :class:`Frozen`
  (some entries fixed) and :class:`Injected` (fresh random faults/theta per batch).
- :func:`retrain_layers`: "retrain these parametrized layers with this loss" — register the
  parametrizations, run the one training loop (:func:`ittrna.training.fit`) with the config's schedule and
  loss, remove them (keeping the realised weights or the raw ones) — used by every retraining method.
"""

from __future__ import annotations

import copy
import functools
import math
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from ittrna._resources import available_memory, check_memory
from ittrna.data import Split
from ittrna.device.relaxation import check_fitted
from ittrna.errors import InputError
from ittrna.graph import MAPPED, dataflow_order
from ittrna.host import Deployment, MeasuredMap
from ittrna.mapping import (
    conv_row_power,
    conv_rows,
    groups_of,
    matrix_to_weight,
    row_statistic,
    weight_scale,
    weight_to_matrix,
)
from ittrna.methods.base import Context
from ittrna.methods.configs import FatConfig, ProgramConfig, RemapConfig, RetrainConfig
from ittrna.methods.hostmodel import HostChip, realise, sample_view
from ittrna.methods.remap import remap_layer
from ittrna.training import FitReport, TrainHooks, fit

__all__ = [
    "Frozen",
    "HostEffective",
    "Injected",
    "Pipeline",
    "mean_correct",
    "parametrized",
    "retrain",
    "retrain_fat",
    "significantly_better",
    "steps_of",
    "test_error",
    "unparametrize",
]


@dataclass(frozen=True)
class Horizon:
    """The deployment horizon a retraining anticipates (``FatConfig.horizon``)."""

    age: float
    """Seconds after programming (> 0)."""

    def __post_init__(self) -> None:
        if not self.age > 0:
            raise ValueError(f"Horizon.age = {self.age!r}; accepted > 0 seconds")


class Pipeline:
    """The host-side state one method run builds up: the host chip model, the layers, their scales."""

    def __init__(self, model: nn.Module, measured: MeasuredMap, ctx: Context):
        self.t0 = time.perf_counter()
        self.ctx = ctx
        self.model = copy.deepcopy(model).to(ctx.device).eval()
        self._software = model
        self._teacher: nn.Module | None = None
        self.host = HostChip(measured, device=ctx.device)
        modules = dict(self.model.named_modules())
        self.mods: dict[str, Any] = {}  # name -> nn.Linear | nn.Conv2d (Any: parametrized weights type loosely)
        for name in self.host.names:
            if name not in modules:
                raise InputError(f"the measured map's layer {name!r} is not a module of the model: a map from "
                                 "another model")
        # layer-by-layer work (the scale search, dynamic's phases) follows the data flow of the model's graph
        for name in dataflow_order(self.model, ctx.train.x[:1].to(ctx.device), self.host.names):
            m = modules.get(name)
            shape = self.host.weight_shape(name)
            weight = getattr(m, "weight", None) if isinstance(m, MAPPED) else None
            if (not isinstance(weight, torch.Tensor) or tuple(weight.shape) != shape
                    or groups_of(m) != self.host.grids[name].groups):  # type: ignore[arg-type]
                raise InputError(f"the measured map's layer {name!r} (weight shape {shape}, groups "
                                 f"{self.host.grids[name].groups}) does not match the model: a map from another model")
            self.mods[name] = m
        self.scales = {n: weight_scale(m.weight, 100.0) for n, m in self.mods.items()}
        self.wires, self.wire_iterations, self.wire_cells = "ignore", 2, "written"  # IR drop in the final targets
        self.report: dict[str, Any] = {}
        self._moments: tuple[Any, dict[str, torch.Tensor]] | None = None  # (key, input_moments) of the last call

    # host-model evaluation -------------------------------------------------------------------------------
    @property
    def teacher(self) -> nn.Module:
        """The software model, frozen, on the method's device (the distillation target of retraining)."""
        if self._teacher is None:
            self._teacher = copy.deepcopy(self._software).to(self.ctx.device).eval().requires_grad_(False)
        return self._teacher

    def matrix(self, name: str) -> torch.Tensor:
        return weight_to_matrix(self.mods[name].weight.detach())

    def effective(self, name: str, scale: float, rule: str, shrink: float = 1.0,
                  relaxed: tuple[Horizon, torch.Generator] | None = None) -> torch.Tensor:
        """Realised weight (layer shape) for the current weights (times ``shrink``); ``relaxed`` = (the horizon,
        the host's generator): at that age, for one draw of the design's relaxation model (``pair`` rule,
        :meth:`HostChip.relaxed_matrix`)."""
        if relaxed is not None and rule != "pair":
            raise ValueError(f"a relaxed realisation follows the 'pair' rule; got rule {rule!r}")
        with torch.no_grad():
            m = shrink * self.matrix(name)
            if relaxed is not None:
                eff = self.host.relaxed_matrix(name, m, scale, relaxed[0].age, relaxed[1])
            else:
                eff = self.host.effective_matrix(name, m, scale, rule)
        return matrix_to_weight(eff, tuple(self.mods[name].weight.shape))

    def score(self, weights: dict[str, torch.Tensor], data: Split) -> tuple[torch.Tensor, float]:
        """(per-image correctness, mean cross-entropy) of the model with ``weights`` substituted, on ``data``."""
        batches = [(x.to(self.ctx.device), y.to(self.ctx.device)) for x, y in data.batches(2000)]
        return self._score(self.model, weights, batches)

    @staticmethod
    def _score(module: nn.Module, weights: dict[str, torch.Tensor],
               batches: list[tuple[torch.Tensor, torch.Tensor]],
               skipping: dict[str, int] | None = None) -> tuple[torch.Tensor, float]:
        """(per-image correctness (N,) bool, mean cross-entropy) of ``module`` with ``weights`` substituted
        (``skipping``: the batch counter of :meth:`_skip_before`'s cached prefixes)."""
        own = {k: v for k, v in weights.items() if k.split(".")[0] in module._modules}
        right, loss, n = [], 0.0, 0
        with torch.no_grad():
            for b, (x, y) in enumerate(batches):
                if skipping is not None:
                    skipping["batch"] = b
                out = functional_call(module, own, (x,))
                right.append((out.argmax(1) == y).cpu())
                loss += float(F.cross_entropy(out, y, reduction="sum"))
                n += len(y)
        return (torch.cat(right) if right else torch.zeros(0, dtype=torch.bool)), loss / max(n, 1)

    def _split(self, name: str) -> tuple[nn.Module | None, nn.Module]:
        """(modules before layer ``name``, the rest) for a top-level layer of a Sequential model, whose
        prefix output can be computed once per layer of the search; (None, model) otherwise."""
        if isinstance(self.model, nn.Sequential) and name in self.model._modules:
            i = list(self.model._modules).index(name)
            return (self.model[:i] if i else None), self.model[i:]
        return None, self.model

    @contextmanager
    def _skip_before(self, name: str, weights: dict[str, torch.Tensor],
                     batches: list[tuple[torch.Tensor, torch.Tensor]] | None) -> Iterator[dict[str, int] | None]:
        """While layer ``name``'s headroom is searched in a model of any graph, the modules that run before it
        inside its ``Sequential`` ancestors are fixed: their outputs are recorded once per batch (one pass with
        ``weights``) and each such ancestor then starts from its recorded input of the child holding ``name``
        (the same values bit for bit, at a fraction of the cost). Yields the batch counter :meth:`_score`
        sets, or None when nothing can be skipped (a top-level layer of a ``Sequential`` model, handled by
        :meth:`_split`; no ``Sequential`` ancestor with a child before ``name``; a child called more than once
        per pass; or caches larger than a quarter of the available memory)."""
        if batches is None:
            yield None
            return
        modules = dict(self.model.named_modules())
        parts = name.split(".")
        levels: list[tuple[nn.Sequential, int, str]] = []  # (Sequential ancestor, index of the child on the path)
        for depth in range(1, len(parts) + 1):
            parent, child = ".".join(parts[: depth - 1]), parts[depth - 1]
            anc = modules[parent] if parent else self.model
            if isinstance(anc, nn.Sequential) and anc is not self.model:
                keys = list(anc._modules)
                if child in keys and keys.index(child) > 0:
                    levels.append((anc, keys.index(child), f"{parent}.{child}" if parent else child))
        if not levels:
            yield None
            return
        cache: dict[str, list[torch.Tensor]] = {path: [] for _, _, path in levels}
        calls: dict[str, int] = {}
        hooks = []
        for _anc, _i, path in levels:
            def record(_m: nn.Module, inp: tuple[Any, ...], path: str = path) -> None:
                calls[path] = calls.get(path, 0) + 1
                cache[path].append(inp[0].detach().clone())  # a copy: an in-place op downstream cannot touch it
            hooks.append(modules[path].register_forward_pre_hook(record))

        def searched(_m: nn.Module, _inp: tuple[Any, ...]) -> None:
            calls[name] = calls.get(name, 0) + 1
        hooks.append(modules[name].register_forward_pre_hook(searched))
        try:
            with torch.no_grad():
                for x, _ in batches:
                    functional_call(self.model, weights, (x,))
        finally:
            for hk in hooks:
                hk.remove()
        size = sum(t.numel() * t.element_size() for ts in cache.values() for t in ts)
        free = available_memory()
        once = all(calls.get(p, 0) == len(batches) for p in [name, *(p for _, _, p in levels)])
        if not once or (free is not None and size > free // 4):  # a layer called twice: its prefix is not fixed
            yield None
            return
        state = {"batch": 0}
        for anc, i, path in levels:
            def forward(_x: torch.Tensor, anc: nn.Sequential = anc, i: int = i, path: str = path) -> torch.Tensor:
                out = cache[path][state["batch"]].clone()  # each candidate gets the recorded values afresh
                for child in list(anc)[i:]:
                    out = child(out)
                return out
            anc.forward = forward  # type: ignore[method-assign]
        try:
            yield state
        finally:
            for anc, _, _ in levels:
                del anc.forward

    def snapshot(self, rule: str = "pair", horizon: Horizon | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, float], torch.Tensor]:
        """(weights, scales, host-model per-image validation correctness) of the current state, to return to
        (with a ``horizon``: scored at that age, :meth:`host_correct`)."""
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return state, dict(self.scales), self.host_correct(self.ctx.val, rule, horizon)

    def keep_if_better(self, start: tuple[dict[str, torch.Tensor], dict[str, float], torch.Tensor],
                       cfg: RetrainConfig, rule: str = "pair", horizon: Horizon | None = None) -> None:
        """After retraining: go back to ``start`` unless the host model scores the retrained network
        significantly better on the validation split (:func:`significantly_better`; validation data only),
        both scored at ``horizon`` as :meth:`snapshot` did."""
        state, scales, start_right = start
        right = self.host_correct(self.ctx.val, rule, horizon)
        kept = significantly_better(right, start_right, cfg.keep_z) or not cfg.select
        self.report.update(start_val_accuracy=mean_correct(start_right), retrained_val_accuracy=mean_correct(right),
                           kept="retrained" if kept else "start")
        if not kept:
            self.model.load_state_dict(state)
            self.scales = scales

    def host_correct(self, data: Split, rule: str = "pair", horizon: Horizon | None = None) -> torch.Tensor:
        """Per-image correctness on ``data`` that the host model predicts for the chip; with a ``horizon``: at
        that age after programming, for one draw of the design's relaxation model from a generator of its own
        (the same draw at every call, so two networks are compared on the same sampled chip)."""
        weights = {f"{n}.weight": self.effective(n, self.scales[n], rule,
                                                 relaxed=None if horizon is None else (horizon, self.fixed_draw(n)))
                   for n in self.mods}
        return self.score(weights, data)[0]

    def fixed_draw(self, name: str) -> torch.Generator:
        """The host's generator of layer ``name``'s one fixed relaxation draw (its own stream of the run's
        seed; a new generator in the same state at every call), which every host-model score at a horizon
        uses, so that two networks are compared on the same sampled chip."""
        return self.ctx.generator(31 + 2 * zlib.crc32(name.encode()))

    def host_accuracy(self, data: Split, rule: str = "pair") -> float:
        return mean_correct(self.host_correct(data, rule))

    @staticmethod
    def _headrooms(cfg: ProgramConfig) -> list[float]:
        """The headrooms tried, log-spaced from ``headroom_min`` to 1."""
        if cfg.headroom_steps == 1:
            return [cfg.headroom_min]
        return [cfg.headroom_min ** (1 - i / (cfg.headroom_steps - 1)) for i in range(cfg.headroom_steps)]

    def choose_scales(self, cfg: ProgramConfig, rule: str = "pair") -> None:
        """Per-layer headroom, by ``cfg.search``: :meth:`choose_scales_by_accuracy` or
        :meth:`choose_scales_by_output`."""
        self.wires, self.wire_iterations, self.wire_cells = cfg.wires, cfg.wire_iterations, cfg.wire_cells
        if cfg.search == "output":
            self.choose_scales_by_output(cfg, rule)
        else:
            self.choose_scales_by_accuracy(cfg, rule)

    def input_moments(self, images: int, max_rows: int) -> dict[str, torch.Tensor]:
        """Second moments E[x x^T] of every crossbar layer's input rows in the software model, (groups, K, K)
        float64 (a grouped convolution's groups apart), from the first ``images`` training images, at most
        ``max_rows`` rows per layer drawn from the method's generator (every call of a layer called twice)."""
        ks = {n: int(m.weight[0].numel()) for n, m in self.mods.items()}
        check_memory(sum(16 * groups_of(m) * ks[n] ** 2 for n, m in self.mods.items()),
                     f"the input moments of {len(self.mods)} layers (largest K = {max(ks.values())})")
        # the software inputs change only with the model's weights and buffers: remap's second search reuses them
        key = (images, max_rows, tuple((id(t), t._version) for t in (*self.model.parameters(), *self.model.buffers())))
        if self._moments is not None and self._moments[0] == key:
            return self._moments[1]
        rows: dict[str, list[torch.Tensor]] = {n: [] for n in self.mods}

        def record(name: str, m: nn.Module, x: torch.Tensor) -> None:
            rows[name].append(conv_rows(x, m)[0] if isinstance(m, (nn.Conv1d, nn.Conv2d))
                              else x.reshape(-1, x.shape[-1]))  # (rows, groups * K)

        self._layer_inputs(images, images, record)
        gen = self.ctx.generator(43)
        out = {}
        for n, m in self.mods.items():
            x = torch.cat(rows[n]).double()
            if x.shape[0] > max_rows:
                x = x[torch.randperm(x.shape[0], generator=gen)[:max_rows].to(x.device)]
            xg = x.reshape(x.shape[0], groups_of(m), ks[n])  # (rows, G, K)
            out[n] = torch.einsum("rgk,rgl->gkl", xg, xg) / max(x.shape[0], 1)  # (G, K, K)
        self._moments = (key, out)
        return out

    def _layer_inputs(self, images: int, batch: int, fn: Callable[[str, nn.Module, torch.Tensor], None]) -> None:
        """Run the first ``images`` training images through the model in batches of ``batch`` (no gradients)
        and give ``fn(name, layer, input)`` every crossbar layer's input of every call."""
        hooks = [m.register_forward_pre_hook(lambda mod, inp, name=name: fn(name, mod, inp[0].detach()))
                 for name, m in self.mods.items()]
        try:
            with torch.no_grad():
                for x, _ in self.ctx.train.subset(max(1, min(images, len(self.ctx.train)))).batches(batch):
                    self.model(x.to(self.ctx.device))
        finally:
            for h in hooks:
                h.remove()

    def choose_scales_by_output(self, cfg: ProgramConfig, rule: str = "pair") -> None:
        """Per layer, the headroom whose realised matrix minimises the expected output error
        tr(D^T E[x x^T] D), D = W_eff - W, over the layer's software inputs (:meth:`input_moments`); ties keep
        the larger headroom, so a healthy chip keeps every weight. Layers are independent: no coordinate
        descent, and no pass through the network per candidate."""
        moments = self.input_moments(cfg.output_images, cfg.output_rows)
        top = {n: weight_scale(m.weight, 100.0) for n, m in self.mods.items()}
        for n, m in self.mods.items():
            w = self.matrix(n)  # (K, N)
            k, cols = w.shape
            g = groups_of(m)
            best: tuple[float, float] | None = None
            for h in sorted(self._headrooms(cfg), reverse=True):
                with torch.no_grad():
                    d = (self.host.effective_matrix(n, w, h * top[n], rule) - w).double().reshape(k, g, cols // g)
                err = float(torch.einsum("gkl,kgn,lgn->", moments[n].to(d.device), d, d))
                if best is None or err < best[0]:
                    best = (err, h)
            assert best is not None
            self.scales[n] = best[1] * top[n]
        self.report["headroom"] = {n: self.scales[n] / top[n] for n in self.mods}

    def choose_scales_by_accuracy(self, cfg: ProgramConfig, rule: str = "pair") -> None:
        """Per-layer headroom by coordinate descent on validation accuracy: a headroom is taken when it beats
        the current one significantly (:func:`significantly_better` at ``cfg.search_z``; at z = 0 any gain, and
        the loss breaks ties)."""
        val = self.ctx.val.subset(min(cfg.search_images, len(self.ctx.val)))
        batches = [(x.to(self.ctx.device), y.to(self.ctx.device)) for x, y in val.batches(2000)]
        grid = self._headrooms(cfg)
        top = {n: weight_scale(m.weight, 100.0) for n, m in self.mods.items()}
        current = {f"{n}.weight": self.effective(n, self.scales[n], rule) for n in self.mods}
        best_right, best_loss = self._score(self.model, current, batches)
        seen: set[tuple[str, float, tuple[float, ...]]] = set()  # (layer, h, other scales) already scored
        for _ in range(cfg.search_passes):
            for n in self.mods:
                others = tuple(self.scales[m] for m in self.mods if m != n)
                if all((n, h, others) in seen for h in grid):
                    continue  # nothing changed since this layer was searched: the same scores again
                head, tail = self._split(n)
                if head is None:
                    inputs = batches
                else:  # the layers before n are fixed while n's headroom is searched: run them once
                    own = {k: v for k, v in current.items() if k.split(".")[0] in head._modules}
                    with torch.no_grad():
                        inputs = [(functional_call(head, own, (x,)), y) for x, y in batches]
                with self._skip_before(n, current, inputs if head is None else None) as skipping:
                    for h in grid:
                        seen.add((n, h, others))
                        trial = dict(current)
                        trial[f"{n}.weight"] = self.effective(n, h * top[n], rule)
                        right, loss = self._score(tail, trial, inputs, skipping)
                        if significantly_better(right, best_right, cfg.search_z) or (
                                cfg.search_z == 0 and bool((right == best_right).all()) and loss < best_loss):
                            best_right, best_loss, current, self.scales[n] = right, loss, trial, h * top[n]
        self.report["headroom"] = {n: self.scales[n] / top[n] for n in self.mods}

    def importance(self, images: int) -> dict[str, torch.Tensor]:
        """RMS input of every logical row (word line) of each layer, over ``images`` training images, as a
        (K, N)-broadcastable matrix (:func:`~ittrna.mapping.row_statistic`: (K, 1), or (K, N) for a grouped
        convolution, whose column groups meet inputs of their own)."""
        sums: dict[str, torch.Tensor] = {}
        count: dict[str, int] = {}

        def accumulate(name: str, module: nn.Module, x: torch.Tensor) -> None:
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                sq, cnt = conv_row_power(x, module)  # (groups * K,), B * L
            else:
                flat = x.reshape(-1, x.shape[-1])
                sq, cnt = (flat**2).sum(0), flat.shape[0]
            sums[name] = sums.get(name, 0) + sq
            count[name] = count.get(name, 0) + cnt

        self._layer_inputs(images, 512, accumulate)
        return {n: row_statistic((sums[n] / count[n]).sqrt(), groups_of(m), int(m.weight.shape[0]))
                for n, m in self.mods.items()}

    def remap(self, cfg: RemapConfig) -> None:
        imp = self.importance(cfg.importance_images)
        costs = {}
        for n in self.mods:
            _, before, after = remap_layer(self.host, n, self.matrix(n), self.scales[n], imp[n],
                                           polarity=cfg.polarity, rounds=cfg.rounds)
            costs[n] = [before, after]
        self.report["remap_cost_before_after"] = costs

    def deployment(self, rule: str) -> Deployment:
        """The current weights, scales and layouts; cell-by-cell targets under the ``pair`` rule (and under
        either with ``wires = "compensate"``, pre-distorted for the design's IR drop)."""
        targets = {}
        if rule == "pair" or self.wires == "compensate":  # compensated targets are explicit under either rule
            targets = {n: self.host.targets(n, self.matrix(n), self.scales[n], rule) for n in self.mods}
        if self.wires == "compensate" and self.host.design.wires.r_wire > 0:
            widened = {}
            for n in self.mods:  # room above the largest target for the lift the wires ask for
                through: dict[str, torch.Tensor] | None = self.host.wire_through(n, targets[n])
                need = self.host.wire_need(n, targets[n], through, self.wire_cells)
                if need > 1.0:
                    self.scales[n] *= need
                    widened[n] = need
                    targets[n] = self.host.targets(n, self.matrix(n), self.scales[n], rule)
                    through = None  # other targets: solved anew
                targets[n] = self.host.wire_compensated(n, targets[n], self.wire_iterations, through,
                                                        self.wire_cells)
            self.report["wires"] = "compensate"
            self.report["wire_scale_widened"] = widened
        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        self.report.setdefault("val_accuracy", self.host_accuracy(self.ctx.val, rule))
        self.report["seconds"] = time.perf_counter() - self.t0
        return Deployment(state, dict(self.scales), dict(self.host.layouts), targets, self.report)

    def imperfect(self, name: str, tau: float) -> torch.Tensor:
        """(weight shape) bool: the weight sits on a cell reported stuck or with |e^theta - 1| > tau."""
        v = self.host.view(name)
        bad = (v.fault_p != 0) | ((v.theta_p.exp() - 1).abs() > tau)
        bad = bad | (v.fault_n != 0) | ((v.theta_n.exp() - 1).abs() > tau)
        return matrix_to_weight(bad, tuple(self.mods[name].weight.shape))

    def damage(self, name: str, imp: torch.Tensor) -> torch.Tensor:
        """(weight shape) importance-weighted |w_eff - w| under the pair rule."""
        with torch.no_grad():
            m = self.matrix(name)
            dev = (self.host.effective_matrix(name, m, self.scales[name]) - m).abs() * imp  # (K, N)
        return matrix_to_weight(dev, tuple(self.mods[name].weight.shape))


class HostEffective(nn.Module):
    """Parametrization: weight -> what the host model predicts the chip realises (straight-through)."""

    def __init__(self, host: HostChip, name: str, scale: float, inject: tuple[float, float, float] | None,
                 generator: torch.Generator, horizon: Horizon | None = None,
                 fixed_draw: Callable[[], torch.Generator] | None = None):
        """``inject``: the test's stated error (theta sigma, missed-fault rate, stuck-on share), fresh every
        training batch (not in eval mode). With a ``horizon``: the design's relaxation at that age
        too, a fresh draw every training batch (:meth:`HostChip.relaxed_matrix`) and in eval mode the one
        draw of ``fixed_draw()`` (a new generator in the same state each call: every validation pass scores
        the same sampled chip), which a horizon therefore needs."""
        super().__init__()
        if horizon is not None and fixed_draw is None:
            raise ValueError("HostEffective: a horizon needs the fixed_draw its eval mode scores")
        self.host, self.name, self.scale, self.inject, self.generator = host, name, scale, inject, generator
        self.horizon, self.fixed_draw = horizon, fixed_draw

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        view = self.host.view(self.name)
        if self.training and self.inject is not None:
            view = view.with_noise(*self.inject, generator=self.generator)
        m = weight_to_matrix(w)
        if self.horizon is not None:
            assert self.fixed_draw is not None
            gen = self.generator if self.training else self.fixed_draw()
            eff = self.host.relaxed_matrix(self.name, m, self.scale, self.horizon.age, gen, view)
        else:
            eff = realise(m, view, self.scale, self.host.cell, "pair", targets=False)[0]
        return matrix_to_weight(eff, tuple(w.shape))


class Frozen(nn.Module):
    """Parametrization: entries under ``mask`` are held at ``values`` (no gradient reaches them)."""

    mask: torch.Tensor
    values: torch.Tensor

    def __init__(self, shape: tuple[int, ...], device: str):
        super().__init__()
        self.register_buffer("mask", torch.zeros(shape, dtype=torch.bool, device=device))
        self.register_buffer("values", torch.zeros(shape, device=device))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, self.values, w)


class Injected(nn.Module):
    """Parametrization for chip-agnostic injection: plain programming on a freshly drawn random chip."""

    def __init__(self, host: HostChip, rate: float, share: float, sigma: float, generator: torch.Generator):
        super().__init__()
        self.host, self.rate, self.share, self.sigma, self.generator = host, rate, share, sigma, generator

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return w
        m = weight_to_matrix(w)
        view = sample_view((m.shape[0], m.shape[1]), self.rate, self.share, self.sigma, self.host.converter,
                           self.generator, m.device)
        scale = float(w.detach().abs().max()) or 1.0
        return matrix_to_weight(realise(m, view, scale, self.host.cell, "plain", targets=False)[0], tuple(w.shape))


def retrain(net: nn.Module, teacher: Callable[[], nn.Module], cfg: RetrainConfig, ctx: Context, *, desc: str,
            val: Split | None = None, hooks: TrainHooks | None = None) -> FitReport:
    """The one retraining step of every retraining method: ``net`` (its layers parametrized by the method)
    trained on the training split with ``cfg``'s schedule and loss: the labels, mixed by ``cfg.distill`` with
    distillation from ``teacher()`` (the software model, made only when needed). With ``val``, the best epoch
    is kept (the starting point included)."""
    return fit(net, ctx.train, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=ctx.seed, val=val,
               hooks=hooks, progress=ctx.progress, desc=desc, teacher=teacher() if cfg.distill > 0 else None,
               distill=cfg.distill, temperature=cfg.temperature)


def mean_correct(right: torch.Tensor) -> float:
    return float(right.float().mean()) if right.numel() else 0.0


def significantly_better(new: torch.Tensor, old: torch.Tensor, z: float) -> bool:
    """Whether per-image correctness ``new`` beats ``old`` (same images, (N,) bool) by a paired sign test:
    with b images right only under ``new`` and c only under ``old``, b - c > z·√(b + c) (z = 0: b > c)."""
    b = int((new & ~old).sum())
    c = int((old & ~new).sum())
    return b - c > z * math.sqrt(b + c)


def unparametrize(model: nn.Module, keep: bool) -> None:
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=keep)


def test_error(host: HostChip, measured: MeasuredMap) -> tuple[float, float, float]:
    """(theta sigma, extra fault rate, stuck-on share) of the test's stated imperfections."""
    t = measured.design.test
    rate = measured.fault_fraction()
    missed = rate * t.miss_rate / max(1 - t.miss_rate, 1e-9)  # expected missed faults per reported-healthy cell
    faults = [f["fault"] for arrs in measured.layers.values() for f in arrs.values()]
    on = sum(int((f == 2).sum()) for f in faults)
    stuck = sum(int((f != 0).sum()) for f in faults)
    return t.theta_noise, missed, (on / stuck if stuck else 0.162)


def retrain_fat(p: Pipeline, cfg: FatConfig, measured: MeasuredMap) -> None:
    """``fat``'s retraining through the host model (with ``cfg.horizon`` > 0 on a relaxing design: anticipating
    the design's relaxation at that age, in training and in the choice of the retrained network over the
    start; the report's ``start_val_accuracy``, ``retrained_val_accuracy`` and ``val_history`` are then host-model
    scores at that age, its ``horizon``)."""
    relaxation = measured.design.relaxation
    horizon = None
    if relaxation.active and cfg.horizon > 0:
        check_fitted(relaxation, cfg.horizon, "method.horizon")
        horizon = Horizon(cfg.horizon)
    start = p.snapshot(horizon=horizon)
    inject = None
    if cfg.inject_test_error:
        sig, missed, share = test_error(p.host, measured)
        if sig > 0 or missed > 0:
            inject = (sig, missed, share)
    gen = p.ctx.generator(11)
    layers = {n: [HostEffective(p.host, n, p.scales[n], inject, gen, horizon,
                                fixed_draw=functools.partial(p.fixed_draw, n))] for n in p.mods}
    with parametrized(p.model, layers, keep=False):
        rep = retrain(p.model, lambda: p.teacher, cfg, p.ctx, desc="fat", val=p.ctx.val)
    p.keep_if_better(start, cfg, horizon=horizon)
    if horizon is not None:
        p.report.update(horizon=horizon.age)
    p.report.update(epochs=rep.epochs, best_epoch=rep.best_epoch, val_history=rep.val_history)


def steps_of(cfg: RetrainConfig, train: Split) -> int:
    """Optimisation steps of a retraining run: epochs x batches per epoch (the last batch may be short)."""
    return cfg.epochs * -(-len(train) // cfg.batch_size)


@contextmanager
def parametrized(net: nn.Module, layers: Mapping[str, Sequence[nn.Module]], *, keep: bool) -> Iterator[nn.Module]:
    """Retraining through parametrized weights: on entry the weights of ``layers`` (module name ->
    parametrizations, innermost first) are parametrized; on exit every weight parametrization of ``net`` —
    also those added inside, e.g. by ``dynamic``'s phases — is removed, keeping the realised weights
    (``keep``) or the raw ones. The one place of the parametrize -> train -> unparametrize sequence::

        with parametrized(p.model, {n: [HostEffective(...)] for n in p.mods}, keep=False):
            report = retrain(p.model, lambda: p.teacher, cfg, ctx, desc="fat")
    """
    modules = dict(net.named_modules())
    try:
        for name, chain in layers.items():
            for module in chain:
                parametrize.register_parametrization(modules[name], "weight", module)
        yield net
    finally:
        unparametrize(net, keep=keep)
