"""Sweep configs: a TOML grid (model x dataset x chip settings x method x chip seed), validated whole before
any work, expanded into :class:`Point` s whose identity is their full content.

Schema (every key, default and range: ``docs/experiments.md``)::

    title = "optional report title"

    [grid]                      # axes: lists (a scalar is a one-value list); the points are their product
    model = ["mlp"]             # required: names of ittrna.models.MODELS, FILE.py:FUNCTION, or checkpoints (*.pt)
    dataset = ["mnist"]         # required: names of ittrna.data.DATASETS
    method = ["none", "remap"]  # default ["none"]: names of ittrna.methods.METHODS
    chip_seed = [1, 2]          # required: fabrication seeds (also the chip test's and the method's seed)
    saf_rate = [0.0, 0.1]       # chip axes by short name (CHIP_AXES) or any dotted field ("cell.levels")
    [[grid.part]]               # optional: the grid is the union of one product per part; a part's axes
    sigma = [0.0, 1.0]          #   replace the [grid] axes of the same name

    [train]                     # software models, trained once per (model, dataset, these settings)
    epochs = 5
    [data]                      # train_size/val_size/test_size (first N images), split, dir
    [chip]                      # shared chip settings: preset, config (file), short names, dotted fields
    [methods.fat]               # method settings; a list makes an axis for points of that method
    epochs = [1, 3]
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - exercised on Python 3.10 only
    pass

from ittrna.config import MAX_CONFIG_BYTES, MAX_SEED, ChipConfig, TrainConfig, _Section, parse_time
from ittrna.errors import ConfigError

__all__ = [
    "CHIP_AXES",
    "DataSettings",
    "ModelSource",
    "Point",
    "SweepSpec",
    "TrainSettings",
    "load_spec",
    "method_seed",
    "parse_spec",
    "point_key",
]

MAX_POINTS = 1_000_000
"""Most points one sweep may hold (a larger grid is almost surely a mistake)."""

#: Short grid names of chip settings -> dotted config fields.
CHIP_AXES: dict[str, str] = {
    "saf_rate": "faults.rate",
    "sigma": "variation.sigma",
    "pattern": "faults.pattern",
    "stuck_on_share": "faults.stuck_on_share",
    "program_noise": "variation.program_noise",
    "read_noise": "variation.read_noise",
    "miss_rate": "test.miss_rate",
    "theta_noise": "test.theta_noise",
}
_NAMED_AXES = ("model", "dataset", "method", "chip_seed", "time", "compensation", "refresh")
_TOP_KEYS = ("title", "grid", "train", "data", "chip", "methods")


@dataclass(frozen=True)
class TrainSettings:
    """How a software model is trained (``ittrna train``'s options)."""

    epochs: int = 5
    seed: int = 0
    lr: float = 1e-3
    batch_size: int = 64
    patience: int | None = None
    recipe: str | None = None
    """A named recipe (:data:`ittrna.training.RECIPES`): its epochs, learning rate and batch size, and the
    best-validation epoch kept. None: the fields above, the last epoch kept (or the best with ``patience``)."""

    @property
    def keep_best(self) -> bool:
        """Whether validation selects the kept epoch."""
        return self.patience is not None or self.recipe is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epochs": self.epochs, "seed": self.seed, "lr": self.lr, "batch_size": self.batch_size,
               "patience": self.patience}
        if self.recipe is not None:  # absent otherwise: the models of earlier stores keep their identity
            out["recipe"] = self.recipe
        return out


@dataclass(frozen=True)
class DataSettings(_Section):
    """Which data the models train on and the points are judged on (a sweep's ``[data]`` table)."""

    _section: ClassVar[str] = "data"

    train_size: int | None = None
    """First N training images (None: the whole training split). Accepted None or [1, 1e9]."""
    val_size: int | None = None
    """First N validation images (None: all). Accepted None or [1, 1e9]."""
    test_size: int | None = None
    """First N test images (None: all). Accepted None or [1, 1e9]."""
    split: str = "test"
    """Split the chip accuracy is measured on: ``test`` (final numbers) or ``val``."""
    dir: str | None = None
    """Dataset folder (None: the cache; required for cifar10)."""

    def __post_init__(self) -> None:
        for name in ("train_size", "val_size", "test_size"):
            self._int_range(name, 1, 10**9, optional=True)
        self._choice("split", ("test", "val"))
        if self.dir is not None and not isinstance(self.dir, str):
            raise ConfigError(f"data.dir = {self.dir!r} is invalid; accepted a folder path (string)")

    def identity(self, dataset: str) -> dict[str, Any]:
        """What identifies the data of a point (the folder is where, not what: left out)."""
        return {"dataset": dataset, "train_size": self.train_size, "val_size": self.val_size,
                "test_size": self.test_size, "split": self.split}


@dataclass(frozen=True)
class ModelSource:
    """Where a point's software model comes from: trained by the sweep, or a checkpoint file."""

    model: str
    dataset: str
    train: TrainSettings | None = None
    """Training settings (None for a checkpoint file)."""
    path: str | None = None
    """Checkpoint file (None for a model the sweep trains)."""
    definition: str | None = None
    """A user's own network (:class:`~ittrna.models.Definition` as canonical JSON, its file's sha256
    included), for a ``model`` given as ``FILE.py:FUNCTION``; None for a zoo name."""

    @property
    def ref(self) -> str:
        """A stable name for the cached checkpoint / the source (a definition's hash included: an edited
        definition file is another model)."""
        content: dict[str, Any] = {"model": self.model, "dataset": self.dataset,
                                   "train": self.train.to_dict() if self.train else None, "path": self.path}
        if self.definition is not None:
            content["definition"] = self.definition
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]
        if self.definition is not None:  # a file-name-safe label: the function's name
            return f"def-{json.loads(self.definition)['function']}-{self.dataset}-{digest}"
        return f"{self.model}-{self.dataset}-{digest}"

    def build_ref(self) -> Any:
        """What :func:`ittrna.models.build` builds this source from: the zoo name or the definition."""
        if self.definition is None:
            return self.model
        from ittrna.models import Definition

        return Definition.from_dict(json.loads(self.definition), f"model {self.model}")


@dataclass(frozen=True)
class Point:
    """One chip run: a model source, a chip config, a method with its settings and a chip seed.

    ``columns`` are the flat record fields that describe the point (grid keys by name, e.g. ``saf_rate``);
    the identity (:func:`point_key`) is the content, never these labels.
    """

    source: ModelSource
    chip: dict[str, Any]
    """The full chip config (``ChipConfig.to_json_dict()``), test imperfections included."""
    method: str
    method_settings: dict[str, Any]
    """The method's full settings (defaults filled in)."""
    method_version: int
    chip_seed: int
    columns: dict[str, Any] = field(default_factory=dict)
    method_bases: dict[str, int] = field(default_factory=dict)
    """The methods this one builds on, with their versions (:func:`ittrna.methods.base.lineage`)."""
    time: float = 0.0
    """Seconds after programming at which the chip is evaluated (the grid's ``time`` axis)."""
    compensation: tuple[str, ...] = ()
    """Zero-write compensation steps run at ``time`` (the grid's ``compensation`` axis)."""
    refresh: float = 0.0
    """Budget of a refresh at ``time`` (a fraction of the writes of re-programming the whole chip; 0: none;
    the grid's ``refresh`` axis)."""

    def later(self) -> dict[str, Any]:
        """What happens after programming, for the identity: absent at its default (keys unchanged)."""
        out: dict[str, Any] = {}
        if self.time:
            out["time"] = self.time
        if self.compensation:
            out["compensation"] = list(self.compensation)
        if self.refresh:
            out["refresh"] = self.refresh
        return out

    def method_content(self) -> dict[str, Any]:
        """Everything but the model's weights and what happens after programming: points equal in it share
        one run of the method (what is measured later differs)."""
        return {"source": self.source.ref, "chip": self.chip, "method": self.method,
                "settings": self.method_settings, "version": self.method_version, "seed": self.chip_seed,
                "bases": self.method_bases}

    def content(self) -> str:
        """Canonical JSON of everything but the model's weights (dedupes repeated grid values)."""
        ident = {k: v for k, v in self.method_content().items() if k != "bases"}
        ident.update(self.later())  # absent at 0: points without these axes keep their identity
        return json.dumps(ident, sort_keys=True)


def method_seed(chip_seed: int) -> int:
    """The seed of a point's method, derived from its chip seed through a stream of its own (sha256), so that a
    method's randomness (shuffling, injected noise) is never the chip's fabrication stream; in [0, 2**63 - 1]."""
    digest = hashlib.sha256(f"ittrna/method-seed/{int(chip_seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def point_key(point: Point, model_sha256: str, data: DataSettings) -> str:
    """Identity of a point: model weights (sha256), data, full chip config (test config included), method
    name, settings and version, and the seeds. Two points share a key only if they compute the same thing."""
    ident = {"model_sha256": model_sha256, "data": data.identity(point.source.dataset),
             "chip": point.chip, "method": point.method, "settings": point.method_settings,
             "method_version": point.method_version, "chip_seed": point.chip_seed,
             "test_seed": point.chip_seed, "method_seed": method_seed(point.chip_seed)}
    if point.method_bases:  # a composed method: its bases' versions too (absent for the others: keys unchanged)
        ident["method_bases"] = point.method_bases
    ident.update(point.later())  # evaluated later, compensated, refreshed (absent at 0: keys unchanged)
    text = json.dumps(ident, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: its points (deduplicated, in grid order) and shared settings."""

    points: tuple[Point, ...]
    data: DataSettings
    title: str = ""

    @property
    def sources(self) -> list[ModelSource]:
        """The distinct model sources, in first-use order."""
        return list(dict.fromkeys(p.source for p in self.points))


# --- parsing -----------------------------------------------------------------------------------------------
def spec_inputs(path: str | Path) -> list[Path]:
    """The files a sweep config file reads besides itself (see :func:`input_files`); none if it is unreadable
    (:func:`load_spec` then reports why)."""
    from ittrna._plain import loads_toml, read_small_text

    try:
        data = loads_toml(read_small_text(path, "sweep config", MAX_CONFIG_BYTES, ConfigError), str(path),
                          ConfigError)
    except ConfigError:
        return []
    return input_files(data, Path(path).parent)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep config file (``.toml``); relative paths in it are relative to the file."""
    p = Path(path)
    if p.suffix != ".toml":
        raise ConfigError(f"sweep config {p} has suffix {p.suffix!r}; accepted a .toml file")
    from ittrna._plain import loads_toml, read_small_text

    text = read_small_text(p, "sweep config", MAX_CONFIG_BYTES, ConfigError)
    data = loads_toml(text, f"sweep config {p}", ConfigError)
    try:
        return parse_spec(data, base_dir=p.parent)
    except ConfigError as exc:
        raise ConfigError(f"sweep config {p}: {exc}") from None


def parse_spec(data: Mapping[str, Any], *, base_dir: str | Path = ".") -> SweepSpec:
    """Validate a sweep config (the parsed TOML) and expand its points.

    Raises:
        ConfigError: one line naming the first bad key or value and what is accepted.
    """
    from ittrna._plain import check_plain
    from ittrna.data import DATASETS
    from ittrna.methods import METHODS
    from ittrna.methods.base import lineage
    from ittrna.models import MODELS

    check_plain(data, "sweep config", ConfigError)  # plain values only (a TOML date, a lone surrogate: refused)
    _only(data, _TOP_KEYS, "")
    title = data.get("title", "")
    if not isinstance(title, str):
        raise ConfigError(f"title = {title!r} is invalid; accepted a string")
    train = _train(_table(data, "train"))
    dset = _data(_table(data, "data"), Path(base_dir))
    base_cfg = _chip_base(_table(data, "chip"), Path(base_dir))
    method_tables = _table(data, "methods")
    for name in method_tables:
        if name not in METHODS:
            raise ConfigError(f"unknown method methods.{name}; accepted one of {list(METHODS)}")
    method_axes = {name: _method_axes(name, _table(method_tables, name, f"methods.{name}"))
                   for name in method_tables}

    grid = _table(data, "grid")
    if not grid:
        raise ConfigError("the config has no [grid] table; accepted [grid] with at least model, dataset and "
                          "chip_seed")
    parts_raw = grid.get("part", [{}])
    if not isinstance(parts_raw, list) or not parts_raw or not all(isinstance(t, Mapping) for t in parts_raw):
        raise ConfigError("grid.part is invalid; accepted one or more [[grid.part]] tables")
    base_axes = _axes({k: v for k, v in grid.items() if k != "part"}, "grid")
    points: dict[str, Point] = {}
    parts: list[tuple[str, dict[str, list[Any]], dict[str, Any], dict[str, tuple[str, dict[str, Any]]], bool,
                      list[float], list[Any], list[str]]] = []
    total = 0
    for i, part in enumerate(parts_raw):
        where = f"grid.part[{i}]" if "part" in grid else "grid"
        axes = _merge_axes(base_axes, _axes(part, where))
        for name in ("model", "dataset", "chip_seed"):
            if name not in axes:
                raise ConfigError(f"{where}: grid.{name} is missing; accepted a non-empty list")
        axes.setdefault("method", ["none"])
        for name, values in axes.items():
            if not values:
                raise ConfigError(f"{where}.{name} is empty; accepted a non-empty list (an empty grid has no "
                                  "points)")
        defs = _definitions(axes["model"], Path(base_dir), f"{where}.model")
        ckpts = _checkpoints(axes["model"], Path(base_dir), f"{where}.model")
        _check_names([m for m in axes["model"] if m not in defs and m not in ckpts], MODELS, f"{where}.model",
                     "model")
        _check_names(axes["dataset"], DATASETS, f"{where}.dataset", "dataset")
        _check_names(axes["method"], METHODS, f"{where}.method", "method")
        for seed in axes["chip_seed"]:
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
                raise ConfigError(f"{where}.chip_seed = {seed!r} is invalid; accepted integers in [0, 2**63 - 1]")
        timed = "time" in axes  # the time axis: seconds or a number with a unit ("1h"), one point per value
        times = list(dict.fromkeys(parse_time(t, f"{where}.time") for t in axes.get("time", [0.0])))
        comps = [_compensation(v, f"{where}.compensation") for v in axes.get("compensation", ["none"])]
        refreshes = [_refresh(v, f"{where}.refresh") for v in axes.get("refresh", [0.0])]
        later = [(c, r) for c in dict.fromkeys(comps) for r in dict.fromkeys(refreshes)]
        for model in axes["model"]:
            for dataset in axes["dataset"]:
                if model in ckpts:
                    if ckpts[model][1]["dataset"] != dataset:
                        raise ConfigError(f"{where}.model: {model} was trained on {ckpts[model][1]['dataset']!r}, and "
                                          f"{where}.dataset has {dataset!r}; accepted a checkpoint of every dataset "
                                          "of the axis (give other datasets a [[grid.part]] of their own)")
                    continue
                _check_fits(defs.get(model, model), dataset)
        chip_names = [k for k in axes if k not in _NAMED_AXES]
        per_method = sum(len(method_axes.get(m, [None])) for m in axes["method"])  # a method's settings axes
        n_points = math.prod(len(v) for k, v in axes.items() if k != "method") * per_method
        total += n_points
        if total > MAX_POINTS:
            raise ConfigError(f"{where} brings the grid to {total} points (method settings included, all parts "
                              f"together); accepted at most {MAX_POINTS}")
        parts.append((where, axes, defs, ckpts, timed, times, later, chip_names))
    # every part is checked and counted before any is expanded: a grid over the limit is refused at once
    for where, axes, defs, ckpts, timed, times, later, chip_names in parts:
        for combo in itertools.product(*(axes[k] for k in chip_names)):
            overrides = {_dotted(k): v for k, v in zip(chip_names, combo, strict=True)}
            cfg = _override(base_cfg, overrides, dict(zip(chip_names, combo, strict=True)), where)
            _check_times(cfg, times, where)
            chip_json = cfg.identity_dict()
            chip_columns = _chip_columns(cfg, chip_names, combo)
            for model, dataset, method, seed, at, (comp, fresh) in itertools.product(
                    axes["model"], axes["dataset"], axes["method"], axes["chip_seed"], times, later):
                if model in ckpts:  # a checkpoint file: its weights' hash is the model's identity (point_key)
                    path, meta = ckpts[model]
                    source = ModelSource(str(meta["model"]), dataset, path=path,
                                         definition=json.dumps(meta["definition"], sort_keys=True)
                                         if "definition" in meta else None)
                    model_columns = {"model": source.model, "checkpoint": Path(path).name}
                else:
                    source = ModelSource(model, dataset, train=train,
                                         definition=json.dumps(defs[model].to_dict(), sort_keys=True)
                                         if model in defs else None)
                    model_columns = {"model": model}
                for settings, columns in method_axes.get(method, [({}, {})]):
                    spec = METHODS[method]
                    full = spec.make_config(settings).identity_dict()
                    pt = Point(source, chip_json, method, full, spec.version, seed,
                               {**model_columns, "dataset": dataset, **chip_columns, "method": method,
                                **columns, "chip_seed": seed, **({"time": at} if timed else {}),
                                **({"compensation": "+".join(comp) or "none"} if "compensation" in axes else {}),
                                **({"refresh": fresh} if "refresh" in axes else {})},
                               lineage(method), at, comp, fresh)
                    points.setdefault(pt.content(), pt)
    _check_chips(points.values())
    return SweepSpec(tuple(points.values()), dset, title)


def _check_chips(points: Iterable[Point]) -> None:
    """Every (model, chip config) fits in memory (estimated on shapes alone, nothing allocated)."""
    import torch

    from ittrna.chip.state import check_fabricate
    from ittrna.data import DATASETS
    from ittrna.models import build

    shapes: dict[tuple[str, str], torch.nn.Module] = {}
    seen: set[str] = set()
    for p in points:
        pair = (p.source.model, p.source.dataset)
        key = json.dumps([pair, p.chip], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        if pair not in shapes:
            spec = DATASETS[pair[1]]
            with torch.device("meta"):
                shapes[pair] = build(p.source.build_ref(), spec.in_shape, spec.num_classes)
        check_fabricate(shapes[pair], ChipConfig.from_dict(p.chip), p.chip_seed)


def collapse_spec(model_path: str | Path, meta: Mapping[str, Any], base: ChipConfig, saf_rates: Sequence[float],
                  sigmas: Sequence[float], seeds: Sequence[int], data: DataSettings) -> SweepSpec:
    """The flag form of ``ittrna sweep``: the collapse curves of a checkpoint file, method ``none``:
    SAF rates at sigma = 0 and sigmas without faults (a point on both curves is one point)."""
    from ittrna.methods import get_method

    source = ModelSource(str(meta["model"]), str(meta["dataset"]), path=str(model_path))
    spec = get_method("none")
    settings = spec.make_config().identity_dict()
    points: dict[str, Point] = {}
    pairs = [(r, 0.0) for r in saf_rates] + [(0.0, s) for s in sigmas]
    for rate, sigma in pairs:
        cfg = _override(base, {"faults.rate": rate, "variation.sigma": sigma},
                        {"saf_rate": rate, "sigma": sigma}, "")
        for seed in seeds:
            pt = Point(source, cfg.identity_dict(), "none", settings, spec.version, int(seed),
                       {"model": source.model, "dataset": source.dataset, **_chip_columns(cfg, [], ()),
                        "method": "none", "chip_seed": int(seed)})
            points.setdefault(pt.content(), pt)
    return SweepSpec(tuple(points.values()), data)


# --- helpers -----------------------------------------------------------------------------------------------
def _only(table: Mapping[str, Any], accepted: Sequence[str], where: str) -> None:
    for key in table:
        if key not in accepted:
            name = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"unknown key {name}; accepted {list(accepted)}")


def _table(data: Mapping[str, Any], key: str, name: str | None = None) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name or key} = {value!r} is invalid; accepted a table ([{name or key}])")
    return dict(value)


def _compensation(value: Any, where: str) -> tuple[str, ...]:
    """A ``compensation`` axis value: ``"none"`` or step names joined by ``+`` (e.g. ``"registers+bn"``)."""
    from ittrna.registry import COMPENSATIONS

    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} holds {value!r}; accepted \"none\" or steps of {list(COMPENSATIONS)} joined by "
                          "+ (e.g. \"registers+bn\")")
    if value == "none":
        return ()
    steps = value.split("+")
    for step in steps:
        if step not in COMPENSATIONS:
            raise ConfigError(f"{where}: unknown step {step!r} in {value!r}; accepted \"none\" or steps of "
                              f"{list(COMPENSATIONS)} joined by +")
    if len(set(steps)) != len(steps):
        raise ConfigError(f"{where} = {value!r} names a step twice; accepted each step once")
    return tuple(s for s in COMPENSATIONS if s in steps)


def _refresh(value: Any, where: str) -> float:
    """A ``refresh`` axis value: 0 (none) or a budget in (0, 1] (:class:`~ittrna.config.RefreshConfig`)."""
    from ittrna.config import RefreshConfig

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} holds {value!r}; accepted 0 (no refresh) or a budget in (0, 1]")
    if value == 0:
        return 0.0
    try:
        RefreshConfig(budget=float(value))
    except ConfigError:
        raise ConfigError(f"{where} holds {value!r}; accepted 0 (no refresh) or a budget in (0, 1]") from None
    return float(value)


def _check_times(cfg: ChipConfig, times: Sequence[float], where: str) -> None:
    """Times past the relaxation model's fitted range are refused with the grid, before any work."""
    from ittrna.device.relaxation import check_fitted

    check_fitted(cfg.relaxation, max(times), f"{where}.time")


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"cell": {"levels": 16}}`` (TOML ``cell.levels = 16`` or ``[x.cell]``) -> ``{"cell.levels": 16}``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        inner = _flatten(value, name + ".") if isinstance(value, Mapping) else {name: value}
        for k, v in inner.items():  # "relaxation.model" and [relaxation] model: one field given twice
            if k in out:
                raise ConfigError(f"{k} is given twice (as a dotted key and in a table); give it once")
            out[k] = v
    return out


def _is_dotted_field(name: str) -> bool:
    parts = name.split(".")
    fields = ChipConfig().to_dict()
    return len(parts) == 2 and parts[0] in fields and parts[1] in fields[parts[0]]


def _dotted(name: str) -> str:
    return CHIP_AXES.get(name, name)


def _axes(table: Mapping[str, Any], where: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for name, value in _flatten(table).items():
        if name not in _NAMED_AXES and name not in CHIP_AXES and not _is_dotted_field(name):
            raise ConfigError(f"unknown key {where}.{name}; accepted {[*_NAMED_AXES, *CHIP_AXES]} or a chip "
                              "field section.field (e.g. \"cell.levels\")")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, (list, Mapping)):
                raise ConfigError(f"{where}.{name} holds {v!r}; accepted a list of plain values")
        unique = list(dict.fromkeys(json.dumps(_plain_value(v), sort_keys=True) for v in values))  # repeats: once
        out[name] = [json.loads(u) for u in unique]
    same: dict[str, str] = {}
    for name in out:  # `saf_rate` and "faults.rate" are one field: given both, one would be dropped silently
        other = same.setdefault(_dotted(name), name)
        if other != name:
            raise ConfigError(f"{where}: {other} and {name} name the same chip field {_dotted(name)}; give one")
    return out


def _plain_value(v: Any) -> Any:
    """One spelling per value: -0.0 is 0.0 (the same point, computed once)."""
    return v + 0.0 if isinstance(v, float) and v == 0 else v


def _merge_axes(base: dict[str, list[Any]], part: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """A part's axes over the grid's: a part's axis replaces the grid's of the same field, in either spelling."""
    fields = {_dotted(k) for k in part}
    return {**{k: v for k, v in base.items() if _dotted(k) not in fields}, **part}


def _definitions(values: Sequence[Any], base_dir: Path, where: str) -> dict[str, Any]:
    """The ``FILE.py:FUNCTION`` / ``module:FUNCTION`` entries of a model axis (files relative to the config's
    folder), each hashed now."""
    from ittrna.errors import InputError
    from ittrna.models import Definition, is_definition, trust_definition

    out: dict[str, Any] = {}
    for v in values:
        if not isinstance(v, str) or not is_definition(v):
            continue
        source, _, function = v.rpartition(":")
        if source.endswith(".py"):
            path = Path(source).expanduser()
            source = str(path if path.is_absolute() else (base_dir / path).resolve())
        try:
            out[v] = trust_definition(Definition(source, function))  # the config names it: its checkpoints load
        except InputError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return out


def _checkpoints(values: Sequence[Any], base_dir: Path, where: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """The checkpoint files (``*.pt``, relative to the config's folder) of a model axis: each loaded now
    (``weights_only``, every field checked), as (resolved path, metadata). A tuned file (one chip's deployment)
    is refused: a sweep fabricates chips of its own."""
    from ittrna.errors import InputError
    from ittrna.models.checkpoint import load_checkpoint_payload

    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for v in values:
        if not isinstance(v, str) or not v.endswith(".pt"):
            continue
        path = Path(v).expanduser()
        path = path if path.is_absolute() else (base_dir / path).resolve()
        try:
            _, meta, payload = load_checkpoint_payload(path)
        except InputError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if "deployment" in payload:
            raise ConfigError(f"{where}: {v} is tuned for one chip; accepted a software checkpoint (ittrna train)")
        out[v] = (str(path), dict(meta))
    return out


def _check_names(values: Sequence[Any], registry: Mapping[str, Any], where: str, what: str) -> None:
    for v in values:
        if not isinstance(v, str) or v not in registry:
            raise ConfigError(f"{where}: unknown {what} {v!r}; accepted one of {list(registry)}"
                              + (" or FILE.py:FUNCTION" if what == "model" else ""))


def _check_fits(model: Any, dataset: str) -> None:
    from ittrna.data import DATASETS
    from ittrna.errors import InputError
    from ittrna.models import build

    spec = DATASETS[dataset]
    try:
        import torch

        with torch.device("meta"):
            build(model, spec.in_shape, spec.num_classes)
    except InputError as exc:
        label = getattr(model, "name", model)
        raise ConfigError(f"grid: model {label!r} does not fit dataset {dataset!r}: {exc}") from None


def _override(base: ChipConfig, overrides: dict[str, Any], labels: dict[str, Any], where: str) -> ChipConfig:
    try:
        return base.override(overrides)
    except ConfigError as exc:
        shown = ", ".join(f"{k} = {v!r}" for k, v in labels.items())
        raise ConfigError(f"{where + ': ' if where else ''}{exc}" + (f" (at {shown})" if shown else "")) from None


def _chip_columns(cfg: ChipConfig, extra: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    """Record columns of a chip: every short-named setting, then the dotted axes of the grid."""
    d = cfg.to_dict()
    cols = {short: d[dotted.split(".")[0]][dotted.split(".")[1]] for short, dotted in CHIP_AXES.items()}
    for name, value in zip(extra, values, strict=True):
        if name not in CHIP_AXES:
            cols[name] = value
    return cols


def _train(table: Mapping[str, Any]) -> TrainSettings:
    _only(table, ("epochs", "seed", "lr", "batch_size", "patience", "recipe"), "train")
    if "recipe" in table:
        from ittrna.errors import InputError
        from ittrna.training import get_recipe

        try:
            r = get_recipe(table["recipe"], table, "train.")
        except InputError as exc:
            raise ConfigError(f"train.recipe: {exc}") from None
        return TrainSettings(epochs=r.epochs, seed=TrainConfig(seed=table.get("seed", 0)).seed, lr=r.lr,
                             batch_size=r.batch_size, recipe=r.name)
    cfg = TrainConfig(**{k: table[k] for k in ("epochs", "seed", "lr", "batch_size", "patience") if k in table})
    return TrainSettings(epochs=cfg.epochs, seed=cfg.seed, lr=float(cfg.lr), batch_size=cfg.batch_size,
                         patience=cfg.patience)


def _data(table: Mapping[str, Any], base_dir: Path) -> DataSettings:
    _only(table, ("train_size", "val_size", "test_size", "split", "dir"), "data")
    data = DataSettings(**table)  # the ranges' owner
    return replace(data, dir=str(base_dir / data.dir)) if data.dir is not None else data


def _chip_base(table: Mapping[str, Any], base_dir: Path) -> ChipConfig:
    preset = table.get("preset")
    config = table.get("config")
    if preset is not None and config is not None:
        raise ConfigError("chip.preset and chip.config are both given; accepted one of them")
    if config is not None:
        if not isinstance(config, str):
            raise ConfigError(f"chip.config = {config!r} is invalid; accepted a chip config file path (string)")
        base = ChipConfig.from_file(base_dir / config)
    else:
        if preset is not None and not isinstance(preset, str):
            raise ConfigError(f"chip.preset = {preset!r} is invalid; accepted a preset name (string)")
        base = ChipConfig.preset(preset or "default")
    changes: dict[str, Any] = {}
    for name, value in _flatten({k: v for k, v in table.items() if k not in ("preset", "config")}).items():
        if name not in CHIP_AXES and not _is_dotted_field(name):
            raise ConfigError(f"unknown key chip.{name}; accepted preset, config, {list(CHIP_AXES)} or a chip "
                              "field section.field (e.g. mapping.rows)")
        if isinstance(value, list):
            raise ConfigError(f"chip.{name} = {value!r} is a list; shared chip settings take one value (put "
                              f"axes in [grid])")
        if _dotted(name) in changes:  # `saf_rate` and "faults.rate" are one field
            raise ConfigError(f"chip: {name} names the chip field {_dotted(name)} given already; give it once")
        changes[_dotted(name)] = value
    return _override(base, changes, {}, "chip") if changes else base


def input_files(data: Mapping[str, Any], base_dir: str | Path) -> list[Path]:
    """The files a sweep config reads besides itself (its ``[chip] config``), for output checks."""
    chip = data.get("chip")
    config = chip.get("config") if isinstance(chip, Mapping) else None
    return [Path(base_dir) / config] if isinstance(config, str) else []


def _method_axes(name: str, table: Mapping[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(settings, record columns) per combination of the method's listed settings, each validated."""
    from ittrna.methods import get_method

    spec = get_method(name)
    flat = _flatten(table)
    keys = list(flat)
    lists = []
    for key in keys:
        values = flat[key] if isinstance(flat[key], list) else [flat[key]]
        if not values:
            raise ConfigError(f"methods.{name}.{key} is empty; accepted a value or a non-empty list")
        lists.append(list(dict.fromkeys(json.dumps(_plain_value(v)) for v in values)))
    combos = math.prod(len(v) for v in lists)
    if combos > MAX_POINTS:  # checked before the product is expanded (and each combination validated)
        raise ConfigError(f"methods.{name} has {combos} combinations of settings; accepted at most {MAX_POINTS}")
    out = []
    for combo in itertools.product(*lists):
        settings = {f"method.{k}": json.loads(v) for k, v in zip(keys, combo, strict=True)}
        try:
            spec.make_config(settings)
        except ConfigError as exc:
            raise ConfigError(f"methods.{name}: {exc}") from None
        out.append((settings, dict(settings)))
    return out
