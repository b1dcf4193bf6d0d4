"""The library functions behind the file-level commands: each command of :mod:`ittrna.cli` parses its flags,
calls one of these and prints what it returns.

- :func:`train_checkpoint`: train a zoo model on a dataset and save the checkpoint (``ittrna train``).
- :func:`evaluate_checkpoint`: accuracy of a checkpoint on fresh chips or of a tuned one on its own chip
  (``ittrna evaluate``).
- :func:`import_weights`: a network trained elsewhere (its ``state_dict`` file) as a checkpoint, its accuracy
  measured and recorded (``ittrna import-weights``).
- :func:`fold_checkpoint`: a checkpoint with its BatchNorm layers folded into the layers before them, both
  accuracies measured and recorded (``ittrna fold-bn``).
- :func:`tolerate_files`: run a method for a saved chip and save the tuned checkpoint, and for an on-device
  method the programmed chip (``ittrna tolerate``).

Every output path is checked first (never an input, right suffix) and every file is written atomically.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ittrna._io import load_torch
from ittrna._validate import check_device, check_output
from ittrna.config import ChipConfig, RefreshConfig, TestConfig, TrainConfig
from ittrna.data import Split, dataset_of, load
from ittrna.errors import InputError

if TYPE_CHECKING:
    from ittrna.training import Recipe

__all__ = ["evaluate_checkpoint", "fold_checkpoint", "import_weights", "tolerate_files", "train_checkpoint"]


def train_checkpoint(model: str, dataset: str, out: Path, train: TrainConfig, *, recipe: str | Recipe | None = None,
                     device: str = "cpu", data_dir: Path | None = None, progress: bool = True,
                     model_args: dict[str, Any] | None = None, resume: bool = False) -> dict[str, Any]:
    """Train ``model`` — a zoo name or a user's definition ``FILE.py:FUNCTION`` / ``module:FUNCTION`` called
    with ``model_args`` — on ``dataset`` and save it to ``out`` (a definition's checkpoint records it and its
    file's sha256).

    The loop's state is kept after every epoch in ``OUT.partial`` (removed when done): with ``resume`` an
    interrupted run continues from it, bit for bit as if never interrupted; without, an existing one is an
    error (nothing is overwritten).

    With a ``recipe`` (a name, or a :class:`~ittrna.training.Recipe` such as a longer variant of one for its
    convergence check) its epochs, learning rate, batch size and augmentation replace ``train``'s and the
    best-validation epoch is kept (as with ``train.patience``). Returns the checkpoint's metadata (the validation
    accuracy before training and after each epoch included) plus ``seconds`` and ``seconds_per_epoch``.
    """
    import torch

    from ittrna.data import DATASETS
    from ittrna.models import MODELS, as_definition, build, save_checkpoint
    from ittrna.training import Recipe, accuracy, fit, get_recipe

    defn = as_definition(model, model_args)
    if defn is None and model not in MODELS:
        raise InputError(f"unknown model {model!r}; accepted one of {sorted(MODELS)} or FILE.py:FUNCTION")
    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}; accepted one of {sorted(DATASETS)}")
    check_output(out, ".pt", {"--data-dir": data_dir}, what="a checkpoint")
    partial = out.with_name(out.name + ".partial")
    if partial.exists() and not resume:
        raise InputError(f"{partial} holds an interrupted training of {out}; give --resume to continue it, or "
                         "remove it to start again")
    dev = check_device(device)
    r = recipe if isinstance(recipe, Recipe) or recipe is None else get_recipe(recipe, (), "--")
    if r is not None:
        train = replace(train, epochs=r.epochs, lr=r.lr, batch_size=r.batch_size)
    spec = DATASETS[dataset]
    splits = {s: load(dataset, s, data_dir=data_dir) for s in ("train", "val", "test")}
    keep_best = recipe is not None or train.patience is not None
    net = build(defn or model, spec.in_shape, spec.num_classes, seed=train.seed, args=None).to(dev)
    t0 = perf_counter()
    rep = fit(net, splits["train"], epochs=train.epochs, lr=train.lr, batch_size=train.batch_size, seed=train.seed,
              val=splits["val"] if keep_best else None, patience=train.patience, progress=progress, resume=partial,
              augment=r.augmentation(dataset) if r is not None else None)
    seconds = perf_counter() - t0
    net = net.to("cpu")
    val_acc, test_acc = accuracy(net, splits["val"]), accuracy(net, splits["test"])
    meta = {"model": defn.name if defn else model, **({"definition": defn.to_dict()} if defn else {}),
            "dataset": dataset, "in_shape": list(spec.in_shape), "num_classes": spec.num_classes,
            "seed": train.seed, "epochs": train.epochs, "lr": train.lr, "batch_size": train.batch_size,
            "val_accuracy": val_acc, "test_accuracy": test_acc, "epochs_run": rep.epochs,
            "best_epoch": rep.best_epoch + 1, "patience": train.patience, "recipe": r.name if r else None,
            "val_history": rep.val_history, "torch": str(torch.__version__)}
    save_checkpoint(out, net, meta)
    partial.unlink(missing_ok=True)
    return {**meta, "keep_best": keep_best, "seconds": seconds,
            "seconds_per_epoch": seconds / rep.epochs if rep.epochs else 0.0}


def import_weights(model: str, state_path: Path, dataset: str, out: Path, *, model_args: dict[str, Any] | None = None,
                   data_dir: Path | None = None) -> dict[str, Any]:
    """Turn a ``state_dict`` saved elsewhere (``torch.save(model.state_dict(), FILE)``, loaded with
    ``weights_only``: no code runs) into a checkpoint of ``model`` (a zoo name or a definition) for
    ``dataset``, its validation and test accuracy measured and recorded, so it needs no retraining here.

    Returns the checkpoint's metadata.
    """
    import hashlib

    import torch

    from ittrna.data import DATASETS
    from ittrna.errors import FileFormatError
    from ittrna.models import MODELS, as_definition, build, check_state_fits, save_checkpoint
    from ittrna.training import accuracy

    defn = as_definition(model, model_args)
    if defn is None and model not in MODELS:
        raise InputError(f"unknown model {model!r}; accepted one of {sorted(MODELS)} or FILE.py:FUNCTION")
    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}; accepted one of {sorted(DATASETS)}")
    check_output(out, ".pt", {"--state-dict": state_path, "--data-dir": data_dir}, what="a checkpoint")
    if not state_path.is_file():
        raise FileFormatError(f"{state_path}: no such file; accepted a state_dict saved with torch.save")
    state = load_torch(state_path, "a torch state_dict")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps it
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise FileFormatError(f"{state_path}: not a state_dict; accepted a dict of parameter names to tensors")
    spec = DATASETS[dataset]
    net = build(defn or model, spec.in_shape, spec.num_classes)
    check_state_fits(state_path, state, net, defn.name if defn else model)
    net.load_state_dict(state)
    net.eval()
    val = load(dataset, "val", data_dir=data_dir)
    test = load(dataset, "test", data_dir=data_dir)
    meta = {"model": defn.name if defn else model, **({"definition": defn.to_dict()} if defn else {}),
            "dataset": dataset, "in_shape": list(spec.in_shape), "num_classes": spec.num_classes,
            "val_accuracy": accuracy(net, val), "test_accuracy": accuracy(net, test),
            "imported_from": str(state_path), "imported_sha256": hashlib.sha256(state_path.read_bytes()).hexdigest(),
            "torch": str(torch.__version__)}
    save_checkpoint(out, net, meta)
    return meta


def _val_loader(meta: Mapping[str, Any], data_dir: Path | None) -> Callable[[], Split]:
    """The checkpoint's validation split, loaded when called (ADC calibration needs it)."""
    return lambda: load(meta["dataset"], "val", data_dir=data_dir)


def evaluate_checkpoint(model_path: Path, *, chip_path: Path | None = None, config: ChipConfig | None = None,
                        seed: int = 0, chips: int = 5, split: str = "test", data_dir: Path | None = None,
                        progress: bool = True, time: float = 0.0, ablate: bool = False) -> dict[str, Any]:
    """Accuracy of a checkpoint on chips: on the saved chip ``chip_path`` (a tuned checkpoint is programmed
    as its method left it; only there), else on ``chips`` fresh chips of ``config`` from ``seed`` on; measured
    ``time`` seconds after programming (:func:`ittrna.config.parse_time`; the cells relax meanwhile).
    ``ablate`` (a saved chip only): also :func:`ittrna.nn.layer_ablation` of that chip as measured.

    Returns ``model``, ``dataset``, ``ideal_accuracy``, ``accuracy_mean``, ``accuracy_std``, ``accuracies``
    (and ``ablation``).
    """
    from ittrna.chip import Chip
    from ittrna.chip.state import check_fabricate
    from ittrna.experiments.tolerate import calibration_inputs, evaluate_tuned, load_tuned
    from ittrna.nn import deploy, evaluate, layer_ablation, monte_carlo
    from ittrna.training import accuracy

    if ablate and chip_path is None:
        raise InputError("--ablate judges one saved chip's layers; give it with --chip CHIP.npz")
    model, meta, deployment = load_tuned(model_path)
    if chip_path is not None:
        chip = Chip.load(chip_path)
        try:
            chip.check_model(model)
        except ValueError as exc:
            raise InputError(f"--chip {chip_path} does not fit --model {model_path}: {exc}") from None
        data = load(dataset_of(meta, str(model_path)), split, data_dir=data_dir)
        ideal = accuracy(model, data)
        if deployment is not None:
            accs = [evaluate_tuned(model, meta, deployment, chip, data, _val_loader(meta, data_dir),
                                   where=str(model_path), time=time)]
        else:
            accs = [evaluate(model, chip, data, calibration=calibration_inputs(chip.config,
                                                                               _val_loader(meta, data_dir)), time=time)]
        if ablate:  # the chip as just measured (programmed, and waited ``time``)
            judged = copy.deepcopy(model)
            if deployment is not None:
                judged.load_state_dict(deployment.state_dict)
            ablation = layer_ablation(deploy(judged, chip, program=False), data)
    else:
        cfg = config if config is not None else ChipConfig()
        if deployment is not None:
            raise InputError(f"{model_path} is tuned for one chip (its layouts and targets fit no other); give that "
                             "chip with --chip CHIP.npz")
        check_fabricate(model, cfg, seed)
        data = load(dataset_of(meta, str(model_path)), split, data_dir=data_dir)
        ideal = accuracy(model, data)
        accs = monte_carlo(model, cfg, range(seed, seed + chips), data, progress=progress,
                           calibration=calibration_inputs(cfg, _val_loader(meta, data_dir)), time=time)
    return {"model": meta["model"], "dataset": meta["dataset"], "ideal_accuracy": ideal,
            "accuracy_mean": statistics.fmean(accs), "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "accuracies": accs, **({"ablation": ablation} if ablate else {})}


FOLD_EXAMPLE_IMAGES = 64
"""Validation images each BatchNorm fold is checked on (:func:`ittrna.graph.fold_batchnorm`)."""


def fold_checkpoint(path: Path, out: Path, *, data_dir: Path | None = None) -> dict[str, Any]:
    """Fold a software checkpoint's BatchNorm layers into the crossbar layers that feed them
    (:func:`ittrna.graph.fold_batchnorm`, checked on the first validation images) and save the result: the same
    network with those BatchNorms gone, so the chip holds their scale and only the biases stay digital. Its
    metadata records the folded pairs (``folded_batchnorm``: a later load rebuilds the layout from the model's
    definition, no code stored), the validation and test accuracy before and after, and the source file.

    Returns the new metadata plus ``left`` (the BatchNorms that stay, with why).

    Raises:
        InputError: a tuned checkpoint, one without a dataset, a model without a BatchNorm to fold, or an output
            path that is an input.
    """
    import hashlib

    from ittrna.graph import fold_batchnorm
    from ittrna.models import save_checkpoint
    from ittrna.models.checkpoint import load_checkpoint_payload
    from ittrna.training import accuracy

    check_output(out, ".pt", {"--model": path, "--data-dir": data_dir}, what="a checkpoint")
    model, meta, payload = load_checkpoint_payload(path)
    if "deployment" in payload:
        raise InputError(f"{path} is tuned for one chip; accepted a software checkpoint (ittrna train)")
    if "dataset" not in meta:
        raise InputError(f"{path} records no dataset; accepted a checkpoint of ittrna train or import-weights")
    val = load(meta["dataset"], "val", data_dir=data_dir)
    test = load(meta["dataset"], "test", data_dir=data_dir)
    folded, pairs, left = fold_batchnorm(model, val.x[:FOLD_EXAMPLE_IMAGES])
    if not pairs:
        why = "; ".join(f"{bn}: {reason}" for bn, _, reason in left[:3]) or "it has none"
        raise InputError(f"{path}: no BatchNorm to fold ({why}); accepted a network with a BatchNorm right after "
                         "a Linear/Conv1d/Conv2d")
    before = {"val_accuracy": accuracy(model, val), "test_accuracy": accuracy(model, test)}
    new = {**meta, "folded_batchnorm": [*meta.get("folded_batchnorm", []), *[[a, b] for a, b in pairs]],
           "val_accuracy": accuracy(folded, val), "test_accuracy": accuracy(folded, test),
           "unfolded": {**before, "file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}
    save_checkpoint(out, folded, new)
    return {**new, "left": [list(x) for x in left]}


def tolerate_files(model_path: Path, chip_path: Path, method: str, out: Path, *, settings: Mapping[str, Any],
                   chip_out: Path | None = None, map_path: Path | None = None,
                   test: Mapping[str, float] | None = None, test_seed: int | None = None, seed: int = 0,
                   data_dir: Path | None = None, progress: bool = True, time: float = 0.0,
                   compensation: Sequence[str] = (), refresh: float | None = None) -> dict[str, Any]:
    """Run ``method`` for the saved chip ``chip_path`` (as fabricated) and save the tuned checkpoint ``out``.
    ``time`` and ``compensation``: as :func:`~ittrna.experiments.tolerate.tolerate`'s; ``refresh``: the
    budget (a fraction of the writes of re-programming the whole chip) of a refresh at ``time``
    (:class:`~ittrna.config.RefreshConfig`).

    Args:
        settings: method settings (``method.FIELD`` or ``FIELD`` keys), validated before any work.
        chip_out: for an on-device method, where the programmed chip goes (default: ``out`` with
            ``.chip.npz``); refused for off-device methods (the tuned file reproduces them on the chip as is).
        map_path: a measured map from an earlier test of this chip (else the chip is tested here).
        test: test imperfections (``miss_rate``, ``theta_noise``) of a test run here, over the chip's own.
        test_seed: seed of that test run (default 0).
        time: seconds after programming at which the accuracies are measured (the saved files are the state
            at programming: a later ``ittrna evaluate --time`` reproduces the result).

    Returns:
        :func:`~ittrna.experiments.tolerate.tolerate`'s result, plus ``out`` and, on-device, ``chip_out``.
    """
    from ittrna.chip import Chip, MeasuredMap
    from ittrna.experiments.tolerate import save_tuned, tolerate
    from ittrna.methods import get_method
    from ittrna.models import load_checkpoint

    inputs = {"--model": model_path, "--chip": chip_path, "--map": map_path}
    check_output(out, ".pt", inputs, what="a tuned checkpoint")
    spec = get_method(method)
    if spec.kind == "on-device":
        given = chip_out is not None
        chip_out = chip_out or out.with_suffix(".chip.npz")
        check_output(chip_out, ".npz", {**inputs, "--out": out}, what="the programmed chip",
                     flag="--chip-out" if given else "--chip-out (default: OUT with .chip.npz)")
    elif chip_out is not None:
        raise InputError(f"--chip-out is for on-device methods; {method!r} leaves the chip file as it is "
                         "(its tuned file reproduces the result on it)")
    spec.make_config(dict(settings))  # validate before any work
    refresh_cfg = RefreshConfig(budget=refresh) if refresh is not None else None
    if map_path is not None and (test or test_seed is not None):
        raise InputError("--miss-rate/--theta-noise/--test-seed describe a test run here; with --map the test is done")
    model, meta = load_checkpoint(model_path)
    chip = Chip.load(chip_path)
    measured = MeasuredMap.load(map_path) if map_path is not None else None
    test_config: TestConfig | None = replace(chip.config.test, **test) if test else None
    dataset = dataset_of(meta, str(model_path))
    splits = {s: load(dataset, s, data_dir=data_dir) for s in ("train", "val", "test")}
    result, deployment = tolerate(model, chip, method, train=splits["train"], val=splits["val"], test=splits["test"],
                                  settings=settings, measured=measured, test_seed=test_seed or 0,
                                  test_config=test_config, seed=seed, progress=progress, time=time,
                                  compensation=compensation,
                                  refresh=refresh_cfg)
    save_tuned(out, model, {**meta, "ondevice": chip_out is not None}, deployment, chip.chip_id)
    if chip_out is not None:
        chip.save(chip_out)
    return {**result, "out": str(out), **({"chip_out": str(chip_out)} if chip_out is not None else {})}
