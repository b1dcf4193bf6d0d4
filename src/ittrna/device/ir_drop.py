"""IR drop: the column currents of a crossbar tile whose wires have resistance.

The network (one tile of R rows x C columns; units: siemens, volts, amperes, ohm):

- row i is driven at ``v[i]`` by its driver, through one wire segment of ``r_wire`` to the row's node at
  column 0, and one segment between the row nodes of neighbouring columns;
- the cell at (i, j) joins row node a[i, j] to column node b[i, j] with conductance ``g[i, j]``;
- column j has one segment between the nodes of neighbouring rows and one between its last node b[R-1, j]
  and the sense amplifier, which holds it at 0 V (virtual ground). The column's current is the current into
  the sense amplifier, b[R-1, j] / r_wire.

Kirchhoff's current law at the 2 R C nodes is a sparse, symmetric positive definite linear system (the same
2·R·C-node system as MemTorch's ``solve_passive``). The currents are linear in ``v`` for a fixed ``g``, so a tile
computes with a transfer matrix ``T`` (R, C), I = v @ T, solved once per programming (:func:`transfer`); at
``r_wire = 0`` it is ``g`` itself.

Valid range: r_wire in [0, 1000] ohm (:class:`~ittrna.config.WireConfig`), conductances >= 0 and finite.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ittrna import registry as _registry
from ittrna._resources import check_memory
from ittrna.errors import InputError
from ittrna.registry import Registry

__all__ = ["SOLVERS", "solve", "transfer", "transfer_block", "transfer_iterative", "transfer_tiles"]


def _check(g: torch.Tensor, r_wire: float) -> None:
    if not isinstance(g, torch.Tensor) or g.dim() != 2 or g.shape[0] < 1 or g.shape[1] < 1:
        raise InputError(f"g must be a (rows, cols) tensor of conductances; got {getattr(g, 'shape', type(g))}")
    if isinstance(r_wire, bool) or not isinstance(r_wire, (int, float)) or not 0.0 <= float(r_wire) <= 1000.0:
        raise InputError(f"r_wire = {r_wire!r} is out of range; accepted [0, 1000] ohm")
    if not bool(torch.isfinite(g).all()) or bool((g < 0).any()):
        raise InputError("g holds a negative or non-finite conductance; accepted finite values >= 0 siemens")


def _system(g: np.ndarray, r_wire: float) -> tuple[object, int, int]:
    """The nodal conductance matrix (2RC x 2RC, CSC) of one tile: unknowns a (row nodes) then b (column nodes),
    each in row-major order."""
    import scipy.sparse as sp

    rows, cols = g.shape
    n = rows * cols
    w = 1.0 / r_wire
    idx = np.arange(n).reshape(rows, cols)
    gf = g.reshape(-1)
    # row nodes: a driver/left segment always, a right segment except at the last column, the cell
    diag_a = np.full((rows, cols), 2.0 * w)
    diag_a[:, -1] = w
    diag_a = diag_a.reshape(-1) + gf
    # column nodes: a lower segment always (the last one to the sense amplifier), an upper one except at row 0
    diag_b = np.full((rows, cols), 2.0 * w)
    diag_b[0, :] = w
    diag_b = diag_b.reshape(-1) + gf
    ia, ja = idx[:, :-1].reshape(-1), idx[:, 1:].reshape(-1)  # along rows
    ib, jb = idx[:-1, :].reshape(-1) + n, idx[1:, :].reshape(-1) + n  # along columns
    cell_a, cell_b = np.arange(n), np.arange(n) + n
    r_ = np.concatenate([np.arange(2 * n), ia, ja, ib, jb, cell_a, cell_b])
    c_ = np.concatenate([np.arange(2 * n), ja, ia, jb, ib, cell_b, cell_a])
    v_ = np.concatenate([diag_a, diag_b, np.full(ia.size * 2, -w), np.full(ib.size * 2, -w), -gf, -gf])
    matrix = sp.csc_matrix((v_, (r_, c_)), shape=(2 * n, 2 * n))
    return matrix, rows, cols


_CHUNK = 64
"""Right-hand sides solved at once by the exact solver."""


def _solve_bytes(rows: int, cols: int) -> float:
    """Estimated peak bytes of one exact solve: the LU factors of the 2RC-node system (about 0.4 (2RC)^1.5
    non-zeros with SuperLU's ordering on these grid graphs, measured at 64-256 cells a side, 12 bytes each)
    and a chunk of right-hand sides and solutions."""
    n = 2 * rows * cols
    return 12 * 0.4 * n**1.5 + 2 * 8 * n * _CHUNK


def solve(g: torch.Tensor, v: torch.Tensor, r_wire: float) -> torch.Tensor:
    """The exact column currents of one tile under IR drop.

    Args:
        g: (R, C) cell conductances in siemens (float64; other dtypes are converted).
        v: (R,) row voltages in volts, or (B, R) for B inputs.
        r_wire: ohm per wire segment, in [0, 1000].

    Returns:
        (C,) or (B, C) float64 column currents in amperes; at ``r_wire = 0`` exactly ``v @ g``.
    """
    _check(g, r_wire)
    g64 = g.detach().to(torch.float64).cpu()
    v64 = torch.as_tensor(v).detach().to(torch.float64).cpu()
    if v64.shape[-1] != g64.shape[0] or v64.dim() not in (1, 2):
        raise InputError(f"v has shape {tuple(v64.shape)}; accepted ({g64.shape[0]},) or (B, {g64.shape[0]})")
    if not bool(torch.isfinite(v64).all()):
        raise InputError("v holds a non-finite voltage")
    if r_wire == 0:
        return v64 @ g64
    from scipy.sparse.linalg import splu

    rows, cols = g64.shape
    n = rows * cols
    check_memory(_solve_bytes(rows, cols), f"the exact IR-drop solve of a {rows}x{cols} tile (use smaller tiles)")
    matrix, _, _ = _system(g64.numpy(), float(r_wire))
    batch = v64.reshape(-1, rows).numpy()  # (B, R)
    lu = splu(matrix)
    currents = np.empty((batch.shape[0], cols))
    for lo in range(0, batch.shape[0], _CHUNK):  # right-hand sides a chunk at a time: bounded memory
        part = batch[lo:lo + _CHUNK]
        rhs = np.zeros((2 * n, part.shape[0]))
        rhs[np.arange(rows) * cols, :] = part.T / float(r_wire)  # the drivers feed each row's first node
        nodes = lu.solve(rhs)  # (2n, chunk)
        currents[lo:lo + _CHUNK] = nodes[n + (rows - 1) * cols: 2 * n, :].T / float(r_wire)  # last nodes to ground
    out = torch.from_numpy(np.ascontiguousarray(currents))
    return out.reshape((*v64.shape[:-1], cols))


def transfer(g: torch.Tensor, r_wire: float) -> torch.Tensor:
    """The (R, C) transfer matrix T of one tile: its column currents are ``v @ T`` for any row voltages ``v``
    (the network is linear). Exact (one sparse LU, R solves); ``g`` itself at ``r_wire = 0``; float64."""
    _check(g, r_wire)
    if r_wire == 0:
        return g.detach().to(torch.float64).clone()
    return solve(g, torch.eye(g.shape[0], dtype=torch.float64), r_wire)


def transfer_tiles(g: torch.Tensor, tile: tuple[int, int], r_wire: float, solver: str = "exact") -> torch.Tensor:
    """The transfer matrices of every tile of a cell array, in the array's own layout.

    Args:
        g: (rows, cols) conductances of an array of whole ``tile``-sized tiles (siemens).
        tile: (R, C) of one crossbar.
        r_wire: ohm per segment.
        solver: a name in :data:`SOLVERS` (``wires.solver``).

    Returns:
        (rows, cols) tensor of ``g``'s dtype and device: each tile's block replaced by its transfer matrix
        (column currents = inputs @ block, tile by tile); ``g`` itself at ``r_wire = 0``.
    """
    if r_wire == 0:
        return g
    h, w = g.shape
    r, c = tile
    if h % r or w % c:
        raise InputError(f"array {tuple(g.shape)} is not a whole number of {tile} tiles")
    from tqdm import tqdm

    fn = SOLVERS[solver]
    out = torch.empty_like(g)
    tiles = [(ti, tj) for ti in range(h // r) for tj in range(w // c)]
    for ti, tj in tqdm(tiles, desc=f"IR drop ({r}x{c} tiles)", unit="tile", leave=False,
                       disable=None if r * c >= 128 * 128 else True):  # one solve per tile: a separate crossbar
        block = g[ti * r:(ti + 1) * r, tj * c:(tj + 1) * c]
        out[ti * r:(ti + 1) * r, tj * c:(tj + 1) * c] = fn(block, r_wire).to(g.dtype)
    return out


def _factor(diag: torch.Tensor, off: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The Thomas algorithm's forward factors of tridiagonal systems along the last axis (diagonal ``diag``,
    constant off-diagonals ``off``): the pivots and the modified super-diagonal."""
    n = diag.shape[-1]
    m = torch.empty_like(diag)
    cp = torch.empty_like(diag)
    m[..., 0] = diag[..., 0]
    cp[..., 0] = off / m[..., 0]
    for j in range(1, n):
        m[..., j] = diag[..., j] - off * cp[..., j - 1]
        cp[..., j] = off / m[..., j]
    return m, cp


def _solve_lines(m: torch.Tensor, cp: torch.Tensor, off: float, x: torch.Tensor) -> torch.Tensor:
    """The Thomas algorithm's substitutions in place on ``x``, positions along its *leading* axis (each step
    one slab ``x[j]``): the factored systems (``m``, ``cp`` from :func:`_factor`, moved to the leading axis,
    broadcasting against the slabs) solved for the right-hand sides ``x`` holds on entry."""
    n = x.shape[0]
    x[0] /= m[0]
    for j in range(1, n):
        x[j] = (x[j] - off * x[j - 1]) / m[j]
    for j in range(n - 2, -1, -1):
        x[j] -= cp[j] * x[j + 1]
    return x


def _thomas(factors: tuple[torch.Tensor, torch.Tensor], off: float, rhs: torch.Tensor) -> torch.Tensor:
    """Solve the factored tridiagonal systems (:func:`_factor`) for right-hand sides ``rhs`` (..., L),
    whole-tensor across all leading axes (one Python step per position along the line)."""
    m, cp = (f.movedim(-1, 0) for f in factors)
    x = rhs.movedim(-1, 0).contiguous().clone()  # (L, ...): every step works on one contiguous slab
    return _solve_lines(m, cp, off, x).movedim(0, -1)


def _line_diagonals(g64: torch.Tensor, w: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The diagonals of one tile's line equations, both (R, C): each row wire's tridiagonal along the columns
    (driver/left and right segments, one segment at the last column, plus the cell) and each column node's own
    conductance (segments above and below, one at row 0, plus the cell). Off-diagonals are all -w (the
    convention of :func:`_system`)."""
    rows_d = torch.full(g64.shape, 2.0 * w, dtype=torch.float64, device=g64.device)
    rows_d[:, -1] = w
    cols_d = torch.full(g64.shape, 2.0 * w, dtype=torch.float64, device=g64.device)
    cols_d[0, :] = w
    return rows_d + g64, cols_d + g64


def transfer_iterative(g: torch.Tensor, r_wire: float, *, tolerance: float = 1e-9, max_sweeps: int = 2000
                       ) -> torch.Tensor:
    """The (R, C) transfer matrix of one tile by block Gauss-Seidel on the nodal equations: alternately every
    row wire solved exactly given the column nodes, then every column wire given the row nodes (tridiagonal
    line solves, batched over lines and the R unit inputs), until the largest change of a column current in a
    sweep is below ``tolerance`` times the tile's ideal full-scale current (R * max g * 1 V). The system is
    symmetric positive definite, so the sweeps converge for any r_wire; slowly where r_wire * g * R * C
    approaches 1. float64; ``g`` itself at ``r_wire = 0``.

    Raises:
        RuntimeError: not converged within ``max_sweeps`` (use the exact solver).
    """
    _check(g, r_wire)
    g64 = g.detach().to(torch.float64)
    if r_wire == 0:
        return g64.clone()
    rows, cols = g64.shape
    w = 1.0 / float(r_wire)
    # unknowns for the R unit inputs at once: a[k, i, j] row nodes, b[k, i, j] column nodes (k: input row)
    a = torch.eye(rows, dtype=torch.float64, device=g64.device)[:, :, None].expand(rows, rows, cols).clone()
    b = torch.zeros_like(a)
    diag_a, diag_b = _line_diagonals(g64, w)  # (R, C) each
    rows_f = _factor(diag_a, -w)  # row lines, along j
    cols_f = _factor(diag_b.t().contiguous(), -w)  # (C, R): column lines, along i
    drive = torch.zeros_like(a)
    drive[torch.arange(rows), torch.arange(rows), 0] = w  # each input's driver feeds its row's first node
    full_scale = rows * float(g64.max()) if g64.numel() else 0.0
    out = torch.zeros(rows, cols, dtype=torch.float64, device=g64.device)
    for _ in range(max_sweeps):
        a = _thomas(rows_f, -w, g64 * b + drive)  # (K, R, C)
        b = _thomas(cols_f, -w, (g64 * a).transpose(1, 2)).transpose(1, 2)  # (K, R, C)
        new = w * b[:, -1, :]  # (K, C): currents into the sense amplifiers
        change = float((new - out).abs().max())
        out = new
        if change <= tolerance * max(full_scale, 1e-300):
            return out
    raise RuntimeError(f"IR drop: the iterative solver did not converge in {max_sweeps} sweeps (r_wire = "
                       f"{r_wire:g} ohm, tile {rows}x{cols}); use wires.solver = 'exact'")


_BLOCK_ROWS = 32
"""Rows whose row-wire inverses the block solver computes at once (bounds its memory)."""


def _block_bytes(rows: int, cols: int) -> float:
    """Estimated peak bytes of :func:`transfer_block`: a chunk of row-wire inverses (two (C, chunk, C)
    tensors), a handful of (C, C) matrices and the (C, R) carried inputs, float64."""
    return 8.0 * (2 * _BLOCK_ROWS * cols * cols + 6 * cols * cols + 2 * cols * rows)


def _tridiagonal_inverses(pivots: torch.Tensor, upper: torch.Tensor, off: float) -> torch.Tensor:
    """Dense inverses of factored tridiagonal systems (:func:`_factor` of (B, L) diagonals, constant
    off-diagonals ``off``): (L, B, L), entry [p, b, m] = (T_b^-1)[p, m]. The Thomas algorithm on the identity,
    positions on the leading axis so that every step works on one contiguous (B, L) slab."""
    batch, length = pivots.shape
    x = torch.zeros(length, batch, length, dtype=pivots.dtype, device=pivots.device)
    idx = torch.arange(length, device=pivots.device)
    x[idx, :, idx] = 1.0  # the identity, one right-hand side per column m
    return _solve_lines(pivots.t().unsqueeze(-1), upper.t().unsqueeze(-1), off, x)  # factors (L, B, 1)


def transfer_block(g: torch.Tensor, r_wire: float) -> torch.Tensor:
    """The (R, C) transfer matrix of one tile by exact block elimination of the nodal equations, float64, in
    torch (where ``g`` lives, e.g. on CUDA); the same solution as :func:`transfer` up to rounding.

    Ordered row by row, the system is block tridiagonal: row i's row nodes a_i and column nodes b_i couple
    only to each other (the row wire, tridiagonal T_i, and the cells G_i = diag(g[i])) and, through the
    column wires, b_i to b_(i-1) and b_(i+1) (-1/r_wire each). Eliminating every row wire (a_i = T_i^-1
    (drive + G_i b_i), tridiagonal inverses batched over rows) leaves, per row, the dense symmetric positive
    definite block A_i = D_i - G_i T_i^-1 G_i on the column nodes; a block Cholesky sweep down the rows
    (U_i = A_i - U_(i-1)^-1 / r_wire^2) carries all R unit inputs at once, and the sense amplifiers' currents
    need only the last row's nodes, so there is no backward pass. About 2 R C^3 flops, in dense matrix
    products (BLAS).
    """
    _check(g, r_wire)
    g64 = g.detach().to(torch.float64)
    if r_wire == 0:
        return g64.clone()
    rows, cols = g64.shape
    check_memory(_block_bytes(rows, cols), f"the block IR-drop solve of a {rows}x{cols} tile (use smaller tiles)")
    w = 1.0 / float(r_wire)
    dev = g64.device
    diag_a, diag_b = _line_diagonals(g64, w)  # (R, C): the row wires' T_i; the column nodes' own conductance
    pivots, upper = _factor(diag_a, -w)
    carried = torch.zeros(cols, rows, dtype=torch.float64, device=dev)  # (C, R): y_i of every unit input
    u_inv: torch.Tensor | None = None
    for lo in range(0, rows, _BLOCK_ROWS):
        hi = min(rows, lo + _BLOCK_ROWS)
        inverses = _tridiagonal_inverses(pivots[lo:hi], upper[lo:hi], -w)  # (C, chunk, C)
        for r in range(hi - lo):
            i = lo + r
            gi = g64[i]
            t_inv = inverses[:, r, :]  # (C, C): T_i^-1
            schur = gi[:, None] * t_inv * gi[None, :]  # (C, C): G_i T_i^-1 G_i
            block = torch.diag(diag_b[i]) - 0.5 * (schur + schur.t())  # A_i, symmetrised against rounding
            if u_inv is not None:
                block = block - (w * w) * u_inv
                carried[:, :i] = w * (u_inv @ carried[:, :i])  # the inputs of rows above, one row further down
            carried[:, i] = w * gi * t_inv[:, 0]  # input i enters at row i: G_i T_i^-1 e_0 / r_wire
            u_inv = torch.cholesky_inverse(torch.linalg.cholesky(block))
            u_inv = 0.5 * (u_inv + u_inv.t())
    assert u_inv is not None
    return (w * (u_inv @ carried)).t().contiguous()  # (R, C): input k's current into each sense amplifier


#: Transfer-matrix solvers by ``wires.solver`` (names declared in :data:`ittrna.registry.WIRE_SOLVERS`):
#: (g (R, C), r_wire) -> (R, C).
SOLVERS: Registry[Callable[[torch.Tensor, float], torch.Tensor]] = _registry.WIRE_SOLVERS
SOLVERS.register("exact", transfer, home=__name__)
SOLVERS.register("iterative", transfer_iterative, home=__name__)
SOLVERS.register("block", transfer_block, home=__name__)
