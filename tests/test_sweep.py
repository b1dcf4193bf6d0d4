"""Sweeps from a TOML grid: validation before any work, point identity, the store's defects (each with its
test), kill-and-resume, and the Ray backend giving the local backend's records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import import_or_fail

from ittrna.cli import main
from ittrna.errors import ConfigError, FileFormatError, InputError
from ittrna.experiments.grid import DataSettings, parse_spec, point_key
from ittrna.experiments.store import ResultStore, StoreLockedError, check_record

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SMALLEST = """
[grid]
model = ["mlp"]
dataset = ["mnist"]
saf_rate = [0.0, 0.1, 0.2]
sigma = [0.0]
method = ["none", "remap"]
chip_seed = [1, 2]

[train]
epochs = 1
"""
# a tiny, fast grid: 1 epoch on 1000 images, 500-image val/test splits, quick method settings
TINY = """
[grid]
model = ["mlp"]
dataset = ["mnist"]
saf_rate = [0.1, 0.2]
method = ["none", "remap"]
chip_seed = [1, 2]

[train]
epochs = 1

[data]
train_size = 1000
val_size = 500
test_size = 500

[methods.remap]
headroom_steps = 2
search_passes = 1
search_images = 500
importance_images = 256
"""
TIMING = ("seconds", "wall_seconds")


def spec_of(text: str):
    return parse_spec(tomllib.loads(text))


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def without_timing(records):
    return {r["key"]: {k: v for k, v in r.items() if k not in TIMING} for r in records}


def _record(**changes):
    r = {"key": "k" * 64, "model": "mlp", "dataset": "mnist", "method": "none", "chip_seed": 1,
         "software_accuracy": 0.9, "chip_accuracy": 0.8, "chip_accuracy_before": 0.7, "writes": 10,
         "writes_performed": 9, "seconds": 0.1, "method_version": 1, "ittrna_version": "0.1.0",
         "model_sha256": "s" * 64, "saf_rate": 0.1, "sigma": 0.0}
    r.update(changes)
    return r


# --- the grid --------------------------------------------------------------------------------------------------
def test_smallest_config_expands_to_its_product():
    spec = spec_of(SMALLEST)
    assert len(spec.points) == 3 * 1 * 2 * 2
    cols = spec.points[0].columns
    for name in ("model", "dataset", "saf_rate", "sigma", "method", "chip_seed", "pattern", "miss_rate"):
        assert name in cols
    assert {(p.columns["saf_rate"], p.method, p.chip_seed) for p in spec.points} == {
        (r, m, s) for r in (0.0, 0.1, 0.2) for m in ("none", "remap") for s in (1, 2)}


def test_repeated_grid_values_are_one_point():
    spec = spec_of(SMALLEST.replace("saf_rate = [0.0, 0.1, 0.2]", "saf_rate = [0.1, 0.1, 0.1]")
                   .replace("chip_seed = [1, 2]", "chip_seed = [1, 1]"))
    assert len(spec.points) == 2  # one per method


def test_parts_make_a_union_and_a_shared_point_counts_once():
    text = SMALLEST.replace("saf_rate = [0.0, 0.1, 0.2]\nsigma = [0.0]\n", "") + """
[[grid.part]]
saf_rate = [0.0, 0.2]
sigma = 0.0
[[grid.part]]
saf_rate = 0.0
sigma = [0.0, 1.0]
"""
    spec = spec_of(text)
    pairs = {(p.columns["saf_rate"], p.columns["sigma"]) for p in spec.points}
    assert pairs == {(0.0, 0.0), (0.2, 0.0), (0.0, 1.0)}
    assert len(spec.points) == 3 * 2 * 2


def test_method_settings_list_is_an_axis_of_that_method_only():
    text = SMALLEST.replace('["none", "remap"]', '["none", "fat"]') + "[methods.fat]\nepochs = [1, 2]\n"
    spec = spec_of(text)
    fat = [p for p in spec.points if p.method == "fat"]
    assert {p.columns["method.epochs"] for p in fat} == {1, 2}
    assert {p.method_settings["epochs"] for p in fat} == {1, 2}
    assert all("method.epochs" not in p.columns for p in spec.points if p.method == "none")


def test_any_chip_field_is_an_axis_and_shared_settings_apply():
    spec = spec_of(SMALLEST + '[chip]\npreset = "date17"\npattern = "clustered"\n"mapping.rows" = 64\n')
    assert all(p.chip["faults"]["pattern"] == "clustered" and p.chip["mapping"]["rows"] == 64 for p in spec.points)
    assert all(p.chip["cell"]["r_off"] == "inf" for p in spec.points)
    spec = spec_of(SMALLEST.replace("sigma = [0.0]", 'sigma = [0.0]\n"cell.levels" = [16, 32]'))
    assert {p.columns["cell.levels"] for p in spec.points} == {16, 32}
    assert len(spec.points) == 24


def test_identity_is_the_content_never_a_label():
    data = DataSettings()
    a = spec_of(SMALLEST).points[0]
    same = spec_of(SMALLEST.replace("saf_rate = [0.0, 0.1, 0.2]", '"faults.rate" = [0.0]')).points[0]
    assert point_key(a, "m", data) == point_key(same, "m", data)  # short name or dotted field: one point
    other_share = spec_of(SMALLEST + "[chip]\nstuck_on_share = 0.5\n").points[0]
    assert other_share.columns["saf_rate"] == a.columns["saf_rate"]  # same labels ...
    assert point_key(other_share, "m", data) != point_key(a, "m", data)  # ... another point
    assert point_key(a, "m2", data) != point_key(a, "m", data)  # other weights
    assert point_key(a, "m", DataSettings(test_size=100)) != point_key(a, "m", data)
    miss = spec_of(SMALLEST + "[chip]\nmiss_rate = 0.05\n").points[0]
    assert point_key(miss, "m", data) != point_key(a, "m", data)  # test config


BAD_CONFIGS = [
    ("unknown-top", SMALLEST + "[extra]\nx = 1\n", "unknown key extra"),
    ("unknown-grid-key", SMALLEST.replace("sigma = [0.0]", "sigmaa = [0.0]"), "grid.sigmaa"),
    ("unknown-method", SMALLEST.replace('"remap"', '"remapp"'), "'remapp'"),
    ("unknown-model", SMALLEST.replace('["mlp"]', '["mlp", "resnet"]'), "'resnet'"),
    ("unknown-dataset", SMALLEST.replace('["mnist"]', '["imagenet"]'), "'imagenet'"),
    ("saf-out-of-range", SMALLEST.replace("0.2]", "1.5]"), "faults.rate = 1.5"),
    ("sigma-out-of-range", SMALLEST.replace("sigma = [0.0]", "sigma = [9]"), "variation.sigma"),
    ("pattern-unknown", SMALLEST.replace("sigma = [0.0]", 'pattern = ["spiral"]'), "faults.pattern"),
    ("empty-axis", SMALLEST.replace("chip_seed = [1, 2]", "chip_seed = []"), "chip_seed is empty"),
    ("empty-methods", SMALLEST.replace('["none", "remap"]', "[]"), "method is empty"),
    ("no-model", SMALLEST.replace('model = ["mlp"]\n', ""), "grid.model is missing"),
    ("seed-negative", SMALLEST.replace("[1, 2]", "[-1]"), "chip_seed"),
    ("seed-string", SMALLEST.replace("[1, 2]", '["one"]'), "chip_seed"),
    ("method-setting-range", SMALLEST + "[methods.remap]\nrounds = 99\n", "method.rounds"),
    ("method-setting-unknown", SMALLEST + "[methods.remap]\nepochs = 3\n", "method.epochs"),
    ("method-setting-of-unused-method", SMALLEST + "[methods.fat]\nepochs = -1\n", "methods.fat"),
    ("method-table-unknown", SMALLEST + "[methods.nope]\nx = 1\n", "methods.nope"),
    ("train-epochs", SMALLEST.replace("epochs = 1", "epochs = -1"), "train.epochs"),
    ("train-unknown", SMALLEST.replace("epochs = 1", "epoch = 1"), "train.epoch"),
    ("chip-preset", SMALLEST + '[chip]\npreset = "nope"\n', "'nope'"),
    ("chip-field", SMALLEST + "[chip]\n\"mapping.rows\" = 0\n", "mapping.rows"),
    ("chip-list", SMALLEST + "[chip]\nsigma = [1.0]\n", "chip.sigma"),
    ("data-split", SMALLEST + '[data]\nsplit = "train"\n', "data.split"),
    ("no-grid", "[train]\nepochs = 1\n", "[grid]"),
    ("chip-too-big", SMALLEST + '[chip]\n"mapping.rows" = 65536\n"mapping.cols" = 65536\n', "memory"),
]


@pytest.mark.parametrize(("text", "needle"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_one_error_naming_it(text, needle, tmp_path, capsys):
    with pytest.raises(InputError) as info:  # a ConfigError, or a ResourceError for a chip too big
        spec_of(text)
    assert needle in str(info.value) and "\n" not in str(info.value)
    cfg = tmp_path / "s.toml"
    cfg.write_text(text)
    code, _, err = run(capsys, "sweep", cfg, "--out", tmp_path / "out", "--quiet")
    assert code == (2 if isinstance(info.value, ConfigError) else 1), err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists()  # nothing written


def test_flag_and_config_forms_do_not_mix(tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text(SMALLEST)
    code, _, err = run(capsys, "sweep", cfg, "--out", tmp_path / "o", "--saf-rates", "0.1")
    assert code == 2 and "--saf-rates" in err
    code, _, err = run(capsys, "sweep", "--out", tmp_path / "o")
    assert code == 2 and "CONFIG" in err
    assert not (tmp_path / "o").exists()


# --- the store: each defect of the old one -------------------------------------------------------------------
def test_second_writer_gets_a_clear_error(tmp_path, capsys, mnist_train):
    first = ResultStore(tmp_path).open_writer()
    try:
        with pytest.raises(StoreLockedError, match="another sweep"):
            ResultStore(tmp_path).open_writer()
        cfg = tmp_path / "s.toml"
        cfg.write_text(TINY)
        code, _, err = run(capsys, "sweep", cfg, "--out", tmp_path, "--quiet")
        assert code == 1 and "being written by another sweep" in err and len(err.strip().splitlines()) == 1
    finally:
        first.close()
    with ResultStore(tmp_path).open_writer():  # released: a writer may come
        pass


def test_lock_of_a_killed_writer_is_free(tmp_path):
    code = (f"import sys, os; sys.path.insert(0, {str(ROOT / 'src')!r})\n"
            "from ittrna.experiments.store import ResultStore\n"
            f"ResultStore({str(tmp_path)!r}).open_writer(); print('locked', flush=True); os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "locked" in proc.stdout and proc.returncode == -signal.SIGKILL
    with ResultStore(tmp_path).open_writer():
        pass


def test_partial_last_line_is_set_aside_never_merged(tmp_path):
    store = ResultStore(tmp_path)
    whole = json.dumps(_record(key="a" * 64)) + "\n"
    cut = json.dumps(_record(key="b" * 64))[:57]
    store.path.write_text(whole + cut)
    assert [r["key"] for r in store.read()] == ["a" * 64]  # a reader skips it, touches nothing
    assert store.path.read_text() == whole + cut
    with store.open_writer():
        assert store.set_aside == tmp_path / "results.jsonl.partial-1"
        assert store.set_aside.read_bytes() == cut.encode()  # the bytes as they were
        assert store.path.read_text() == whole
        store.append(_record(key="c" * 64))
    assert [r["key"] for r in ResultStore(tmp_path).read()] == ["a" * 64, "c" * 64]
    assert all(json.loads(line) for line in store.path.read_text().splitlines())
    store.path.write_text(store.path.read_text() + "{")  # a second crash: another file, the first kept
    with store.open_writer():
        assert store.set_aside == tmp_path / "results.jsonl.partial-2"
    assert (tmp_path / "results.jsonl.partial-1").read_bytes() == cut.encode()
    assert "c" * 64 in (tmp_path / "results.csv").read_text()  # the CSV mirrors the store


BAD_RECORDS = [
    ("string-accuracy", _record(chip_accuracy="abc"), "field chip_accuracy"),
    ("list-value", _record(saf_rate=[0.1, 0.2]), "field saf_rate"),
    ("list-unknown-field", _record(extra=[1]), "field extra"),
    ("accuracy-7.5", _record(chip_accuracy=7.5), "outside [0, 1]"),
    ("writes-negative", _record(writes=-3), "field writes"),
    ("writes-float", _record(writes=2.5), "field writes"),
    ("seed-bool", _record(chip_seed=True), "field chip_seed"),
    ("missing-field", {k: v for k, v in _record().items() if k != "chip_accuracy"}, "chip_accuracy is missing"),
]


@pytest.mark.parametrize(("record", "needle"), [c[1:] for c in BAD_RECORDS], ids=[c[0] for c in BAD_RECORDS])
def test_record_with_wrong_types_is_an_error_naming_the_line(tmp_path, record, needle, capsys):
    store = ResultStore(tmp_path)
    store.path.write_text(json.dumps(_record(key="a" * 64)) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(FileFormatError, match="line 2") as info:
        store.read()
    assert needle in str(info.value)
    with pytest.raises(FileFormatError, match="line 2"):
        store.open_writer()
    code, _, err = run(capsys, "report", tmp_path)
    assert code == 1 and "line 2" in err and needle in err and len(err.strip().splitlines()) == 1
    with pytest.raises(FileFormatError):
        check_record(record, "x")


def test_nan_and_garbage_lines_are_errors_too(tmp_path):
    store = ResultStore(tmp_path)
    store.path.write_text(json.dumps(_record()).replace('"chip_accuracy": 0.8', '"chip_accuracy": NaN') + "\n")
    with pytest.raises(FileFormatError, match="line 1: field chip_accuracy"):
        store.read()
    store.path.write_text("not json\n" + json.dumps(_record()) + "\n")
    with pytest.raises(FileFormatError, match="line 1 is not a JSON record"):
        store.read()


def test_a_point_stored_twice_is_an_error_not_a_double_count(tmp_path):
    store = ResultStore(tmp_path)
    store.path.write_text(json.dumps(_record()) + "\n" + json.dumps(_record(chip_accuracy=0.1)) + "\n")
    with pytest.raises(FileFormatError, match="line 2 repeats the point of line 1"):
        store.read()
    store.path.unlink()
    with store.open_writer():
        store.append(_record())
        with pytest.raises(RuntimeError, match="stored already"):
            store.append(_record())


def test_empty_grid_is_refused_before_writing_anything(tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text(SMALLEST.replace('saf_rate = [0.0, 0.1, 0.2]', "saf_rate = []"))
    code, _, err = run(capsys, "sweep", cfg, "--out", tmp_path / "out")
    assert code == 2 and "saf_rate is empty" in err
    assert not (tmp_path / "out").exists()


def test_flag_form_keeps_the_sigma_0_row_on_resume(tmp_path, capsys, trained_mlp, mnist_test):
    """The old store dropped sigma = 0 when resuming: it shares its config (and so its point) with saf 0."""
    from ittrna.models import save_checkpoint

    pt = tmp_path / "m.pt"
    save_checkpoint(pt, trained_mlp, {"model": "mlp", "dataset": "mnist", "in_shape": [1, 28, 28],
                                      "num_classes": 10})
    base = ("sweep", "--model", pt, "--chips", "2", "--out", tmp_path / "o", "--quiet", "--json")
    code, out, err = run(capsys, *base, "--saf-rates", "0", "--sigmas", "0.5")
    assert code == 0, err
    code, out, err = run(capsys, *base, "--saf-rates", "0", "--sigmas", "0,0.5")
    assert code == 0, err
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    assert {(r["axis"], r["value"], r["chips"]) for r in rows} == {("saf_rate", 0.0, 2), ("sigma", 0.0, 2),
                                                                   ("sigma", 0.5, 2)}
    assert len(ResultStore(tmp_path / "o").read()) == 4  # (0, 0) and (0, 0.5) on 2 chips, each once
    # a repeated value is one point: no double-counted chips, no shrunken std
    code, out, err = run(capsys, *base, "--saf-rates", "0.1,0.1", "--sigmas", "0")
    assert code == 0, err
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    assert [r["chips"] for r in rows if r["axis"] == "saf_rate"] == [2]
    assert len(ResultStore(tmp_path / "o").read()) == 6


# --- kill and resume ---------------------------------------------------------------------------------------
def _sweep_proc(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, "-m", "ittrna", "sweep", str(cfg), "--out", str(out), "--quiet", *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_after(cfg: Path, out: Path, records: int, *extra: str, timeout: float = 120) -> int:
    """Start the sweep, SIGKILL it once the store holds ``records`` lines; return the lines then."""
    proc = _sweep_proc(cfg, out, *extra)
    t0 = time.monotonic()
    while _lines(out / "results.jsonl") < records and proc.poll() is None and time.monotonic() - t0 < timeout:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return _lines(out / "results.jsonl")


def test_kill_9_in_the_middle_of_a_record_then_resume_equals_an_uninterrupted_run(tmp_path, mnist_train):
    """The writer is killed while a record is half on disk (a fault-injection hook pauses inside the write,
    after at least one complete record); the resumed store sets the half line aside byte for byte and equals
    an uninterrupted run."""
    from ittrna.experiments.grid import load_spec
    from ittrna.experiments.store import PAUSE_ENV
    from ittrna.experiments.sweep import run_spec

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    reference = run_spec(load_spec(cfg), tmp_path / "ref", progress=False).records  # uninterrupted
    assert len(reference) == 8
    out, marker = tmp_path / "killed", tmp_path / "paused"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), PAUSE_ENV: f"{marker}:2"}
    proc = subprocess.Popen([sys.executable, "-m", "ittrna", "sweep", str(cfg), "--out", str(out), "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while not marker.exists():
        assert proc.poll() is None, f"the sweep ended before the pause: {proc.stderr.read().decode()[-500:]}"
        assert time.monotonic() - t0 < 300, "the sweep never reached the paused write"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    data = (out / "results.jsonl").read_bytes()
    whole, _, half = data.rpartition(b"\n")
    assert whole.count(b"\n") + 1 == 2 and half.startswith(b'{"') and not half.endswith(b"}")  # 2 whole + half
    first = _sweep_proc(cfg, out)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()
    records = ResultStore(out).read()
    assert len(records) == 8 and len({r["key"] for r in records}) == 8
    assert without_timing(records) == without_timing(reference)
    assert (out / "results.jsonl.partial-1").read_bytes() == half
    assert sorted((out / "models").iterdir()) == sorted((out / "models").glob("*.pt"))  # no temporary left


@pytest.mark.slow  # ~1 min: a Ray driver started and killed, then a local resume
def test_killed_ray_driver_resumes_like_a_local_one(tmp_path, mnist_train):
    import_or_fail("ray", "ITTRNA_REQUIRE_RAY")
    from ittrna.experiments.grid import load_spec
    from ittrna.experiments.sweep import run_spec

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    reference = run_spec(load_spec(cfg), tmp_path / "ref", progress=False).records
    out = tmp_path / "killed"
    seen = _kill_after(cfg, out, 2, "--backend", "ray", "--workers", "2")
    assert seen < 8
    proc = _sweep_proc(cfg, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert without_timing(ResultStore(out).read()) == without_timing(reference)


def test_every_registered_method_runs_as_a_sweep_point(tmp_path, mnist_train):
    """Each method of the registry (today's and later ones) goes through the same point, quick settings."""
    from ittrna.experiments.sweep import run_spec
    from ittrna.methods import METHODS

    quick = {"epochs": 1, "search_images": 200, "importance_images": 64, "headroom_steps": 2, "search_passes": 1,
             "rounds": 1, "iterations": 1, "write_budget": 500, "calib_images": 64, "digital_epochs": 0,
             "eval_every": 50, "eval_images": 100}
    tables = ""
    for name, spec in METHODS.items():
        fields = spec.config().to_dict()
        settings = {k: v for k, v in quick.items() if k in fields}
        tables += f"[methods.{name}]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
    text = SMALL.replace('["none", "remap"]', json.dumps(list(METHODS))).replace("[1, 2]", "[3]")
    text = text.split("[methods.remap]")[0].replace("train_size = 1000", "train_size = 500") + tables
    outcome = run_spec(spec_of(text), tmp_path, progress=False)
    assert [r["method"] for r in outcome.records] == list(METHODS)
    for r in outcome.records:
        assert r["writes"] > 0 and r["method_version"] == METHODS[r["method"]].version
    before = {r["chip_accuracy_before"] for r in outcome.records}
    assert len(before) == 1  # one chip, programmed plainly before each method: the same starting accuracy
    (plain,) = [r for r in outcome.records if r["method"] == "none"]
    assert plain["chip_accuracy"] == plain["chip_accuracy_before"]


# --- backends --------------------------------------------------------------------------------------------
SMALL = TINY.replace("saf_rate = [0.1, 0.2]", "saf_rate = [0.2]")


def test_ray_backend_gives_the_local_records(tmp_path, mnist_train):
    """On a local Ray with 2 CPUs (CI sets ITTRNA_REQUIRE_RAY=1: there a missing Ray fails, never skips)."""
    import_or_fail("ray", "ITTRNA_REQUIRE_RAY")
    from ittrna.experiments.backends import make_backend
    from ittrna.experiments.sweep import run_spec

    spec = spec_of(SMALL)
    local = run_spec(spec, tmp_path / "local", progress=False).records
    with make_backend("ray", workers=2) as backend:
        assert backend.workers == 2
        remote = run_spec(spec, tmp_path / "ray", backend=backend, progress=False)
    assert remote.computed == 4 and len(remote.trained) == 1
    assert without_timing(remote.records) == without_timing(local)
    assert len(ResultStore(tmp_path / "ray").read()) == 4


def test_models_are_trained_once_per_settings_and_data(tmp_path, mnist_train):
    from ittrna.experiments.sweep import run_spec

    small = SMALL.replace('["none", "remap"]', '["none"]').replace("chip_seed = [1, 2]", "chip_seed = [1]")
    first = run_spec(spec_of(small), tmp_path, progress=False)
    assert len(first.trained) == 1 and first.computed == 1
    again = run_spec(spec_of(small), tmp_path, progress=False)  # cached: nothing trained or computed
    assert again.trained == [] and again.computed == 0
    other = run_spec(spec_of(small.replace("train_size = 1000", "train_size = 800")), tmp_path, progress=False)
    assert len(other.trained) == 1 and other.computed == 1  # other data: another model, another point
    assert other.records[0]["model_sha256"] != first.records[0]["model_sha256"]
    assert len(list((tmp_path / "models").glob("*.pt"))) == 2


@pytest.mark.slow  # ~20 s: two spawned processes import torch and load the data
def test_local_process_pool_gives_the_same_records(tmp_path, mnist_train):
    from ittrna.experiments.backends import LocalBackend
    from ittrna.experiments.sweep import run_spec

    spec = spec_of(SMALL.replace('["none", "remap"]', '["none"]'))
    one = run_spec(spec, tmp_path / "one", progress=False).records
    with LocalBackend(workers=2) as backend:
        two = run_spec(spec, tmp_path / "two", backend=backend, progress=False).records
    assert without_timing(one) == without_timing(two)


def test_local_workers_start_with_one_thread_per_blas_pool(monkeypatch):
    """Two workers on two cores, each with a BLAS pool of one thread per core, ran the exact IR-drop solve
    2.5-3x slower: the pool's workers get one thread each, and this process's environment is left as it was."""
    from ittrna.experiments.backends import LocalBackend

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "7")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    names = [("OPENBLAS_NUM_THREADS",), ("OMP_NUM_THREADS",), ("MKL_NUM_THREADS",)]
    with LocalBackend(workers=2) as backend:
        seen = dict(backend.run(os.getenv, names))
    assert seen == {0: "1", 1: "1", 2: "1"}
    assert os.environ["OPENBLAS_NUM_THREADS"] == "7" and "OMP_NUM_THREADS" not in os.environ


@pytest.mark.slow  # ~40 s: a Ray cluster started here, a sweep connecting to it by address
def test_ray_backend_connects_to_a_running_cluster(tmp_path, mnist_train):
    ray = import_or_fail("ray", "ITTRNA_REQUIRE_RAY")
    from ittrna.experiments.sweep import run_spec

    cfg = tmp_path / "s.toml"
    cfg.write_text(SMALL.replace('["none", "remap"]', '["none"]'))
    local = run_spec(spec_of(cfg.read_text()), tmp_path / "local", progress=False).records
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        address = ray.get_runtime_context().gcs_address
        proc = _sweep_proc(cfg, tmp_path / "remote", "--backend", "ray", "--address", address)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    finally:
        ray.shutdown()
    assert without_timing(ResultStore(tmp_path / "remote").read()) == without_timing(local)


def test_ray_backend_missing_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    cfg = tmp_path / "s.toml"
    cfg.write_text(SMALL)
    code, _, err = run(capsys, "sweep", cfg, "--out", tmp_path / "o", "--backend", "ray")
    assert code == 1 and "ittrna[ray]" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["quick", "paper-mlp", "paper-cnn"])
def test_shipped_sweep_configs_validate(name):
    from ittrna.experiments.grid import load_spec

    spec = load_spec(ROOT / "configs" / f"{name}.toml")
    assert spec.points and spec.title
    seeds = {p.chip_seed for p in spec.points}
    assert min(seeds) >= 1000 and len(seeds) >= 3
    if name == "quick":
        assert {p.method for p in spec.points} == {"none", "program", "remap", "remap-fat"}
        assert len(spec.points) <= 48


@pytest.mark.parametrize("part, full", [("1-mlp-claims", "paper-mlp"), ("2-cnn-claims", "paper-cnn"),
                                        ("3-cnn-rest", "paper-cnn")])
def test_paper_order_configs_are_subsets_of_the_full_studies(part, full):
    """configs/paper-order/ runs the claim settings first into the full study's folder: every point it computes
    must be one of the full config's points (same content, same data), so the full run reuses them."""
    from ittrna.experiments.grid import load_spec

    sub = load_spec(ROOT / "configs" / "paper-order" / f"{part}.toml")
    whole = load_spec(ROOT / "configs" / f"{full}.toml")
    assert sub.data == whole.data
    whole_points = {p.content() for p in whole.points}
    assert sub.points and all(p.content() in whole_points for p in sub.points)
    assert len(sub.points) < len(whole.points)


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    """A write cut just before its newline, or a file whose editor dropped the last newline: the record is
    whole, so it is read, and the writer completes the line (nothing set aside, nothing recomputed)."""
    store = ResultStore(tmp_path)
    first, last = json.dumps(_record(key="a" * 64)), json.dumps(_record(key="b" * 64))
    store.path.write_text(first + "\n" + last)
    assert [r["key"] for r in store.read()] == ["a" * 64, "b" * 64]
    with store.open_writer():
        assert store.set_aside is None and store.path.read_text() == first + "\n" + last + "\n"
        store.append(_record(key="c" * 64))
    assert [r["key"] for r in ResultStore(tmp_path).read()] == ["a" * 64, "b" * 64, "c" * 64]
    store.path.write_text(first + "\n" + first)  # the same point again, unterminated: not a new record
    assert [r["key"] for r in store.read()] == ["a" * 64]


def test_a_file_where_the_sweep_keeps_its_models_is_refused_before_any_write(tmp_path):
    from ittrna.errors import InputError
    from ittrna.experiments.grid import parse_spec
    from ittrna.experiments.sweep import run_spec

    spec = parse_spec({"grid": {"model": ["mlp"], "dataset": ["mnist"], "chip_seed": [1]}})
    (tmp_path / "models").write_text("mine")
    with pytest.raises(InputError, match="models is a file"):
        run_spec(spec, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # nothing written beside it


def test_an_unreachable_ray_address_is_a_one_line_error_not_a_hang():
    import socket

    from ittrna.errors import InputError
    from ittrna.experiments.backends import _check_reachable

    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(InputError, match=f"--address 127.0.0.1:{port}: no Ray cluster answers"):
            _check_reachable(f"127.0.0.1:{port}", timeout=2)
    _check_reachable("auto")  # left to Ray
