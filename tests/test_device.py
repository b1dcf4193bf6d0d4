import pytest
import torch

from ittrna.config import CellConfig, EnduranceConfig, FaultConfig
from ittrna.device import (
    HEALTHY,
    STUCK_OFF,
    STUCK_ON,
    quantize_levels,
    read_conductance,
    sample_faults,
    sample_theta,
    wear_out,
)

SHAPE, TILE = (256, 384), (64, 128)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("pattern", ["uniform", "clustered", "lines"])
@pytest.mark.parametrize("rate", [0.01, 0.1, 0.2, 0.45])
def test_realised_fraction_matches_rate_and_share(pattern, rate):
    cfg = FaultConfig(rate=rate, pattern=pattern)
    codes = sample_faults(SHAPE, TILE, cfg, gen(1))
    n = codes.numel()
    stuck = int((codes != HEALTHY).sum())
    on = int((codes == STUCK_ON).sum())
    p = cfg.stuck_on_share
    if pattern == "uniform":  # i.i.d. cells: binomial count, 5-sigma tolerance
        assert stuck / n == pytest.approx(rate, abs=5 * (rate * (1 - rate) / n) ** 0.5)
        tol = 5 * (p * (1 - p) / stuck) ** 0.5
    else:
        assert stuck == round(rate * n)  # exact count
        # lines: one type per line, so only as many independent draws as lines
        tol = 4 * (p * (1 - p) / (stuck / TILE[0])) ** 0.5 if pattern == "lines" else 1 / stuck
    assert on / stuck == pytest.approx(p, abs=tol)
    assert set(codes.unique().tolist()) <= {HEALTHY, STUCK_OFF, STUCK_ON}


@pytest.mark.parametrize("pattern", ["uniform", "clustered", "lines"])
def test_same_seed_same_map_other_seed_other_map(pattern):
    cfg = FaultConfig(rate=0.1, pattern=pattern)
    a = sample_faults(SHAPE, TILE, cfg, gen(7))
    b = sample_faults(SHAPE, TILE, cfg, gen(7))
    c = sample_faults(SHAPE, TILE, cfg, gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _neighbour_fault_fraction(codes):
    """Among faulty cells, the mean fraction of their 4 neighbours that are faulty too."""
    f = (codes != HEALTHY).float()
    padded = torch.nn.functional.pad(f, (1, 1, 1, 1))
    nb = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    return float((nb * f).sum() / (4 * f.sum()))


def test_clustered_faults_are_clustered():
    uni = sample_faults(SHAPE, TILE, FaultConfig(rate=0.05, pattern="uniform"), gen(2))
    clu = sample_faults(SHAPE, TILE, FaultConfig(rate=0.05, pattern="clustered"), gen(2))
    assert _neighbour_fault_fraction(uni) < 0.08
    assert _neighbour_fault_fraction(clu) > 3 * _neighbour_fault_fraction(uni)


def test_lines_faults_lie_on_tile_lines():
    codes = sample_faults(SHAPE, TILE, FaultConfig(rate=0.1, pattern="lines"), gen(3))
    f = codes != HEALTHY
    r, c = TILE
    # per tile-row segment (row within a tile column) and per tile-column segment: fully faulty?
    rows_full = f.view(SHAPE[0], SHAPE[1] // c, c).all(dim=2)  # (H, W/c)
    cols_full = f.view(SHAPE[0] // r, r, SHAPE[1]).all(dim=1)  # (H/r, W)
    on_full = rows_full.repeat_interleave(c, dim=1) | cols_full.repeat_interleave(r, dim=0)
    covered = float((f & on_full).sum() / f.sum())
    assert covered > 0.95  # all but the partly broken lines
    # one fault type per broken row line: within a fully faulty row segment, every cell not also on a broken
    # column line has the segment's one code (checked on every such segment; there must be some)
    seg = codes.view(SHAPE[0], SHAPE[1] // c, c)
    on_col = cols_full.repeat_interleave(r, dim=0).view(SHAPE[0], SHAPE[1] // c, c)
    checked = 0
    for i, j in rows_full.nonzero().tolist():
        own = seg[i, j][~on_col[i, j]]
        if own.numel():
            assert int(own.min()) == int(own.max()), (i, j, own.unique())
            checked += 1
    assert checked >= 5


def test_zero_rate_gives_healthy_chip():
    codes = sample_faults(SHAPE, TILE, FaultConfig(rate=0.0), gen())
    assert not bool((codes != HEALTHY).any())


def test_array_must_be_whole_tiles():
    with pytest.raises(ValueError, match="whole number"):
        sample_faults((100, 100), (64, 64), FaultConfig(rate=0.1), gen())


def test_theta_statistics_and_range():
    th = sample_theta((400, 500), 0.7, gen())
    assert th.std().item() == pytest.approx(0.7, rel=0.02)
    assert abs(th.mean().item()) < 0.01
    assert not bool(sample_theta((3, 3), 0.0, gen()).any())
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        sample_theta((3, 3), -0.1, gen())
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        sample_theta((3, 3), 3.1, gen())


def test_levels_are_evenly_spaced_and_clamped():
    cell = CellConfig(r_on=1e4, r_off=1e6, levels=5)
    g = torch.linspace(-1e-4, 2e-4, 1001)
    q = quantize_levels(g, cell)
    levels = torch.linspace(cell.g_min, cell.g_max, 5)
    assert torch.allclose(torch.cdist(q.view(-1, 1), levels.view(-1, 1)).min(dim=1).values, torch.zeros(1001),
                          atol=1e-12)
    assert q.min() >= cell.g_min and q.max() <= cell.g_max * (1 + 1e-6)
    analog = quantize_levels(torch.tensor([5e-5]), CellConfig())
    assert analog.item() == pytest.approx(5e-5)


def test_stuck_cells_read_their_state_whatever_programmed():
    cell = CellConfig()
    g = torch.full((3,), 5e-5)
    fault = torch.tensor([HEALTHY, STUCK_OFF, STUCK_ON], dtype=torch.int8)
    theta = torch.full((3,), 0.3)
    out = read_conductance(g, fault, theta, cell)
    assert out[0].item() == pytest.approx(5e-5 * torch.exp(torch.tensor(0.3)).item())
    assert out[1].item() == pytest.approx(cell.g_min)
    assert out[2].item() == pytest.approx(cell.g_max)


def test_wear_out_sticks_cells_past_endurance():
    writes = torch.tensor([1, 5, 6, 9])
    fault = torch.tensor([HEALTHY, HEALTHY, HEALTHY, STUCK_OFF], dtype=torch.int8)
    out = wear_out(writes, fault, EnduranceConfig(endurance=5, failure_state="stuck_on"))
    assert out.tolist() == [HEALTHY, HEALTHY, STUCK_ON, STUCK_OFF]


def test_every_configurable_pattern_has_a_sampler():
    from ittrna.config import FAULT_PATTERNS
    from ittrna.device.faults import PATTERNS

    assert set(PATTERNS) == set(FAULT_PATTERNS)
