"""Evidence that the `converged` training recipe is converged: the same model trained with the recipe's epochs
and with more, each a full cosine schedule to zero with the best-validation checkpoint kept.

The recipe counts as converged for a model when the longer schedule improves the kept validation accuracy by at
most 0.05 points. One JSON line per (model, dataset, epochs) in OUT (resumable: a rerun skips what is there).

    python benchmarks/convergence.py --out docs/results/convergence.jsonl
    python benchmarks/convergence.py --models mlp --datasets mnist --epochs 30 60 --out /tmp/c.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RUNS = [("mlp", "mnist"), ("mlp-deep", "mnist"), ("lenet5", "mnist"), ("lenet5", "fashion-mnist")]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", nargs="*", default=None, help="default: every model of RUNS")
    ap.add_argument("--datasets", nargs="*", default=None)
    ap.add_argument("--epochs", nargs="+", type=int, default=[30, 60])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    from ittrna._io import atomic_write_text
    from ittrna.data import DATASETS, load
    from ittrna.models import build
    from ittrna.training import accuracy, fit

    torch.set_num_threads(args.threads)
    lines = args.out.read_text().splitlines() if args.out.exists() else []
    done = {(r["model"], r["dataset"], r["epochs"]) for r in map(json.loads, lines)}
    for model_name, dataset in RUNS:
        if (args.models and model_name not in args.models) or (args.datasets and dataset not in args.datasets):
            continue
        spec = DATASETS[dataset]
        train, val, test = (load(dataset, s) for s in ("train", "val", "test"))
        for epochs in args.epochs:
            if (model_name, dataset, epochs) in done:
                continue
            model = build(model_name, spec.in_shape, spec.num_classes, seed=0)
            t0 = time.perf_counter()
            rep = fit(model, train, epochs=epochs, lr=1e-3, batch_size=64, seed=0, val=val, progress=False)
            rec = {"model": model_name, "dataset": dataset, "epochs": epochs, "seed": 0, "lr": 1e-3,
                   "batch_size": 64, "best_epoch": rep.best_epoch + 1, "val_accuracy": accuracy(model, val),
                   "test_accuracy": accuracy(model, test), "val_history": rep.val_history,
                   "seconds": time.perf_counter() - t0, "torch": str(torch.__version__)}
            lines.append(json.dumps(rec))
            atomic_write_text(args.out, "\n".join(lines) + "\n")
            print(f"{model_name} {dataset} {epochs} epochs: val {100 * rec['val_accuracy']:.2f} (best epoch "
                  f"{rec['best_epoch']}), test {100 * rec['test_accuracy']:.2f}, {rec['seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
