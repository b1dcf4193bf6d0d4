"""Stuck-at fault maps.

Codes (int8): ``HEALTHY`` = 0, ``STUCK_OFF`` = 1 (stuck at the high-resistance state, reads Gmin),
``STUCK_ON`` = 2 (stuck at the low-resistance state, reads Gmax). We never say "SA0/SA1".

Source for rates: up to ~20 % of cells on immature RRAM; 9.04 % stuck-off and 1.75 % stuck-on on a 4-Mb
HfO2 test chip (Chen et al., IEEE Trans. Computers 2015). Valid ranges: rate in [0, 1), stuck-on share in
[0, 1].

Patterns (the realised fraction matches the rate: ``uniform`` in expectation, with binomial spread
sqrt(rate (1 - rate) / cells); ``clustered`` and ``lines`` exactly, ``round(rate * cells)`` cells):

- ``uniform``: every cell independently (i.i.d.) stuck_on with probability rate * share and stuck_off with
  probability rate * (1 - share).
- ``clustered``: a Thomas cluster process (Poisson cluster centres, bivariate-Gaussian spread of
  ``cluster_radius`` cells around each, ``cluster_size`` faults per cluster on average) plus a uniform
  background share; cells are drawn without replacement with probability proportional to that intensity.
- ``lines``: whole word lines (tile rows) or bit lines (tile columns) fail; the last line is broken part
  way, so the count is exact. All cells of one line share one fault type.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ittrna import registry as _registry
from ittrna.config import FaultConfig
from ittrna.registry import Registry

__all__ = ["HEALTHY", "PATTERNS", "STUCK_OFF", "STUCK_ON", "sample_faults"]

HEALTHY = 0
STUCK_OFF = 1
STUCK_ON = 2  # the codes are ordered: the uniform sampler adds two threshold tests


def sample_faults(
    shape: tuple[int, int], tile: tuple[int, int], cfg: FaultConfig, generator: torch.Generator, *,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw the fault map of one cell array.

    Args:
        shape: (rows, cols) of the array; a whole number of tiles.
        tile: (rows, cols) of one crossbar tile (``lines`` breaks lines within a tile).
        cfg: fault rate, stuck-on share and pattern.
        generator: CPU generator all draws come from.
        uniform: for the ``uniform`` pattern, the (rows, cols) U(0, 1) draw this generator would give first
            (a die drawn once and reused across fault rates; the result is the same bit for bit).

    Returns:
        int8 tensor of ``shape`` with HEALTHY / STUCK_OFF / STUCK_ON codes.
    """
    h, w = shape
    if h % tile[0] or w % tile[1]:
        raise ValueError(f"array {shape} is not a whole number of {tile} tiles")
    if cfg.rate == 0:
        return torch.zeros(shape, dtype=torch.int8)
    if uniform is not None and cfg.pattern == "uniform":
        return _uniform_codes(uniform, cfg)
    try:
        sampler = PATTERNS[cfg.pattern]
    except KeyError:  # FaultConfig validates against FAULT_PATTERNS; this guards a registry mismatch
        raise ValueError(f"faults.pattern = {cfg.pattern!r} has no sampler; accepted {sorted(PATTERNS)}") from None
    return sampler(shape, tile, cfg, generator)


def _uniform(shape: tuple[int, int], tile: tuple[int, int], cfg: FaultConfig, gen: torch.Generator) -> torch.Tensor:
    """i.i.d. cells, one uniform draw each: stuck_on below rate*share, stuck_off below rate."""
    return _uniform_codes(torch.rand(shape, generator=gen), cfg)


def _uniform_codes(u: torch.Tensor, cfg: FaultConfig) -> torch.Tensor:
    """Fault codes from one U(0, 1) draw per cell: 0 healthy, +1 below rate (stuck_off), +1 more below
    rate * share (stuck_on = 2); a lower rate's faulty cells are among a higher rate's."""
    codes = (u < cfg.rate).to(torch.int8)
    return codes.add_((u < cfg.rate * cfg.stuck_on_share).to(torch.int8))


def _clustered(
    shape: tuple[int, int], tile: tuple[int, int], cfg: FaultConfig, gen: torch.Generator
) -> torch.Tensor:
    """Exactly round(rate * cells) cells from a Thomas-process intensity; exact stuck-on share."""
    n = shape[0] * shape[1]
    k = round(cfg.rate * n)
    codes = torch.zeros(n, dtype=torch.int8)
    if k == 0:
        return codes.view(shape)
    idx = _clustered_indices(shape, k, cfg, gen)
    idx = idx[torch.randperm(k, generator=gen)]  # decouple type from intensity rank
    n_on = round(cfg.stuck_on_share * k)
    codes[idx[:n_on]] = STUCK_ON
    codes[idx[n_on:]] = STUCK_OFF
    return codes.view(shape)


def _gaussian_kernel(radius: float, limit: int) -> torch.Tensor:
    half = max(1, min(math.ceil(3 * radius), limit))
    x = torch.arange(-half, half + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / radius) ** 2)
    return k / k.sum()


def _clustered_indices(
    shape: tuple[int, int], k: int, cfg: FaultConfig, generator: torch.Generator
) -> torch.Tensor:
    """Flat indices of k cells drawn without replacement from a Thomas-process intensity."""
    h, w = shape
    n = h * w
    n_clusters = max(1, round((1 - cfg.background_share) * k / cfg.cluster_size))
    centres = torch.randint(0, n, (n_clusters,), generator=generator)
    grid = torch.zeros(n).index_add_(0, centres, torch.ones(n_clusters)).view(1, 1, h, w)
    kr = _gaussian_kernel(cfg.cluster_radius, h)
    kc = _gaussian_kernel(cfg.cluster_radius, w)
    # separable Gaussian blur of the centre counts: (1, 1, h, w)
    grid = F.conv2d(grid, kr.view(1, 1, -1, 1), padding=(kr.numel() // 2, 0))
    grid = F.conv2d(grid, kc.view(1, 1, 1, -1), padding=(0, kc.numel() // 2))
    density = grid.view(n)
    density = (1 - cfg.background_share) * density / density.sum() + cfg.background_share / n
    # Gumbel-top-k = weighted sampling without replacement, proportional to the density
    u = torch.rand(n, generator=generator).clamp_(1e-12, 1 - 1e-7)
    keys = torch.log(density.clamp_min(1e-30)) - torch.log(-torch.log(u))
    return torch.topk(keys, k, sorted=False).indices


def _lines(shape: tuple[int, int], tile: tuple[int, int], cfg: FaultConfig, generator: torch.Generator) -> torch.Tensor:
    """Broken word/bit lines covering exactly round(rate * cells) cells (the last line of each round broken
    part way); one type per line, stuck_on with probability ``stuck_on_share``."""
    h, w = shape
    k, share = round(cfg.rate * h * w), cfg.stuck_on_share
    r, c = tile
    n_row_lines = h * (w // c)  # one per (row, tile column), length c
    n_col_lines = w * (h // r)  # one per (column, tile row), length r
    order = torch.randperm(n_row_lines + n_col_lines, generator=generator)
    is_on = torch.rand(n_row_lines + n_col_lines, generator=generator) < share
    codes = torch.zeros(h * w, dtype=torch.int8)
    lengths = torch.where(order < n_row_lines, c, r)
    pos = 0
    need = k
    for _ in range(64):  # each round adds lines for the remaining need; overlaps shrink geometrically
        if need == 0 or pos >= order.numel():
            break
        cum = torch.cumsum(lengths[pos:], 0)
        m = int(torch.searchsorted(cum, torch.tensor(need), right=True))  # full lines that fit
        take = order[pos : pos + m + 1]
        sizes = lengths[pos : pos + m + 1].clone()
        if m < take.numel():
            sizes[-1] = need - (int(cum[m - 1]) if m > 0 else 0)  # partial last line
        flat = _line_cells(take, sizes, n_row_lines, h, w, r, c)
        line_id = torch.repeat_interleave(torch.arange(take.numel()), sizes)
        fresh = codes[flat] == HEALTHY
        flat, line_id = flat[fresh], line_id[fresh]
        # a cell on two new lines (a row and a column) takes the type of the first: deterministic, no dupes
        uniq, inv = torch.unique(flat, return_inverse=True)
        first = torch.full((uniq.numel(),), flat.numel(), dtype=torch.int64)
        first.scatter_reduce_(0, inv, torch.arange(flat.numel()), reduce="amin")
        flat, line_id = flat[first], line_id[first]
        on = is_on[pos : pos + m + 1][line_id]
        codes[flat] = torch.where(on, STUCK_ON, STUCK_OFF).to(torch.int8)
        need -= flat.numel()
        pos += take.numel()
    if need > 0:  # pathological (all lines used): top up with random healthy cells
        healthy = torch.nonzero(codes == HEALTHY).squeeze(1)
        pick = healthy[torch.randperm(healthy.numel(), generator=generator)[:need]]
        codes[pick] = STUCK_OFF
    return codes.view(h, w)


def _line_cells(
    lines: torch.Tensor, sizes: torch.Tensor, n_row_lines: int, h: int, w: int, r: int, c: int
) -> torch.Tensor:
    """Flat indices of the first ``sizes[i]`` cells of each line, concatenated in line order.

    Row line j (j < n_row_lines) is row ``j // (w/c)`` of tile column ``j % (w/c)``; column line j is
    column ``j' // (h/r)`` of tile row ``j' % (h/r)`` with j' = j - n_row_lines.
    """
    is_row = lines < n_row_lines
    j = torch.where(is_row, lines, lines - n_row_lines)
    row_base = (j // (w // c)) * w + (j % (w // c)) * c
    col_base = (j % (h // r)) * r * w + j // (h // r)
    base = torch.where(is_row, row_base, col_base)  # (L,)
    stride = torch.where(is_row, 1, w)  # (L,)
    steps = torch.arange(int(max(r, c)))
    cells = base.unsqueeze(1) + steps.unsqueeze(0) * stride.unsqueeze(1)  # (L, max(r, c))
    return cells[steps.unsqueeze(0) < sizes.unsqueeze(1)]


#: Fault-pattern samplers by ``FaultConfig.pattern``: (shape, tile, config, generator) -> int8 codes. The names
#: are declared once, in :data:`ittrna.registry.FAULT_PATTERNS`; a new pattern registers there too.
PATTERNS: Registry[Callable[[tuple[int, int], tuple[int, int], FaultConfig, torch.Generator], torch.Tensor]] = (
    _registry.FAULT_PATTERNS)
for _name, _sampler in (("uniform", _uniform), ("clustered", _clustered), ("lines", _lines)):
    PATTERNS.register(_name, _sampler, home=__name__)
