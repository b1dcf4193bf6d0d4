"""Sweeps: every point of a :class:`~ittrna.experiments.grid.SweepSpec` evaluated once, resumably.

The driver (this module) validates everything, trains the software models (once per model, dataset and
training settings, cached in ``DIR/models/``), keys every point by its full content, skips the points the
store holds, hands the rest to a backend (local or Ray) and appends each record as it arrives: it is the
store's only writer. Killing it at any moment and running the same command again ends with every point once
and the same numbers (a point is a pure function of its content)."""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ittrna.errors import InputError
from ittrna.experiments.backends import Backend, LocalBackend
from ittrna.experiments.grid import DataSettings, ModelSource, SweepSpec, point_key
from ittrna.experiments.points import ModelPayload, evaluate_point, payload_model, train_model, weights_sha256
from ittrna.experiments.store import ResultStore

__all__ = ["SweepOutcome", "collapse_rows", "run_spec"]


@dataclass
class SweepOutcome:
    """What a sweep did."""

    records: list[dict[str, Any]]
    """The records of the spec's points, in grid order."""
    computed: int = 0
    """Points computed by this run (the rest were stored)."""
    trained: list[str] = field(default_factory=list)
    """Model checkpoints trained by this run."""
    set_aside: Path | None = None
    """Where a partial last line found in the store was moved."""


def _check_data(spec: SweepSpec) -> None:
    """Load every split the sweep reads (errors before any output; fills this process's cache)."""
    from ittrna.experiments.points import split

    for ds in dict.fromkeys(p.source.dataset for p in spec.points):
        for which in ("train", "val", spec.data.split):
            data = split(ds, which, spec.data)
            if len(data) == 0:
                raise InputError(f"{ds}/{which} has no images with the sweep's data settings")


def _file_payload(source: ModelSource) -> ModelPayload:
    from ittrna.experiments.tolerate import load_tuned

    assert source.path is not None
    model, meta, deployment = load_tuned(source.path)
    if deployment is not None:
        raise InputError(f"{source.path} is tuned for one chip; a sweep fabricates new chips: give it the software "
                         "checkpoint")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"sha256": weights_sha256(state), "meta": dict(meta), "state_dict": state}


def _cached_payload(path: Path) -> ModelPayload:
    from ittrna.models import load_checkpoint

    model, meta = load_checkpoint(path)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"sha256": weights_sha256(state), "meta": dict(meta), "state_dict": state}


def model_file(folder: Path, source: ModelSource, data: DataSettings) -> Path:
    """Where the sweep caches the model it trains for ``source`` on ``data`` (its name holds a hash of the
    training settings and of the training/validation sizes)."""
    sizes = json.dumps([data.train_size, data.val_size])
    return folder / "models" / f"{source.ref}-{hashlib.sha256(sizes.encode()).hexdigest()[:8]}.pt"


def _models(spec: SweepSpec, folder: Path, backend: Backend, progress: bool) -> tuple[dict[str, ModelPayload],
                                                                                      list[str]]:
    """Payload per model source: a given checkpoint, one cached in ``folder/models``, or trained now (on
    the backend, in parallel) and cached."""
    from ittrna.models import save_checkpoint

    payloads: dict[str, ModelPayload] = {}
    to_train: list[ModelSource] = []
    for source in spec.sources:
        if source.path is not None:
            payloads[source.ref] = _file_payload(source)
        elif model_file(folder, source, spec.data).exists():
            payloads[source.ref] = _cached_payload(model_file(folder, source, spec.data))
        else:
            to_train.append(source)
    trained = []
    if to_train:
        (folder / "models").mkdir(parents=True, exist_ok=True)
        jobs = [(s, spec.data) for s in to_train]
        bar = tqdm(total=len(jobs), desc="train", unit="model", disable=None if progress else True)
        for i, payload in backend.run(train_model, jobs):
            path = model_file(folder, to_train[i], spec.data)
            save_checkpoint(path, payload_model(payload), payload["meta"])
            payloads[to_train[i].ref] = payload
            trained.append(str(path))
            bar.update(1)
        bar.close()
    return payloads, trained


def run_spec(spec: SweepSpec, out: str | Path, *, backend: Backend | None = None,
             progress: bool = True) -> SweepOutcome:
    """Evaluate every point of ``spec`` not yet in ``out/results.jsonl``.

    Raises:
        InputError: bad data or model files, a stored record that is invalid, another writer at work.
    """
    if not spec.points:
        raise InputError("the sweep has no points; accepted a grid with at least one value per axis")
    folder = Path(out)
    models = folder / "models"  # where the sweep keeps its trained models: a file there is refused first
    if models.exists() and not models.is_dir():
        raise InputError(f"{models} is a file; the sweep keeps its trained models in a folder there (move the file "
                         "or choose another --out)")
    store = ResultStore(folder)
    store.read()  # a broken store is refused before anything is written
    _check_data(spec)
    backend = backend or LocalBackend()
    with store.open_writer():
        if spec.title:
            from ittrna._io import atomic_write_text

            atomic_write_text(folder / "sweep.json", json.dumps({"title": spec.title}, indent=2) + "\n")
        payloads, trained = _models(spec, folder, backend, progress)
        keyed = [(p, point_key(p, payloads[p.source.ref]["sha256"], spec.data)) for p in spec.points]
        keyed = list({k: (p, k) for p, k in keyed}.values())
        stored = store.keys()
        todo = [(p, k) for p, k in keyed if k not in stored]
        shared = {ref: backend.share(pl) for ref, pl in payloads.items()}
        jobs = [(p, k, spec.data, shared[p.source.ref]) for p, k in todo]
        bar = tqdm(total=len(keyed), initial=len(keyed) - len(todo), desc="sweep", unit="point",
                   disable=None if progress else True)
        for _, record in backend.run(evaluate_point, jobs):
            store.append(record)
            bar.update(1)
        bar.close()
        by_key = {r["key"]: r for r in store}
        records = [by_key[k] for _, k in keyed]
        return SweepOutcome(records, len(todo), trained, store.set_aside)


def collapse_rows(records: Sequence[dict[str, Any]], saf_rates: Sequence[float],
                  sigmas: Sequence[float]) -> list[dict[str, Any]]:
    """The flag form's summary: per SAF rate (at sigma 0) and per sigma (no faults), mean, std (sample, 0
    for one chip), min and count of the chip accuracy over chips. A point on both curves counts on both."""
    rows = []
    for axis, values, other in (("saf_rate", saf_rates, "sigma"), ("sigma", sigmas, "saf_rate")):
        for value in dict.fromkeys(float(v) for v in values):
            accs = [float(r["chip_accuracy"]) for r in records
                    if float(r[axis]) == value and float(r[other]) == 0.0]
            if not accs:
                continue
            rows.append({"axis": axis, "value": value, "chips": len(accs), "mean": statistics.fmean(accs),
                         "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "min": min(accs)})
    return rows


def flag_data(split: str, data_dir: str | None) -> DataSettings:
    """Data settings of the flag form (whole splits)."""
    return DataSettings(split=split, dir=data_dir)


DEFAULT_SAF_RATES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
"""The flag form's SAF curve (sigma 0)."""
DEFAULT_SIGMAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
"""The flag form's variation curve (no faults)."""


@dataclass
class CollapseStudy:
    """What :func:`collapse_study` measured and wrote."""

    rows: list[dict[str, Any]]
    """Per curve point: axis, value, chips, mean and std of the chip accuracy."""
    ideal: float
    """The software accuracy."""
    text: str
    """The table as the CLI prints it."""


def collapse_study(model_path: str | Path, base: Any, out: str | Path, *, saf_rates: Sequence[float] | None = None,
                   sigmas: Sequence[float] | None = None, seeds: Sequence[int] = range(5), split: str = "test",
                   data_dir: str | Path | None = None, backend: Backend | None = None,
                   progress: bool = False) -> CollapseStudy:
    """The collapse curves of a software checkpoint (``ittrna sweep --model``): plain programming (``none``)
    on chips of ``base`` with each SAF rate (sigma 0) and each sigma (no faults), ``seeds`` chips per point,
    through the sweep machinery (resumable store in ``out``), then ``summary.csv``, ``summary.json`` and
    ``collapse.png`` there.

    Raises:
        InputError: a tuned file instead of a software checkpoint, a checkpoint for an unknown dataset, or a chip
            config the model does not fit.
    """
    from ittrna._io import atomic_write_text
    from ittrna.chip.state import check_fabricate
    from ittrna.config import ChipConfig
    from ittrna.experiments.grid import collapse_spec
    from ittrna.experiments.report import format_table, plot_collapse, write_csv
    from ittrna.experiments.tolerate import load_tuned

    out = Path(out)
    rates = list(saf_rates) if saf_rates is not None else list(DEFAULT_SAF_RATES)
    sigmas_ = list(sigmas) if sigmas is not None else list(DEFAULT_SIGMAS)
    seeds = list(seeds)
    from ittrna.data import dataset_of

    model, meta, deployment = load_tuned(model_path)
    if deployment is not None:
        raise InputError(f"{model_path} is tuned for one chip; a sweep fabricates new chips: give it the software "
                         "checkpoint")
    dataset_of(meta, str(model_path))
    spec = collapse_spec(str(model_path), meta, base, rates, sigmas_, seeds,
                         flag_data(split, str(data_dir) if data_dir else None))
    for cfg in dict.fromkeys(json.dumps(p.chip, sort_keys=True) for p in spec.points):
        check_fabricate(model, ChipConfig.from_dict(json.loads(cfg)), seeds[0])
    outcome = run_spec(spec, out, backend=backend, progress=progress)
    rows = collapse_rows(outcome.records, rates, sigmas_)
    ideal = float(outcome.records[0]["software_accuracy"])
    write_csv(out / "summary.csv", rows)
    summary = {"model": meta["model"], "dataset": meta["dataset"], "split": split, "ideal_accuracy": ideal,
               "chips": len(seeds), "first_seed": seeds[0], "base_config": base.to_json_dict(), "rows": rows}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    title = f"{meta['model']} on {meta['dataset']}: accuracy on imperfect chips ({len(seeds)} chips per point)"
    plot_collapse(out / "collapse.png", rows, title=title, ideal=ideal)
    text = (f"{meta['model']} on {meta['dataset']} ({split}); software accuracy {100 * ideal:.2f}%\n"
            + format_table(rows, ideal) + f"\nresults: {out}/summary.csv, plot: {out}/collapse.png")
    return CollapseStudy(rows, ideal, text)
