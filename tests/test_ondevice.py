"""Chip in the loop: the session's boundary and honest write accounting, and the on-device methods.

Invariants: the write budget and iteration limit are never exceeded (a refused request writes nothing);
writes are counted exactly on a hand-checked case; a cell past its endurance sticks mid-training; digital
registers cost zero writes and act as documented; the session passes the boundary tests (no public route to
the chip, counterfactual chips that differ only in what hardware cannot show give identical runs, every chip
reader poisoned outside the session); on-device results reproduce from the programmed chip.
"""

from __future__ import annotations

import copy
import pickle
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from ittrna.chip import CellArray, Chip
from ittrna.config import ChipConfig, ConfigError
from ittrna.device import STUCK_OFF, STUCK_ON
from ittrna.errors import InputError, WriteBudgetError
from ittrna.experiments.tolerate import deployment_mismatch, evaluate_deployment, tolerate
from ittrna.host import Deployment
from ittrna.methods import METHODS, Context, apply_method, get_method
from ittrna.methods.ondevice import _ChipLoop, _fit_registers, chip_accuracy
from ittrna.session import ChipSession

ON_DEVICE = [n for n, s in METHODS.items() if s.kind == "on-device"]
ZERO_WRITE = {"bn-chip"}  # on the chip through forward passes only (tests/test_own_models.py)
WRITING = [n for n in ON_DEVICE if n not in ZERO_WRITE]
FAST = {"ondevice": {"epochs": 1, "eval_every": 20, "eval_images": 200},
        "threshold": {"epochs": 1, "eval_every": 20, "eval_images": 200},
        "codesign": {"base": {"method": "dynamic", "epochs": 1, "search_images": 500, "headroom_steps": 4,
                              "search_passes": 1, "importance_images": 256},
                     "iterations": 2, "calib_images": 256, "write_budget": 3000}}
HARD = {"faults.rate": 0.2, "variation.sigma": 0.5, "variation.program_noise": 0.1, "variation.read_noise": 0.02,
        "test.miss_rate": 0.1, "test.theta_noise": 0.2}


def _tiny(weight: list[list[float]]) -> nn.Module:
    model = nn.Sequential(nn.Linear(len(weight[0]), len(weight), bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(weight))
    return model


def _dep(model: nn.Module, scale: float = 1.0) -> Deployment:
    return Deployment({k: v.clone() for k, v in model.state_dict().items()}, {"0": scale})


def _state(chip: Chip) -> dict:
    cells = {(n, a, f): getattr(arr, f).clone() for n, layer in chip.layers.items()
             for a, arr in layer.arrays.items() for f in ("fault", "theta", "g", "eps", "writes")}
    layers = {(n, "layer", f): torch.tensor(float(getattr(layer, f))) for n, layer in chip.layers.items()
              for f in ("scale", "version")}
    counts = {("chip", f, ""): torch.tensor(getattr(chip, f)) for f in ("write_epoch", "writes_issued",
                                                                         "writes_performed")}
    return {**cells, **layers, **counts}


def _unchanged(before: dict, chip: Chip) -> bool:
    after = _state(chip)
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


# --- accounting ---------------------------------------------------------------------------------------------
def test_writes_are_counted_exactly_on_a_hand_checked_pair():
    """Differential pairs, Gmin = 1 uS, Gmax = 100 uS, scale 1: w = +0.5 puts G+ at Gmin + 0.5 span.
    Changing w0 from +0.5 to -0.5 changes both its cells (2 writes); w1 from 0.25 to 0.75 changes G+ only (1);
    w2 unchanged (0). The G+ of w1 is stuck: it is issued (the host pays for it) but not performed."""
    model = _tiny([[0.5, 0.25, -0.5]])  # (1 out, 3 in): matrix rows 0..2, one column
    chip = Chip.fabricate(model, ChipConfig(), 0)
    chip.layer("0").arrays["pos"].fault[1, 0] = STUCK_ON
    s = ChipSession(chip, model)
    assert s.deploy(_dep(model)) == 3  # three non-Gmin cells: G+ of w0, w1 and G- of w2
    new = torch.tensor([[-0.5, 0.75, -0.5]])
    assert s.count_writes("0", s.weight_targets("0", new)) == 3
    assert s.program_weights("0", new) == 3
    assert s.writes_issued == 6 and s.ondevice_writes == 3 and s.iterations == 1
    stats = chip.write_stats()  # evaluator-only
    assert stats["writes_issued"] == 6
    assert stats["writes_performed"] == 2 + 2  # deployment: 2 healthy of 3; then w0's two cells
    assert s.program_weights("0", new) == 0 and s.iterations == 1  # nothing changes: no write, no iteration


def test_write_budget_is_never_exceeded_and_a_refused_write_writes_nothing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 6))
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.1, "variation.program_noise": 0.1}), 1)
    s = ChipSession(chip, model, write_budget=50)
    s.deploy(_dep(model, scale=float(model[0].weight.detach().abs().max())))
    gen = torch.Generator().manual_seed(1)
    refused = 0
    for _ in range(40):
        w = model[0].weight.detach().clone()
        k = int(torch.randint(1, 30, (1,), generator=gen))
        idx = torch.randperm(w.numel(), generator=gen)[:k]
        w.view(-1)[idx] += 0.05 * torch.randn(k, generator=gen)
        before = _state(chip)
        try:
            s.program_weights("0", w)
        except WriteBudgetError as exc:
            refused += 1
            assert "budget" in str(exc)
            assert _unchanged(before, chip)  # nothing written, nothing counted
        assert s.ondevice_writes <= 50 and s.writes_left is not None and s.writes_left >= 0
        s.forward(torch.randn(2, 20))
    assert refused > 0 and s.ondevice_writes <= 50


def test_iteration_limit_counts_programming_rounds():
    model = nn.Sequential(nn.Linear(4, 2))
    chip = Chip.fabricate(model, ChipConfig(), 2)
    s = ChipSession(chip, model, max_iterations=2)
    s.deploy(_dep(model, 1.0))
    w = model[0].weight.detach()
    s.program_weights("0", w * 0.5)
    s.program_weights("0", w * 0.4)  # same round (no forward pass between): still iteration 1
    assert s.iterations == 1
    s.forward(torch.randn(1, 4))
    s.program_weights("0", w * 0.3)
    s.forward(torch.randn(1, 4))
    before = _state(chip)
    with pytest.raises(WriteBudgetError, match="iteration 3 refused"):
        s.program_targets("0", s.weight_targets("0", w * 0.2))
    assert s.iterations == 2 and _unchanged(before, chip)


def test_a_cell_past_endurance_sticks_mid_training():
    """Endurance 3 writes: the 4th write of a cell leaves it stuck at the failure state, and the chip's output
    (all the host sees) shows it."""
    model = _tiny([[0.5]])
    cfg = ChipConfig().override({"endurance.endurance": 3, "endurance.failure_state": "stuck_off"})
    chip = Chip.fabricate(model, cfg, 0)
    s = ChipSession(chip, model)
    s.deploy(_dep(model))  # the first programming is not wear (count_initial_programming false)
    x = torch.ones(1, 1)
    outs = []
    for w in (0.6, 0.5, 0.6, 0.5):
        s.program_weights("0", torch.tensor([[w]]))
        outs.append(float(s.forward(x)[0]))
    assert chip.layer("0").arrays["pos"].fault[0, 0] == STUCK_OFF
    assert chip.write_stats()["cells_worn_out"] == 1
    assert outs[2] == pytest.approx(0.6, abs=1e-4)  # third write still works
    assert abs(outs[3]) < 1e-6  # stuck off: G+ = G- = Gmin, the weight reads 0


def test_registers_cost_no_writes_and_act_per_column():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3))
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.1, "variation.sigma": 0.3}), 3)
    s = ChipSession(chip, model)
    s.deploy(_dep(model, float(model[0].weight.detach().abs().max())))
    x = torch.randn(8, 5)
    y0 = s.forward(x)[0]
    issued, epoch = chip.writes_issued, chip.write_epoch
    gain, offset = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.0, 0.1, -0.2])
    s.set_registers("0", gain, offset)
    y1 = s.forward(x)[0]
    bias = model[0].bias.detach()
    assert torch.allclose(y1, (y0 - bias) * gain + offset + bias, atol=1e-5)
    assert chip.writes_issued == issued and chip.write_epoch == epoch and s.ondevice_writes == 0
    with pytest.raises(InputError, match="gain register"):
        s.set_registers("0", torch.tensor([1.0, float("nan"), 1.0]), offset)


def test_codesign_calibration_costs_zero_writes_and_fits_the_intended_outputs(small):
    model, tr, val, _ = small
    chip = Chip.fabricate(model, ChipConfig().override({"variation.sigma": 0.3}), 4)
    s = ChipSession(chip, model)
    s.deploy(_dep_all(model))
    names = s.layer_names
    want = {n: dict(model.named_modules())[n].weight.detach().t() for n in names}  # the software weights
    before = chip_accuracy(s, model, names, val)
    issued = s.writes_issued
    _fit_registers(s, model, names, want, tr.x[:256])
    assert s.writes_issued == issued == chip.writes_issued
    assert chip_accuracy(s, model, names, val) >= before - 0.01


def test_the_register_fit_recovers_a_known_per_column_gain():
    """A fit that did nothing would pass the test above: here the intended outputs are the chip's own times a
    known factor per column (ideal chip), so the fitted gains must be those factors and the offsets zero."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    chip = Chip.fabricate(model, ChipConfig(), 0)
    s = ChipSession(chip, model)
    s.deploy(_dep_all(model))
    names = s.layer_names
    factor = {"1": torch.linspace(0.5, 2.0, 6), "3": torch.tensor([1.0, 1.0, 1.0])}
    want = {n: dict(model.named_modules())[n].weight.detach().t() * factor[n] for n in names}  # (K, N)
    _fit_registers(s, model, names, want, torch.rand(512, 1, 4, 4))
    gain, offset = s.registers("1")
    assert torch.allclose(gain, factor["1"], atol=1e-3) and float(offset.abs().max()) < 1e-3
    gain3, _ = s.registers("3")
    assert torch.allclose(gain3, torch.ones(3), atol=1e-3)


def _dep_all(model: nn.Module) -> Deployment:
    scales = {n: float(m.weight.detach().abs().max()) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return Deployment({k: v.clone() for k, v in model.state_dict().items()}, scales)


# --- the boundary -------------------------------------------------------------------------------------------
def test_the_session_offers_no_route_to_the_chip():
    model = nn.Sequential(nn.Linear(3, 2))
    chip = Chip.fabricate(model, ChipConfig(), 0)
    s = ChipSession(chip, model)
    public = [a for a in dir(s) if not a.startswith("_")]
    for attr in public:
        value = getattr(s, attr)
        assert not isinstance(value, Chip | CellArray), attr
    with pytest.raises(TypeError, match="cannot be copied"):
        copy.deepcopy(s)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(s)
    with pytest.raises(InputError, match="deploy"):
        s.program_weights("0", model[0].weight)


def test_deploy_is_all_or_nothing_and_bad_requests_write_nothing():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    chip = Chip.fabricate(model, ChipConfig(), 0)
    s = ChipSession(chip, model)
    bad = Deployment({k: v.clone() for k, v in model.state_dict().items()}, {"0": 1.0, "2": 1.0},
                     registers={"2": {"gain": torch.ones(5), "offset": torch.zeros(5)}})  # layer 2 has 2 columns
    before = _state(chip)
    with pytest.raises(InputError, match="register"):
        s.deploy(bad)
    assert _unchanged(before, chip) and s.writes_issued == 0
    good = Deployment({k: v.clone() for k, v in model.state_dict().items()}, {"0": 1.0, "2": 1.0})
    assert s.deploy(good) > 0  # the session is still usable
    before = _state(chip)
    nan = s.weight_targets("0", model[0].weight.detach())
    nan["pos"][0, 0] = float("nan")
    for call in (lambda: s.program_targets("0", nan), lambda: s.count_writes("0", nan),
                 lambda: s.program_weights("0", torch.full((3, 4), float("inf"))),
                 lambda: s.program_weights("0", model[0].weight.detach(), scale=-1.0),
                 lambda: s.forward(torch.randn(2, 7))):
        with pytest.raises(InputError):
            call()
    assert _unchanged(before, chip)
    w = model[0].weight.detach().clone().requires_grad_(True)
    s.program_targets("0", s.weight_targets("0", 2 * w))  # targets still attached to autograd
    chip.save(Path(tempfile.mkdtemp()) / "c.npz")  # the chip holds plain tensors
    s.close()
    with pytest.raises(InputError, match="closed"):
        s.forward(torch.randn(1, 4))


def test_evaluator_refuses_a_deployment_that_is_not_the_chips_state(small):
    model, tr, val, _ = small
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.1}), 2)
    s = ChipSession(chip, model)
    dep = apply_method("codesign", model, chip.test(), Context(tr.subset(640), val), FAST["codesign"], session=s)
    assert deployment_mismatch(chip, dep) == ""
    moved = copy.deepcopy(dep)
    moved.targets["1"]["pos"][0, 0] += 1e-6
    assert "more writes" in deployment_mismatch(chip, moved)
    moved = copy.deepcopy(dep)
    moved.registers["1"]["gain"][0] += 0.5
    assert "registers" in deployment_mismatch(chip, moved)


def test_estimates_and_registers_are_exact_on_a_perfect_conv_chip():
    """No faults, no variation, no noise: the chip realises the weights, so the least-squares estimate from
    layer outputs gives them back (Conv2d and Linear) and the register fit gives gain 1, offset 0."""
    from ittrna.methods.ondevice import _estimate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).eval()
    chip = Chip.fabricate(model, ChipConfig(), 0)
    s = ChipSession(chip, model)
    s.deploy(Deployment({k: v.clone() for k, v in model.state_dict().items()},
                        {"0": float(model[0].weight.detach().abs().max()),
                         "3": float(model[3].weight.detach().abs().max())}))
    names = s.layer_names
    w = {n: dict(model.named_modules())[n].weight.detach().reshape(len(dict(model.named_modules())[n].weight), -1).t()
         for n in names}
    images = torch.rand(512, 1, 8, 8)  # more images than the Linear layer has inputs (108)
    est, power = _estimate(s, model, names, {n: torch.zeros_like(w[n]) for n in names}, images, 1e-9)
    for n in names:
        seen = power[n][:, 0] > 1e-8  # rows whose input the data excites (a dead ReLU's row stays at the prior, 0)
        assert power[n].shape == (w[n].shape[0], 1) and bool(seen.any())  # one column group: (K, 1)
        assert torch.allclose(est[n][seen], w[n][seen], atol=1e-4), n
    _fit_registers(s, model, names, w, images)
    for n in names:
        gain, offset = s.registers(n)
        assert torch.allclose(gain, torch.ones_like(gain), atol=1e-3) and offset.abs().max() < 1e-3


def test_undeploy_bakes_the_registers_in():
    from ittrna.nn import deploy, undeploy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3))
    chip = Chip.fabricate(model, ChipConfig().override({"variation.sigma": 0.3}), 1)
    net = deploy(model, chip)
    chip.set_registers("0", torch.tensor([1.5, 0.5, -1.0]), torch.tensor([0.1, 0.0, 0.2]))
    x = torch.randn(4, 5)
    assert torch.allclose(undeploy(net, effective=True)(x), net(x), atol=1e-5)


def test_on_device_method_needs_a_session(small):
    model, tr, val, _ = small
    chip = Chip.fabricate(model, ChipConfig(), 1)
    with pytest.raises(InputError, match="session"):
        apply_method("ondevice", model, chip.test(), Context(tr, val), FAST["ondevice"])


# --- the methods --------------------------------------------------------------------------------------------
def test_chip_loop_forward_values_are_the_chips(small):
    model, tr, _, _ = small
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.2, "variation.sigma": 0.5}), 7)
    s = ChipSession(chip, model)
    s.deploy(_dep_all(model))
    loop = _ChipLoop(copy.deepcopy(model), s, s.layer_names)
    x = tr.x[:32]
    out = loop(x)
    chip_logits, _ = s.forward(x)
    assert torch.allclose(out, chip_logits, atol=1e-5)
    out.sum().backward()  # gradients reach the host weights
    assert all(p.grad is not None for p in loop.parameters())


@pytest.mark.parametrize("method", WRITING)
def test_on_device_methods_improve_the_chip_within_budget_and_reproduce(small, method, tmp_path):
    model, tr, val, test = small
    chip = Chip.fabricate(model, ChipConfig().override(HARD), 8)
    settings = {f"method.{k}": v for k, v in FAST[method].items()}
    result, dep = tolerate(model, chip, method, train=tr.subset(1280), val=val, test=test, settings=settings)
    assert result["chip_accuracy"] > result["chip_accuracy_before"] + 0.1
    assert result["evaluation_writes"] == 0  # the deployment is the chip's state
    assert result["iterations"] >= 1 and result["forward_passes"] > 0
    budget = FAST[method].get("write_budget")
    if budget is not None:
        assert result["report"]["ondevice_writes"] <= budget
    # the result (and so a sweep record) carries the session's count of writes after the first programming
    assert 0 < result["ondevice_writes"] == result["report"]["ondevice_writes"] < result["writes"]
    if method == "codesign":
        assert result["iterations"] <= FAST[method]["iterations"]
    # the deployment (through its file payload) plus the saved programmed chip reproduce the accuracy
    chip.save(tmp_path / "c.npz")
    dep2 = Deployment.from_payload(dep.state_dict, dep.to_payload())
    again = Chip.load(tmp_path / "c.npz")
    assert evaluate_deployment(model, again, dep2, test) == result["chip_accuracy"]
    assert again.writes_issued == chip.writes_issued  # reprogramming the same state issues nothing


def test_threshold_writes_far_less_than_ondevice(small):
    model, tr, val, test = small
    chip0 = Chip.fabricate(model, ChipConfig().override(HARD), 9)
    out = {}
    for method in ("ondevice", "threshold"):
        settings = {f"method.{k}": v for k, v in FAST[method].items()}
        out[method], _ = tolerate(model, copy.deepcopy(chip0), method, train=tr.subset(1280), val=val,
                                  test=test, settings=settings)
    assert out["threshold"]["writes"] < 0.5 * out["ondevice"]["writes"]


def test_codesign_settings_are_validated():
    spec = get_method("codesign")
    for field, bad in (("iterations", 11), ("write_budget", -1), ("base", "magic"), ("ridge", 0)):
        with pytest.raises(ConfigError, match=f"method.{field}"):
            spec.make_config({field: bad})


def test_registers_survive_save_and_load(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    chip = Chip.fabricate(model, ChipConfig(), 0)
    chip.program_model(model)
    chip.set_registers("0", torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.0, -1.0]))
    chip.save(tmp_path / "c.npz")
    again = Chip.load(tmp_path / "c.npz")
    assert torch.equal(again.layer("0").gain, chip.layer("0").gain)
    assert torch.equal(again.layer("0").offset, chip.layer("0").offset)
    dep = Deployment({k: v for k, v in model.state_dict().items()}, registers={
        "0": {"gain": torch.ones(3), "offset": torch.zeros(3)}})
    back = Deployment.from_payload(dep.state_dict, dep.to_payload())
    assert torch.equal(back.registers["0"]["gain"], torch.ones(3))
    bad = dep.to_payload()
    bad["registers"]["0"]["gain"] = torch.tensor([float("inf"), 1.0, 1.0])
    with pytest.raises(InputError, match="registers"):
        Deployment.from_payload(dep.state_dict, bad)


def test_ondevice_wears_cells_out_mid_training_and_codesign_does_not(small):
    """Endurance 5 writes: full on-device retraining (20 steps, every changed cell written each step) wears
    cells out mid-run; codesign writes each cell a few times at most."""
    model, tr, val, test = small
    cfg = ChipConfig().override({**HARD, "endurance.endurance": 5})
    out = {}
    for method in ("ondevice", "codesign"):
        settings = {f"method.{k}": v for k, v in FAST[method].items()}
        out[method], _ = tolerate(model, Chip.fabricate(model, cfg, 10), method, train=tr.subset(1280), val=val,
                                  test=test, settings=settings)
    assert out["ondevice"]["cells_worn_out"] > 0 and out["ondevice"]["max_writes_per_cell"] > 5
    assert out["codesign"]["cells_worn_out"] == 0


def test_codesign_checks_the_memory_of_its_normal_equations_before_allocating(small, monkeypatch):
    """The chip estimate's (K, K) float64 matrices are refused with a ResourceError when they would not fit."""
    import ittrna._resources as resources
    from ittrna.errors import ResourceError
    from ittrna.methods.ondevice import _estimate

    model, tr, _, _ = small
    chip = Chip.fabricate(model, ChipConfig(), 1)
    session = ChipSession(chip, model)
    monkeypatch.setattr(resources, "available_memory", lambda: 10_000)  # 784 x 784 float64 is 4.9 MB
    with pytest.raises(ResourceError, match="codesign's chip estimate"):
        _estimate(session, model, session.layer_names, {}, tr.x[:8], 1e-3)


def test_codesign_estimates_each_group_of_a_grouped_convolution_from_its_own_inputs():
    """On a perfect chip the least-squares estimate of a depthwise and a grouped convolution is exact, and the
    registers it fits are identity: each group is solved from its own inputs only."""
    from ittrna.methods.ondevice import _estimate, _fit_registers

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4),
                          nn.ReLU(), nn.Conv2d(4, 6, 3, groups=2), nn.Flatten(), nn.Linear(6 * 6 * 6, 10)).eval()
    chip = Chip.fabricate(model, ChipConfig(), 0)
    s = ChipSession(chip, model)
    mods = dict(model.named_modules())
    s.deploy(Deployment({k: v.clone() for k, v in model.state_dict().items()},
                        {n: float(mods[n].weight.detach().abs().max()) for n in ("0", "2", "4", "6")}))
    names = s.layer_names
    w = {n: mods[n].weight.detach().reshape(len(mods[n].weight), -1).t() for n in names}
    images = torch.rand(256, 1, 8, 8)
    est, power = _estimate(s, model, names, {n: torch.zeros_like(w[n]) for n in names}, images, 1e-9)
    for n in ("2", "4"):
        assert power[n].shape == w[n].shape  # a grouped layer's columns meet their own group's inputs
        seen = power[n] > 1e-8
        assert torch.allclose(est[n][seen], w[n][seen], atol=1e-4), n
    _fit_registers(s, model, names, w, images)
    for n in names:
        gain, offset = s.registers(n)
        assert torch.allclose(gain, torch.ones_like(gain), atol=1e-3) and offset.abs().max() < 1e-3
