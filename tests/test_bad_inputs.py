"""Hostile inputs against the CLI and the library: refused early, in one line, losing nothing.

Every case of the CLI table runs ``ittrna`` in-process against a shared folder of good and deliberately
broken files, and asserts: a non-zero exit status, exactly one line on stderr, no traceback (any exception
other than a clean exit fails the test), and no file created, changed or removed (names, sizes, mtimes and
sha256 of every file in the folder, before and after). The library table asserts the typed exception
(an ``InputError``), a one-line message, and the same file invariant.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import skip_unless_ci

from ittrna import _validate
from ittrna.chip import Chip, MeasuredMap
from ittrna.cli import main
from ittrna.config import ChipConfig
from ittrna.data import Split, cache_dir, load, status
from ittrna.errors import ConfigError, DataError, FileFormatError, InputError, ResourceError, UnknownNameError
from ittrna.mapping import CONVERTERS, TileGrid
from ittrna.models import build, load_checkpoint, save_checkpoint
from ittrna.nn import evaluate, monte_carlo
from ittrna.training import accuracy, train

SRC = Path(__file__).resolve().parents[1] / "src"
META = {"model": "mlp", "dataset": "mnist", "in_shape": [1, 28, 28], "num_classes": 10}


# --- the shared folder of good and broken files ------------------------------------------------------------
def _read_npz(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(str(arrays.pop("__header__"))), arrays


def _write_npz(path: Path, header: Any, arrays: dict[str, np.ndarray], *, raw: str | None = None) -> None:
    with open(path, "wb") as fh:
        np.savez_compressed(fh, __header__=np.array(raw if raw is not None else json.dumps(header)), **arrays)


def _edit_chip(src: Path, dst: Path, edit: Callable[[dict[str, Any], dict[str, np.ndarray]], None]) -> None:
    header, arrays = _read_npz(src)
    edit(header, arrays)
    _write_npz(dst, header, arrays)


def _set(arrays: dict[str, np.ndarray], key: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    arrays[key] = fn(arrays[key].copy())


def _poke(value: Any) -> Callable[[np.ndarray], np.ndarray]:
    def fn(a: np.ndarray) -> np.ndarray:
        a.flat[5] = value
        return a

    return fn


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    model = build("mlp", seed=0)
    save_checkpoint(d / "m.pt", model, META)
    # a small chip (for a small network) keeps the folder quick to snapshot; no case needs it to fit m.pt
    small = torch.nn.Sequential(torch.nn.Linear(20, 10), torch.nn.ReLU(), torch.nn.Linear(10, 5))
    cfg = ChipConfig().override({"faults.rate": 0.1, "variation.sigma": 0.3, "mapping.rows": 8,
                                 "mapping.cols": 8})
    chip = Chip.fabricate(small, cfg, 1)
    chip.program_model(small)
    chip.save(d / "c.npz")
    chip.test().save(d / "map.npz")
    ChipConfig().save(d / "cfg.toml")
    os.symlink(d / "c.npz", d / "c_sym.npz")
    os.link(d / "c.npz", d / "c_hard.npz")
    os.symlink(d / "c.npz", d / "c_link.png")
    (d / "img.png").mkdir()
    (d / "cfgdir.toml").mkdir()

    # chips with a broken field each
    raw = (d / "c.npz").read_bytes()
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (d / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    _, arrays = _read_npz(d / "c.npz")
    _write_npz(d / "badjson.npz", None, arrays, raw="{not json")
    _write_npz(d / "headerlist.npz", None, arrays, raw="[1, 2, 3]")
    with open(d / "noheader.npz", "wb") as fh:
        np.savez_compressed(fh, **arrays)
    key = "2|pos|"
    edits: dict[str, Callable[[dict[str, Any], dict[str, np.ndarray]], None]] = {
        "noconfig": lambda h, a: h.pop("config"),
        "configlist": lambda h, a: h.update(config=[1, 2]),
        "badconfig": lambda h, a: h["config"]["faults"].update(rate=7),
        "scheme": lambda h, a: h["config"]["mapping"].update(scheme="offset"),
        "tiles": lambda h, a: h["config"]["mapping"].update(rows=64),
        "seedfloat": lambda h, a: h.update(seed=1.5),
        "seedhuge": lambda h, a: h.update(seed=2**64),
        "format9": lambda h, a: h.update(format=9),
        "layersnull": lambda h, a: h.update(layers=None),
        "layersints": lambda h, a: h.update(layers=[1, 2, 3]),
        "layersempty": lambda h, a: h.update(layers=[]),
        "kindbad": lambda h, a: h["layers"][0].update(kind="lstm"),
        "kmismatch": lambda h, a: h["layers"][0].update(k=h["layers"][0]["k"] + 1),
        "scalenan": lambda h, a: h["layers"][0].update(scale=float("nan")),
        "dupname": lambda h, a: h["layers"][1].update(name=h["layers"][0]["name"]),
        "short": lambda h, a: _set(a, key + "g", lambda x: x[:-1]),
        "faultcode": lambda h, a: _set(a, key + "fault", _poke(7)),
        "faultfloat": lambda h, a: _set(a, key + "fault", lambda x: x.astype(np.float32)),
        "nantheta": lambda h, a: _set(a, key + "theta", _poke(np.nan)),
        "hugetheta": lambda h, a: _set(a, key + "theta", _poke(1e6)),
        "gbig": lambda h, a: _set(a, key + "g", _poke(1.0)),
        "negwrites": lambda h, a: _set(a, key + "writes", _poke(-1)),
        "missingarray": lambda h, a: a.pop(key + "eps"),
        "extraarray": lambda h, a: a.update({"2|pos|bonus": np.zeros(3)}),
    }
    for name, edit in edits.items():
        _edit_chip(d / "c.npz", d / f"{name}.npz", edit)
    _edit_chip(d / "map.npz", d / "badmap.npz", lambda h, a: _set(a, key + "fault", _poke(9)))
    _edit_chip(d / "map.npz", d / "mapnometa.npz", lambda h, a: h.pop("meta"))

    # checkpoints with a broken field each
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def ckpt(name: str, meta: Any = META, sd: Any = state, fmt: Any = 1) -> None:
        torch.save({"format": fmt, "meta": meta, "state_dict": sd}, d / name)

    nan_state = {k: v.clone() for k, v in state.items()}
    nan_state["1.weight"][0, 0] = float("nan")
    ckpt("nan.pt", sd=nan_state)
    ckpt("nomodel.pt", meta={k: v for k, v in META.items() if k != "model"})
    ckpt("metalist.pt", meta=[1, 2])
    ckpt("abcshape.pt", meta={**META, "in_shape": "abc"})
    ckpt("hugeshape.pt", meta={**META, "in_shape": [1, 100000, 100000]})
    ckpt("bigshape.pt", meta={**META, "in_shape": [1, 65536, 65536]})
    ckpt("classes0.pt", meta={**META, "num_classes": 0})
    ckpt("intweights.pt", sd={k: v.to(torch.int32) for k, v in state.items()})
    ckpt("wrongshape.pt", sd=build("mlp", (1, 14, 14)).state_dict())
    ckpt("otherweights.pt", sd=build("mlp-deep").state_dict())
    ckpt("format2.pt", fmt=2)
    ckpt("noset.pt", meta={k: v for k, v in META.items() if k != "dataset"})
    lenet = build("lenet5", (3, 32, 32))
    ckpt("otherdata.pt", meta={**META, "model": "lenet5", "in_shape": [3, 32, 32]}, sd=lenet.state_dict())
    (d / "text.pt").write_text("not a checkpoint")

    # config files
    (d / "latin1.toml").write_bytes("[cell]\nr_on = 1e4 # caf\xe9\n".encode("latin-1"))
    (d / "dup.json").write_text('{"faults": {"rate": 0.1, "rate": 0.2}}')
    (d / "bad.toml").write_text("[cell\nr_on = ")
    (d / "list.json").write_text("[1, 2]")
    (d / "section.json").write_text('{"faults": 0.1}')
    (d / "rlow.toml").write_text("[cell]\nr_on = 1e-300\n")
    (d / "bool.json").write_text('{"cell": {"levels": true}}')
    (d / "nested.json").write_text("[" * 100000 + "]" * 100000)
    (d / "cfg.yaml").write_text("cell: {}\n")

    # sweep result stores edited by hand
    for i, line in enumerate(['[1, 2]', '{"key": "k", "saf_rate": 0.5, "chip_accuracy": "high"}'], 1):
        (d / f"badsweep{i}").mkdir()
        (d / f"badsweep{i}" / "results.jsonl").write_text(line + "\n")
    return d


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = (p.stat().st_size, p.stat().st_mtime_ns,
                                             hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out[str(p.relative_to(root))] = (-1, 0, os.readlink(p) if p.is_symlink() else "dir")
    return out


def _cache_snapshot() -> dict[str, tuple[int, int]]:
    root = cache_dir()
    if not root.exists():
        return {}
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    out, err = capsys.readouterr()
    return code, out, err


# --- the CLI table -----------------------------------------------------------------------------------------
BIG_SEED = str(2**64)
CHIP = ["chip", "make", "--model", "{d}/m.pt", "--out", "{d}/new.npz"]
EVAL = ["evaluate", "--model", "{d}/m.pt", "--chips", "1", "--quiet"]
SWEEP = ["sweep", "--model", "{d}/m.pt", "--chips", "1", "--quiet", "--out", "{d}/sweep"]
TRAIN = ["train", "--model", "mlp", "--dataset", "mnist", "--epochs", "0", "--quiet", "--out", "{d}/t.pt"]
TOLERATE = ["tolerate", "--method", "fat", "--model", "{d}/m.pt", "--chip", "{d}/c.npz", "--quiet", "--out",
            "{d}/tuned.pt"]

CLI_CASES: list[tuple[str, list[str], str]] = [
    # id, argv ({d} = the shared folder), a piece the message must contain ("" = any)
    ("no-command", [], ""),
    ("unknown-command", ["frobnicate"], "invalid choice"),
    ("data-no-subcommand", ["data"], ""),
    ("data-fetch-unknown", ["data", "fetch", "imagenet"], "imagenet"),
    ("data-fetch-no-names", ["data", "fetch"], ""),
    ("data-fetch-cifar", ["data", "fetch", "cifar10"], "cifar10"),
    ("data-list-bogus-flag", ["data", "list", "--bogus"], "--bogus"),
    ("train-unknown-model", [*TRAIN, "--model", "resnet"], "resnet"),
    ("train-unknown-dataset", [*TRAIN, "--dataset", "imagenet"], "imagenet"),
    ("train-negative-epochs", [*TRAIN, "--epochs", "-1"], "[0, 100000]"),
    ("train-float-epochs", [*TRAIN, "--epochs", "1e20"], "1e20"),
    ("train-huge-epochs", [*TRAIN, "--epochs", "10000000"], "'10000000' is out of range"),
    ("train-seed-2^64", [*TRAIN, "--seed", BIG_SEED], "2**63 - 1"),
    ("train-negative-seed", [*TRAIN, "--seed", "-1"], ">= 0"),
    ("train-lr-nan", [*TRAIN, "--lr", "nan"], "nan"),
    ("train-lr-inf", [*TRAIN, "--lr", "inf"], "inf"),
    ("train-lr-zero", [*TRAIN, "--lr", "0"], "out of range"),
    ("train-batch-zero", [*TRAIN, "--batch-size", "0"], "[1, 1000000]"),
    ("train-batch-text", [*TRAIN, "--batch-size", "abc"], "abc"),
    ("train-out-suffix", [*TRAIN, "--out", "{d}/t.npz"], ".pt"),
    ("train-out-folder", [*TRAIN, "--out", "{d}/img.png"], ".pt"),
    ("train-out-under-file", [*TRAIN, "--out", "{d}/m.pt/t.pt"], "is a file"),
    ("train-device-cuda99", [*TRAIN, "--device", "cuda:99"], "cuda:99"),
    ("train-device-bogus", [*TRAIN, "--device", "bogus"], "bogus"),
    ("train-device-meta", [*TRAIN, "--device", "meta"], "meta"),
    ("train-missing-data-dir", [*TRAIN, "--data-dir", "{d}/nodata"], "nodata"),
    ("train-cifar-no-dir", [*TRAIN, "--dataset", "cifar10"], "data-dir"),
    ("make-out-is-model", ["chip", "make", "--model", "{d}/m.pt", "--out", "{d}/m.pt"], ".npz"),
    ("make-out-suffix", [*CHIP, "--out", "{d}/c.pt"], ".npz"),
    ("make-out-is-config", [*CHIP, "--config", "{d}/cfg.toml", "--out", "{d}/cfg.toml"], ".npz"),
    ("make-out-folder", [*CHIP, "--out", "{d}/sub"], ".npz"),
    ("make-out-under-file", [*CHIP, "--out", "{d}/m.pt/c.npz"], "is a file"),
    ("make-model-is-chip", ["chip", "make", "--model", "{d}/c.npz", "--out", "{d}/new.npz"], "checkpoint"),
    ("make-model-missing", ["chip", "make", "--model", "{d}/missing.pt", "--out", "{d}/new.npz"], "missing.pt"),
    ("make-model-folder", ["chip", "make", "--model", "{d}", "--out", "{d}/new.npz"], "regular file"),
    ("make-model-text", ["chip", "make", "--model", "{d}/text.pt", "--out", "{d}/new.npz"], "text.pt"),
    ("make-saf-1.5", [*CHIP, "--saf-rate", "1.5"], "1.5"),
    ("make-saf-nan", [*CHIP, "--saf-rate", "nan"], "nan"),
    ("make-sigma-negative", [*CHIP, "--sigma", "-1"], "-1"),
    ("make-crossbar-zero", [*CHIP, "--crossbar", "0x128"], "0x128"),
    ("make-crossbar-3d", [*CHIP, "--crossbar", "128x128x2"], "ROWSxCOLS"),
    ("make-crossbar-text", [*CHIP, "--crossbar", "axb"], "ROWSxCOLS"),
    ("make-crossbar-too-big", [*CHIP, "--crossbar", "65537x128"], "mapping.rows"),
    ("make-crossbar-memory", [*CHIP, "--crossbar", "65536x65536"], "memory"),
    ("make-lines-memory", [*CHIP, "--pattern", "lines", "--saf-rate", "0.1", "--crossbar", "1x65536"], "memory"),
    ("make-r_on-tiny", [*CHIP, "--set", "cell.r_on=1e-300"], "cell.r_on"),
    ("make-r_on-huge", [*CHIP, "--set", "cell.r_on=1e40", "--set", "cell.r_off=1e50"], "cell.r_on"),
    ("make-r_off-huge", [*CHIP, "--set", "cell.r_off=1e50"], "cell.r_off"),
    ("make-r_off-negative", [*CHIP, "--set", "cell.r_off=-1"], "cell.r_off"),
    ("make-levels-1", [*CHIP, "--set", "cell.levels=1"], "cell.levels"),
    ("make-levels-float", [*CHIP, "--set", "cell.levels=16.5"], "cell.levels"),
    ("make-levels-bool", [*CHIP, "--set", "cell.levels=true"], "cell.levels"),
    ("make-rows-inf", [*CHIP, "--set", "mapping.rows=1e400"], "mapping.rows"),
    ("make-unknown-field", [*CHIP, "--set", "faults.bogus=1"], "faults.bogus"),
    ("make-set-no-equals", [*CHIP, "--set", "nofield"], "nofield"),
    ("make-set-number-key", [*CHIP, "--set", "1=2"], "'1'"),
    ("make-seed-2^64", [*CHIP, "--seed", BIG_SEED], "2**63 - 1"),
    ("make-unknown-preset", [*CHIP, "--preset", "nope"], "nope"),
    ("make-preset-and-config", [*CHIP, "--preset", "date17", "--config", "{d}/cfg.toml"], "not both"),
    ("make-config-latin1", [*CHIP, "--config", "{d}/latin1.toml"], "latin1.toml"),
    ("make-config-dup-key", [*CHIP, "--config", "{d}/dup.json"], "twice"),
    ("make-config-bad-toml", [*CHIP, "--config", "{d}/bad.toml"], "bad.toml"),
    ("make-config-yaml", [*CHIP, "--config", "{d}/cfg.yaml"], ".toml or .json"),
    ("make-config-missing", [*CHIP, "--config", "{d}/missing.toml"], "missing.toml"),
    ("make-config-folder", [*CHIP, "--config", "{d}/cfgdir.toml"], "cfgdir.toml"),
    ("make-config-list", [*CHIP, "--config", "{d}/list.json"], "list.json"),
    ("make-config-section-number", [*CHIP, "--config", "{d}/section.json"], "faults"),
    ("make-config-r_on-tiny", [*CHIP, "--config", "{d}/rlow.toml"], "cell.r_on"),
    ("make-config-nested", [*CHIP, "--config", "{d}/nested.json"], "nested.json"),
    ("make-nan-weights", ["chip", "make", "--model", "{d}/nan.pt", "--out", "{d}/new.npz"], "NaN"),
    ("make-meta-no-model", ["chip", "make", "--model", "{d}/nomodel.pt", "--out", "{d}/new.npz"], "meta.model"),
    ("make-meta-list", ["chip", "make", "--model", "{d}/metalist.pt", "--out", "{d}/new.npz"], "meta"),
    ("make-in_shape-abc", ["chip", "make", "--model", "{d}/abcshape.pt", "--out", "{d}/new.npz"], "in_shape"),
    ("make-in_shape-huge", ["chip", "make", "--model", "{d}/hugeshape.pt", "--out", "{d}/new.npz"], "in_shape"),
    ("make-in_shape-memory", ["chip", "make", "--model", "{d}/bigshape.pt", "--out", "{d}/new.npz"], "memory"),
    ("make-num_classes-0", ["chip", "make", "--model", "{d}/classes0.pt", "--out", "{d}/new.npz"], "num_classes"),
    ("make-int-weights", ["chip", "make", "--model", "{d}/intweights.pt", "--out", "{d}/new.npz"], "dtype"),
    ("import-no-file", ["import-weights", "--model", "mlp", "--state-dict", "{d}/none.pth", "--dataset", "mnist",
                        "--out", "{d}/imp.pt"], "no such file"),
    ("import-a-checkpoint-of-another-model", ["import-weights", "--model", "lenet5", "--state-dict", "{d}/m.pt",
                                              "--dataset", "mnist", "--out", "{d}/imp.pt"], "state_dict"),
    ("import-args-not-object", ["import-weights", "--model", "mlp", "--model-args", "[1]", "--state-dict",
                                "{d}/m.pt", "--dataset", "mnist", "--out", "{d}/imp.pt"], "JSON object"),
    ("import-over-its-input", ["import-weights", "--model", "mlp", "--state-dict", "{d}/m.pt", "--dataset",
                               "mnist", "--out", "{d}/m.pt"], "same file"),
    ("fold-no-file", ["fold-bn", "--model", "{d}/none.pt", "--out", "{d}/f.pt"], "no such file"),
    ("fold-over-its-input", ["fold-bn", "--model", "{d}/m.pt", "--out", "{d}/m.pt"], "same file"),
    ("fold-wrong-suffix", ["fold-bn", "--model", "{d}/m.pt", "--out", "{d}/f.npz"], ".pt"),
    ("train-definition-missing", ["train", "--model", "{d}/nets.py:build", "--dataset", "mnist", "--out",
                                  "{d}/t.pt"], "missing"),
    ("make-wrong-weights", ["chip", "make", "--model", "{d}/wrongshape.pt", "--out", "{d}/new.npz"], "shape"),
    ("make-other-weights", ["chip", "make", "--model", "{d}/otherweights.pt", "--out", "{d}/new.npz"],
     "state_dict['7.weight']"),
    ("make-ckpt-format-2", ["chip", "make", "--model", "{d}/format2.pt", "--out", "{d}/new.npz"], "format"),
    ("show-png-is-chip", ["chip", "show", "{d}/c.npz", "--png", "{d}/c.npz"], ".png"),
    ("show-png-symlink-to-chip", ["chip", "show", "{d}/c.npz", "--png", "{d}/c_link.png"], "same file"),
    ("show-png-folder", ["chip", "show", "{d}/c.npz", "--png", "{d}/img.png"], "folder"),
    ("show-missing", ["chip", "show", "{d}/missing.npz"], "no such file"),
    ("show-checkpoint", ["chip", "show", "{d}/m.pt"], "m.pt"),
    ("show-measured-map", ["chip", "show", "{d}/map.npz"], "measured-map"),
    ("show-truncated", ["chip", "show", "{d}/truncated.npz"], "truncated.npz"),
    ("show-junk-zip", ["chip", "show", "{d}/junk.npz"], "junk.npz"),
    ("show-bad-json", ["chip", "show", "{d}/badjson.npz"], "JSON"),
    ("show-header-list", ["chip", "show", "{d}/headerlist.npz"], "JSON list"),
    ("show-no-header", ["chip", "show", "{d}/noheader.npz"], "no header"),
    *[(f"show-{n}", ["chip", "show", f"{{d}}/{n}.npz"], need) for n, need in [
        ("noconfig", "config"), ("configlist", "config"), ("badconfig", "faults.rate"), ("scheme", "arrays"),
        ("tiles", "shape"), ("seedfloat", "seed"), ("seedhuge", "seed"), ("format9", "format"),
        ("layersnull", "layers"), ("layersints", "layers[0]"), ("layersempty", "layers"),
        ("kindbad", "kind"), ("kmismatch", "k/n"), ("scalenan", "scale"), ("dupname", "name"),
        ("short", "shape"), ("faultcode", "fault code 7"), ("faultfloat", "dtype float32"),
        ("nantheta", "NaN"), ("hugetheta", "log factor"), ("gbig", "conductances"), ("negwrites", "writes"),
        ("missingarray", "missing"), ("extraarray", "unexpected"),
    ]],
    ("test-out-is-chip", ["chip", "test", "{d}/c.npz", "--out", "{d}/c.npz"], "same file"),
    ("test-out-symlink", ["chip", "test", "{d}/c.npz", "--out", "{d}/c_sym.npz"], "same file"),
    ("test-out-hard-link", ["chip", "test", "{d}/c.npz", "--out", "{d}/c_hard.npz"], "same file"),
    ("test-out-dotdot", ["chip", "test", "{d}/c.npz", "--out", "{d}/../{name}/c.npz"], "same file"),
    ("test-out-suffix", ["chip", "test", "{d}/c.npz", "--out", "{d}/map.png"], ".npz"),
    ("test-miss-rate-2", ["chip", "test", "{d}/c.npz", "--out", "{d}/m2.npz", "--miss-rate", "2"], "2"),
    ("test-theta-noise-nan", ["chip", "test", "{d}/c.npz", "--out", "{d}/m2.npz", "--theta-noise", "nan"], "nan"),
    ("test-seed-negative", ["chip", "test", "{d}/c.npz", "--out", "{d}/m2.npz", "--seed", "-5"], "-5"),
    ("test-truncated", ["chip", "test", "{d}/truncated.npz", "--out", "{d}/m2.npz"], "truncated.npz"),
    ("eval-chips-0", [*EVAL, "--chips", "0"], ">= 1"),
    ("eval-chips-1e20", [*EVAL, "--chips", "1e20"], "1e20"),
    ("eval-chips-10^20", [*EVAL, "--chips", "100000000000000000000"], "<="),
    ("eval-seed-overflow", [*EVAL, "--seed", str(2**63 - 1), "--chips", "2"], "2**63 - 1"),
    ("eval-seed-2^64", [*EVAL, "--seed", BIG_SEED], "2**63 - 1"),
    ("eval-chip-with-settings", ["evaluate", "--model", "{d}/m.pt", "--chip", "{d}/c.npz", "--saf-rate", "0.1"],
     "--saf-rate"),
    ("eval-chip-other-model", ["evaluate", "--model", "{d}/m.pt", "--chip", "{d}/c.npz"], "does not fit"),
    ("eval-chip-and-chips", ["evaluate", "--model", "{d}/m.pt", "--chip", "{d}/c.npz", "--chips", "2"],
     "not allowed"),
    ("eval-chip-bad", ["evaluate", "--model", "{d}/m.pt", "--chip", "{d}/faultcode.npz"], "fault code"),
    ("eval-no-dataset", ["evaluate", "--model", "{d}/noset.pt", "--chips", "1"], "meta.dataset"),
    ("eval-other-dataset-shape", ["evaluate", "--model", "{d}/otherdata.pt", "--chips", "1"], "does not fit"),
    ("eval-split-train", [*EVAL, "--split", "train"], "train"),
    ("eval-scheme-bogus", [*EVAL, "--scheme", "bogus"], "bogus"),
    ("eval-pattern-spiral", [*EVAL, "--pattern", "spiral"], "spiral"),
    ("eval-crossbar-memory", [*EVAL, "--crossbar", "65536x65536"], "memory"),
    ("eval-r_on-tiny", [*EVAL, "--set", "cell.r_on=1e-300"], "cell.r_on"),
    ("eval-config-dup-key", [*EVAL, "--config", "{d}/dup.json"], "twice"),
    ("eval-config-bool-levels", [*EVAL, "--config", "{d}/bool.json"], "cell.levels"),
    ("eval-nan-weights", ["evaluate", "--model", "{d}/nan.pt"], "NaN"),
    ("sweep-out-is-model", [*SWEEP, "--out", "{d}/m.pt"], "existing file"),
    ("sweep-out-under-file", [*SWEEP, "--out", "{d}/m.pt/sub"], "is a file"),
    ("sweep-empty-rates", [*SWEEP, "--saf-rates", ""], "non-empty"),
    ("sweep-rates-nan", [*SWEEP, "--saf-rates", "0,nan"], "finite"),
    ("sweep-rate-2", [*SWEEP, "--saf-rates", "0,2"], "faults.rate"),
    ("sweep-sigma-5", [*SWEEP, "--sigmas", "5"], "variation.sigma"),
    ("sweep-chips-0", [*SWEEP, "--chips", "0"], ">= 1"),
    ("sweep-missing-model", [*SWEEP, "--model", "{d}/missing.pt"], "missing.pt"),
    ("sweep-crossbar-memory", [*SWEEP, "--crossbar", "65536x65536"], "memory"),
    ("sweep-nan-weights", [*SWEEP, "--model", "{d}/nan.pt"], "NaN"),
    ("sweep-results-not-objects", [*SWEEP, "--out", "{d}/badsweep1"], "JSON list"),
    ("sweep-results-bad-record", [*SWEEP, "--out", "{d}/badsweep2"], "line 1: field chip_accuracy"),
    ("sweep-config-missing", ["sweep", "{d}/nope.toml", "--out", "{d}/sw"], "nope.toml"),
    ("sweep-config-not-toml", ["sweep", "{d}/m.pt", "--out", "{d}/sw"], ".toml"),
    ("sweep-config-bad-toml", ["sweep", "{d}/bad.toml", "--out", "{d}/sw"], "invalid TOML"),
    ("sweep-config-is-chip-config", ["sweep", "{d}/rlow.toml", "--out", "{d}/sw"], "unknown key cell"),
    ("sweep-config-workers-0", ["sweep", "{d}/bad.toml", "--out", "{d}/sw", "--workers", "0"], "--workers"),
    ("sweep-config-address-local", ["sweep", "{d}/bad.toml", "--out", "{d}/sw", "--address", "x"], "--address"),
    ("report-missing-folder", ["report", "{d}/nofolder"], "nofolder"),
    ("report-no-results", ["report", "{d}"], "no sweep results"),
    ("report-bad-record", ["report", "{d}/badsweep2"], "line 1: field chip_accuracy"),
    ("config-no-subcommand", ["config"], ""),
    ("config-show-unknown-preset", ["config", "show", "--preset", "nope"], "nope"),
    ("config-show-latin1", ["config", "show", "--config", "{d}/latin1.toml"], "latin1.toml"),
    ("config-show-dup-key", ["config", "show", "--config", "{d}/dup.json"], "twice"),
    ("config-show-r_on-tiny", ["config", "show", "--config", "{d}/rlow.toml"], "cell.r_on"),
    ("config-show-format-yaml", ["config", "show", "--format", "yaml"], "yaml"),
    ("config-show-folder", ["config", "show", "--config", "{d}/cfgdir.toml"], "cfgdir.toml"),
    ("config-presets-bogus-flag", ["config", "presets", "--bogus"], "--bogus"),
    ("methods-bogus-flag", ["methods", "--bogus"], "--bogus"),
    ("methods-extra-argument", ["methods", "fat"], "fat"),
    ("tolerate-unknown-method", [*TOLERATE, "--method", "magic"], "magic"),
    ("tolerate-unknown-setting", [*TOLERATE, "--set", "method.bogus=1"], "method.bogus"),
    ("tolerate-setting-out-of-range", [*TOLERATE, "--set", "method.epochs=-1"], "method.epochs"),
    ("tolerate-set-not-method", [*TOLERATE, "--set", "faults.rate=0.1"], "method.FIELD=VALUE"),
    ("tolerate-epochs-for-program", [*TOLERATE, "--method", "program", "--epochs", "2"], "method.epochs"),
    ("tolerate-out-is-model", [*TOLERATE[:-1], "{d}/m.pt"], "the same file"),
    ("tolerate-chip-missing", [*TOLERATE, "--chip", "{d}/nochip.npz"], "nochip.npz"),
    ("tolerate-chip-is-model", [*TOLERATE, "--chip", "{d}/m.pt"], "not an ittrna archive"),
    ("tolerate-map-and-miss-rate", [*TOLERATE, "--map", "{d}/c.npz", "--miss-rate", "0.1"], "--map"),
    ("tolerate-chip-out-offdevice", [*TOLERATE, "--chip-out", "{d}/x.chip.npz"], "--chip-out"),
]


def test_cli_table_is_large_and_covers_every_command():
    assert len(CLI_CASES) >= 80
    assert len({c[0] for c in CLI_CASES}) == len(CLI_CASES)
    from ittrna.cli import build_parser

    def commands(parser, path=()):  # every command of the parser tree (the leaves that run something)
        import argparse

        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path
        for action in subs:
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))

    every = set(commands(build_parser()))
    heads = {tuple(a[:2]) if a and a[0] in ("chip", "config", "data") else tuple(a[:1]) for _, a, _ in CLI_CASES}
    assert every <= heads, f"commands without a hostile case: {sorted(every - heads)}"


@pytest.mark.parametrize(("argv", "needle"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_hostile_cli_input(world, argv, needle, capsys, monkeypatch):
    if "cuda:99" in argv and torch.cuda.device_count() > 99:  # pragma: no cover
        pytest.skip("this machine has 100 CUDA devices")
    if "badsweep" in " ".join(argv) and not status("mnist").startswith("ok"):
        skip_unless_ci("the sweep reads its results after loading the data; mnist not fetched", "ITTRNA_REQUIRE_DATA")
    monkeypatch.chdir(world)
    args = [a.format(d=world, name=world.name) for a in argv]
    before, cache_before = _snapshot(world), _cache_snapshot()
    code, _, err = _run(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    assert lines[0].startswith(("ittrna: error:", "ittrna ")), lines[0]
    assert _snapshot(world) == before, "files created, changed or removed"
    assert _cache_snapshot() == cache_before


# --- the library table -------------------------------------------------------------------------------------
def _split(n: int) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


LIB_CASES: list[tuple[str, Callable[[Path], Any], type[BaseException], str]] = [
    ("config-section-float", lambda d: ChipConfig(faults=0.1), ConfigError, "ChipConfig.faults"),
    ("config-section-dict", lambda d: ChipConfig(cell={"r_on": 1e3}), ConfigError, "ChipConfig.cell"),
    ("override-int-key", lambda d: ChipConfig().override({1: 2}), ConfigError, "1"),
    ("override-list", lambda d: ChipConfig().override([("faults.rate", 0.1)]), ConfigError, "mapping"),
    ("override-r_on-tiny", lambda d: ChipConfig().override({"cell.r_on": 1e-300}), ConfigError, "cell.r_on"),
    ("override-r_on-huge", lambda d: ChipConfig().override({"cell.r_on": 1e40, "cell.r_off": 1e50}), ConfigError,
     "cell.r_on"),
    ("override-r_on-nan", lambda d: ChipConfig().override({"cell.r_on": math.nan}), ConfigError, "nan"),
    ("json-duplicate-key", lambda d: ChipConfig.from_json('{"faults": {"rate": 0.1, "rate": 0.2}}'), ConfigError,
     "twice"),
    ("dict-int-beyond-float", lambda d: ChipConfig.from_dict({"cell": {"r_on": 10**400}}), ConfigError,
     "cell.r_on"),
    ("dict-mixed-keys", lambda d: ChipConfig.from_dict({"cell": {1: 2, "r_on": 1e4}}), ConfigError, "1"),
    ("file-latin1", lambda d: ChipConfig.from_file(d / "latin1.toml"), ConfigError, "latin1.toml"),
    ("monte-carlo-no-seeds", lambda d: monte_carlo(build("mlp"), ChipConfig(), [], _split(4), progress=False),
     InputError, "seeds"),
    ("monte-carlo-seed-2^64", lambda d: monte_carlo(build("mlp"), ChipConfig(), [2**64], _split(4),
                                                    progress=False), InputError, "2**63 - 1"),
    ("fabricate-seed-2^64", lambda d: Chip.fabricate(build("mlp"), ChipConfig(), 2**64), InputError, "seed"),
    ("fabricate-seed-bool", lambda d: Chip.fabricate(build("mlp"), ChipConfig(), True), InputError, "seed"),
    ("fabricate-config-str", lambda d: Chip.fabricate(build("mlp"), "default", 0), InputError, "ChipConfig"),
    ("fabricate-memory", lambda d: Chip.fabricate(build("mlp"), ChipConfig().override(
        {"mapping.rows": 65536, "mapping.cols": 65536}), 0), ResourceError, "available"),
    ("chip-load-truncated", lambda d: Chip.load(d / "truncated.npz"), FileFormatError, "truncated.npz"),
    ("chip-load-nan-theta", lambda d: Chip.load(d / "nantheta.npz"), FileFormatError, "theta"),
    ("map-load-fault-code", lambda d: MeasuredMap.load(d / "badmap.npz"), FileFormatError, "fault code 9"),
    ("map-load-no-meta", lambda d: MeasuredMap.load(d / "mapnometa.npz"), FileFormatError, "meta"),
    ("map-load-chip", lambda d: MeasuredMap.load(d / "c.npz"), FileFormatError, "measured-map"),
    ("checkpoint-nan", lambda d: load_checkpoint(d / "nan.pt"), FileFormatError, "NaN"),
    ("checkpoint-meta-list", lambda d: load_checkpoint(d / "metalist.pt"), FileFormatError, "meta"),
    ("accuracy-empty", lambda d: accuracy(build("mlp"), _split(0)), InputError, "empty"),
    ("evaluate-empty", lambda d: evaluate(build("mlp"), Chip.fabricate(build("mlp"), ChipConfig(), 0), _split(0)),
     InputError, "empty"),
    ("train-seed-2^64", lambda d: train(build("mlp"), _split(4), epochs=1, seed=2**64, progress=False), InputError,
     "seed"),
    ("train-epochs-float", lambda d: train(build("mlp"), _split(4), epochs=1.5, progress=False), InputError,
     "epochs"),
    ("train-lr-nan", lambda d: train(build("mlp"), _split(4), epochs=1, lr=math.nan, progress=False), InputError,
     "lr"),
    ("train-empty", lambda d: train(build("mlp"), _split(0), epochs=1, progress=False), InputError, "empty"),
    ("build-unknown", lambda d: build("resnet"), UnknownNameError, "resnet"),
    ("build-memory", lambda d: build("mlp", (1, 65536, 65536)), ResourceError, "available"),
    ("build-shape-too-small", lambda d: build("lenet5", (1, 4, 4)), InputError, "in_shape"),
    ("build-shape-text", lambda d: build("mlp", "abc"), InputError, "in_shape"),
    ("save-checkpoint-suffix", lambda d: save_checkpoint(d / "x.npz", build("mlp"), META), InputError, ".pt"),
    ("save-checkpoint-no-model", lambda d: save_checkpoint(d / "x.pt", build("mlp"), {"in_shape": [1, 28, 28]}),
     InputError, "model"),
    ("chip-save-suffix", lambda d: Chip.fabricate(build("mlp"), ChipConfig(), 0).save(d / "c2.pt"),
     FileFormatError, ".npz"),
    ("data-unknown-split", lambda d: load("mnist", "bogus"), DataError, "bogus"),
    ("data-unhashable-name", lambda d: load(["mnist"]), DataError, "mnist"),  # type: ignore[arg-type]
    ("device-cuda-99", lambda d: _validate.check_device("cuda:99"), InputError, "cuda:99"),
]


@pytest.mark.parametrize(("call", "exc_type", "needle"), [c[1:] for c in LIB_CASES], ids=[c[0] for c in LIB_CASES])
def test_hostile_library_input(world, call, exc_type, needle):
    before = _snapshot(world)
    with pytest.raises(exc_type) as info:
        call(world)
    assert isinstance(info.value, InputError)
    msg = str(info.value)
    assert "\n" not in msg and needle in msg, msg
    assert _snapshot(world) == before


# --- errors are typed: bugs surface, file access names the path --------------------------------------------
def test_a_bug_is_not_reported_as_bad_input(monkeypatch, capsys):
    import ittrna.cli.parser as cli  # the parser binds each command

    def broken(args: Any) -> None:
        raise KeyError("internal")

    monkeypatch.setattr(cli, "cmd_config_presets", broken)
    with pytest.raises(KeyError):
        main(["config", "presets"])


def test_file_access_error_is_one_line_naming_the_path(monkeypatch, capsys):
    import ittrna.cli.parser as cli  # the parser binds each command

    def denied(args: Any) -> None:
        raise PermissionError(13, "Permission denied", "/some/where/c.npz")

    monkeypatch.setattr(cli, "cmd_config_presets", denied)
    code, _, err = _run(["config", "presets"], capsys)
    assert code == 1 and err.strip() == "ittrna: error: /some/where/c.npz: Permission denied"


def test_process_exit_status_and_stderr(world):
    """Through a real process: exit status, one stderr line, nothing written."""
    before = _snapshot(world)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    res = subprocess.run([sys.executable, "-m", "ittrna", "chip", "test", str(world / "c.npz"), "--out",
                          str(world / "c_hard.npz")], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1 and "same file" in res.stderr
    assert _snapshot(world) == before


def test_tile_grid_covers_the_matrix_with_the_fewest_tiles():
    """A layer's arrays are the fewest whole tiles that hold its matrix: the file checks (chip archive, measured
    map) and the memory estimate all take their shapes from the converter, so this is their one source."""
    for conv in CONVERTERS.values():
        for k, n, r, c, spare in [(784, 256, 128, 128, 0), (5, 3, 4, 4, 1), (300, 70, 64, 32, 2), (1, 1, 1, 65536, 0),
                                  (256, 128, 128, 128, 0)]:
            grid = TileGrid(k, n, r, c, spare)
            tr, tc = grid.tiles
            assert (tr - 1) * r < k <= tr * r and (tc - 1) * c < n <= tc * c
            shapes = conv.array_shapes(grid)
            assert all(h == tr * (r + spare) for h, _ in shapes.values())
            assert max(w for _, w in shapes.values()) == tc * c


def test_good_files_still_load(world):
    """The checks refuse the broken files, not the good ones."""
    assert Chip.load(world / "c.npz").seed == 1
    assert Chip.load(world / "c_sym.npz").seed == 1
    assert MeasuredMap.load(world / "map.npz").layers
    model, meta = load_checkpoint(world / "m.pt")
    assert meta == META
    offset = Chip.fabricate(model, ChipConfig().override({"mapping.scheme": "offset", "cell.levels": 16,
                                                          "cell.r_off": math.inf}), 2)
    offset.program_model(model)
    offset.save(world / "tmp-offset.npz")
    try:
        Chip.load(world / "tmp-offset.npz")
    finally:
        (world / "tmp-offset.npz").unlink()


# --- writes: permissions, interrupted writes ---------------------------------------------------------------
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_respect_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "m.pt", build("mlp"), META)
        ChipConfig().save(tmp_path / "c.toml")
    finally:
        os.umask(old)
    for name in ("m.pt", "c.toml"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


def test_stale_temporary_files_are_cleared_by_the_next_save(tmp_path):
    dead = tmp_path / ".c.toml.999999999-0a1b2c3d.tmp"  # a pid that cannot exist
    legacy = tmp_path / ".c.toml.k2j4h5g6.tmp"  # mkstemp name of older versions
    alive = tmp_path / f".c.toml.{os.getppid()}-00000000.tmp"  # a concurrent writer that is still running
    other = tmp_path / ".d.toml.999999999-0a1b2c3d.tmp"  # another target's file
    users = tmp_path / ".c.toml.notes.tmp"  # a user's own file that merely looks alike: never removed
    for p in (dead, legacy, alive, other, users):
        p.write_text("partial")
    ChipConfig().save(tmp_path / "c.toml")
    assert not dead.exists() and not legacy.exists()
    assert alive.exists() and other.exists() and users.exists()


def test_sigterm_during_a_write_removes_the_temporary_file(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(SRC)!r})
        from ittrna._io import atomic_write
        def writer(tmp):
            with open(tmp, "wb") as fh:
                fh.write(b"x" * 100000)
                fh.flush()
            print("writing", flush=True)
            time.sleep(30)
        atomic_write({str(tmp_path / "out.bin")!r}, writer)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM  # still dies by the signal
    assert list(tmp_path.iterdir()) == []
