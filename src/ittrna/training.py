"""Software (ideal, digital) training and accuracy measurement of reference networks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ittrna import registry as _registry
from ittrna._validate import check_nonempty_split
from ittrna.config import TrainConfig
from ittrna.data import Augmentation, Split
from ittrna.errors import FileFormatError, InputError
from ittrna.registry import Registry

__all__ = ["RECIPES", "FitReport", "Recipe", "TrainHooks", "accuracy", "fit", "get_recipe", "train"]


@dataclass(frozen=True)
class Recipe:
    """A named way to train a software reference model."""

    name: str
    epochs: int
    """Epochs; the cosine schedule spans them and ends at a learning rate of zero."""
    lr: float
    """Adam peak learning rate."""
    batch_size: int
    keep_best: bool
    """Keep the epoch with the best validation accuracy (the starting weights included)."""
    description: str
    augment: bool = False
    """Train on the dataset's standard augmentation (:attr:`ittrna.data.DatasetSpec.augmentation`)."""

    def augmentation(self, dataset: str) -> Augmentation | None:
        """What :func:`fit` is given as ``augment`` for ``dataset`` (None: this recipe does not augment)."""
        from ittrna.data import DATASETS

        return DATASETS[dataset].augmentation if self.augment else None


_BUILTIN_RECIPES: dict[str, Recipe] = {
    "converged": Recipe(
        "converged", 30, 1e-3, 64, True,
        "Adam at 1e-3, batch 64, 30 epochs of cosine decay to zero, the best-validation epoch kept. Converged: a "
        "60-epoch schedule improves the kept validation accuracy of no zoo model by more than 0.05 pp "
        "(benchmarks/convergence.py, records in docs/results/convergence.jsonl)."),
    "converged-augmented": Recipe(
        "converged-augmented", 30, 1e-3, 128, True,
        "For the BatchNorm CNNs (resnet20, mobilenet-tiny): Adam at 1e-3, batch 128, 30 epochs of cosine decay to "
        "zero, the best-validation epoch kept, on the dataset's standard augmentation (random crop after 2-pixel "
        "zero padding, 4 for 32x32 images; left-right flips except for MNIST digits). Checked like 'converged' "
        "(benchmarks/convergence.py): not yet shown converged; mobilenet-tiny gains 0.70 pp from 60 epochs "
        "(docs/REPRODUCTION.md).",
        augment=True),
}
RECIPES: Registry[Recipe] = _registry.RECIPES
"""Training recipes by name (``ittrna train --recipe``, a sweep's ``[train] recipe``): the registry of
:mod:`ittrna.registry`."""
for _name, _recipe in _BUILTIN_RECIPES.items():
    RECIPES.register(_name, _recipe, home=__name__)

RECIPE_FIELDS = ("epochs", "lr", "batch_size", "patience")
"""The training settings a recipe fixes (given beside it, they are an error)."""


def get_recipe(name: object, given: Iterable[str], where: str) -> Recipe:
    """The recipe ``name``, checked against the settings ``given`` beside it (``where``: how they are spelled,
    e.g. ``--`` or ``train.``). The one rule for the command line and sweep configs.

    Raises:
        InputError: an unknown name, or a setting the recipe fixes given too.
    """
    if not isinstance(name, str) or name not in RECIPES:
        raise InputError(f"recipe {name!r} is unknown; accepted one of {sorted(RECIPES)}")
    clash = [f for f in RECIPE_FIELDS if f in set(given)]
    if clash:
        shown = f"{where}{clash[0]}".replace("--batch_size", "--batch-size")
        raise InputError(f"{shown} is set by recipe {name!r}; give one or the other")
    return RECIPES[name]


def _device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (CPU for a parameter-free model)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def accuracy(model: nn.Module, data: Split, *, batch_size: int = 2000) -> float:
    """Fraction of ``data`` that ``model`` classifies correctly, in [0, 1].

    Raises:
        InputError: ``data`` is empty (its accuracy is undefined).
    """
    check_nonempty_split(data)
    was_training = model.training
    model.eval()
    device = _device(model)
    correct = 0
    for x, y in data.batches(batch_size):
        correct += int((model(x.to(device)).argmax(dim=1) == y.to(device)).sum())
    model.train(was_training)
    return correct / max(len(data), 1)


@dataclass
class TrainHooks:
    """Callbacks into :func:`fit`'s loop (methods extend the one loop rather than copying it)."""

    before_epoch: Callable[[int], None] | None = None
    """Called with the epoch index before each epoch (e.g. freeze the next group of weights)."""
    after_step: Callable[[int], None] | None = None
    """Called with the global step index after each optimiser step."""
    frozen: tuple[type[nn.Module], ...] = ()
    """Module types kept in eval mode while the rest trains (the chip-in-the-loop methods freeze BatchNorm's
    statistics and Dropout, so the host model computes what the chip, run in eval mode, computes)."""


@dataclass
class FitReport:
    """What a :func:`fit` run did."""

    epochs: int = 0
    """Epochs run (fewer than asked when early stopping triggered)."""
    best_epoch: int = -1
    """Epoch whose weights were kept (-1: the initial weights, or no validation)."""
    val_history: list[float] = field(default_factory=list)
    """Validation accuracy before training (first entry) and after each epoch; empty without ``val``."""
    seconds: float = 0.0


def fit(
    model: nn.Module,
    data: Split,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    params: Iterable[nn.Parameter] | None = None,
    val: Split | None = None,
    patience: int | None = None,
    hooks: TrainHooks | None = None,
    progress: bool = True,
    desc: str = "train",
    teacher: nn.Module | None = None,
    distill: float = 0.0,
    temperature: float = 1.0,
    resume: Path | None = None,
    augment: Augmentation | None = None,
) -> FitReport:
    """Train ``model`` in place with Adam (cosine-annealed learning rate) and cross-entropy; deterministic
    for a given seed on CPU. Methods reuse this loop with parametrizations (e.g. a chip model in the forward
    pass), a subset of parameters and hooks.

    Args:
        model: the network (modified in place).
        data: training split.
        epochs, lr, batch_size, seed, patience: as :class:`~ittrna.config.TrainConfig` states and checks them
            (epochs [0, 100000], lr (0, 10], batch_size [1, 1e6], seed [0, 2**63 - 1], patience [1, 1000]).
        params: parameters to optimise (default: every parameter that requires grad).
        val: validation split; when given, accuracy is measured before training and after every epoch and
            the best weights are restored at the end (ties keep the earlier, fewer-epoch weights).
        hooks: callbacks into the loop.
        progress: show a progress bar.
        desc: progress-bar label.
        teacher: a network whose logits the model learns to match (knowledge distillation, Hinton et al.
            2015); run in eval mode without gradients. Retraining methods pass the software model: a model that
            already reproduces it (a healthy chip) then gets no gradient from that term and stays as it is.
        distill: weight of the distillation term in [0, 1]; the loss is (1 - distill) * cross-entropy on the
            labels + distill * T^2 * KL(teacher || model) at temperature T. Needs ``teacher`` when > 0.
        temperature: T, accepted (0, 100].
        resume: a file where the loop's whole state (weights, optimiser, schedule, shuffling and global random
            state, best epoch) is written atomically after every epoch; when it exists at the start, training
            continues from it, and the result is bit for bit that of an uninterrupted run. The caller removes
            it when done. Its settings must be this call's (else an error naming the first that differs).
        augment: augment every training batch (random crops and flips drawn from the loop's generator;
            :class:`~ittrna.data.Augmentation`); None: train on the images as they are.

    Raises:
        InputError: a hyper-parameter outside its accepted range, or empty training data.
    """
    TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, patience=patience)  # the ranges' owner
    if epochs > 0:
        check_nonempty_split(data, "training data")
    if isinstance(distill, bool) or not isinstance(distill, (int, float)) or not 0 <= distill <= 1:
        raise InputError(f"distill = {distill!r} is invalid; accepted a number in [0, 1]")
    if distill > 0 and teacher is None:
        raise InputError("distill > 0 needs a teacher model")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature <= 100:
        raise InputError(f"temperature = {temperature!r} is invalid; accepted a number in (0, 100]")
    t0 = time.perf_counter()
    hooks = hooks or TrainHooks()
    gen = torch.Generator().manual_seed(seed)
    device = _device(model)
    chosen = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    report = FitReport()
    if not chosen or epochs == 0:
        if val is not None:
            report.val_history.append(accuracy(model, val))
        report.seconds = time.perf_counter() - t0
        model.eval()
        return report
    opt = torch.optim.Adam(chosen, lr=lr)
    steps = epochs * -(-len(data) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    loss_fn = _loss(teacher if distill > 0 else None, float(distill), float(temperature))
    best_state: dict[str, torch.Tensor] | None = None
    best = -1.0
    if val is not None:
        best = accuracy(model, val)
        report.val_history.append(best)
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    since_best = 0
    step = 0
    start = 0
    settings = {"epochs": epochs, "lr": float(lr), "batch_size": batch_size, "seed": seed, "examples": len(data),
                "patience": patience, "validated": val is not None,
                "augment": None if augment is None else [augment.pad, augment.flip]}
    if resume is not None and resume.exists():
        saved = _load_resume(resume, settings)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["schedule"])
        gen.set_state(saved["generator"])
        torch.random.set_rng_state(saved["global_rng"])
        start, step, best, since_best = saved["epoch"], saved["step"], saved["best"], saved["since_best"]
        best_state = saved["best_state"] or None
        report.val_history, report.best_epoch, report.epochs = list(saved["val_history"]), saved["best_epoch"], start
    model.train()
    with tqdm(total=steps, initial=step, desc=desc, unit="batch", disable=None if progress else True,
              leave=False) as bar:
        for epoch in range(start, epochs):
            if hooks.before_epoch is not None:
                hooks.before_epoch(epoch)
            model.train()
            for module in model.modules():
                if hooks.frozen and isinstance(module, hooks.frozen):
                    module.eval()
            for x, y in data.batches(batch_size, generator=gen):
                opt.zero_grad(set_to_none=True)
                xb = x.to(device) if augment is None else augment.apply(x, gen).to(device)
                loss = loss_fn(model(xb), y.to(device), xb)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                if hooks.after_step is not None:
                    hooks.after_step(step)
                bar.update(1)
            report.epochs = epoch + 1
            postfix = {"epoch": epoch + 1, "loss": f"{loss.item():.3f}"}
            if val is not None:
                acc = accuracy(model, val)
                report.val_history.append(acc)
                postfix["val"] = f"{100 * acc:.2f}"
                if acc > best:
                    best, since_best, report.best_epoch = acc, 0, epoch
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    since_best += 1
            bar.set_postfix(postfix)
            stop = patience is not None and since_best >= patience
            if resume is not None:
                _save_resume(resume, {"settings": settings, "epoch": epochs if stop else epoch + 1, "step": step,
                                      "model": model.state_dict(), "optimizer": opt.state_dict(),
                                      "schedule": sched.state_dict(), "generator": gen.get_state(),
                                      "global_rng": torch.random.get_rng_state(), "best": best,
                                      "since_best": since_best, "best_state": best_state or {},
                                      "val_history": list(report.val_history), "best_epoch": report.best_epoch})
            if stop:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    report.seconds = time.perf_counter() - t0
    return report


def _save_resume(path: Path, state: dict[str, Any]) -> None:
    from ittrna._io import atomic_write

    atomic_write(path, lambda tmp: torch.save({"format": 1, **state}, tmp))


def _load_resume(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """An interrupted run's state (pickle-free: loaded with ``weights_only``), its settings checked."""
    from ittrna._io import load_torch

    saved = load_torch(path, "an interrupted training of ittrna")
    if not isinstance(saved, dict) or saved.get("format") != 1 or not isinstance(saved.get("settings"), dict):
        raise FileFormatError(f"{path}: not an interrupted training of ittrna")
    for key, value in settings.items():
        if saved["settings"].get(key) != value:
            raise InputError(f"{path} is an interrupted training with {key} = {saved['settings'].get(key)!r}, "
                             f"this one has {value!r}; resume it with the same settings or remove it")
    return saved


def _loss(teacher: nn.Module | None, distill: float, temperature: float
          ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(logits, labels, inputs)``: cross-entropy, mixed with distillation from ``teacher``'s logits."""
    ce = nn.CrossEntropyLoss()
    if teacher is None:
        return lambda logits, y, _x: ce(logits, y)
    teacher.eval()
    t = temperature

    def loss(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = torch.log_softmax(teacher(x) / t, dim=1)  # (B, classes)
        kd = nn.functional.kl_div(torch.log_softmax(logits / t, dim=1), target, reduction="batchmean",
                                  log_target=True) * (t * t)
        return kd if distill == 1.0 else (1 - distill) * ce(logits, y) + distill * kd

    return loss


def train(
    model: nn.Module,
    data: Split,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` in place (see :func:`fit`, without validation) and return it."""
    fit(model, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
    return model
