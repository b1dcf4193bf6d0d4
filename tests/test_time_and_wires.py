"""Time and wires: conductance relaxation after programming, and IR drop on the crossbar lines."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from ittrna.chip import Chip, MeasuredMap
from ittrna.config import TIME_MAX_S, CellConfig, ChipConfig, ConfigError, RelaxationConfig, WireConfig, parse_time
from ittrna.device import HEALTHY
from ittrna.device.ir_drop import solve, transfer, transfer_tiles
from ittrna.device.relaxation import WAN2022_COEFFS, WAN2022_GMAX_REF, relax
from ittrna.errors import InputError
from ittrna.nn import deploy


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))


def _chip(model: nn.Module, **over) -> Chip:
    cfg = ChipConfig().override({"mapping.rows": 8, "mapping.cols": 8, **over})
    chip = Chip.fabricate(model, cfg, 3)
    chip.program_model(model)
    return chip


# --- relaxation --------------------------------------------------------------------------------------------
MODELS = [("cmo-hfox", {}), ("wan2022", {"relaxation.extrapolate": True}), ("power-law", {})]


@pytest.mark.parametrize(("name", "extra"), MODELS)
def test_age_zero_changes_nothing(name, extra):
    model = _model()
    plain = _chip(model, **{"faults.rate": 0.1, "variation.sigma": 0.5})
    relaxing = _chip(model, **{"faults.rate": 0.1, "variation.sigma": 0.5, "relaxation.model": name, **extra})
    for layer in plain.layers:
        assert torch.equal(plain.read_weight(layer), relaxing.read_weight(layer))


@pytest.mark.parametrize(("name", "extra"), MODELS)
def test_same_chip_same_age_reads_the_same_and_later_ages_continue(name, extra):
    model = _model()
    over = {"faults.rate": 0.1, "relaxation.model": name, **extra}
    a, b = _chip(model, **over), _chip(model, **over)
    g0 = a.conductances("0")["pos"].clone()
    a.wait(3600.0)
    b.wait(1800.0)
    b.wait(1800.0)  # two waits to the same age: the same read
    assert torch.equal(a.conductances("0")["pos"], b.conductances("0")["pos"])
    assert not torch.equal(a.conductances("0")["pos"], g0)
    # a later age continues the same trajectory: reading on the way changes nothing (no redraw)
    a.wait(30 * 86400.0)
    b.wait(30 * 86400.0 - 1800.0)
    b.wait(1800.0)
    assert torch.equal(a.conductances("0")["pos"], b.conductances("0")["pos"])


def test_each_cell_keeps_its_draw_over_time():
    cell = CellConfig()
    n = 5000
    g0 = torch.full((n,), 50e-6)
    z = torch.randn(n, generator=torch.Generator().manual_seed(4))
    cfg = RelaxationConfig(model="cmo-hfox")
    k = cell.g_max / 88.199997e-6
    seen = []
    for t in (10.0, 3600.0, 3e7):
        d = (relax(g0, g0, torch.full((n,), t, dtype=torch.float64), z, cfg, cell) - g0).double()
        spread = k * (0.04201137 * math.log(t) + 0.41183342) * 1e-6
        seen.append((d - k * -0.08900206e-6 * math.log(t)) / spread)  # the cell's draw, recovered
    assert torch.allclose(seen[0], seen[1], atol=1e-3) and torch.allclose(seen[1], seen[2], atol=1e-3)
    pl = RelaxationConfig(model="power-law")
    older = [relax(g0, g0, torch.full((n,), t, dtype=torch.float64), z, pl, cell) for t in (100.0, 1e4, 1e7)]
    assert bool((older[1] <= older[0]).all()) and bool((older[2] <= older[1]).all())  # power law: monotone


def test_stuck_cells_do_not_relax():
    model = _model()
    chip = _chip(model, **{"faults.rate": 0.3, "relaxation.model": "cmo-hfox"})
    before = chip.conductances("0")
    chip.wait(86400.0)
    after = chip.conductances("0")
    for name, arr in chip.layers["0"].arrays.items():
        stuck = arr.fault != 0
        assert torch.equal(before[name][stuck], after[name][stuck])
        assert not torch.equal(before[name][~stuck], after[name][~stuck])


def test_relaxed_conductance_stays_in_range():
    cell = CellConfig()
    g0 = torch.linspace(cell.g_min, cell.g_max, 1000)
    z = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 5
    for model in ("cmo-hfox", "wan2022"):
        cfg = RelaxationConfig(model=model, extrapolate=True)
        out = relax(g0, g0, torch.full((1000,), 1e7, dtype=torch.float64), z, cfg, cell)
        lo, hi = (float(torch.tensor(v, dtype=torch.float32)) for v in (cell.g_min, cell.g_max))  # float32 cells
        assert float(out.min()) >= lo and float(out.max()) <= hi
    outside = torch.tensor([cell.g_max * 1.5])  # variation left it above Gmax: not pushed further out
    out = relax(outside, outside, torch.tensor([1e7], dtype=torch.float64), torch.tensor([10.0]),
                RelaxationConfig(model="cmo-hfox"), cell)
    assert float(out) <= float(outside)


def test_cmo_mean_and_spread_match_the_fit():
    cell = CellConfig()  # Gmax 100 uS: the fit's 88.2 uS scaled by 100 / 88.2
    n = 200_000
    g0 = torch.full((n,), 50e-6)
    z = torch.randn(n, generator=torch.Generator().manual_seed(1))
    t = 86400.0
    out = relax(g0, g0, torch.full((n,), t, dtype=torch.float64), z, RelaxationConfig(model="cmo-hfox"), cell)
    k = cell.g_max / 88.199997e-6
    d = (out - g0).double()
    assert float(d.mean()) == pytest.approx(k * -0.08900206e-6 * math.log(t), rel=0.02)
    assert float(d.std()) == pytest.approx(k * (0.04201137 * math.log(t) + 0.41183342) * 1e-6, rel=0.02)


def test_wan2022_spread_matches_its_polynomial():
    cell = CellConfig()
    n = 200_000
    x = 0.4
    target = torch.full((n,), x * cell.g_max)
    z = torch.randn(n, generator=torch.Generator().manual_seed(2))
    for t, coeffs in WAN2022_COEFFS.items():
        age = torch.full((n,), t, dtype=torch.float64)
        out = relax(target, target, age, z, RelaxationConfig(model="wan2022"), cell)
        sigma_us = sum(c * x**i for i, c in enumerate(coeffs))
        expected = sigma_us * 1e-6 * cell.g_max / WAN2022_GMAX_REF
        assert float((out - target).double().std()) == pytest.approx(expected, rel=0.02)


def test_wan2022_refuses_past_its_fit_unless_asked():
    model = _model()
    chip = _chip(model, **{"relaxation.model": "wan2022"})
    chip.wait(3 * 86400.0)
    with pytest.raises(InputError, match="extrapolate"):
        chip.read_weight("0")


def test_power_law_decays_and_its_exponent_is_per_cell():
    cell = CellConfig()
    g0 = torch.full((10_000,), 60e-6)
    z = torch.randn(10_000, generator=torch.Generator().manual_seed(3))
    cfg = RelaxationConfig(model="power-law", nu_mean=0.05, nu_std=0.01, t0=20.0)
    t = 2e4
    out = relax(g0, g0, torch.full((10_000,), t, dtype=torch.float64), z, cfg, cell)
    nu = -torch.log(out.double() / g0.double()) / math.log(t / 20.0)
    assert float(nu.mean()) == pytest.approx(0.05, abs=0.001)
    assert float(nu.std()) == pytest.approx(0.01, rel=0.05)
    young = relax(g0, g0, torch.full((10_000,), 10.0, dtype=torch.float64), z, cfg, cell)  # younger than t0
    assert torch.equal(young, g0)


def test_a_cell_rewritten_later_is_younger():
    model = _model()
    chip = _chip(model, **{"relaxation.model": "power-law"})
    chip.wait(1000.0)
    layer = chip.layers["0"]
    weight = model[0].weight.detach().clone()
    weight[0, 0] += 0.05  # one weight changes: only its cells are written again, at the clock's time
    chip.program_weights("0", weight, scale=layer.scale)
    times = layer.arrays["pos"].written_at
    assert float(times.max()) == 1000.0 and int((times == 1000.0).sum()) >= 1
    assert int((times == 0.0).sum()) > 0


def test_clock_and_write_times_survive_the_archive(tmp_path):
    model = _model()
    chip = _chip(model, **{"relaxation.model": "cmo-hfox"})
    chip.wait(500.0)
    chip.program_weights("0", model[0].weight.detach() * 0.9, scale=chip.layers["0"].scale)
    chip.wait(100.0)
    chip.save(tmp_path / "c.npz")
    back = Chip.load(tmp_path / "c.npz")
    assert back.now == 600.0
    assert torch.equal(back.read_weight("0"), chip.read_weight("0"))


def test_time_parsing_and_ranges():
    assert parse_time("1h") == 3600.0 and parse_time("1y") == 365.25 * 86400 and parse_time(5) == 5.0
    for bad in ("-1s", "11y", "1 parsec", "nan", True, "1_0s", 10**5000):
        with pytest.raises(ConfigError):
            parse_time(bad)
    model = _model()
    chip = _chip(model)
    with pytest.raises(InputError, match="10 years"):
        chip.wait(TIME_MAX_S + 1)
    for field, value in (("scale", -1.0), ("nu_mean", 2.0), ("t0", 0.0), ("model", "drift"), ("extrapolate", 1)):
        with pytest.raises(ConfigError, match=f"relaxation.{field}"):
            RelaxationConfig(**{field: value})
    with pytest.raises(ConfigError, match="wires.r_wire"):
        WireConfig(r_wire=-1.0)


def test_measured_map_carries_its_time(tmp_path):
    model = _model()
    chip = Chip.fabricate(model, ChipConfig().override({"mapping.rows": 8, "mapping.cols": 8}), 1)
    chip.wait(42.0)
    measured = chip.test()
    assert measured.taken_at == 42.0
    measured.save(tmp_path / "m.npz")
    assert MeasuredMap.load(tmp_path / "m.npz").taken_at == 42.0


def test_new_sections_at_defaults_keep_identities():
    cfg = ChipConfig()
    assert "relaxation" not in cfg.identity_dict() and "wires" not in cfg.identity_dict()
    assert "relaxation" in cfg.override({"relaxation.model": "cmo-hfox"}).identity_dict()


# --- IR drop -----------------------------------------------------------------------------------------------
def test_hand_solved_networks():
    # one cell: driver segment, cell, segment to the sense amplifier in series
    assert float(solve(torch.tensor([[1e-4]], dtype=torch.float64), torch.tensor([1.0]), 10.0)) == pytest.approx(
        1.0 / (20.0 + 1e4), rel=1e-12)
    # one row, two columns, r = g = 1: branches of 1/2 and 1/3 behind the driver's 1 -> I = (3/11, 2/11)
    out = solve(torch.ones(1, 2, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64), 1.0)
    assert torch.allclose(out, torch.tensor([3 / 11, 2 / 11], dtype=torch.float64), rtol=1e-12)
    # two rows, one column, r = g = 1, v = (1, 0): row 1's cell joins the column node b0 to 0 V through 2 ohm.
    # b0 = 7/15 by KCL; b1 = 2/15, the current into the sense amplifier is 2/15 A... solved independently below
    out = solve(torch.ones(2, 1, dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64), 1.0)
    assert float(out) == pytest.approx(_dense_solve(np.ones((2, 1)), np.array([1.0, 0.0]), 1.0)[0], rel=1e-12)


def _dense_solve(g: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Kirchhoff's current law written node by node (independent of the sparse assembly): the column currents."""
    rows, cols = g.shape
    n = rows * cols

    def a(i: int, j: int) -> int:
        return i * cols + j

    def b(i: int, j: int) -> int:
        return n + i * cols + j

    m = np.zeros((2 * n, 2 * n))
    rhs = np.zeros(2 * n)

    def link(p: int, q: int, cond: float) -> None:
        m[p, p] += cond
        m[q, q] += cond
        m[p, q] -= cond
        m[q, p] -= cond

    for i in range(rows):
        m[a(i, 0), a(i, 0)] += 1 / r  # driver segment
        rhs[a(i, 0)] += v[i] / r
        for j in range(cols):
            link(a(i, j), b(i, j), g[i, j])
            if j + 1 < cols:
                link(a(i, j), a(i, j + 1), 1 / r)
            if i + 1 < rows:
                link(b(i, j), b(i + 1, j), 1 / r)
    for j in range(cols):
        m[b(rows - 1, j), b(rows - 1, j)] += 1 / r  # to the sense amplifier at 0 V
    x = np.linalg.solve(m, rhs)
    return np.array([x[b(rows - 1, j)] / r for j in range(cols)])


@pytest.mark.parametrize("shape", [(3, 4), (5, 2), (6, 6)])
def test_exact_solver_obeys_kirchhoff_on_random_tiles(shape):
    rng = np.random.default_rng(sum(shape))
    g = rng.uniform(1e-6, 1e-4, size=shape)
    v = rng.uniform(-1, 1, size=shape[0])
    for r in (0.5, 10.0, 1000.0):
        out = solve(torch.from_numpy(g), torch.from_numpy(v), r).numpy()
        assert np.allclose(out, _dense_solve(g, v, r), rtol=1e-9, atol=1e-18)


def test_zero_wire_resistance_is_the_ideal_product_exactly():
    g = torch.rand(16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e-4
    v = torch.rand(16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(solve(g, v, 0.0), v @ g)
    assert torch.equal(transfer(g, 0.0), g)


def test_transfer_matrix_is_linear_and_less_than_ideal():
    g = torch.rand(12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 1e-4
    t = transfer(g, 2.5)
    v = torch.rand(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(v @ t, solve(g, v, 2.5), rtol=1e-10)
    assert bool(((v @ t) < (v @ g)).all())  # wire resistance only loses current for positive inputs


def test_tiles_are_separate_crossbars():
    g = torch.rand(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 1e-4
    whole = transfer_tiles(g, (4, 4), 1.0)
    assert torch.allclose(whole[4:, :4], transfer(g[4:, :4], 1.0))


def test_chip_ir_drop_zero_is_bit_for_bit_and_positive_lowers_the_weights():
    model = _model()
    ideal = _chip(model)
    zero = _chip(model, **{"wires.r_wire": 0.0})
    wired = _chip(model, **{"wires.r_wire": 5.0})
    x = torch.rand(4, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(deploy(model, ideal, program=False)(x), deploy(model, zero, program=False)(x))
    w, w_ideal = wired.read_weight("0"), ideal.read_weight("0")
    assert not torch.allclose(w, w_ideal)
    assert float((w - w_ideal).abs().max()) < 0.5 * float(w_ideal.abs().max())


# --- zero-write compensation -------------------------------------------------------------------------------
def test_global_drift_compensation_writes_nothing_and_undoes_a_common_decay(tmp_path):
    model = _model()
    over = {"relaxation.model": "power-law", "relaxation.nu_std": 0.0, "relaxation.nu_mean": 0.1}
    plain = _chip(model, **over)
    comp = _chip(model, **over, **{"relaxation.compensation": "global"})
    w0 = comp.read_weight("0").clone()
    writes = comp.writes_issued
    plain.wait(1e6)
    comp.wait(1e6)
    decayed, restored = plain.read_weight("0"), comp.read_weight("0")
    assert float((decayed - w0).abs().max()) > 0.3 * float(w0.abs().max())  # every cell decayed alike ...
    assert torch.allclose(restored, w0, rtol=1e-4, atol=1e-6)  # ... and one factor per layer undoes it
    assert comp.writes_issued == writes
    comp.save(tmp_path / "c.npz")  # the reference taken after programming travels with the chip
    assert torch.allclose(Chip.load(tmp_path / "c.npz").read_weight("0"), restored)


def test_compensation_reference_is_taken_right_after_programming():
    model = _model()
    chip = _chip(model, **{"relaxation.model": "power-law", "relaxation.compensation": "global"})
    chip.wait(1e5)  # no read before the wait: the reference is still the layer as programmed
    ref = chip.layers["0"].drift_ref
    assert ref is not None and ref[0] == chip.layers["0"].version
    fresh = _chip(model, **{"relaxation.model": "power-law"})
    expected = float(fresh.effective_matrix("0").sum(dim=0).abs().sum())
    assert ref[1] == pytest.approx(expected, rel=1e-6)


def test_the_time_axis_of_a_sweep():
    from ittrna.experiments.grid import DataSettings, parse_spec, point_key

    grid = {"model": ["mlp"], "dataset": ["mnist"], "chip_seed": [1], "saf_rate": 0.1}
    plain = parse_spec({"grid": grid}).points
    timed = parse_spec({"grid": {**grid, "time": [0, "1h", 3600, "1d"]}}).points
    assert [p.time for p in timed] == [0.0, 3600.0, 86400.0]  # one spelling per time: "1h" and 3600 are one point
    data = DataSettings()
    assert point_key(timed[0], "sha", data) == point_key(plain[0], "sha", data)  # time 0: the key it always had
    assert len({point_key(p, "sha", data) for p in timed}) == 3
    with pytest.raises(ConfigError, match="grid.time"):
        parse_spec({"grid": {**grid, "time": ["soon"]}})


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (6, 1), (16, 12)])
def test_iterative_solver_matches_the_exact_one(shape):
    from ittrna.device.ir_drop import transfer_iterative

    g = (torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * 0.9 + 0.1) * 1e-4
    for r in (0.5, 2.5, 100.0):
        exact, it = transfer(g, r), transfer_iterative(g, r)
        full_scale = shape[0] * float(g.max())
        assert float((exact - it).abs().max()) <= 1e-8 * full_scale
    assert torch.equal(transfer_iterative(g, 0.0), g)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (6, 1), (16, 12), (9, 40), (45, 33)])
def test_block_solver_is_the_exact_solution(shape):
    """Block elimination gives the sparse LU's transfer matrix to rounding (chunks of row-wire inverses
    included: 45 rows span two), for wires from nearly ideal to dominant; ``g`` itself at r_wire = 0."""
    from ittrna.device.ir_drop import transfer_block

    g = (torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7)) * 0.9 + 0.1) * 1e-4
    for r in (0.5, 2.5, 100.0, 1000.0):
        exact, block = transfer(g, r), transfer_block(g, r)
        assert block.dtype == torch.float64 and block.shape == g.shape
        assert float((exact - block).abs().max()) <= 1e-12 * shape[0] * float(g.max())
    assert torch.equal(transfer_block(g, 0.0), g)
    v = torch.rand(3, shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    assert torch.allclose(v @ transfer_block(g, 2.5), solve(g, v, 2.5), rtol=1e-10)  # the nodal solution


def test_block_solver_runs_a_design_and_agrees_with_the_exact_chip():
    """``wires.solver = "block"`` on a chip reads the weights the exact solver's chip reads."""
    model = _model()
    exact = _chip(model, **{"wires.r_wire": 5.0})
    block = _chip(model, **{"wires.r_wire": 5.0, "wires.solver": "block"})
    for name in exact.layers:
        assert torch.allclose(block.read_weight(name), exact.read_weight(name), rtol=1e-6, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_block_solver_on_cuda_matches_the_cpu():
    from ittrna.device.ir_drop import transfer_block

    g = (torch.rand(40, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) * 0.9 + 0.1) * 1e-4
    on_gpu = transfer_block(g.cuda(), 2.5)
    assert on_gpu.is_cuda and torch.allclose(on_gpu.cpu(), transfer_block(g, 2.5), rtol=1e-10, atol=0)


# --- hostile inputs of this stop's adversarial sweep --------------------------------------------------------
def _forge(path, tmp_path, name, edit_header=None, drop=()):
    """A copy of the chip archive ``path`` with its JSON header edited and some arrays dropped."""
    import json as _json

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = _json.loads(str(arrays.pop("__header__")))
    if edit_header:
        edit_header(header)
    for key in [k for k in arrays if any(k.endswith(d) for d in drop)]:
        del arrays[key]
    out = tmp_path / name
    np.savez(out, __header__=np.array(_json.dumps(header)), **arrays)
    return out


def test_forged_clocks_drift_references_and_duplicate_keys_are_refused(tmp_path):
    from ittrna.errors import FileFormatError

    model = _model()
    chip = _chip(model, **{"relaxation.model": "cmo-hfox", "relaxation.compensation": "global"})
    chip.save(tmp_path / "c.npz")
    fab = Chip.fabricate(model, chip.config, 3)
    fab.save(tmp_path / "f.npz")

    def old(now):
        return lambda h: h.update(format=2, now=now)
    for i, now in enumerate(("abc", [1], -5.0, float("nan"), 1e300)):  # a format-2 file with a clock: checked too
        bad = _forge(tmp_path / "c.npz", tmp_path, f"o{i}.npz", old(now), drop=("|written_at",))
        with pytest.raises(FileFormatError, match="now"):
            Chip.load(bad)

    def ref(h):
        for layer in h["layers"]:
            layer["drift_ref"] = [layer["version"] + 1, 1e29]
    with pytest.raises(FileFormatError, match="never programmed"):  # a reference on an unprogrammed layer
        Chip.load(_forge(tmp_path / "f.npz", tmp_path, "r.npz", ref))
    with pytest.raises(FileFormatError, match="drift_ref"):  # one of another version
        Chip.load(_forge(tmp_path / "c.npz", tmp_path, "r2.npz", ref))
    text = (tmp_path / "c.npz")
    import json as _json
    with np.load(text, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = str(arrays.pop("__header__")).replace('"now": 0.0', '"now": "junk", "now": 0.0')
    np.savez(tmp_path / "d.npz", __header__=np.array(header), **arrays)
    assert '"now": "junk"' in header and _json.loads(header)["now"] == 0.0
    with pytest.raises(FileFormatError, match="twice"):
        Chip.load(tmp_path / "d.npz")


def test_programming_drops_a_stale_drift_reference():
    model = _model()
    chip = _chip(model, **{"relaxation.model": "power-law", "relaxation.compensation": "global"})
    chip.layers["0"].drift_ref = (chip.layers["0"].version + 1, 1e29)  # as a forged file would set it
    chip.program_weights("0", model[0].weight, scale=chip.layers["0"].scale)
    assert chip.layers["0"].drift_ref is None


def test_maps_from_the_future_or_of_another_design_are_refused():
    from ittrna.experiments.tolerate import check_map_fits

    model = _model()
    cfg = ChipConfig().override({"mapping.rows": 8, "mapping.cols": 8, "relaxation.model": "cmo-hfox"})
    chip = Chip.fabricate(model, cfg, 1)
    later = Chip.fabricate(model, cfg, 1)
    later.wait(100.0)
    with pytest.raises(InputError, match="after the chip's time"):
        check_map_fits(later.test(), chip)
    other = chip.test()
    other.design = ChipConfig().override({"mapping.rows": 8, "mapping.cols": 8})
    with pytest.raises(InputError, match="design config"):
        check_map_fits(other, chip)
    check_map_fits(chip.test(), chip)  # its own map fits
    made = chip.test()
    made.design = cfg.override({"test.miss_rate": 0.05})  # a map made with other test settings still fits
    check_map_fits(made, chip)


def test_sweep_refuses_times_past_the_fit_and_a_field_given_twice_before_any_work():
    from ittrna.experiments.grid import parse_spec

    grid = {"model": ["mlp"], "dataset": ["mnist"], "chip_seed": [1]}
    with pytest.raises(ConfigError, match="grid.time"):
        parse_spec({"grid": {**grid, "time": ["1w"], "relaxation.model": ["wan2022"]}})
    parse_spec({"grid": {**grid, "time": ["1w"], "relaxation.model": ["wan2022"], "relaxation.extrapolate": True}})
    with pytest.raises(ConfigError, match="twice"):
        parse_spec({"grid": {**grid, "relaxation.model": ["cmo-hfox"], "relaxation": {"model": ["none"]}}})
    with pytest.raises(ConfigError, match="twice"):
        parse_spec({"grid": grid, "chip": {"relaxation.model": "cmo-hfox", "relaxation": {"model": "none"}}})


def test_times_are_ascii_and_ir_drop_checks_memory(monkeypatch):
    from ittrna import _resources
    from ittrna.errors import ResourceError

    with pytest.raises(ConfigError):
        parse_time("\u0661h")  # an Arabic-Indic digit: refused like every other number parser does
    monkeypatch.setattr(_resources, "available_memory", lambda: 2**20)
    with pytest.raises(ResourceError, match="IR-drop"):
        solve(torch.full((64, 64), 1e-5, dtype=torch.float64), torch.ones(64, dtype=torch.float64), 1.0)


def test_tolerate_at_a_time_leaves_the_chip_as_programmed():
    from ittrna.data import Split
    from ittrna.experiments.tolerate import tolerate

    model = _model()
    gen = torch.Generator().manual_seed(0)
    data = Split(torch.rand(40, 12, generator=gen), torch.randint(0, 4, (40,), generator=gen))
    cfg = ChipConfig().override({"mapping.rows": 8, "mapping.cols": 8, "relaxation.model": "cmo-hfox"})
    chip = Chip.fabricate(model, cfg, 2)
    result, _ = tolerate(model, chip, "none", train=data, val=data, test=data, time=86400.0)
    assert result["time"] == 86400.0
    assert chip.now == 0.0 and all(layer.scale > 0 for layer in chip)  # programmed, its clock not moved


def test_chip_show_tells_the_clock_and_the_new_sections(tmp_path, capsys):
    from ittrna.cli.main import main

    model = _model()
    chip = _chip(model, **{"relaxation.model": "cmo-hfox", "wires.r_wire": 0.5})
    chip.wait(60.0)
    chip.save(tmp_path / "c.npz")
    assert main(["chip", "show", str(tmp_path / "c.npz")]) in (0, None)
    out = capsys.readouterr().out
    assert "clock 60 s" in out and "relaxation cmo-hfox" in out and "r_wire 0.5 ohm" in out


# --- conductance-dependent programming error ---------------------------------------------------------------
PERR = [("crosssim-wan", {"cell.r_on": 30e3}), ("aihwkit-pcm", {}),
        ("polynomial", {"program_error.c0": 0.5, "program_error.c1": 2.0, "program_error.c3": -1.0,
                        "program_error.g_ref_us": 50.0})]


def _sigma_by_hand(name: str, g: float, cfg: ChipConfig) -> float:
    """The published fits, written out again (siemens)."""
    gmax = cfg.cell.g_max
    if name == "crosssim-wan":
        u = g * 1e6
        return max(1.536e-4 * u**3 - 1.167e-2 * u**2 + 2.374e-1 * u + 1.053, 0.0) * 1e-6
    x = g / gmax
    if name == "aihwkit-pcm":
        return max(0.26348 + 1.9650 * x - 1.1731 * x**2, 0.0) * 1e-6 * gmax / 25e-6
    pe = cfg.program_error
    return max(pe.c0 + pe.c1 * x + pe.c2 * x**2 + pe.c3 * x**3, 0.0) * 1e-6 * gmax / (pe.g_ref_us * 1e-6)


@pytest.mark.parametrize(("name", "extra"), PERR)
def test_programming_error_sigma_matches_its_polynomial(name, extra):
    from ittrna.device.programming import sigma

    cfg = ChipConfig().override({"program_error.model": name, **extra})
    g = torch.linspace(0, cfg.cell.g_max, 11)
    got = sigma(g, cfg.program_error, cfg.cell)
    want = torch.tensor([_sigma_by_hand(name, float(v), cfg) for v in g])
    assert torch.allclose(got.double(), want.double(), rtol=1e-5, atol=1e-12) and bool((got > 0).all())
    # scale multiplies, and a negative polynomial is clamped at 0
    half = ChipConfig().override({"program_error.model": name, "program_error.scale": 0.5, **extra})
    assert torch.allclose(sigma(g, half.program_error, half.cell), 0.5 * got)
    neg = ChipConfig().override({"program_error.model": "polynomial", "program_error.c0": -1.0})
    assert float(sigma(g, neg.program_error, neg.cell).abs().max()) == 0.0


@pytest.mark.parametrize(("name", "extra"), PERR)
def test_a_chip_with_programming_error_reads_target_plus_sigma_z(name, extra):
    """Healthy cells, no variation: each written cell reads its target + sigma(target) z; the spread over many
    cells at one target is sigma (2 % at 40 k cells); an unwritten or stuck cell has no such error."""
    from ittrna.device.programming import sigma

    model = nn.Sequential(nn.Linear(200, 200, bias=False))
    over = {"mapping.rows": 256, "mapping.cols": 256, "program_error.model": name, **extra}
    cfg = ChipConfig().override(over)
    chip = Chip.fabricate(model, cfg, 5)
    level = 0.6 * cfg.cell.g_max
    target = torch.full((256, 256), level)
    chip.program("0", {"pos": target, "neg": target})
    read = chip.conductances("0")["pos"]
    err = (read - target).double()
    expected = float(sigma(torch.tensor([level]), cfg.program_error, cfg.cell))
    assert float(err.std()) == pytest.approx(expected, rel=0.02) and abs(float(err.mean())) < 0.02 * expected
    # the same seed is the same chip; a second write redraws only the cells it writes
    twin = Chip.fabricate(model, cfg, 5)
    twin.program("0", {"pos": target, "neg": target})
    assert torch.equal(twin.conductances("0")["pos"], read)
    changed = target.clone()
    changed[0] = 0.3 * cfg.cell.g_max
    chip.program("0", {"pos": changed, "neg": target})
    again = chip.conductances("0")["pos"]
    assert torch.equal(again[1:], read[1:]) and not torch.allclose(again[0], read[0])
    stuck = Chip.fabricate(model, cfg.override({"faults.rate": 0.3, "faults.stuck_on_share": 0.0}), 5)
    stuck.program("0", {"pos": target, "neg": target})
    faults = stuck.layers["0"].arrays["pos"].fault != 0
    assert bool((stuck.conductances("0")["pos"][faults] == cfg.cell.g_min).all())


def test_no_programming_error_is_the_chip_of_before_and_the_archive_keeps_the_draws(tmp_path):
    model = _model()
    plain = _chip(model, **{"variation.sigma": 0.5, "variation.program_noise": 0.1})
    assert plain.layers["0"].arrays["pos"].delta is None and "program_error" not in plain.config.identity_dict()
    with_err = _chip(model, **{"variation.sigma": 0.5, "variation.program_noise": 0.1,
                               "program_error.model": "aihwkit-pcm"})
    assert "program_error" in with_err.config.identity_dict()
    # the lognormal parts are the same draws: the error is added after them, from the same write's stream
    pos_a, pos_b = plain.layers["0"].arrays["pos"], with_err.layers["0"].arrays["pos"]
    assert torch.equal(pos_a.eps, pos_b.eps) and torch.equal(pos_a.theta, pos_b.theta)
    assert not torch.equal(plain.read_weight("0"), with_err.read_weight("0"))
    for chip, name in ((plain, "a.npz"), (with_err, "b.npz")):
        chip.save(tmp_path / name)
        back = Chip.load(tmp_path / name)
        assert torch.equal(back.read_weight("0"), chip.read_weight("0"))
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert not any(k.endswith("|delta") for k in a.files) and any(k.endswith("|delta") for k in b.files)


def test_programming_error_configs_out_of_range_are_refused():
    from ittrna.config import ProgramErrorConfig

    for field, value in (("model", "gauss"), ("scale", 11.0), ("c2", 1e5), ("g_ref_us", 0.0)):
        with pytest.raises(ConfigError, match=f"program_error.{field}"):
            ProgramErrorConfig(**{field: value})
    with pytest.raises(ConfigError, match="39.26 uS"):  # the default cell's Gmax is 100 uS
        ChipConfig().override({"program_error.model": "crosssim-wan"})
    with pytest.raises(ConfigError, match="wan2022"):  # its 1-s fit holds the programming error already
        ChipConfig().override({"program_error.model": "aihwkit-pcm", "relaxation.model": "wan2022"})


# --- zero-write compensation at a later time ---------------------------------------------------------------
def _splits(model: nn.Module, shape: tuple[int, ...]):
    from ittrna.data import Split

    out = []
    for n, seed in ((128, 1), (64, 2), (256, 3)):
        x = torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            out.append(Split(x, model.eval()(x).argmax(1)))
    return out


def test_register_compensation_undoes_a_common_decay_and_never_writes():
    """power-law with no spread between cells: every cell decays by the same factor, so each column's output
    is the reference times one number; the re-fitted registers give the t = 0 accuracy back, with zero writes.
    (Stuck cells do not relax, so the chip here has none: with them the factor is not common.)"""
    from ittrna.experiments.tolerate import tolerate

    model = _model()
    train, val, test = _splits(model, (12,))
    cfg = ChipConfig().override({"mapping.rows": 8, "mapping.cols": 8, "variation.sigma": 0.3,
                                 "relaxation.model": "power-law", "relaxation.nu_mean": 0.09,
                                 "relaxation.nu_std": 0.0})
    runs = {}
    for label, time, comp in (("t0", 0.0, ()), ("late", "1y", ()), ("comp", "1y", ("registers",))):
        chip = Chip.fabricate(model, cfg, 2)
        runs[label], _ = tolerate(model, chip, "none", train=train, val=val, test=test, time=time,
                                  compensation=comp)
    assert runs["late"]["chip_accuracy"] < runs["t0"]["chip_accuracy"] - 0.02  # the decay costs accuracy
    assert runs["comp"]["chip_accuracy"] == pytest.approx(runs["t0"]["chip_accuracy"], abs=1 / 256)
    comp = runs["comp"]
    assert comp["compensation_writes"] == 0 and comp["writes"] == runs["late"]["writes"]
    assert comp["evaluation_writes"] == runs["late"]["evaluation_writes"]
    assert comp["compensation"] == ["registers"] and comp["compensation_forward_passes"] >= 1 + 2  # ref + 2 layers
    gains = comp["compensation_report"]["register_gain_range"]
    factor = (365.25 * 86400 / 20.0) ** 0.09  # (t / t0)^nu = 3.6: the registers invert it
    assert all(lo == pytest.approx(factor, rel=1e-3) and hi == pytest.approx(factor, rel=1e-3)
               for lo, hi in gains.values())


def test_batchnorm_compensation_re_estimates_on_the_chip_and_bad_steps_are_refused():
    from ittrna.experiments.tolerate import tolerate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 4)).eval()
    train, val, test = _splits(model, (12,))
    cfg = ChipConfig().override({"mapping.rows": 8, "mapping.cols": 8, "relaxation.model": "cmo-hfox"})
    out, _ = tolerate(model, Chip.fabricate(model, cfg, 2), "none", train=train, val=val, test=test,
                      time="1d", compensation=["bn", "registers"])
    assert out["compensation"] == ["registers", "bn"] and out["compensation_writes"] == 0
    assert out["compensation_report"]["norm_layers"] == 1
    for bad, needle in ((["drift"], "unknown step 'drift'"), (["bn", "bn"], "twice"), ("bn", "a list")):
        with pytest.raises(InputError, match=needle):
            tolerate(model, Chip.fabricate(model, cfg, 2), "none", train=train, val=val, test=test,
                     compensation=bad)


def test_the_cli_takes_its_compensation_steps_from_the_registry(capsys):
    from ittrna.cli import main
    from ittrna.registry import COMPENSATIONS

    with pytest.raises(SystemExit) as exc:
        main(["tolerate", "--model", "m.pt", "--chip", "c.npz", "--method", "none", "--out", "o.pt",
              "--compensate", "drift"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "drift" in err and all(s in err for s in COMPENSATIONS)


# --- refresh under a write budget --------------------------------------------------------------------------
def _refresh_case(budget: float, rank: str = "importance", seed: int = 0, **over):
    from ittrna.experiments.tolerate import evaluate_deployment
    from ittrna.host import Deployment
    from ittrna.methods.refresh import RefreshConfig

    model = _model()
    train, _, test = _splits(model, (12,))
    cfg = ChipConfig().override({"mapping.rows": 8, "mapping.cols": 8, "faults.rate": 0.2,
                                 "relaxation.model": "power-law", "relaxation.nu_mean": 0.09,
                                 "relaxation.nu_std": 0.05, **over})
    chip = Chip.fabricate(model, cfg, 2)
    measured = chip.test(seed=2)
    dep = Deployment(model.state_dict())
    report: dict = {}
    acc = evaluate_deployment(model, chip, dep, test, time=365.25 * 86400, reference_images=train.x, report=report,
                              refresh=RefreshConfig(budget=budget, rank=rank), measured=measured, seed=seed)
    return chip, measured, report, acc


def _young(chip) -> dict:
    return {(n, a): arr.written_at == chip.now for n, layer in chip.layers.items() for a, arr in layer.arrays.items()}


def test_refresh_rankings_choose_other_cells_within_the_same_budget_and_random_is_seeded():
    chips = {(rank, seed): _refresh_case(0.05, rank, seed) for rank, seed in
             (("importance", 0), ("deviation", 0), ("random", 0), ("random", 1), ("importance", 1))}
    writes = {k: v[2]["refresh_writes"] for k, v in chips.items()}
    assert len(set(writes.values())) == 1  # the whole budget, whatever the rank
    young = {k: _young(v[0]) for k, v in chips.items()}

    def same(a, b):
        return all(torch.equal(young[a][c], young[b][c]) for c in young[a])

    assert same(("importance", 0), ("importance", 1))  # only the random rank uses the seed
    assert not same(("importance", 0), ("deviation", 0)) and not same(("importance", 0), ("random", 0))
    assert not same(("random", 0), ("random", 1))
    removed = {k: v[2]["refresh_report"]["refresh_expected_removed"] for k, v in chips.items()}
    assert removed[("random", 0)] < removed[("deviation", 0)]  # the same score (deviation), chosen at random


def test_refresh_never_exceeds_its_budget_and_rewrites_only_cells_the_map_shows_healthy():
    from ittrna.device import HEALTHY

    chip, measured, report, _ = _refresh_case(0.05)
    full = report["refresh_full_writes"]
    assert full == 2 * (12 * 10 + 10 * 4)  # both cells of every weight
    assert 0 < report["refresh_writes"] <= math.floor(0.05 * full)
    young = 0
    for name, layer in chip.layers.items():
        for aname, arr in layer.arrays.items():
            rewritten = arr.written_at == chip.now  # age 0: written by the refresh
            young += int(rewritten.sum())
            assert not (rewritten & (measured.layers[name][aname]["fault"] != HEALTHY)).any()
    assert young <= report["refresh_writes"]  # issued = performed + writes to stuck cells the test missed
    assert report["refresh_report"]["refresh_expected_removed"] > 0.05  # the ranking puts the budget to work


def test_refresh_of_the_whole_chip_undoes_the_relaxation_and_a_budget_of_zero_is_refused():
    from ittrna.experiments.tolerate import evaluate_deployment
    from ittrna.host import Deployment
    from ittrna.methods.refresh import RefreshConfig

    _, _, late, acc_late = _refresh_case(1e-9, **{"faults.rate": 0.0})  # floor(1e-9 * full) = 0 writes
    assert late["refresh_writes"] == 0
    _, _, whole, acc_full = _refresh_case(1.0, **{"faults.rate": 0.0})
    model = _model()
    _, _, test = _splits(model, (12,))
    cfg = ChipConfig().override({"mapping.rows": 8, "mapping.cols": 8})
    acc_t0 = evaluate_deployment(model, Chip.fabricate(model, cfg, 2), Deployment(model.state_dict()), test)
    assert acc_late < acc_t0 - 0.05  # the year costs accuracy
    assert whole["refresh_writes"] > 0.8 * whole["refresh_full_writes"]
    assert acc_full > acc_late and acc_full == pytest.approx(acc_t0, abs=3 / 256)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="refresh.budget"):
            RefreshConfig(budget=bad)


def test_refresh_expected_deviation_follows_the_model():
    """The host's expectation from the datasheet: zero at age 0 and for no relaxation; for cmo-hfox the
    fit's mean and spread at the age (independent of G inside the range); for power-law larger where G is."""
    from ittrna.methods.refresh import expected_sq_deviation

    cell = CellConfig()
    g = torch.tensor([0.3, 0.5, 0.7]) * cell.g_max
    plaw = RelaxationConfig(model="power-law", nu_mean=0.05, nu_std=0.0)
    assert torch.equal(expected_sq_deviation(g, g, 0.0, plaw, cell), torch.zeros(3))
    assert torch.equal(expected_sq_deviation(g, g, 1e6, RelaxationConfig(), cell), torch.zeros(3))
    e = expected_sq_deviation(g, g, 1e6, plaw, cell)
    want = (g.double() * (1 - (1e6 / 20.0) ** -0.05)) ** 2
    assert torch.allclose(e.double(), want, rtol=1e-4)
    cmo = expected_sq_deviation(g, g, 86400.0, RelaxationConfig(model="cmo-hfox"), cell, quantiles=256)
    scale = cell.g_max / 88.199997e-6
    mean = -0.08900206e-6 * math.log(86400.0) * scale
    std = (0.04201137e-6 * math.log(86400.0) + 0.41183342e-6) * scale
    assert torch.allclose(cmo.double(), torch.full((3,), mean ** 2 + std ** 2, dtype=torch.float64), rtol=0.02)


def test_compensation_and_refresh_axes_of_a_sweep():
    from ittrna.experiments.grid import DataSettings, parse_spec, point_key

    grid = {"model": ["mlp"], "dataset": ["mnist"], "chip_seed": [1], "saf_rate": 0.1, "time": ["1d"]}
    plain = parse_spec({"grid": grid}).points
    both = parse_spec({"grid": {**grid, "compensation": ["none", "bn+registers", "registers"],
                                "refresh": [0, 0.01]}}).points
    assert [(p.compensation, p.refresh) for p in both] == [((), 0.0), ((), 0.01), (("registers", "bn"), 0.0),
                                                           (("registers", "bn"), 0.01), (("registers",), 0.0),
                                                           (("registers",), 0.01)]
    assert both[2].columns["compensation"] == "registers+bn" and both[1].columns["refresh"] == 0.01
    data = DataSettings()
    assert point_key(both[0], "sha", data) == point_key(plain[0], "sha", data)  # the defaults: the key of before
    assert len({point_key(p, "sha", data) for p in both}) == 6
    for key, bad, needle in (("compensation", "drift", "unknown step 'drift'"), ("compensation", "bn+bn", "twice"),
                             ("compensation", 1, "accepted \"none\""), ("refresh", 1.5, "budget in \\(0, 1\\]"),
                             ("refresh", True, "budget")):
        with pytest.raises(ConfigError, match=needle):
            parse_spec({"grid": {**grid, key: [bad]}})



def test_a_sweep_refreshes_and_compensates_and_records_their_writes(tmp_path, mnist_train):
    """Points with a refresh and a compensation, end to end through a TOML sweep and its report: the
    refresh's writes are recorded apart from the programming's and stay in budget; compensation writes none."""
    from ittrna.experiments.grid import load_spec
    from ittrna.experiments.report import summarize
    from ittrna.experiments.sweep import run_spec

    config = tmp_path / "sweep.toml"
    config.write_text('[grid]\nmodel = ["mlp"]\ndataset = ["mnist"]\nchip_seed = [1]\nsaf_rate = 0.1\n'
                      'time = ["1d"]\ncompensation = ["none", "registers"]\nrefresh = [0, 0.01]\n'
                      '[chip]\n"relaxation.model" = "cmo-hfox"\n[train]\nepochs = 0\n'
                      '[data]\ntrain_size = 256\nval_size = 128\ntest_size = 128\n')
    outcome = run_spec(load_spec(config), tmp_path / "out", progress=False)
    recs = {(r["compensation"], r["refresh"]): r for r in outcome.records}
    assert set(recs) == {("none", 0.0), ("none", 0.01), ("registers", 0.0), ("registers", 0.01)}
    for (comp, fresh), r in recs.items():
        assert ("refresh_writes" in r) == (fresh > 0) and ("compensation_writes" in r) == (comp != "none")
        if fresh:
            assert 0 < r["refresh_writes"] <= 0.01 * r["refresh_full_writes"]
            assert r["writes"] == recs[("none", 0.0)]["writes"]  # the programming's writes, apart
        if comp != "none":
            assert r["compensation_writes"] == 0 and r["compensation_forward_passes"] > 0
    rows, shown = summarize(outcome.records)
    assert {"compensation", "refresh"} <= set(shown)
    assert all(row["refresh_fraction_mean"] <= 0.01 for row in rows if row["refresh"])


def test_the_points_of_a_time_axis_share_one_method_run_and_give_the_records_of_separate_runs(
        tmp_path, mnist_train, monkeypatch):
    """A sweep runs a method once per chip for all its times, compensations and refreshes (each evaluated
    on a copy of the run); the records equal those of a run per point."""
    import ittrna.experiments.points as points
    import ittrna.experiments.tolerate as tolerate_module
    from ittrna.experiments.grid import load_spec
    from ittrna.experiments.sweep import run_spec

    config = tmp_path / "sweep.toml"
    config.write_text('[grid]\nmodel = ["mlp"]\ndataset = ["mnist"]\nchip_seed = [1, 2]\nsaf_rate = 0.1\n'
                      'method = ["program", "ondevice"]\ntime = [0, "1d", "1y"]\ncompensation = ["none", "registers"]\n'
                      '[methods.program]\nheadroom_steps = 2\nsearch_passes = 1\n'
                      '[methods.ondevice]\nepochs = 1\neval_every = 2\nwrite_budget = 2000\n'
                      '[chip]\n"relaxation.model" = "cmo-hfox"\n[train]\nepochs = 0\n'
                      '[data]\ntrain_size = 256\nval_size = 128\ntest_size = 128\n')
    spec = load_spec(config)
    runs = []
    real = tolerate_module.run_method

    def counting(*args, **kwargs):
        runs.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(tolerate_module, "run_method", counting)
    points._RUNS.clear()
    shared = run_spec(spec, tmp_path / "shared", progress=False).records
    assert len(shared) == 2 * 2 * 3 * 2 and sorted(runs) == ["ondevice"] * 2 + ["program"] * 2
    monkeypatch.setattr(points, "_RUNS_KEPT", 0)  # no sharing: every point runs its method
    points._RUNS.clear()
    runs.clear()
    alone = run_spec(spec, tmp_path / "alone", progress=False).records
    assert len(runs) == len(alone) == len(shared)
    drop = {"seconds", "wall_seconds"}
    by_key = {r["key"]: {k: v for k, v in r.items() if k not in drop} for r in alone}
    assert all(by_key[r["key"]] == {k: v for k, v in r.items() if k not in drop} for r in shared)
    assert {r["time"] for r in shared} == {0.0, 86400.0, 365.25 * 86400}
    assert all(("compensation_writes" in r) == (r["compensation"] == "registers") for r in shared)


# --- IR drop in the host's programming ----------------------------------------------------------------------
def test_wire_compensated_programming_brings_the_chip_back_to_the_intended_weights():
    """A healthy chip with resistive wires: `program` with wires = "compensate" pre-distorts its targets through
    the host's model of the tiles, so the matrix the chip computes is much closer to the intended one than
    with the wires ignored; at r_wire = 0 the option changes nothing."""
    from ittrna.methods import Context, apply_method

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 6))
    train, val, _ = _splits(model, (32,))
    ctx = Context(train, val, seed=0)
    errors, writes, written = {}, {}, {}
    for r_wire in (0.0, 5.0):
        cfg = ChipConfig().override({"mapping.rows": 32, "mapping.cols": 32, "wires.r_wire": r_wire})
        for mode, cells in (("ignore", "written"), ("compensate", "written"), ("compensate", "all")):
            chip = Chip.fabricate(model, cfg, 1)
            dep = apply_method("program", model, chip.test(), ctx, {"headroom_steps": 1, "search_passes": 1,
                                                                     "wires": mode, "wire_cells": cells})
            writes[(r_wire, mode, cells)] = chip.program_deployment(dep)
            written[(r_wire, mode, cells)] = {(n, a): arr.g != chip.config.cell.g_min
                                              for n, lay in chip.layers.items() for a, arr in lay.arrays.items()}
            err = [float((chip.effective_weight(n) - dep.state_dict[f"{n}.weight"]).norm()
                         / dep.state_dict[f"{n}.weight"].norm()) for n in chip.layers]
            errors[(r_wire, mode, cells)] = max(err)
    assert errors[(0.0, "compensate", "written")] == errors[(0.0, "ignore", "written")] < 1e-5
    assert errors[(5.0, "ignore", "written")] > 0.01  # the wires cost the weights a visible error
    for cells in ("written", "all"):
        assert errors[(5.0, "compensate", cells)] < 0.1 * errors[(5.0, "ignore", "written")]
    # compensating only the cells programming writes anyway costs no write more, and no other cell is touched
    plain, comp = written[(5.0, "ignore", "written")], written[(5.0, "compensate", "written")]
    assert writes[(5.0, "compensate", "written")] == writes[(5.0, "ignore", "written")]
    assert all(torch.equal(plain[k], comp[k]) for k in plain)
    # lifting the cells at Gmin too (idle partners, padding) writes every cell of every tile
    total = sum(int(m.numel()) for m in plain.values())
    assert writes[(5.0, "compensate", "all")] == total > writes[(5.0, "ignore", "written")]


def test_a_session_rewrite_is_checked_and_budgeted_before_anything_is_written():
    from ittrna.errors import WriteBudgetError
    from ittrna.host import Deployment
    from ittrna.session import ChipSession

    model = _model()
    chip = Chip.fabricate(model, ChipConfig().override({"mapping.rows": 8, "mapping.cols": 8}), 1)
    session = ChipSession(chip, model, write_budget=3)
    session.deploy(Deployment(model.state_dict()))
    shape = tuple(chip.layers["0"].arrays["pos"].g.shape)
    before = (chip.writes_issued, session.counts())
    mask = torch.zeros(shape, dtype=torch.bool)
    for bad, err, needle in (({"pos": mask.int()}, InputError, "must be bool"),
                             ({"pos": mask[:2]}, InputError, "must be bool of shape"),
                             ({"mid": mask}, InputError, "no array 'mid'"),
                             ({"pos": ~mask}, WriteBudgetError, "refused")):
        with pytest.raises(err, match=needle):
            session.rewrite("0", bad)
        assert (chip.writes_issued, session.counts()) == before  # nothing admitted, nothing written
    mask[0, :2] = True
    assert session.rewrite("0", {"pos": mask}) == 2 and chip.writes_issued == before[0] + 2
    assert session.counts()["iterations"] == 1


def test_refresh_on_the_offset_scheme_counts_and_may_rewrite_its_reference_cells():
    from ittrna.host import Deployment
    from ittrna.methods.refresh import full_writes

    chip, measured, report, _ = _refresh_case(0.2, **{"mapping.scheme": "offset", "faults.rate": 0.0})
    # main cells of every weight, plus one reference cell per used row and tile of columns: layer 0 has 12 rows
    # on 2 column tiles (10 outputs on 8-wide tiles), layer 2 has 10 rows on 1
    assert report["refresh_full_writes"] == (12 * 10 + 10 * 4) + (12 * 2 + 10 * 1)
    assert report["refresh_full_writes"] == full_writes(measured, Deployment(_model().state_dict()))
    assert 0 < report["refresh_writes"] <= math.floor(0.2 * report["refresh_full_writes"])
    young = _young(chip)
    assert any(young[(n, "ref")].any() for n in chip.layers)  # a reference cell relaxes too and may be refreshed


@pytest.mark.parametrize(("value", "needle"), [("1.5", "out of range for refresh.budget; accepted (0, 1]"),
                                                ("0", "out of range for refresh.budget"), ("lots", "not a number")])
def test_the_cli_refuses_a_refresh_budget_out_of_range_in_one_line(value, needle, capsys):
    from ittrna.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["tolerate", "--model", "m.pt", "--chip", "c.npz", "--method", "none", "--out", "o.pt",
              "--refresh", value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1


# --- off-device training that anticipates relaxation --------------------------------------------------------
def test_realised_at_age_zero_is_the_pair_rule_and_later_ages_spread_like_the_model():
    from ittrna.mapping import weight_to_matrix
    from ittrna.methods.hostmodel import HostChip, realise, realise_relaxed

    model = _model()
    cfg = ChipConfig().override({"mapping.rows": 8, "mapping.cols": 8, "faults.rate": 0.4, "variation.sigma": 0.3,
                                 "relaxation.model": "cmo-hfox"})
    chip = Chip.fabricate(model, cfg, 5)
    measured = chip.test(seed=1)
    host = HostChip(measured, torch.device("cpu"))
    name = "0"
    view = host.view(name)
    m = weight_to_matrix(model[0].weight.detach())  # (K, N) = (12, 10)
    z = (torch.randn(m.shape, generator=torch.Generator().manual_seed(0)),
         torch.randn(m.shape, generator=torch.Generator().manual_seed(1)))
    exact = realise(m, view, 1.0, host.cell, "pair", targets=False)[0]
    at0 = realise_relaxed(m, view, 1.0, host.cell, cfg.relaxation, 0.0, z)
    assert torch.allclose(at0, exact, atol=1e-6 * float(exact.abs().max()))
    late = realise_relaxed(m, view, 1.0, host.cell, cfg.relaxation, 3.15e7, z)
    healthy = (view.fault_p == HEALTHY) & (view.fault_n == HEALTHY)
    assert float((late - exact)[healthy].abs().mean()) > 0.01 * float(exact.abs().max())  # it does relax
    stuck = (view.fault_p != HEALTHY) & (view.fault_n != HEALTHY)
    assert stuck.any() and torch.equal(late[stuck], at0[stuck])  # both cells stuck: nothing to relax
    one = (view.fault_p != HEALTHY) ^ (view.fault_n != HEALTHY)
    assert one.any() and bool((late[one] != at0[one]).any())  # one stuck cell: its healthy partner relaxes
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(host.relaxed_matrix(name, m, 1.0, 3.15e7, g1), host.relaxed_matrix(name, m, 1.0, 3.15e7, g2))


def _fat(model, cfg, chip_seed, horizon, small, chip=None, measured=None):
    """``fat``'s deployment for ``measured`` (default: the test of a new chip), with ``chip`` live in this frame
    as in `tolerate` (a method that reached for it past the boundary would find it)."""
    from ittrna.methods import apply_method
    from ittrna.methods.base import Context

    _, tr, val, _ = small
    chip = chip or Chip.fabricate(model, cfg, chip_seed)
    measured = measured or chip.test(seed=4)
    settings = {"epochs": 1, "search_images": 500, "headroom_steps": 4, "select": False,
                **(horizon if isinstance(horizon, dict) else {"horizon": horizon})}
    return apply_method("fat", model, measured, Context(tr.subset(512), val, seed=5), settings), chip


def test_a_horizon_changes_the_training_only_where_the_design_relaxes(small):
    model = small[0]
    flat = ChipConfig().override({"faults.rate": 0.1, "variation.sigma": 0.5})
    relaxing = flat.override({"relaxation.model": "cmo-hfox", "relaxation.scale": 4.0})
    base, _ = _fat(model, flat, 3, 0.0, small)
    no_model, _ = _fat(model, flat, 3, "1y", small)  # the design does not relax: the horizon is moot
    assert all(torch.equal(base.state_dict[k], no_model.state_dict[k]) for k in base.state_dict)
    assert "horizon" not in no_model.report
    r0, _ = _fat(model, relaxing, 3, 0.0, small)
    r1, _ = _fat(model, relaxing, 3, "1y", small)
    assert r1.report["horizon"] == pytest.approx(365.25 * 86400)
    assert any(not torch.equal(r0.state_dict[k], r1.state_dict[k]) for k in r0.state_dict)


def test_a_horizon_uses_the_datasheet_never_the_chips_own_draws(small):
    """Twin chips with one measured map whose truths and relaxation draws differ: equal deployments."""
    model = small[0]
    cfg = ChipConfig().override({"faults.rate": 0.1, "variation.sigma": 0.5, "relaxation.model": "cmo-hfox",
                                 "relaxation.scale": 4.0})
    a = Chip.fabricate(model, cfg, 9)
    b = copy.deepcopy(a)
    b.seed = a.seed + 1  # other relaxation draws (a stream of the chip's seed)
    for layer in b.layers.values():
        for arr in layer.arrays.values():
            arr.theta = arr.theta + 0.5
    measured = a.test(seed=4)
    dep_a, _ = _fat(model, cfg, 9, "1y", small, chip=a, measured=measured)

    def no_die(*args, **kwargs):
        raise AssertionError("the method drew the chip's own randomness")

    with pytest.MonkeyPatch.context() as mp:  # a reach for the chip's own draws would fail here
        mp.setattr("ittrna.chip.state.relaxation_draw", no_die)
        mp.setattr("ittrna.chip.state._die_draw", no_die)
        mp.setattr("ittrna.chip.readout.relaxation_draw", no_die)
        dep_b, _ = _fat(model, cfg, 9, "1y", small, chip=b, measured=measured)
    assert dep_a.report["horizon"] > 0
    assert all(torch.equal(dep_a.state_dict[k], dep_b.state_dict[k]) for k in dep_a.state_dict)
    assert dep_a.scales == dep_b.scales


@pytest.mark.parametrize(("value", "needle"), [("2 weeks", "method.horizon"), (-1.0, "method.horizon")])
def test_a_bad_horizon_is_refused_in_one_line(value, needle):
    from ittrna.methods.configs import FatConfig

    with pytest.raises(ConfigError, match=needle) as err:
        FatConfig(horizon=value)
    assert "\n" not in str(err.value)


def test_a_relaxation_draw_of_the_offset_scheme_gives_a_shared_reference_one_value():
    from ittrna.methods.hostmodel import HostChip

    model = _model()
    cfg = ChipConfig().override({"mapping.rows": 8, "mapping.cols": 8, "mapping.scheme": "offset",
                                 "relaxation.model": "cmo-hfox"})
    host = HostChip(Chip.fabricate(model, cfg, 5).test(seed=1))
    zp, zn = host.relaxation_draw("0", torch.Generator().manual_seed(0))  # (12, 10) each
    assert zp.shape == zn.shape == (12, 10)
    assert torch.equal(zn[:, :8], zn[:, :1].expand(12, 8))  # columns 0-7: one tile, one reference per row
    assert not torch.equal(zn[:, 8], zn[:, 0]) and len(set(zp.flatten().tolist())) == zp.numel()


def test_a_horizon_past_the_models_fit_is_refused_naming_the_setting(small):
    cfg = ChipConfig().override({"faults.rate": 0.1, "relaxation.model": "wan2022"})
    with pytest.raises(ConfigError, match="method.horizon = 2.592e[+]06 s is past relaxation.model = 'wan2022'") as err:
        _fat(small[0], cfg, 3, "30d", small)
    assert "\n" not in str(err.value)


def test_horizon_zero_keeps_the_identity_of_earlier_records_and_a_unit_is_read():
    from ittrna.methods.configs import FatConfig

    assert "horizon" not in FatConfig(horizon=0).identity_dict()  # earlier records keep their store keys
    assert FatConfig(horizon="1d").horizon == 86400.0 and FatConfig(horizon="1d").identity_dict()["horizon"] == 86400.0


def test_wire_cells_keys_only_compensated_records_and_keeps_the_earlier_ones():
    """`wire_cells` acts only with wires = "compensate": records with the wires ignored keep their store keys
    whatever it says, and `all` (how `compensate` ran before the field existed) keeps those records' keys too,
    so only the new default, `written`, makes new points; bad values are refused in one line."""
    from ittrna.methods import METHODS

    for method in ("program", "remap", "fat", "remap-fat", "dynamic"):
        make = METHODS[method].make_config
        ignored = make({"wires": "ignore"}).identity_dict()
        assert ignored == make({"wires": "ignore", "wire_cells": "all"}).identity_dict()
        assert "wire_cells" not in make({"wires": "compensate", "wire_cells": "all"}).identity_dict()
        assert make({"wires": "compensate"}).identity_dict()["wire_cells"] == "written"
        assert make({"wires": "compensate"}).to_dict()["wire_cells"] == "written"
    with pytest.raises(ConfigError, match=r"method.wire_cells = 'some'.*accepted"):
        METHODS["program"].make_config({"wire_cells": "some"})


def test_a_stored_point_runs_with_the_wire_cells_it_was_keyed_with():
    """A point's settings are its identity, which leaves `wire_cells = "all"` out (the earlier records' key):
    rebuilt for the run, they must give "all" again, not today's default."""
    from ittrna.methods import METHODS

    cls = METHODS["program"].config
    for cells in ("all", "written"):
        cfg = cls.from_dict({"wires": "compensate", "wire_cells": cells})
        assert cls.from_dict(cls.settings_from_identity(cfg.identity_dict())) == cfg


def test_a_nested_config_runs_with_the_wire_cells_it_was_keyed_with():
    """The same for a method's nested base (codesign's `base`, bn's `program`): their identity tables leave
    `wire_cells = "all"` out too, and rebuilding restores it."""
    from ittrna.methods import METHODS

    for method, inner in (("codesign", {"base": {"method": "remap-fat", "wires": "compensate"}}),
                          ("bn", {"program": {"wires": "compensate"}})):
        cls = METHODS[method].config
        field = next(iter(inner))
        for cells in ("all", "written"):
            cfg = cls.from_dict({field: {**inner[field], "wire_cells": cells}})
            again = cls.from_dict(cls.settings_from_identity(cfg.identity_dict()))
            assert again == cfg and getattr(again, field).wire_cells == cells
