"""What a sweep worker runs: train a software model, or evaluate one point — pure functions of their
arguments (plus per-process caches of data and models), so the local and Ray backends differ only in who
runs them, and the same point gives the same record anywhere."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import torch

from ittrna.data import Split
from ittrna.experiments.grid import DataSettings, ModelSource, Point, method_seed
from ittrna.methods import METHODS

__all__ = ["ModelPayload", "evaluate_point", "package_version", "payload_model", "train_model",
           "weights_sha256"]

ModelPayload = dict[str, Any]
"""``{"sha256", "meta", "state_dict"}``: a software model as it travels to workers."""

_SPLITS: dict[tuple[str, str, str | None, int | None], Split] = {}
_MODELS: dict[str, torch.nn.Module] = {}
_RUNS: dict[str, Any] = {}
"""Per process, the last method runs (:class:`~ittrna.experiments.tolerate.MethodRun`) by the point's identity
without what happens after programming: the points of a time, compensation or refresh axis run their method
once per worker (each evaluated on a copy, so a run stays as the method left it)."""
_RUNS_KEPT = 2


def package_version() -> str:
    """The installed ittrna version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ittrna")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of the weights (names, dtypes, shapes and values in name order): a model's identity."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def split(dataset: str, which: str, data: DataSettings) -> Split:
    """One split with the sweep's size limit, cached per process."""
    from ittrna.data import load

    size = {"train": data.train_size, "val": data.val_size, "test": data.test_size}[which]
    key = (dataset, which, data.dir, size)
    if key not in _SPLITS:
        full = load(dataset, which, data_dir=data.dir)
        _SPLITS[key] = full.subset(size) if size is not None else full
    return _SPLITS[key]


def train_model(source: ModelSource, data: DataSettings, threads: int = 1) -> ModelPayload:
    """Train ``source``'s model in software (as ``ittrna train`` does) and return it as a payload."""
    from ittrna.data import DATASETS
    from ittrna.models import build
    from ittrna.training import RECIPES, accuracy, fit

    assert source.train is not None
    torch.set_num_threads(threads)
    t = source.train
    spec = DATASETS[source.dataset]
    model = build(source.build_ref(), spec.in_shape, spec.num_classes, seed=t.seed)
    val = split(source.dataset, "val", data)
    rep = fit(model, split(source.dataset, "train", data), epochs=t.epochs, lr=t.lr, batch_size=t.batch_size,
              seed=t.seed, val=val if t.keep_best else None, patience=t.patience, progress=False,
              augment=RECIPES[t.recipe].augmentation(source.dataset) if t.recipe is not None else None)
    meta = {"model": source.model, **({"definition": json.loads(source.definition)} if source.definition else {}),
            "dataset": source.dataset, "in_shape": list(spec.in_shape),
            "num_classes": spec.num_classes, **{k: v for k, v in t.to_dict().items()},
            "val_accuracy": accuracy(model, val), "epochs_run": rep.epochs, "best_epoch": rep.best_epoch + 1,
            "train_size": data.train_size, "torch": str(torch.__version__)}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"sha256": weights_sha256(state), "meta": meta, "state_dict": state}


def payload_model(payload: ModelPayload) -> torch.nn.Module:
    """The model of a payload (cached per process by its sha256)."""
    from ittrna.models import build, model_ref

    sha = payload["sha256"]
    if sha not in _MODELS:
        meta = payload["meta"]
        # a payload is the sweep's own training, or a checkpoint loaded (and its definition vetted) by the parent
        model = build(model_ref(meta, vetted=True), tuple(meta["in_shape"]), int(meta["num_classes"]))
        model.load_state_dict(payload["state_dict"])
        model.eval()
        _MODELS[sha] = model
    return _MODELS[sha]


def evaluate_point(point: Point, key: str, data: DataSettings, payload: ModelPayload,
                   threads: int = 1) -> dict[str, Any]:
    """Fabricate the point's chip, run its method through :func:`~ittrna.experiments.tolerate.tolerate`
    (test, tune, program, measure) and return the flat record."""
    from ittrna.chip import Chip
    from ittrna.config import ChipConfig, RefreshConfig
    from ittrna.experiments.tolerate import evaluate_run, run_method

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = payload_model(payload)
    ds = point.source.dataset
    train, test = split(ds, "train", data), split(ds, data.split, data)
    run_key = json.dumps([payload["sha256"], data.identity(ds), point.method_content()], sort_keys=True)
    run = _RUNS.get(run_key)
    if run is None:
        chip = Chip.fabricate(model, ChipConfig.from_dict(point.chip), point.chip_seed)
        known = METHODS[point.method].config.settings_from_identity(point.method_settings)  # _added values back
        settings = {f"method.{k}": v for k, v in known.items()}
        run = run_method(model, chip, point.method, train=train, val=split(ds, "val", data), settings=settings,
                         test_seed=point.chip_seed, seed=method_seed(point.chip_seed))
        if _RUNS_KEPT > 0:
            while len(_RUNS) >= _RUNS_KEPT:
                _RUNS.pop(next(iter(_RUNS)))
            _RUNS[run_key] = run
    result = evaluate_run(model, run, train=train, test=test, time=point.time, compensation=point.compensation,
                          refresh=RefreshConfig(budget=point.refresh) if point.refresh else None,
                          seed=method_seed(point.chip_seed), in_place=False)
    val_acc = result.get("report", {}).get("val_accuracy")
    record: dict[str, Any] = {
        "key": key,
        **point.columns,
        "software_accuracy": float(result["ideal_accuracy"]),
        "chip_accuracy_before": float(result["chip_accuracy_before"]),
        "chip_accuracy": float(result["chip_accuracy"]),
        "writes": int(result["writes"]),
        "writes_performed": int(result.get("writes_performed", 0)),
        "max_writes_per_cell": int(result.get("max_writes_per_cell", 0)),
        "cells_worn_out": int(result.get("cells_worn_out", 0)),
        "fraction_cells_written": float(result.get("fraction_cells_written", 0.0)),
        "iterations": int(result.get("iterations", 0)),
        "forward_passes": int(result.get("forward_passes", 0)),
        "ondevice_writes": int(result.get("ondevice_writes", 0)),
        "val_accuracy": float(val_acc) if isinstance(val_acc, (int, float)) else None,
        "seconds": float(result["seconds"]),
        "wall_seconds": time.perf_counter() - t0,
        "method_version": int(result["version"]),
        "ittrna_version": package_version(),
        "torch_version": str(torch.__version__),
        "model_sha256": payload["sha256"],
    }
    for field in ("compensation_writes", "compensation_forward_passes", "refresh_writes", "refresh_full_writes"):
        if field in result:  # only where the point compensates or refreshes (records of before unchanged)
            record[field] = int(result[field])
    return record
