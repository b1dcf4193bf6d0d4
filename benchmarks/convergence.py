"""Evidence that a training recipe is converged: the same model trained with the recipe's epochs and with more,
each a full cosine schedule to zero with the best-validation checkpoint kept.

The recipe counts as converged for a model when the longer schedule improves the kept validation accuracy by at
most 0.05 points (the CNNs, whose validation set cannot resolve that: no significant paired gain,
``benchmarks/converged_pair.py``). One JSON line per (model, dataset, recipe, epochs) in OUT (resumable: a rerun
skips what is there, and a training cut off continues from its last epoch through ``ittrna train``'s own resume
file; its ``seconds`` then count only the part after the last interruption).
With ``--models-dir`` every checkpoint is kept there (``MODEL-DATASET-RECIPE-EPOCHS.pt``): the recipe's own
run is then the reference model of a study, trained once.

    python benchmarks/convergence.py --out docs/results/convergence.jsonl
    python benchmarks/convergence.py --models mlp --datasets mnist --epochs 30 60 --out /tmp/c.jsonl
    python benchmarks/convergence.py --models resnet20 mobilenet-tiny --out docs/results/convergence.jsonl \\
        --models-dir docs/results/own-network/models
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

RUNS = [("mlp", "mnist", "converged"), ("mlp-deep", "mnist", "converged"), ("lenet5", "mnist", "converged"),
        ("lenet5", "fashion-mnist", "converged"), ("mobilenet-tiny", "fashion-mnist", "converged-augmented"),
        ("resnet20", "fashion-mnist", "converged-augmented")]
"""(model, dataset, recipe) of every reference model the tables use."""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", nargs="*", default=None, help="default: every model of RUNS")
    ap.add_argument("--datasets", nargs="*", default=None)
    ap.add_argument("--epochs", nargs="+", type=int, default=[30, 60])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models-dir", type=Path, default=None, help="keep every checkpoint here")
    args = ap.parse_args(argv)

    import torch

    from ittrna._io import atomic_write_text
    from ittrna.config import TrainConfig
    from ittrna.experiments.jobs import train_checkpoint
    from ittrna.training import get_recipe

    torch.set_num_threads(args.threads)
    lines = args.out.read_text().splitlines() if args.out.exists() else []
    done = {(r["model"], r["dataset"], r.get("recipe", "converged"), r["epochs"]) for r in map(json.loads, lines)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.models_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for model_name, dataset, recipe_name in RUNS:
            if (args.models and model_name not in args.models) or (args.datasets and dataset not in args.datasets):
                continue
            recipe = get_recipe(recipe_name, (), "--")
            for epochs in args.epochs:
                if (model_name, dataset, recipe_name, epochs) in done:
                    continue
                out = folder / f"{model_name}-{dataset}-{recipe_name}-{epochs}.pt"
                res = train_checkpoint(model_name, dataset, out, TrainConfig(seed=0),
                                       recipe=replace(recipe, epochs=epochs), resume=True)
                rec = {"model": model_name, "dataset": dataset, "recipe": recipe_name, "epochs": epochs, "seed": 0,
                       "lr": recipe.lr, "batch_size": recipe.batch_size, "augment": recipe.augment,
                       "best_epoch": res["best_epoch"], "val_accuracy": res["val_accuracy"],
                       "test_accuracy": res["test_accuracy"], "val_history": res["val_history"],
                       "seconds": res["seconds"], "torch": str(torch.__version__)}
                lines.append(json.dumps(rec))
                atomic_write_text(args.out, "\n".join(lines) + "\n")
                print(f"{model_name} {dataset} {recipe_name} {epochs} epochs: val {100 * rec['val_accuracy']:.2f} "
                      f"(best epoch {rec['best_epoch']}), test {100 * rec['test_accuracy']:.2f}, "
                      f"{rec['seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
