"""The host/chip boundary, proven rather than assumed.

1. **Cheaters are stopped.** Methods registered through the public registry try to learn the truth the ways a
   careless or clever implementation could; each is run through the evaluator (`tolerate`) and must raise
   :class:`~ittrna.boundary.BoundaryError`.
2. **What the guard cannot stop is caught.** For every registered off-device method, two chips whose measured
   maps are equal bit for bit but whose truth differs where the methods look (faults the test missed, theta of
   used cells far beyond the test's theta noise) give identical deployments (weights, scales, layouts, targets,
   registers). A cheater that gets past the guard (``object.__getattribute__`` on a chip found by walking the
   caller's frames) shows a difference on the same pair: the test is able to fail.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc

import numpy as np
import pytest
import torch

from ittrna.boundary import BoundaryError
from ittrna.chip import Chip
from ittrna.config import ChipConfig
from ittrna.device import HEALTHY, STUCK_ON
from ittrna.experiments.tolerate import tolerate
from ittrna.methods import METHODS, apply_method
from ittrna.methods.base import Context, register
from ittrna.methods.configs import NoneConfig
from ittrna.methods.retrain import Pipeline as _Pipeline
from ittrna.session import ChipSession

FAST = {"epochs": 1, "search_images": 500, "headroom_steps": 4, "search_passes": 1, "importance_images": 256,
        "iterations": 2, "calib_images": 256, "eval_every": 20, "eval_images": 200, "write_budget": 5000}
SAVED: dict[str, str] = {}


def _fast(name: str) -> dict:
    fields = METHODS[name].config().to_dict()
    return {k: v for k, v in FAST.items() if k in fields}


@contextlib.contextmanager
def registered(name: str, kind: str, fn):
    config = dataclasses.dataclass(frozen=True)(type(f"Cheat{abs(hash(name))}Config", (NoneConfig,), {}))
    register(name, kind, config, 1, "a cheater (tests/test_boundary.py)")(fn)  # a config class of its own
    try:
        yield
    finally:
        METHODS.unregister(name)


def _plain(model, measured, ctx):
    return _Pipeline(model, measured, ctx).deployment("plain")


def _frame_chip() -> Chip | None:
    """The clever route: walk up the callers' frames to the evaluator's local `chip`, read with no guard."""
    try:  # a traceback's frames, not sys._getframe
        raise RuntimeError
    except RuntimeError as exc:
        frame = exc.__traceback__.tb_frame
    while frame is not None:
        found = frame.f_locals.get("chip")
        if type(found) is Chip:
            return found
        frame = frame.f_back
    return None


# --- cheaters -----------------------------------------------------------------------------------------------
def cheat_private(model, measured, cfg, ctx, session):
    chip = session._ChipSession__chip  # the session's private attribute
    _ = chip.layers  # reading it is the cheat
    return _plain(model, measured, ctx)


def cheat_gc(model, measured, cfg, ctx):
    chips = [o for o in gc.get_objects() if type(o) is Chip]
    _ = [c.layers for c in chips]
    return _plain(model, measured, ctx)


def cheat_import(model, measured, cfg, ctx):
    from ittrna.chip import Chip as LazyChip  # a lazy import inside the method

    LazyChip.load(SAVED["chip"])
    return _plain(model, measured, ctx)


def cheat_file(model, measured, cfg, ctx):
    with np.load(SAVED["chip"]) as archive:  # the saved chip file next to the map, read by hand
        _ = archive.files
    return _plain(model, measured, ctx)


def cheat_fabricate(model, measured, cfg, ctx):
    import ittrna.chip

    ittrna.chip.Chip.fabricate(model, measured.design, 0)  # rebuilding a chip
    return _plain(model, measured, ctx)


def cheat_submodule(model, measured, cfg, ctx):
    from ittrna.chip import state  # past the Chip façade: the fabrication function itself

    state.fabricate(state.ChipState, model, measured.design, 0)
    return _plain(model, measured, ctx)


def cheat_frames(model, measured, cfg, ctx):
    chip = _frame_chip()
    assert chip is not None
    _ = chip.layers  # guarded: the first attribute read raises
    return _plain(model, measured, ctx)


def cheat_bypass(model, measured, cfg, ctx):
    """Past the guard: frames + object.__getattribute__; programs the true theta into the weights."""
    dep = _plain(model, measured, ctx)
    chip = _frame_chip()
    if chip is not None:
        layers = object.__getattribute__(chip, "layers")
        first = next(iter(layers))
        arrays = object.__getattribute__(layers[first], "arrays")
        theta = object.__getattribute__(next(iter(arrays.values())), "theta")
        key = f"{first}.weight"
        dep.state_dict[key] = dep.state_dict[key] + 1e-3 * float(theta.sum())
    return dep


STOPPED = [("private", "on-device", cheat_private), ("gc", "off-device", cheat_gc),
           ("import", "off-device", cheat_import), ("file", "off-device", cheat_file),
           ("fabricate", "off-device", cheat_fabricate), ("submodule", "off-device", cheat_submodule),
           ("frames", "off-device", cheat_frames)]


@pytest.mark.parametrize(("route", "kind", "fn"), STOPPED, ids=[s[0] for s in STOPPED])
def test_every_cheater_is_stopped(small, tmp_path, route, kind, fn):
    model, tr, val, test = small
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.1}), 2)
    SAVED["chip"] = str(tmp_path / "chip.npz")
    chip.save(SAVED["chip"])
    name = f"cheat-{route}"
    with registered(name, kind, fn), pytest.raises(BoundaryError, match="a method reached for"):
        tolerate(model, chip, name, train=tr.subset(256), val=val, test=test.subset(200))


def test_the_evaluator_itself_is_not_stopped(small, tmp_path):
    """The guard is on only while a method runs: the evaluator (and a session's own access) read the chip."""
    model, tr, val, test = small
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.1}), 2)
    chip.save(tmp_path / "c.npz")
    assert Chip.load(tmp_path / "c.npz").chip_id == chip.chip_id
    assert [o for o in gc.get_objects() if type(o) is Chip]
    result, _ = tolerate(model, chip, "program", train=tr.subset(256), val=val, test=test.subset(200),
                         settings=_fast("program"))
    assert result["chip_accuracy"] > result["chip_accuracy_before"] and chip.writes_issued > 0


# --- counterfactuals ----------------------------------------------------------------------------------------
def _pair(model, **over):
    """(a, b, map): b's truth differs from a's in cells the methods use — faults the test missed (stuck_on in
    b) and the theta of reported-healthy cells (+1.0, ten times the test's theta noise) — and map is the
    measured map of a, which is b's too (the test cannot tell them apart). ``over``: more chip settings."""
    cfg = ChipConfig().override({"faults.rate": 0.15, "variation.sigma": 0.5, "test.miss_rate": 0.3,
                                 "test.theta_noise": 0.1, **over})
    a = Chip.fabricate(model, cfg, 31)
    measured = a.test(seed=4)
    b = copy.deepcopy(a)
    changed = 0
    for name, layer in b.layers.items():
        for aname, arr in layer.arrays.items():
            shown_healthy = measured.layers[name][aname]["fault"] == HEALTHY
            missed = (arr.fault != HEALTHY) & shown_healthy
            arr.fault = torch.where(missed, torch.full_like(arr.fault, STUCK_ON), arr.fault)
            used = shown_healthy & (arr.fault == HEALTHY)
            arr.theta = torch.where(used, arr.theta + 1.0, arr.theta)
            changed += int(missed.sum()) + int(used.sum())
    assert changed > 100
    return a, b, measured


def _same(x, y) -> bool:
    def eq(p, q):
        return p.keys() == q.keys() and all(torch.equal(p[k], q[k]) if isinstance(p[k], torch.Tensor)
                                            else eq(p[k], q[k]) if isinstance(p[k], dict) else p[k] == q[k]
                                            for k in p)
    lay = x.layouts.keys() == y.layouts.keys() and all(
        torch.equal(x.layouts[n].row_map, y.layouts[n].row_map) and torch.equal(x.layouts[n].col_sign,
                                                                                  y.layouts[n].col_sign)
        for n in x.layouts)
    return eq(x.state_dict, y.state_dict) and x.scales == y.scales and lay and eq(x.targets, y.targets) \
        and eq(x.registers, y.registers)


def _deploy_for(chip, model, measured, method, small):
    """The method's deployment with ``chip`` live in the evaluator's frame (as in `tolerate`)."""
    _, tr, val, _ = small
    ctx = Context(tr.subset(512), val, seed=5)
    return apply_method(method, model, measured, ctx, _fast(method) if method in METHODS else None)


@pytest.mark.parametrize("method", [m for m, s in METHODS.items() if s.kind == "off-device"])
def test_equal_maps_give_equal_deployments_whatever_the_truth(small, method):
    model = small[0]
    a, b, measured = _pair(model)
    dep_a = _deploy_for(a, model, measured, method, small)
    dep_b = _deploy_for(b, model, measured, method, small)
    assert _same(dep_a, dep_b)


def cheat_gate(model, measured, cfg, ctx):
    """Past the guard another way: the method opens the session's own gate and reads the chip through it."""
    from ittrna.boundary import chip_side

    dep = _plain(model, measured, ctx)
    with chip_side():
        chip = _frame_chip()
        if chip is not None:
            layer = next(iter(chip))
            key = f"{layer.name}.weight"
            dep.state_dict[key] = dep.state_dict[key] + 1e-3 * float(next(iter(layer.arrays.values())).theta.sum())
    return dep


@pytest.mark.parametrize("cheat", [cheat_bypass, cheat_gate], ids=["object-getattribute", "chip-side-gate"])
def test_the_counterfactual_catches_a_cheater_the_guard_misses(small, cheat):
    """The control: the same pair, a method that reads the truth past the guard: different deployments."""
    model = small[0]
    a, b, measured = _pair(model)
    with registered("cheat-past-guard", "off-device", cheat):
        dep_a = _deploy_for(a, model, measured, "cheat-past-guard", small)
        dep_b = _deploy_for(b, model, measured, "cheat-past-guard", small)
        honest = _deploy_for(a, model, measured, "none", small)
    assert not _same(dep_a, dep_b)
    assert not _same(dep_a, honest)


@pytest.mark.parametrize("method", [m for m, s in METHODS.items() if s.kind == "on-device"])
def test_on_device_methods_run_under_the_guard(small, method):
    """Every on-device method runs to the end with the guard on: it reaches the chip only through its session
    (a single attribute read of the chip outside the session would have raised)."""
    model, tr, val, _ = small
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.1, "variation.sigma": 0.3}), 8)
    measured = chip.test()
    session = ChipSession(chip, model, write_budget=_fast(method).get("write_budget"))
    ctx = Context(tr.subset(512), val, seed=0)
    dep = apply_method(method, model, measured, ctx, _fast(method), session=session)
    assert dep.report["method"] == method and session.writes_issued > 0


# --- refresh after relaxation: the host's choice of cells ---------------------------------------------------
_REWRITE = ChipSession.rewrite  # the real one, whatever a test has patched since


def _refreshed_cells(chip, model, measured, small, monkeypatch):
    """The cells a refresh (2 % budget, one year after programming ``none``) rewrites on ``chip``."""
    from ittrna.experiments.tolerate import evaluate_deployment
    from ittrna.host import Deployment
    from ittrna.methods.refresh import RefreshConfig

    _, tr, _, test = small
    seen: dict[str, dict[str, torch.Tensor]] = {}

    def spy(self, name, cells):
        seen[name] = {a: m.clone() for a, m in cells.items()}
        return _REWRITE(self, name, cells)

    monkeypatch.setattr(ChipSession, "rewrite", spy)
    evaluate_deployment(model, chip, Deployment(model.state_dict()), test.subset(200), time="1y",
                        reference_images=tr.x[:256], refresh=RefreshConfig(budget=0.02), measured=measured)
    assert sum(int(m.sum()) for arrs in seen.values() for m in arrs.values()) > 0
    return seen


def test_equal_maps_give_equal_refreshes_whatever_the_truth(small, monkeypatch):
    """The refresh ranks cells from the map, the datasheet and the network: the twin chips get the same cells
    rewritten; the control (a ranking that peeks at the true theta past the guard) does not."""
    import ittrna.methods.refresh as refresh

    model = small[0]
    a, b, measured = _pair(model, **{"relaxation.model": "power-law"})  # the deviation grows with G
    same_a = _refreshed_cells(copy.deepcopy(a), model, measured, small, monkeypatch)
    same_b = _refreshed_cells(copy.deepcopy(b), model, measured, small, monkeypatch)
    assert same_a.keys() == same_b.keys()
    assert all(torch.equal(same_a[n][k], same_b[n][k]) for n in same_a for k in same_a[n])

    honest = refresh.expected_sq_deviation
    calls = []

    def peeking(g0, target, age, cfg, cell, quantiles=16):  # the cells' true theta instead of the map's
        from ittrna.boundary import chip_side

        with chip_side():
            chip = _frame_chip()
            arrays = [arr for layer in chip for arr in layer.arrays.values()]
            theta = arrays[len(calls) % len(arrays)].theta.float()
        calls.append(1)
        return honest(target * torch.exp(theta * theta.abs()), target, age, cfg, cell, quantiles)

    monkeypatch.setattr(refresh, "expected_sq_deviation", peeking)
    cheat_a = _refreshed_cells(copy.deepcopy(a), model, measured, small, monkeypatch)
    cheat_b = _refreshed_cells(copy.deepcopy(b), model, measured, small, monkeypatch)
    assert not all(torch.equal(cheat_a[n][k], cheat_b[n][k]) for n in cheat_a for k in cheat_a[n])
