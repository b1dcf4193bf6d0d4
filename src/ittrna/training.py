"""Software (ideal, digital) training and accuracy measurement of reference networks."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ittrna._validate import check_nonempty_split, check_seed
from ittrna.data import Split
from ittrna.errors import InputError

__all__ = ["accuracy", "train"]


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
    """Train ``model`` in place with Adam (cosine-annealed learning rate) and cross-entropy; deterministic
    for a given seed on CPU.

    Args:
        model: the network (modified in place and returned).
        data: training split.
        epochs: passes over ``data``; accepted >= 0.
        lr: Adam learning rate; accepted (0, 10].
        batch_size: mini-batch size; accepted >= 1.
        seed: seeds the private generator that shuffles the mini-batches; accepted [0, 2**63 - 1].
        progress: show a progress bar.

    Raises:
        InputError: a hyper-parameter outside its accepted range, or empty training data.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise InputError(f"epochs = {epochs!r} is invalid; accepted an integer >= 0")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 10:
        raise InputError(f"lr = {lr!r} is invalid; accepted a number in (0, 10]")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size = {batch_size!r} is invalid; accepted an integer >= 1")
    check_seed(seed)
    if epochs > 0:
        check_nonempty_split(data, "training data")
    gen = torch.Generator().manual_seed(seed)
    device = _device(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(data) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    with tqdm(total=steps, desc="train", unit="batch", disable=None if progress else True, leave=False) as bar:
        for epoch in range(epochs):
            for x, y in data.batches(batch_size, generator=gen):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x.to(device)), y.to(device))
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    model.eval()
    return model
