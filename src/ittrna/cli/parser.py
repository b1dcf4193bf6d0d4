"""The argument parser: every command, its options and ``--help`` examples; choices from the registries."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ittrna.cli.commands import (
    cmd_chip_make,
    cmd_chip_show,
    cmd_chip_test,
    cmd_config_presets,
    cmd_config_show,
    cmd_data_fetch,
    cmd_data_list,
    cmd_evaluate,
    cmd_fold_bn,
    cmd_import_weights,
    cmd_methods,
    cmd_report,
    cmd_sweep,
    cmd_tolerate,
    cmd_train,
)
from ittrna.cli.options import (
    MAX_CHIPS,
    _add_chip_options,
    _field,
    _float_list,
    _int_in,
    _int_text,
    _Parser,
    _time,
)
from ittrna.config import MAX_SEED, RefreshConfig, TestConfig, TrainConfig
from ittrna.registry import COMPENSATIONS


# --- parser ----------------------------------------------------------------------------------------------
def _sub(subs: Any, name: str, help_: str, examples: str, func: Callable[[argparse.Namespace], None]
         ) -> argparse.ArgumentParser:
    """A command's parser: its help with examples and the ``--json`` flag every command takes."""
    # argparse %-formats a subcommand's help in its parent's listing: a literal % must be doubled there
    p: argparse.ArgumentParser = subs.add_parser(
        name, help=help_.replace("%", "%%"), description=help_, epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    return p


def _add_definition(p: argparse.ArgumentParser) -> None:
    """``--definition``: a user's own network whose checkpoints this command may run (a checkpoint never runs
    code by itself)."""
    p.add_argument("--definition", action="append", default=None, metavar="FILE.py:FUNCTION",
                   help="the definition a checkpoint of your own network was made from (its code runs only when "
                        "named here, the file unchanged); repeat for several")


def build_parser() -> argparse.ArgumentParser:
    """The full ``ittrna`` argument parser (built without importing torch: names come from
    :mod:`ittrna.registry` and the config's choices)."""
    from ittrna.registry import DATASETS, METHODS, MODELS, RECIPES

    parser = _Parser(prog="ittrna", description="Deep neural networks on imperfect RRAM crossbars.",
                     epilog="examples:\n  ittrna train --model mlp --dataset mnist --epochs 5 --out mlp.pt\n"
                            "  ittrna evaluate --model mlp.pt --chips 5 --saf-rate 0.1\n",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = parser.add_subparsers(dest="command", required=True)

    data = subs.add_parser("data", help="list and fetch datasets")
    dsubs = data.add_subparsers(dest="data_command", required=True)
    _sub(dsubs, "list", "show datasets and the state of the cache", "  ittrna data list\n", cmd_data_list)
    p = _sub(dsubs, "fetch", "fetch datasets into the cache and verify them by sha256",
             "  ittrna data fetch mnist fashion-mnist\n", cmd_data_fetch)
    p.add_argument("names", nargs="+", choices=DATASETS.names(), metavar="NAME",
                   help=f"one of {DATASETS.names()} (cifar10 is user-provided: give --data-dir where it is used)")
    p.add_argument("--force", action="store_true", help="fetch again even if the cached copy verifies")

    p = _sub(subs, "train", "train a reference model in software (ideal weights)",
             "  ittrna train --model mlp --dataset mnist --recipe converged --out mlp.pt\n"
             "  ittrna train --model mlp --dataset mnist --epochs 5 --out mlp.pt\n"
             "  ittrna train --model lenet5 --dataset fashion-mnist --epochs 10 --seed 1 --out lenet.pt --json\n"
             "  ittrna train --model nets/my_net.py:build --model-args '{\"width\": 16}' --dataset mnist --out m.pt\n",
             cmd_train)
    p.add_argument("--model", required=True,
                   help=f"one of {sorted(MODELS)}, or your own network: FILE.py:FUNCTION or package.module:FUNCTION "
                        "(a function returning an nn.Module; given in_shape/num_classes if it takes them)")
    p.add_argument("--model-args", default=None, metavar="JSON",
                   help="keyword arguments of a definition, a JSON object, e.g. '{\"width\": 16}'")
    p.add_argument("--dataset", required=True, help=f"one of {sorted(DATASETS)}")
    p.add_argument("--recipe", default=None, metavar="NAME",
                   help=f"a named recipe, one of {RECIPES.names()}: 'converged' = 30 epochs of cosine decay to "
                        "zero, the best-validation epoch kept (the references of every table; docs/REPRODUCTION.md); "
                        "'converged-augmented' = the same at batch 128 on the dataset's standard augmentation (the "
                        "BatchNorm CNNs). Sets --epochs, --lr, --batch-size")
    p.add_argument("--epochs", type=_field(TrainConfig, "epochs", int), default=None, help="default 5 (a quick model)")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED), default=0)
    p.add_argument("--lr", type=_field(TrainConfig, "lr"), default=None, help="Adam learning rate, default 1e-3")
    p.add_argument("--batch-size", type=_field(TrainConfig, "batch_size", int), default=None, help="default 64")
    p.add_argument("--patience", type=_field(TrainConfig, "patience", int), default=None,
                   help="train to convergence: stop after this many epochs without a better validation accuracy "
                        "and keep the best epoch (--epochs is then the maximum and spans the cosine schedule)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.pt)")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset folder (required for cifar10)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted training from OUT.partial (kept after every epoch), bit for bit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = _sub(subs, "import-weights", "turn a state_dict trained elsewhere into a checkpoint (accuracy measured)",
             "  ittrna import-weights --model resnet20 --state-dict r20.pth --dataset fashion-mnist --out r20.pt\n"
             "  ittrna import-weights --model nets/my_net.py:build --state-dict w.pt --dataset mnist --out m.pt\n",
             cmd_import_weights)
    p.add_argument("--model", required=True, help="a zoo name or FILE.py:FUNCTION / package.module:FUNCTION")
    p.add_argument("--model-args", default=None, metavar="JSON", help="keyword arguments of a definition (JSON)")
    p.add_argument("--state-dict", type=Path, required=True,
                   help="torch.save(model.state_dict(), FILE), loaded with weights_only (no code runs)")
    p.add_argument("--dataset", required=True, help=f"one of {sorted(DATASETS)}")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.pt)")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset folder (required for cifar10)")

    p = _sub(subs, "fold-bn", "fold BatchNorm into the layers before it, so the chip holds its scale "
             "(both accuracies measured)",
             "  ittrna fold-bn --model r20.pt --out r20-folded.pt\n"
             "  ittrna fold-bn --model m.pt --definition nets/my_net.py:build --out m-folded.pt\n",
             cmd_fold_bn)
    _add_definition(p)
    p.add_argument("--model", type=Path, required=True, help="software checkpoint (ittrna train, import-weights)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.pt)")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset folder (required for cifar10)")

    chip = subs.add_parser("chip", help="fabricate, inspect and test simulated chips")
    csubs = chip.add_subparsers(dest="chip_command", required=True)
    p = _sub(csubs, "make", "fabricate a chip sized for a trained model and save it",
             "  ittrna chip make --model mlp.pt --saf-rate 0.1 --sigma 0.5 --seed 3 --out chip.npz\n"
             "  ittrna chip make --model mlp.pt --preset date17 --pattern lines --crossbar 64x64 --out c.npz\n",
             cmd_chip_make)
    _add_definition(p)
    p.add_argument("--model", type=Path, required=True, help="checkpoint from `ittrna train`")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED), default=0, help="fabrication seed")
    p.add_argument("--out", type=Path, required=True, help="chip file to write (.npz)")
    _add_chip_options(p)
    p = _sub(csubs, "show", "print per-layer statistics of a chip and draw its fault map",
             "  ittrna chip show chip.npz --png faults.png\n", cmd_chip_show)
    p.add_argument("chip", type=Path)
    p.add_argument("--png", type=Path, default=None, help="write the fault map image here")
    p = _sub(csubs, "test", "run the post-fabrication test: write the measured defect map",
             "  ittrna chip test chip.npz --miss-rate 0.05 --theta-noise 0.05 --out map.npz\n", cmd_chip_test)
    p.add_argument("chip", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--miss-rate", type=_field(TestConfig, "miss_rate"), default=None,
                   help="fraction of faults missed (default: the chip config's test.miss_rate)")
    p.add_argument("--theta-noise", type=_field(TestConfig, "theta_noise"), default=None,
                   help="sigma of theta measurement error (default: the chip config's test.theta_noise)")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED), default=0)

    p = _sub(subs, "evaluate", "accuracy of a trained model on one saved chip or on K fabricated chips",
             "  ittrna evaluate --model mlp.pt --chip chip.npz\n"
             "  ittrna evaluate --model tuned.pt --chip chip.npz --ablate   # which layers carry the loss\n"
             "  ittrna evaluate --model mlp.pt --chips 5 --saf-rate 0.2 --seed 100 --json\n", cmd_evaluate)
    _add_definition(p)
    p.add_argument("--model", type=Path, required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--chip", type=Path, default=None, help="a saved chip (.npz)")
    src.add_argument("--chips", type=_int_in(1, MAX_CHIPS), default=5, help="number of chips to fabricate")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED), default=None,
                   help="first chip seed (seeds N..N+K-1), default 0; not with --chip")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--time", type=_time, default=0.0, metavar="T",
                   help="evaluate T after programming, the cells relaxed (relaxation.model): seconds or a number "
                        "with a unit, e.g. 1s, 1h, 1d, 1y (default 0)")
    p.add_argument("--ablate", action="store_true",
                   help="with --chip: per layer, the accuracy with that layer ideal (digital) and the rest on the "
                        "chip, and with only that layer on the chip: which layers carry the loss")
    p.add_argument("--quiet", action="store_true")
    _add_chip_options(p)

    p = _sub(subs, "sweep", "run a sweep: a TOML grid of models, chip settings, methods and chip seeds (or, with "
             "--model, the collapse curves of a checkpoint); crash-safe and resumable",
             "  ittrna sweep configs/quick.toml --out runs/quick\n"
             "  ittrna sweep configs/paper-mlp.toml --out runs/mlp --backend ray --workers 2\n"
             "  ittrna sweep study.toml --out runs/s --backend ray --address auto\n"
             "  ittrna sweep --model mlp.pt --saf-rates 0,0.1,0.2,0.3 --sigmas 0,0.5,1,1.5 --chips 5 --out out/\n"
             "  ittrna report runs/quick --html\n", cmd_sweep)
    _add_definition(p)
    p.add_argument("config_file", nargs="?", type=Path, default=None, metavar="CONFIG.toml",
                   help="sweep config (docs/experiments.md); omit for the flag form (--model ...)")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for results.jsonl and results.csv (and the flag form's summary and plot)")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: this process (or a process pool with --workers > 1); ray: Ray tasks")
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. auto or HOST:PORT); default: "
                   "start a local Ray")
    p.add_argument("--workers", type=_int_in(1, 4096), default=None,
                   help="parallel workers (local: processes, default 1; ray: CPUs, default all)")
    p.add_argument("--quiet", action="store_true")
    f = p.add_argument_group("flag form (instead of CONFIG.toml)")
    f.add_argument("--model", type=Path, default=None, help="software checkpoint from `ittrna train`")
    f.add_argument("--saf-rates", type=_float_list, default=None, help="default 0,0.05,...,0.3 (sigma = 0)")
    f.add_argument("--sigmas", type=_float_list, default=None, help="default 0,0.25,...,1.5 (no faults)")
    f.add_argument("--chips", type=_int_in(1, MAX_CHIPS), default=None, help="chips per point, default 5")
    f.add_argument("--seed", type=_int_in(0, MAX_SEED), default=None, help="first chip seed, default 0")
    f.add_argument("--split", choices=["test", "val"], default=None, help="default test")
    f.add_argument("--data-dir", type=Path, default=None)
    _add_chip_options(p)

    p = _sub(subs, "report", "statistics per grid cell (mean ± std, 95 % CI), report.md and plots of a sweep folder",
             "  ittrna report runs/quick\n  ittrna report runs/quick --html   # also one self-contained report.html\n",
             cmd_report)
    p.add_argument("folder", type=Path, help="a sweep's --out folder")
    p.add_argument("--html", action="store_true", help="also write report.html (plots embedded)")
    p.add_argument("--title", default=None, help="report title")

    _sub(subs, "methods", "list the tolerance methods", "  ittrna methods\n  ittrna methods --json\n", cmd_methods)
    p = _sub(subs, "tolerate", "run a tolerance method for one chip, program the chip and evaluate it",
             "  ittrna tolerate --method remap-fat --model mlp.pt --chip chip.npz --out tuned.pt\n"
             "  ittrna tolerate --method fat --model mlp.pt --chip chip.npz --miss-rate 0.05 --theta-noise 0.1 "
             "--out t.pt\n"
             "  ittrna tolerate --method aft --model mlp.pt --chip chip.npz --map map.npz --epochs 2 "
             "--set method.tau=0.5 --out t.pt --json\n"
             "  ittrna evaluate --model t.pt --chip chip.npz      # reproduces chip_accuracy\n"
             "  ittrna tolerate --method remap-fat --model mlp.pt --chip chip.npz --time 1y --compensate registers "
             "--refresh 0.01 --out t.pt   # a year later: registers re-fitted, 1 % of the cells refreshed\n"
             "  ittrna tolerate --method codesign --model lenet5.pt --chip chip.npz --iterations 5 "
             "--write-budget 20000 --out c.pt   # also writes c.chip.npz, the programmed chip\n"
             "  ittrna evaluate --model c.pt --chip c.chip.npz    # reproduces an on-device result\n", cmd_tolerate)
    _add_definition(p)
    p.add_argument("--method", required=True, choices=list(METHODS), help="tolerance method (`ittrna methods`)")
    p.add_argument("--model", type=Path, required=True, help="software checkpoint from `ittrna train`")
    p.add_argument("--chip", type=Path, required=True, help="fabricated chip from `ittrna chip make`")
    p.add_argument("--map", type=Path, default=None, help="measured map from `ittrna chip test` (else tested here)")
    p.add_argument("--miss-rate", type=_field(TestConfig, "miss_rate"),
                   default=None, help="test here with this miss rate")
    p.add_argument("--theta-noise", type=_field(TestConfig, "theta_noise"),
                   default=None, help="test here with this theta error")
    p.add_argument("--test-seed", type=_int_in(0, MAX_SEED), default=None,
                   help="seed of the test's imperfections, default 0 (not with --map: that test is done)")
    p.add_argument("--epochs", type=_int_text, default=None, help="retraining epochs (method.epochs)")
    p.add_argument("--iterations", type=_int_text, default=None,
                   help="on-device iterations at most (method.iterations, codesign)")
    p.add_argument("--write-budget", type=_int_text, default=None,
                   help="on-device cell writes allowed after the first programming (method.write_budget)")
    p.add_argument("--chip-out", type=Path, default=None,
                   help="on-device methods: where to save the programmed chip (default: OUT with .chip.npz)")
    p.add_argument("--set", action="append", default=[], metavar="method.FIELD=VALUE",
                   help="any method setting, e.g. --set method.headroom_min=0.2 (repeatable)")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED), default=0, help="seed of the method's own randomness")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--time", type=_time, default=0.0, metavar="T",
                   help="measure the accuracies T after programming (the method runs at 0): seconds or a number "
                        "with a unit, e.g. 1h, 1d, 1y (default 0)")
    p.add_argument("--compensate", action="append", default=[], choices=list(COMPENSATIONS), metavar="STEP",
                   help=f"zero-write compensation at --time (repeatable; one of {', '.join(COMPENSATIONS)}): "
                        "registers re-fitted to a reference read right after programming, BatchNorm statistics "
                        "re-estimated on the chip; forward passes only")
    p.add_argument("--refresh", type=_field(RefreshConfig, "budget"), default=None, metavar="FRACTION",
                   help="at --time, before any compensation, rewrite the cells the host ranks worst (expected "
                        "relaxation x weight importance), at most FRACTION of the writes of re-programming the "
                        "whole chip, e.g. 0.01")
    p.add_argument("--out", type=Path, required=True, help="tuned file to write (.pt)")
    p.add_argument("--quiet", action="store_true")

    cfg = subs.add_parser("config", help="show chip configurations and presets")
    gsubs = cfg.add_subparsers(dest="config_command", required=True)
    p = _sub(gsubs, "show", "print a preset or config file as TOML or JSON",
             "  ittrna config show --preset date17 --format toml > my-chip.toml\n"
             "  ittrna config show --preset hfo2-4mb --json\n", cmd_config_show)
    p.add_argument("--preset", default=None, help="a preset name (default: default)")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--format", choices=["toml", "json"], default="toml")
    _sub(gsubs, "presets", "list the named presets", "  ittrna config presets\n", cmd_config_presets)
    return parser
