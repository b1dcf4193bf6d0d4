import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ittrna.config import CellConfig
from ittrna.mapping import (
    CONVERTERS,
    LayerLayout,
    TileGrid,
    matrix_to_weight,
    quantize_signed,
    tiled_matmul,
    to_logical,
    to_physical,
    weight_scale,
    weight_to_matrix,
)

CELLS = [CellConfig(), CellConfig(r_off=float("inf")), CellConfig(r_on=2e3, r_off=2e4)]


@settings(deadline=None, max_examples=30)
@given(k=st.integers(1, 300), n=st.integers(1, 200), rows=st.integers(1, 128), cols=st.integers(1, 128),
       scheme=st.sampled_from(sorted(CONVERTERS)), cell=st.sampled_from(CELLS), seed=st.integers(0, 2**31))
def test_conversion_roundtrip_is_exact(k, n, rows, cols, scheme, cell, seed):
    w = torch.randn(k, n, generator=torch.Generator().manual_seed(seed))
    grid = TileGrid(k, n, rows, cols)
    conv = CONVERTERS[scheme]
    s = weight_scale(w, 100.0)
    g = conv.to_conductance(w, s, cell, grid)
    assert {a: tuple(t.shape) for a, t in g.items()} == conv.array_shapes(grid)
    for t in g.values():  # targets within the programmable range
        assert float(t.min()) >= cell.g_min * (1 - 1e-6) and float(t.max()) <= cell.g_max * (1 + 1e-6)
    back = to_logical(conv.to_matrix(g, s, cell, grid), grid)
    assert torch.allclose(back, w, rtol=1e-5, atol=1e-5 * s)


def test_differential_inactive_cell_at_gmin():
    cell = CellConfig()
    w = torch.tensor([[0.5, -0.25], [0.0, 1.0]])
    g = CONVERTERS["differential"].to_conductance(w, 1.0, cell, TileGrid(2, 2, 4, 4))
    assert float(g["neg"][0, 0]) == pytest.approx(cell.g_min)
    assert float(g["pos"][0, 1]) == pytest.approx(cell.g_min)
    assert float(g["pos"][1, 1]) == pytest.approx(cell.g_max)


def test_clipping_percentile():
    w = torch.linspace(-1, 1, 1001).view(1, -1)
    assert weight_scale(w, 100.0) == pytest.approx(1.0)
    assert weight_scale(w, 50.0) == pytest.approx(0.5, abs=2e-3)
    cell = CellConfig(r_off=float("inf"))
    grid = TileGrid(1, 1001, 8, 2048)
    conv = CONVERTERS["differential"]
    back = to_logical(conv.to_matrix(conv.to_conductance(w, 0.5, cell, grid), 0.5, cell, grid), grid)
    assert float(back.abs().max()) == pytest.approx(0.5)


def test_weight_matrix_unrolling_inverse():
    for shape in [(10, 20), (16, 6, 5, 5), (8, 3, 3, 1)]:
        w = torch.randn(shape)
        m = weight_to_matrix(w)
        assert m.shape == (int(torch.tensor(shape[1:]).prod()), shape[0])
        assert torch.equal(matrix_to_weight(m, shape), w)


def test_grid_geometry():
    g = TileGrid(784, 256, 128, 128)
    assert g.tiles == (7, 2) and g.padded == (896, 256)


@pytest.mark.parametrize("tile", [(1, 1), (7, 5), (128, 128), (1000, 1000)])
def test_tiled_matmul_ideal_equals_matmul(tile):
    x, w = torch.randn(16, 100), torch.randn(100, 30)
    grid = TileGrid(100, 30, *tile)
    assert torch.allclose(tiled_matmul(x, w, grid, None, None), x @ w, rtol=1e-5, atol=1e-5)


def test_tiled_matmul_high_resolution_close_low_resolution_coarse():
    g = torch.Generator().manual_seed(0)
    x, w = torch.rand(64, 200, generator=g), torch.randn(200, 40, generator=g)
    grid = TileGrid(200, 40, 64, 16)
    exact = x @ w
    err16 = (tiled_matmul(x, w, grid, 16, 16) - exact).abs().max() / exact.abs().max()
    err4 = (tiled_matmul(x, w, grid, 4, 4) - exact).abs().max() / exact.abs().max()
    assert err16 < 1e-3 and err4 > 10 * err16


def test_quantize_signed_levels():
    x = torch.linspace(-2, 2, 101)
    q = quantize_signed(x, 3, torch.tensor(1.0))  # 3 steps per polarity
    assert set(torch.round(q * 3).tolist()) <= {-3, -2, -1, 0, 1, 2, 3}
    assert float(q.abs().max()) == 1.0


@settings(deadline=None, max_examples=25)
@given(k=st.integers(1, 40), n=st.integers(1, 30), rows=st.integers(1, 9), cols=st.integers(1, 9),
       spare=st.integers(0, 3), seed=st.integers(0, 2**31))
def test_layout_roundtrip_and_routing(k, n, rows, cols, spare, seed):
    """A random valid layout (per-tile row routing onto spare lines, column polarity) round-trips exactly,
    keeps every row in its own tile row and leaves unused physical rows at zero."""
    gen = torch.Generator().manual_seed(seed)
    grid = TileGrid(k, n, rows, cols, spare)
    tr, tc = grid.tiles
    row_map = torch.stack([
        torch.cat([i * grid.tile_rows + torch.randperm(grid.tile_rows, generator=gen)[:rows] for i in range(tr)])
        for _ in range(tc)])
    sign = torch.where(torch.rand(grid.padded[1], generator=gen) < 0.5, -1.0, 1.0)
    layout = LayerLayout(row_map, sign)
    layout.check(grid)
    w = torch.randn(k, n, generator=gen)
    phys = to_physical(w, grid, layout)
    assert tuple(phys.shape) == grid.physical
    assert torch.equal(to_logical(phys, grid, layout), w)
    assert int(phys.count_nonzero()) == int(w.count_nonzero())


def test_layout_check_rejects_bad_routing():
    grid = TileGrid(4, 2, 2, 2, 1)
    ok = LayerLayout.identity(grid)
    ok.check(grid)
    with pytest.raises(ValueError, match="own tile row"):
        LayerLayout(torch.tensor([[0, 1, 2, 3]]), torch.ones(2)).check(grid)  # row 2 is tile row 0's spare
    with pytest.raises(ValueError, match="one word line"):
        LayerLayout(torch.tensor([[0, 0, 3, 4]]), torch.ones(2)).check(grid)
    with pytest.raises(ValueError, match="col_sign"):
        LayerLayout(ok.row_map, torch.tensor([1.0, 0.5])).check(grid)
