"""IR drop: the exact (sparse LU), block-elimination and iterative transfer-matrix solvers side by side in one run.

For tiles of 64, 128 and 256 cells a side and r_wire in {0.5, 1, 2.5} ohm at the default Gmax (1/10 kOhm, so
r_wire * Gmax in [5e-5, 2.5e-4]), conductances uniform in [0.1, 1] Gmax: seconds of each solver (median of
``--repeats``, the three alternating), their ratios to the exact one, the block and iterative solvers' largest
errors and the IR drop itself, all as fractions of the tile's ideal full-scale current (rows * max g * 1 V).
``--no-exact`` leaves the sparse LU out (512x512 tiles take it minutes); errors are then against ``block``.

    python benchmarks/bench_ir_drop.py [--sizes 64,128,256] [--repeats 3] [--device cpu|cuda] [--no-exact]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ittrna.device.ir_drop import transfer, transfer_block, transfer_iterative


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    if out.is_cuda:
        torch.cuda.synchronize()
    return out.cpu(), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--wires", default="0.5,1,2.5")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-exact", action="store_true", help="leave out the sparse LU (large tiles)")
    ap.add_argument("--no-iterative", action="store_true", help="leave out the iterative solver")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    gmax = 1e-4
    print("| tile | r_wire (ohm) | exact s | block s | iterative s | block / exact | iterative / exact "
          "| block error / full scale | iterative error / full scale | IR drop / full scale |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in (int(v) for v in args.sizes.split(",")):
        g = (torch.rand(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) * 0.9 + 0.1) * gmax
        gd = g.to(args.device)
        for r in (float(v) for v in args.wires.split(",")):
            times: dict[str, list[float]] = {"exact": [], "block": [], "iterative": []}
            out: dict[str, torch.Tensor] = {}
            for _ in range(args.repeats):
                if not args.no_exact:
                    out["exact"], t = _timed(transfer, g, r)
                    times["exact"].append(t)
                out["block"], t = _timed(transfer_block, gd, r)
                times["block"].append(t)
                if not args.no_iterative:
                    out["iterative"], t = _timed(transfer_iterative, gd, r)
                    times["iterative"].append(t)
            fs = n * float(g.max())
            med = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
            ref = out.get("exact", out["block"])

            errors = {k: f"{float((v - ref).abs().max()) / fs:.1e}" for k, v in out.items()}
            print(f"| {n}x{n} | {r:g} | {med['exact']:.3f} | {med['block']:.3f} | {med['iterative']:.3f} "
                  f"| {med['block'] / med['exact']:.2f} | {med['iterative'] / med['exact']:.2f} "
                  f"| {errors['block'] if 'exact' in out else '(reference)'} | {errors.get('iterative', '—')} "
                  f"| {float((g - ref).abs().max()) / fs:.1e} |")


if __name__ == "__main__":
    main()
