"""Whether a doubled training schedule still helps: two checkpoints of one model (a schedule and its double),
their per-image correctness on the validation split, and the paired sign test the methods use for a
significant gain (:func:`ittrna.methods.retrain.significantly_better`, z = 2).

At about 94 % accuracy, 5,000 validation images resolve about ±0.33 points (one standard deviation of a
binomial), so a fixed 0.05-point rule cannot tell a gain from luck for the CNNs; the paired test can. The
verdict is on validation images only; the test accuracies are printed for the record, never for the choice.

    python benchmarks/converged_pair.py SHORT.pt LONG.pt [--out docs/results/convergence-pairs.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def correctness(model, split, batch_size: int = 500):  # torch imported lazily: untyped
    """(N,) bool: which images of ``split`` the model classifies right (eval mode, no gradients)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(split.y), batch_size):
            x, y = split.x[i:i + batch_size], split.y[i:i + batch_size]
            out.append(model(x).argmax(1) == y)
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("short", type=Path, help="checkpoint of the shorter schedule")
    ap.add_argument("long", type=Path, help="checkpoint of the doubled schedule")
    ap.add_argument("--z", type=float, default=2.0, help="sign-test threshold (the methods' keep_z / search_z)")
    ap.add_argument("--out", type=Path, default=None, help="append one JSON line here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    from ittrna import data
    from ittrna.methods.retrain import significantly_better
    from ittrna.models.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    (short, ms), (long, ml) = load_checkpoint(args.short), load_checkpoint(args.long)
    if (ms["model"], ms["dataset"]) != (ml["model"], ml["dataset"]):
        raise SystemExit(f"{args.long}: {ml['model']}/{ml['dataset']}; accepted the model and dataset of "
                         f"{args.short} ({ms['model']}/{ms['dataset']})")
    rec: dict = {"model": ms["model"], "dataset": ms["dataset"], "short": args.short.name, "long": args.long.name,
                 "z": args.z}
    for split in ("val", "test"):
        d = data.load(ms["dataset"], split)
        a, b_ = correctness(short, d), correctness(long, d)
        b, c = int((b_ & ~a).sum()), int((a & ~b_).sum())
        rec[split] = {"short": float(a.float().mean()), "long": float(b_.float().mean()), "only_long": b,
                      "only_short": c, "threshold": args.z * math.sqrt(b + c)}
        if split == "val":  # the verdict: the methods' own test, on validation images only
            rec["significant"] = significantly_better(b_, a, args.z)
    v = rec["val"]
    print(f"{rec['model']}/{rec['dataset']} {args.short.name} -> {args.long.name}: val "
          f"{100 * v['short']:.2f} -> {100 * v['long']:.2f} % (right only after: {v['only_long']}, only before: "
          f"{v['only_short']}, b - c = {v['only_long'] - v['only_short']} vs {v['threshold']:.1f}): "
          f"{'significant gain, not converged' if rec['significant'] else 'no significant gain, converged'}; "
          f"test {100 * rec['test']['short']:.2f} -> {100 * rec['test']['long']:.2f} % (record only)")
    if args.out is not None:
        with args.out.open("a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
