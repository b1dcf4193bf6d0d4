import math

import pytest
import torch
from torch import nn

from ittrna.chip import Chip, MeasuredMap
from ittrna.config import ChipConfig
from ittrna.device import HEALTHY, STUCK_OFF, STUCK_ON
from ittrna.mapping import weight_to_matrix
from ittrna.models import build
from ittrna.nn import deploy


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("model_name", ["mlp", "lenet5", "mlp-deep"])
@pytest.mark.parametrize("scheme", ["differential", "offset"])
def test_ideal_chip_reproduces_software(model_name, scheme):
    model = build(model_name, seed=1)
    x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    cfg = ChipConfig().override({"mapping.scheme": scheme})
    on_chip = deploy(model, Chip.fabricate(model, cfg, 0))
    with torch.no_grad():
        assert _rel_err(on_chip(x), model(x)) < 1e-5


@pytest.mark.parametrize("crossbar", [(16, 16), (64, 32), (128, 128), (512, 512)])
def test_ideal_results_independent_of_crossbar_size(crossbar):
    model = build("lenet5", seed=2)
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    cfg = ChipConfig().override({"mapping.rows": crossbar[0], "mapping.cols": crossbar[1]})
    with torch.no_grad():
        assert _rel_err(deploy(model, Chip.fabricate(model, cfg, 0))(x), model(x)) < 1e-5


def test_ideal_chip_with_fine_adc_dac_is_close():
    model = build("lenet5", seed=2)
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    cfg = ChipConfig().override({"mapping.adc_bits": 16, "mapping.dac_bits": 16, "mapping.rows": 64,
                                 "mapping.adc_percentile": 100.0})  # calibrated on this batch: no clipping
    with torch.no_grad():
        assert _rel_err(deploy(model, Chip.fabricate(model, cfg, 0))(x), model(x)) < 1e-3


def _chip_tensors(chip):
    return {(ln, an, f): getattr(arr, f) for ln, layer in chip.layers.items()
            for an, arr in layer.arrays.items() for f in ("fault", "theta", "g", "eps", "writes")}


@pytest.mark.parametrize("pattern", ["uniform", "clustered", "lines"])
def test_same_seed_bit_identical_chip(pattern):
    model = build("mlp")
    cfg = ChipConfig().override({"faults.rate": 0.1, "faults.pattern": pattern, "variation.sigma": 0.5,
                                 "variation.program_noise": 0.1})
    a, b, c = (Chip.fabricate(model, cfg, s) for s in (5, 5, 6))
    a.program_model(model)
    b.program_model(model)
    ta, tb = _chip_tensors(a), _chip_tensors(b)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    tc = _chip_tensors(c)
    assert not torch.equal(ta[("0" if "0" in a.layers else "1", "pos", "fault")],
                           tc[("0" if "0" in c.layers else "1", "pos", "fault")])


def test_realised_fraction_over_chip_matches_rate():
    model = build("mlp")
    cfg = ChipConfig().override({"faults.rate": 0.2, "faults.stuck_on_share": 0.25})
    s = Chip.fabricate(model, cfg, 0).summary()
    tol = 5 * (0.2 * 0.8 / s["cells"]) ** 0.5  # binomial, 5 sigma
    assert s["stuck_on_fraction"] + s["stuck_off_fraction"] == pytest.approx(0.2, abs=tol)
    assert s["stuck_on_fraction"] == pytest.approx(0.05, abs=tol)
    exact = Chip.fabricate(model, cfg.override({"faults.pattern": "clustered"}), 0).summary()
    faulty = sum(int((a.fault != 0).sum()) for layer in Chip.fabricate(model, cfg.override(
        {"faults.pattern": "clustered"}), 0) for a in layer.arrays.values())  # exact over whole arrays
    per_layer = [round(0.2 * r["cells_total"] / 2) * 2 for r in Chip.fabricate(model, cfg, 0).stats()]
    assert faulty == sum(per_layer)
    assert exact["cells"] < exact["cells_total"]


def test_stats_count_used_cells_not_padding():
    """The mlp's last layer (128 x 10) sits on one 128 x 128 tile pair: 92 % of its cells are padding."""
    model = build("mlp")
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.2}), 0)
    last = chip.stats()[-1]
    assert last["cells"] == 2 * 128 * 10 and last["cells_total"] == 2 * 128 * 128
    used = chip.used_cells(last["layer"])["pos"]
    fault = chip.layers[last["layer"]].arrays["pos"].fault
    assert last["stuck_on_fraction"] == pytest.approx(
        (float((fault[used] == STUCK_ON).sum()) + float((chip.layers[last["layer"]].arrays["neg"].fault[used]
                                                         == STUCK_ON).sum())) / (2 * 1280))
    offset = Chip.fabricate(model, ChipConfig().override({"mapping.scheme": "offset"}), 0).stats()[-1]
    assert offset["cells"] == 128 * 10 + 128  # weights plus the reference cells of their rows


def test_save_load_lossless(tmp_path):
    model = build("lenet5")
    cfg = ChipConfig().override({"faults.rate": 0.1, "variation.sigma": 0.3, "variation.program_noise": 0.05,
                                 "mapping.scheme": "offset", "cell.r_off": math.inf})
    chip = Chip.fabricate(model, cfg, 3)
    chip.program_model(model)
    chip.save(tmp_path / "c.npz")
    back = Chip.load(tmp_path / "c.npz")
    assert back.config == chip.config and back.seed == chip.seed and back.write_epoch == chip.write_epoch
    ta, tb = _chip_tensors(chip), _chip_tensors(back)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) and ta[k].dtype == tb[k].dtype for k in ta)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(deploy(model, chip, program=False)(x), deploy(model, back, program=False)(x))


def test_load_rejects_other_files(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        Chip.load(bad)
    with pytest.raises(ValueError, match="no such file"):
        Chip.load(tmp_path / "missing.npz")
    chip = Chip.fabricate(build("mlp"), ChipConfig(), 0)
    chip.test().save(tmp_path / "map.npz")
    with pytest.raises(ValueError, match="expected a 'chip'"):
        Chip.load(tmp_path / "map.npz")


def test_chip_on_model_with_other_shapes_is_a_clear_error():
    chip = Chip.fabricate(build("mlp"), ChipConfig(), 0)
    other = build("mlp-deep")
    with pytest.raises(ValueError, match="weight shape"):
        deploy(other, chip)


def test_bad_input_to_a_chip_is_an_input_error_where_it_arises():
    """Each bad input is an InputError subclass raised by the chip itself (no caller re-wraps it)."""
    from ittrna.errors import InputError, UnknownNameError

    chip = Chip.fabricate(build("mlp"), ChipConfig(), 0)
    with pytest.raises(InputError, match="does not match the chip's"):
        chip.program_weights("1", torch.zeros(3, 3))
    with pytest.raises(UnknownNameError, match="chip has no layer 'nope'; it holds") as err:
        chip.layer("nope")
    assert isinstance(err.value, KeyError) and str(err.value).startswith("chip has no layer")
    with pytest.raises(InputError, match="was made for weight shape"):
        chip.check_model(build("mlp-deep"))
    with pytest.raises(InputError, match="has no matching weight layer"):
        chip.check_model(nn.Sequential(nn.ReLU()))
    with pytest.raises(InputError, match="no Linear/Conv2d layer"):
        Chip.fabricate(nn.Sequential(nn.ReLU()), ChipConfig(), 0)


def test_stuck_cells_ignore_programming_and_perform_no_writes():
    model = build("mlp")
    cfg_chip = ChipConfig().override({"faults.rate": 0.3, "endurance.count_initial_programming": True})
    chip = Chip.fabricate(model, cfg_chip, 1)
    writes = chip.program_model(model)
    layer = chip.layers["1"]
    arr = layer.arrays["pos"]
    cfg = chip.config.cell
    assert int(arr.writes[arr.fault != HEALTHY].sum()) == 0  # wear: stuck cells perform no write
    assert int(arr.writes[arr.fault == HEALTHY].sum()) > 0
    g = chip.conductances("1")["pos"]
    assert bool((g[arr.fault == STUCK_ON] == cfg.g_max).all())
    assert bool((g[arr.fault == STUCK_OFF] == cfg.g_min).all())
    assert writes > 0
    stats = chip.write_stats()
    assert stats["writes_issued"] == writes > stats["writes_performed"] > 0
    # programming the same weights again writes nothing
    assert chip.program_model(model) == 0


def test_issued_writes_do_not_reveal_faults():
    """A host sees writes issued: the same requests cost the same on a perfect and a 30 % fault chip."""
    model = build("mlp")
    clean = Chip.fabricate(model, ChipConfig(), 1)
    faulty = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.3}), 1)
    assert clean.program_model(model) == faulty.program_model(model)
    other = build("mlp", seed=5)
    assert clean.program_model(other) == faulty.program_model(other)  # counted as wear (not the first)
    assert clean.write_stats()["writes_issued"] == faulty.write_stats()["writes_issued"]
    assert faulty.write_stats()["writes_performed"] < clean.write_stats()["writes_performed"]


def test_write_counting_and_endurance():
    model = nn.Sequential(nn.Linear(4, 3))
    cfg = ChipConfig().override({"endurance.endurance": 2, "endurance.count_initial_programming": True,
                                 "endurance.failure_state": "stuck_off", "mapping.rows": 4, "mapping.cols": 4})
    chip = Chip.fabricate(model, cfg, 0)
    w = torch.ones(3, 4)
    for i in range(3):
        chip.program_weights("0", w * (1 + i % 2) * (1 if i < 2 else -1), scale=2.0)
    arr = chip.layers["0"].arrays["pos"]
    # pos cells of the used 4x3 block were written 3 times (>2): now stuck_off at Gmin
    assert bool((arr.fault[:4, :3] == STUCK_OFF).all())
    assert int(arr.writes.max()) == 3
    assert bool((chip.conductances("0")["pos"][:4, :3] == cfg.cell.g_min).all())


def test_initial_programming_not_counted_by_default():
    model = build("mlp")
    chip = Chip.fabricate(model, ChipConfig(), 0)
    chip.program_model(model)
    assert all(int(a.writes.sum()) == 0 for layer in chip for a in layer.arrays.values())
    model2 = build("mlp", seed=9)
    n = chip.program_model(model2)
    assert sum(int(a.writes.sum()) for layer in chip for a in layer.arrays.values()) == n > 0


def test_variation_on_ideal_gmin_chip_is_multiplicative():
    model = nn.Sequential(nn.Linear(50, 20))
    cfg = ChipConfig.preset("date17").override({"variation.sigma": 0.4})
    chip = Chip.fabricate(model, cfg, 0)
    chip.program_model(model)
    w = weight_to_matrix(model[0].weight.detach())  # (in, out)
    layer = chip.layers["0"]
    theta_active = torch.where(w > 0, layer.arrays["pos"].theta[:50, :20], layer.arrays["neg"].theta[:50, :20])
    expected = w * torch.exp(theta_active)
    assert torch.allclose(chip.effective_matrix("0"), expected, rtol=1e-5, atol=1e-7)


def test_partner_cell_can_cancel_a_stuck_on_cell():
    """A stuck-on G+ with G- programmed to Gmax reads (near) zero weight."""
    model = nn.Sequential(nn.Linear(4, 4))
    chip = Chip.fabricate(model, ChipConfig().override({"mapping.rows": 4, "mapping.cols": 4}), 0)
    chip.program_weights("0", torch.zeros(4, 4), scale=1.0)
    layer = chip.layers["0"]
    layer.arrays["pos"].fault[0, 0] = STUCK_ON
    assert float(chip.effective_matrix("0")[0, 0]) == pytest.approx(1.0, rel=1e-6)  # full-scale error
    cell = chip.config.cell
    neg = layer.arrays["neg"].g.clone()
    neg[0, 0] = cell.g_max
    chip.program("0", {"neg": neg})
    assert abs(float(chip.effective_matrix("0")[0, 0])) < 1e-6


def test_chip_test_reports_truth_or_configured_imperfections():
    model = build("mlp")
    cfg = ChipConfig().override({"faults.rate": 0.2, "variation.sigma": 0.5})
    chip = Chip.fabricate(model, cfg, 0)
    perfect = chip.test()
    for ln, layer in chip.layers.items():
        for an, arr in layer.arrays.items():
            assert torch.equal(perfect.layers[ln][an]["fault"], arr.fault)
            assert torch.equal(perfect.layers[ln][an]["theta"], arr.theta)
    chip.config = chip.config.override({"test.miss_rate": 0.5, "test.theta_noise": 0.1})
    noisy = chip.test(seed=1)
    truth = torch.cat([a.fault.flatten() for layer in chip for a in layer.arrays.values()])
    seen = torch.cat([noisy.layers[ln][an]["fault"].flatten() for ln, layer in chip.layers.items()
                      for an in layer.arrays])
    assert bool(((seen != HEALTHY) <= (truth != HEALTHY)).all())  # never invents a fault
    assert float((seen != HEALTHY).sum() / (truth != HEALTHY).sum()) == pytest.approx(0.5, abs=0.01)
    d = noisy.layers["1"]["pos"]["theta"] - chip.layers["1"].arrays["pos"].theta
    assert float(d.std()) == pytest.approx(0.1, rel=0.05)


def test_measured_map_roundtrip(tmp_path):
    chip = Chip.fabricate(build("lenet5"), ChipConfig().override({"faults.rate": 0.1}), 4)
    m = chip.test()
    m.save(tmp_path / "m.npz")
    back = MeasuredMap.load(tmp_path / "m.npz")
    assert back.design == m.design and back.chip_id == m.chip_id == chip.chip_id and back.meta == m.meta
    for ln in m.layers:
        for an in m.layers[ln]:
            for f in ("fault", "theta"):
                assert torch.equal(back.layers[ln][an][f], m.layers[ln][an][f])


def test_invalid_seed_rejected():
    with pytest.raises(ValueError, match="seed"):
        Chip.fabricate(build("mlp"), ChipConfig(), -1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():  # pragma: no cover - runs where a GPU exists
    model = build("lenet5")
    cfg = ChipConfig().override({"faults.rate": 0.1, "variation.sigma": 0.5})
    x = torch.rand(8, 1, 28, 28)
    cpu = deploy(model, Chip.fabricate(model, cfg, 0))(x)
    gpu = deploy(model.cuda(), Chip.fabricate(model, cfg, 0, device="cuda"))(x.cuda())
    assert torch.allclose(cpu, gpu.cpu(), rtol=1e-4, atol=1e-5)


def test_same_seed_is_the_same_die_at_every_setting():
    """Common random numbers: nested uniform faults across rates, theta proportional to sigma."""
    model = build("mlp")
    base = ChipConfig()
    lo = Chip.fabricate(model, base.override({"faults.rate": 0.1, "variation.sigma": 0.5}), 7)
    hi = Chip.fabricate(model, base.override({"faults.rate": 0.2, "variation.sigma": 1.0}), 7)
    for name in lo.layers:
        for an, a in lo.layers[name].arrays.items():
            b = hi.layers[name].arrays[an]
            assert bool(((a.fault != HEALTHY) <= (b.fault != HEALTHY)).all())
            assert bool(((a.fault == STUCK_ON) <= (b.fault == STUCK_ON)).all())
            assert torch.allclose(2 * a.theta, b.theta)
    assert hi.summary()["stuck_off_fraction"] > lo.summary()["stuck_off_fraction"]


def test_measured_map_carries_nothing_to_rebuild_the_truth():
    """No seed, and a config without the fabricated fault statistics or sigma: re-fabricating from what
    the map holds does not give the true chip."""
    model = build("mlp")
    cfg = ChipConfig().override({"faults.rate": 0.2, "variation.sigma": 0.7, "test.miss_rate": 0.1})
    chip = Chip.fabricate(model, cfg, 1234)
    m = chip.test()
    assert not hasattr(m, "seed") and "1234" not in m.chip_id
    assert m.design.faults.rate == 0.0 and m.design.variation.sigma == 0.0
    assert m.design.test == cfg.test and m.design.mapping == cfg.mapping and m.design.cell == cfg.cell
    rebuilt = Chip.fabricate(model, m.design, 0)
    assert all(int(a.fault.count_nonzero()) == 0 for layer in rebuilt for a in layer.arrays.values())


@pytest.mark.parametrize("scheme", ["differential", "offset"])
@pytest.mark.parametrize("levels", [2, 3, 15, 16, 256, None])
def test_perfect_chip_equals_software_within_quantisation_error(scheme, levels):
    """No faults, no variation: each realised weight is within the level quantisation error, without bias.

    Half a level step in weight units is s/(2(L-1)) for differential pairs (span Gmax - Gmin per polarity)
    and s/(L-1) for the offset scheme (span 2s over Gmax - Gmin). Before the offset fix, even L shifted
    every weight by -s/(L-1).
    """
    model = nn.Sequential(nn.Linear(300, 70))
    cfg = ChipConfig().override({"mapping.scheme": scheme, "cell.levels": levels, "mapping.rows": 64,
                                 "mapping.cols": 32})
    chip = Chip.fabricate(model, cfg, 0)
    chip.program_model(model)
    w = weight_to_matrix(model[0].weight.detach())
    s = chip.layers["0"].scale
    err = chip.effective_matrix("0") - w
    if levels is None:
        assert float(err.abs().max()) < 1e-5 * s
        return
    half_step = s / (levels - 1) / (2 if scheme == "differential" else 1)
    assert float(err.abs().max()) <= half_step * (1 + 1e-4)
    if levels > 2:  # no systematic shift: the mean error is far below half a step
        assert abs(float(err.mean())) < 0.1 * half_step


def test_test_seed_out_of_range_is_refused():
    from ittrna.errors import InputError

    chip = Chip.fabricate(build("mlp"), ChipConfig(), 0)
    for bad in (2**64, -1, 1.5):
        with pytest.raises(InputError, match="test seed"):
            chip.test(seed=bad)


def test_a_die_drawn_once_is_the_same_die_at_every_setting():
    """The die cache (a sweep over rates and sigmas draws each die once) changes no bit of any chip."""
    from ittrna.chip import state

    model = nn.Sequential(nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 5))
    settings = [{"faults.rate": r, "variation.sigma": s} for r, s in ((0.1, 0.5), (0.2, 1.0), (0.0, 0.3), (0.3, 0.0))]
    cached = [Chip.fabricate(model, ChipConfig().override(o), 3) for o in settings]
    assert any(k[0] == 3 for k in state._DIE_CACHE)
    for chip, o in zip(cached, settings, strict=True):
        state._DIE_CACHE.clear()
        state._die_cache_used = 0
        fresh = Chip.fabricate(model, ChipConfig().override(o), 3)
        for name in chip.layers:
            for aname, arr in chip.layer(name).arrays.items():
                other = fresh.layer(name).arrays[aname]
                assert torch.equal(arr.fault, other.fault) and torch.equal(arr.theta, other.theta)
    # nested fault sets: a lower rate's faulty cells are among a higher rate's, theta scales with sigma
    lo, hi = cached[0].layer("0").arrays["pos"], cached[1].layer("0").arrays["pos"]
    assert bool(((lo.fault != 0) <= (hi.fault != 0)).all())
    assert torch.allclose(hi.theta, 2 * lo.theta)
