"""Tolerance methods: the host/chip boundary, the host model against the chip, hand-checked programming,
remapping against brute force, determinism, and every method beating `none` on a small chip."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from ittrna.chip import Chip
from ittrna.config import CellConfig, ChipConfig
from ittrna.device import HEALTHY, STUCK_OFF, STUCK_ON
from ittrna.errors import ConfigError, InputError
from ittrna.experiments.tolerate import evaluate_deployment, tolerate
from ittrna.mapping import Differential, LayerLayout, TileGrid, weight_to_matrix
from ittrna.methods import METHODS, Context, apply_method, get_method
from ittrna.methods.hostmodel import CellView, HostChip, realise
from ittrna.methods.remap import _tile_errors, remap_layer
from ittrna.models import build
from ittrna.training import accuracy

FAST = {"epochs": 1, "search_images": 500, "headroom_steps": 4, "search_passes": 1, "importance_images": 256,
        "iterations": 2, "calib_images": 256, "eval_every": 20, "eval_images": 200, "write_budget": 5000}
OFF_DEVICE = [n for n, s in METHODS.items() if s.kind == "off-device"]


def _fast(name: str) -> dict:
    fields = get_method(name).config().to_dict()
    return {k: v for k, v in FAST.items() if k in fields}


def _ctx(small, seed=0):
    _, tr, val, _ = small
    return Context(tr, val, seed=seed)


def _same(a, b) -> bool:
    return (a.state_dict.keys() == b.state_dict.keys()
            and all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
            and a.scales == b.scales
            and all(a.layouts[n].equals(b.layouts[n]) for n in a.layouts) and a.layouts.keys() == b.layouts.keys()
            and all(torch.equal(a.targets[n][x], b.targets[n][x]) for n in a.targets for x in a.targets[n]))


# --- the boundary ----------------------------------------------------------------------------------------
def test_registry_lists_every_method_with_config_version_source():
    assert list(METHODS)[:2] == ["none", "noise"]
    for spec in METHODS.values():
        assert spec.kind in ("off-device", "on-device") and spec.version >= 1 and spec.description
        spec.config()  # defaults validate
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        get_method("magic")
    with pytest.raises(ConfigError, match="method.epochs"):
        get_method("fat").make_config({"epochs": -1})
    with pytest.raises(ConfigError, match="unknown method field method.bogus"):
        get_method("fat").make_config({"method.bogus": 1})


def test_a_map_keeps_only_the_design_whatever_config_it_is_given(small):
    """A map built with another die's full config (other fault and variation settings handed in) keeps only
    the design part: nothing of the die's fault or variation settings reaches a method through it."""
    from ittrna.host import MeasuredMap

    model = small[0]
    a = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.1, "variation.sigma": 0.3}), 3)
    b = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.3, "variation.sigma": 1.2}), 99)
    map_a = a.test()
    map_b = MeasuredMap(b.config, map_a.chip_id, map_a.layers, map_a.meta)  # b's full config handed in
    assert map_b.design == map_a.design
    assert map_b.design.faults.rate == 0.0 and map_b.design.variation.sigma == 0.0
    assert map_b.for_method().design == map_a.design and map_b.for_method().chip_id == ""


def test_loaded_map_keeps_only_the_design(tmp_path):
    from ittrna.host import MeasuredMap

    model = nn.Sequential(nn.Linear(20, 5))
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.2, "variation.sigma": 0.7}), 1)
    full = MeasuredMap(chip.config, chip.chip_id, chip.test().layers, chip.test().meta)
    full.save(tmp_path / "m.npz")
    back = MeasuredMap.load(tmp_path / "m.npz")
    assert back.design.faults.rate == 0.0 and back.design.variation.sigma == 0.0
    assert full.for_method().chip_id == ""


def test_map_from_another_chip_or_model_is_refused(small):
    model = small[0]
    cfg = ChipConfig().override({"faults.rate": 0.1})
    chip, other = Chip.fabricate(model, cfg, 1), Chip.fabricate(model, cfg, 2)
    _, tr, val, test = small
    with pytest.raises(InputError, match="another chip"):
        tolerate(model, chip, "program", train=tr, val=val, test=test, measured=other.test(), settings=_fast("program"))
    lenet_map = Chip.fabricate(build("lenet5"), cfg, 1).test()
    with pytest.raises(InputError, match="another model"):
        apply_method("program", model, lenet_map, _ctx(small))


# --- the host model ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["differential", "offset"])
@pytest.mark.parametrize("levels", [None, 16])
def test_host_model_predicts_the_chip_exactly_with_a_perfect_test(scheme, levels):
    """With an exact map (no missed faults, no theta error, no programming noise) the host's predicted
    effective weights equal what the true chip realises, for a random layout with spare rows."""
    model = nn.Sequential(nn.Linear(70, 30), nn.ReLU(), nn.Linear(30, 5))
    cfg = ChipConfig().override({"faults.rate": 0.2, "variation.sigma": 0.8, "mapping.scheme": scheme,
                                 "cell.levels": levels, "mapping.rows": 16, "mapping.cols": 8,
                                 "mapping.spare_rows": 3})
    chip = Chip.fabricate(model, cfg, 9)
    host = HostChip(chip.test())
    gen = torch.Generator().manual_seed(0)
    for name, m in (("0", model[0]), ("2", model[2])):
        grid = host.grids[name]
        tr, tc = grid.tiles
        row_map = torch.stack([torch.cat([i * grid.tile_rows + torch.randperm(grid.tile_rows, generator=gen)[:grid.rows]
                                          for i in range(tr)]) for _ in range(tc)])
        sign = torch.where(torch.rand(grid.padded[1], generator=gen) < 0.5, -1.0, 1.0)
        host.set_layout(name, LayerLayout(row_map, sign))
        w = weight_to_matrix(m.weight.detach())
        scale = 0.5 * float(w.abs().max())
        predicted = host.effective_matrix(name, w, scale)
        chip.program_weights(name, m.weight, scale=scale, layout=host.layouts[name],
                             targets=host.targets(name, w, scale))
        assert torch.allclose(chip.effective_matrix(name), predicted, rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("scheme", ["differential", "offset"])
@pytest.mark.parametrize("levels", [None, 15, 16])
def test_host_plain_rule_matches_the_chips_own_converter(scheme, levels):
    """The `plain` rule (what `none` and `noise` assume) predicts the chip's converter path exactly."""
    model = nn.Sequential(nn.Linear(40, 12))
    cfg = ChipConfig().override({"faults.rate": 0.2, "variation.sigma": 0.6, "mapping.scheme": scheme,
                                 "cell.levels": levels, "mapping.rows": 16, "mapping.cols": 8})
    chip = Chip.fabricate(model, cfg, 4)
    host = HostChip(chip.test())
    w = weight_to_matrix(model[0].weight.detach())
    scale = float(w.abs().max())
    chip.program_weights("0", model[0].weight, scale=scale)
    predicted = host.effective_matrix("0", w, scale, rule="plain")
    assert torch.allclose(chip.effective_matrix("0"), predicted, rtol=1e-4, atol=1e-6 * scale)


def _view(fp, tp, fn, tn):
    t = lambda v, dt: torch.tensor([[v]], dtype=dt)  # noqa: E731
    return CellView(t(fp, torch.int8), t(tp, torch.float32), t(fn, torch.int8), t(tn, torch.float32),
                    torch.ones(1), Differential())


@pytest.mark.parametrize(("cells", "w", "expected", "tp", "tn"), [
    # (fault+, theta+, fault-, theta-), weight (scale 1), realised weight, targets in units of Gmax
    ((STUCK_ON, 0.0, HEALTHY, 0.0), 0.0, 0.0, 0.0, 1.0),                    # partner cancels a stuck-on cell
    ((STUCK_ON, 0.0, HEALTHY, 0.0), 0.25, 0.25, 0.0, 0.75),                 # ... or shifts it
    ((STUCK_ON, 0.0, HEALTHY, 0.0), -0.5, 0.0, 0.0, 1.0),                   # negative weight unreachable
    ((STUCK_OFF, 0.0, HEALTHY, 0.0), 0.5, 0.0, 0.0, 0.0),                   # positive weight unreachable
    ((STUCK_OFF, 0.0, HEALTHY, 0.0), -0.5, -0.5, 0.0, 0.5),                 # the partner carries it
    ((HEALTHY, math.log(2), HEALTHY, 0.0), 0.5, 0.5, 0.25, 0.0),            # e^theta = 2 divided out
    ((HEALTHY, -math.log(2), HEALTHY, 0.0), 0.8, 0.5, 1.0, 0.0),            # e^theta = 0.5: clipped at Gmax
    ((STUCK_ON, 0.0, STUCK_OFF, 0.0), -0.3, 1.0, 0.0, 0.0),                 # both stuck: nothing to do
    ((HEALTHY, 0.0, STUCK_ON, 0.0), -0.25, -0.25, 0.75, 0.0),
])
def test_pair_programming_matches_hand_computed_pairs(cells, w, expected, tp, tn):
    cell = CellConfig(r_on=1e4, r_off=math.inf)  # Gmin = 0: the arithmetic stays exact
    g = cell.g_max
    eff, t_p, t_n = realise(torch.tensor([[w]]), _view(*cells), 1.0, cell, "pair")
    assert float(eff) == pytest.approx(expected, abs=1e-6)
    if cells[0] == HEALTHY:
        assert float(t_p) == pytest.approx(tp * g, rel=1e-5, abs=1e-12)
    if cells[2] == HEALTHY:
        assert float(t_n) == pytest.approx(tn * g, rel=1e-5, abs=1e-12)
    fast = realise(torch.tensor([[w]]), _view(*cells), 1.0, cell, "pair", targets=False)[0]
    assert float(fast) == pytest.approx(expected, abs=1e-6)


def test_gradient_flows_to_pairs_with_a_programmable_cell_only():
    cell = CellConfig(r_on=1e4, r_off=math.inf)
    view = CellView(torch.tensor([[HEALTHY, STUCK_ON]], dtype=torch.int8), torch.zeros(1, 2),
                    torch.tensor([[HEALTHY, STUCK_OFF]], dtype=torch.int8), torch.zeros(1, 2), torch.ones(2),
                    Differential())
    w = torch.tensor([[0.3, 0.3]], requires_grad=True)
    realise(w, view, 1.0, cell, "pair", targets=False)[0].sum().backward()
    assert w.grad.tolist() == [[1.0, 0.0]]


# --- remapping -----------------------------------------------------------------------------------------------
def test_remap_equals_brute_force_on_a_tiny_tile():
    """One 4-row tile with 2 spare word lines: the assignment's cost equals the best of all 360 routings
    (polarity fixed), and with polarity it is never worse."""
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    cfg = ChipConfig().override({"faults.rate": 0.3, "variation.sigma": 0.7, "mapping.rows": 4,
                                 "mapping.cols": 3, "mapping.spare_rows": 2})
    for seed in range(3):
        host = HostChip(Chip.fabricate(model, cfg, seed).test())
        w = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed))
        imp = torch.rand(4, generator=torch.Generator().manual_seed(seed + 100))
        e_pos, _ = _tile_errors(host, "0", w, 1.0, "pair", 0, 0, 3, 0, 0)  # (4, 6, 3)
        cost = (e_pos * imp.view(4, 1, 1)).sum(2)
        brute = min(sum(float(cost[k, p[k]]) for k in range(4)) for p in itertools.permutations(range(6), 4))
        _, _, after = remap_layer(host, "0", w, 1.0, imp, polarity=False)
        assert after == pytest.approx(brute, rel=1e-5)
        _, before, after_pol = remap_layer(host, "0", w, 1.0, imp, polarity=True)
        assert after_pol <= brute * (1 + 1e-5) and after_pol <= before


# --- methods end to end -------------------------------------------------------------------------------------
def test_every_method_beats_none_on_a_small_chip(small):
    model, tr, val, test = small
    chip0 = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.2, "variation.sigma": 0.5}), 21)
    accs = {}
    for method in METHODS:
        result, _ = tolerate(model, copy.deepcopy(chip0), method, train=tr, val=val, test=test,
                             settings=_fast(method))
        accs[method] = result["chip_accuracy"]
    software = accuracy(model, test)
    assert accs["none"] < software - 0.05  # the chip hurts
    for method, acc in accs.items():
        if method != "none":
            assert acc > accs["none"] + 0.01, (method, accs)
    assert max(accs.values()) > software - 0.03, accs


def test_same_seed_same_result_and_tuned_file_reproduces(small, tmp_path):
    model, _, _, test = small
    cfg = ChipConfig().override({"faults.rate": 0.1, "variation.sigma": 0.5, "test.theta_noise": 0.1,
                                 "test.miss_rate": 0.1})
    chip = Chip.fabricate(model, cfg, 4)
    measured = chip.test()
    a = apply_method("remap-fat", model, measured, _ctx(small, seed=3), _fast("remap-fat"))
    b = apply_method("remap-fat", model, measured, _ctx(small, seed=3), _fast("remap-fat"))
    assert _same(a, b)
    acc1 = evaluate_deployment(model, copy.deepcopy(chip), a, test)
    acc2 = evaluate_deployment(model, copy.deepcopy(chip), b, test)
    assert acc1 == acc2
    from ittrna.experiments.tolerate import save_tuned  # the tuned file, written and read back (pickle-free)

    path = tmp_path / "tuned.pt"
    save_tuned(path, model, {}, a, chip.chip_id)
    payload = torch.load(path, weights_only=True)
    from ittrna.host import Deployment

    again = Deployment.from_payload(payload["state_dict"], payload["deployment"])
    assert payload["meta"]["tuned_for_chip"] == chip.chip_id and _same(again, a)
    assert evaluate_deployment(model, copy.deepcopy(chip), again, test) == acc1


def test_aft_leaves_no_large_weight_on_an_imperfect_cell(small):
    """With one phase every imperfect weight is frozen before training at what the chip realises for
    shrink * w: where the pair can realise 0, its magnitude is at most shrink * |w|, and it stays frozen."""
    model = small[0]
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.2, "variation.sigma": 0.8}), 8)
    measured = chip.test()
    settings = {**_fast("aft"), "shrink": 0.25, "tau": 0.5, "select": False}  # aft's own result, unselected
    start = apply_method("remap", model, measured, _ctx(small), _fast("remap"))
    dep = apply_method("aft", model, measured, _ctx(small), settings)
    host = HostChip(measured)
    for name in host.names:
        host.set_layout(name, dep.layouts[name])
        v = host.view(name)
        bad = ((v.fault_p != 0) | (v.fault_n != 0) | ((v.theta_p.exp() - 1).abs() > 0.5)
               | ((v.theta_n.exp() - 1).abs() > 0.5))
        lo, hi = v.diff_bounds(host.cell)
        zero_ok = (lo <= 0) & (hi >= 0)
        w_before = weight_to_matrix(start.state_dict[f"{name}.weight"])
        w_after = weight_to_matrix(dep.state_dict[f"{name}.weight"])
        sel = bad & zero_ok
        assert int(sel.sum()) > 0
        assert bool((w_after[sel].abs() <= 0.25 * w_before[sel].abs() + 1e-6).all())
        healthy = ~bad
        assert float(w_after[healthy].abs().max()) > 2 * float(w_after[sel].abs().max())


def test_tolerate_refuses_a_programmed_chip(small):
    model, tr, val, test = small
    chip = Chip.fabricate(model, ChipConfig(), 1)
    chip.program_model(model)
    with pytest.raises(InputError, match="programmed already"):
        tolerate(model, chip, "none", train=tr, val=val, test=test)


def test_deployment_layout_is_checked_when_programmed():
    model = nn.Sequential(nn.Linear(8, 4))
    chip = Chip.fabricate(model, ChipConfig().override({"mapping.rows": 4, "mapping.spare_rows": 1}), 0)
    grid = TileGrid(8, 4, 4, 128, 1)
    bad = LayerLayout(torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]]), torch.ones(128))  # row 4 is tile 0's spare
    with pytest.raises(InputError, match="own tile row"):
        chip.program_weights("0", model[0].weight, layout=bad)
    assert tuple(LayerLayout.identity(grid).row_map.shape) == (1, 8)


@pytest.mark.parametrize("method", [m for m in METHODS if METHODS[m].kind == "off-device"])
def test_no_method_costs_a_healthy_chip_accuracy(small, method):
    """On an ideal chip every off-device method deploys what the software model computes: retraining is kept
    only when the host model shows a significant gain on validation data (`keep_z`), and the scale search clips
    only for a significant gain (`search_z`): a chance gain of one image cost 0.04-0.17 pp before."""
    model, tr, val, test = small
    chip = Chip.fabricate(model, ChipConfig(), 5)
    result, dep = tolerate(model, chip, method, train=tr, val=val, test=test, settings=_fast(method))
    if dep.report.get("kept") == "retrained":  # validation showed a significant gain: the (small, not
        assert result["chip_accuracy"] > result["ideal_accuracy"]  # converged) model improves; the test agrees
    else:
        assert result["chip_accuracy"] == result["ideal_accuracy"], dep.report.get("kept")
    distilled = {**_fast(method), "distill": 1.0} if "distill" in get_method(method).config().to_dict() else None
    if distilled and method != "noise":  # towards the software model: nothing to gain, the start is kept
        _, dep = tolerate(model, Chip.fabricate(model, ChipConfig(), 5), method, train=tr, val=val, test=test,
                          settings=distilled)
        assert dep.report["kept"] == "start"


def test_a_retrained_network_is_kept_only_when_validation_shows_a_gain(small):
    """The control: on a faulty chip the host model shows a real gain, so the retrained network is kept."""
    model = small[0]
    measured = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.2}), 6).test()
    dep = apply_method("fat", model, measured, _ctx(small), _fast("fat"))
    assert dep.report["kept"] == "retrained"
    assert dep.report["retrained_val_accuracy"] > dep.report["start_val_accuracy"] + 0.01


def test_paired_sign_test():
    from ittrna.methods.retrain import significantly_better

    old = torch.zeros(100, dtype=torch.bool)
    new = old.clone()
    new[:3] = True  # 3 more right, none fewer: 3 > 2·√3 = 3.46? no
    assert not significantly_better(new, old, 2.0) and significantly_better(new, old, 0.0)
    new[:5] = True  # 5 > 2·√5 = 4.47
    assert significantly_better(new, old, 2.0) and not significantly_better(old, new, 2.0)
    swapped = old.clone()
    swapped[50:60] = True
    both = new.clone()
    both[50:60] = True
    assert not significantly_better(new, swapped, 2.0)  # 5 vs 10 the other way
    assert significantly_better(both, swapped, 2.0) and not significantly_better(both, both, 0.0)
