"""IR drop: the exact and the iterative transfer-matrix solvers side by side in one run.

For tiles of 64, 128 and 256 cells a side and r_wire in {0.5, 1, 2.5} ohm at the default Gmax (1/10 kOhm, so
r_wire * Gmax in [5e-5, 2.5e-4]), conductances uniform in [0.1, 1] Gmax: seconds of each solver (median of
``--repeats``, alternating exact, iterative, exact, ...), their ratio, the iterative solver's largest error
and the IR drop itself, both as fractions of the tile's ideal full-scale current (rows * max g * 1 V).

    python benchmarks/bench_ir_drop.py [--sizes 64,128,256] [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ittrna.device.ir_drop import transfer, transfer_iterative


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--wires", default="0.5,1,2.5")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    gmax = 1e-4
    print("| tile | r_wire (ohm) | exact s | iterative s | iterative / exact | iterative error / full scale "
          "| IR drop / full scale |")
    print("|---|---|---|---|---|---|---|")
    for n in (int(v) for v in args.sizes.split(",")):
        g = (torch.rand(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) * 0.9 + 0.1) * gmax
        for r in (float(v) for v in args.wires.split(",")):
            te, ti = [], []
            exact = it = g
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                exact = transfer(g, r)
                te.append(time.perf_counter() - t0)
                gd = g.to(args.device)
                t0 = time.perf_counter()
                it = transfer_iterative(gd, r).cpu()
                ti.append(time.perf_counter() - t0)
            fs = n * float(g.max())
            e, i = statistics.median(te), statistics.median(ti)
            print(f"| {n}x{n} | {r:g} | {e:.3f} | {i:.3f} | {i / e:.2f} | {float((exact - it).abs().max()) / fs:.1e} "
                  f"| {float((g - exact).abs().max()) / fs:.1e} |")


if __name__ == "__main__":
    main()
