"""The hostile inputs of the 'front door and truth' issue, one test per class: each a one-line error naming the
value and what is accepted, with nothing written (or, for the store, nothing lost)."""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from ittrna.cli import main
from ittrna.config import ChipConfig
from ittrna.errors import ConfigError, DataError, FileFormatError, InputError
from ittrna.experiments.grid import load_spec, parse_spec
from ittrna.experiments.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]
GRID = {"model": ["mlp"], "dataset": ["mnist"], "chip_seed": [1]}


def _one_line(exc: BaseException) -> bool:
    return len(str(exc).splitlines()) == 1 and len(str(exc)) < 400


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- integers too long for int-to-str or for a float --------------------------------------------------------
@pytest.mark.parametrize("text", ["1" * 5000, "1" * 400])
def test_huge_integers_in_configs_are_one_line_errors(tmp_path, text):
    for suffix, body in ((".toml", f"[faults]\nrate = {text}\n"), (".json", f'{{"faults": {{"rate": {text}}}}}')):
        f = tmp_path / f"c{suffix}"
        f.write_text(body)
        with pytest.raises(ConfigError) as err:
            ChipConfig.from_file(f)
        assert _one_line(err.value) and str(f) in str(err.value)
    f = tmp_path / "s.toml"
    f.write_text(f"[grid]\nmodel = ['mlp']\ndataset = ['mnist']\nchip_seed = [{text}]\n")
    with pytest.raises(ConfigError) as err:
        load_spec(f)
    assert _one_line(err.value)


def test_huge_integers_in_a_store_and_a_chip_header(tmp_path):
    from ittrna._io import load_npz

    (tmp_path / "results.jsonl").write_text('{"key": "' + "a" * 64 + '", "writes": ' + "9" * 400 + "}\n")
    with pytest.raises(FileFormatError) as err:
        ResultStore(tmp_path).read()
    assert _one_line(err.value) and "writes" in str(err.value)
    (tmp_path / "results.jsonl").write_text('{"key": "' + "a" * 64 + '", "writes": ' + "9" * 5000 + "}\n")
    with pytest.raises(FileFormatError) as err:
        ResultStore(tmp_path).read()
    assert _one_line(err.value)
    np.savez(tmp_path / "c.npz", __header__=np.array('{"kind": "chip", "seed": ' + "7" * 5000 + "}"))
    with pytest.raises(FileFormatError) as err:
        load_npz(tmp_path / "c.npz", "chip")
    assert _one_line(err.value)


def test_huge_integers_in_a_set_flag_and_a_seed_flag(capsys):
    for argv in (["chip", "make", "--model", "m.pt", "--out", "c.npz", "--set", "faults.rate=" + "1" * 5000],
                 ["evaluate", "--model", "m.pt", "--seed", "1" * 5000]):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
        err = capsys.readouterr().err
        assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


# --- nesting thousands deep ----------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [40, 3000])
def test_deep_nesting_is_a_one_line_error(tmp_path, depth):
    f = tmp_path / "c.toml"
    f.write_text("[faults]\nrate = " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(ConfigError) as err:
        ChipConfig.from_file(f)
    assert _one_line(err.value) and "nested" in str(err.value)
    g = tmp_path / "c.json"
    g.write_text('{"faults": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(ConfigError) as err:
        ChipConfig.from_file(g)
    assert _one_line(err.value) and "nested" in str(err.value)
    (tmp_path / "results.jsonl").write_text('{"key": ' + "[" * depth + "]" * depth + "}\n")
    with pytest.raises(FileFormatError) as err:
        ResultStore(tmp_path).read()
    assert _one_line(err.value)


def test_deep_nesting_on_the_command_line_is_one_line(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[faults]\nrate = " + "[" * 3000 + "]" * 3000 + "\n")
    res = subprocess.run([sys.executable, "-m", "ittrna", "config", "show", "--config", str(f)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


# --- the grid's point limit ------------------------------------------------------------------------------------
def test_the_point_limit_counts_every_part_and_method_settings():
    part = {"sigma": [i / 1000 for i in range(999)], "saf_rate": [0.0], "chip_seed": list(range(1000))}
    with pytest.raises(ConfigError, match="brings the grid to 1998000 points"):
        parse_spec({"grid": {**GRID, "part": [part, {**part, "saf_rate": [0.1]}]}})
    methods = {"aft": {"epochs": list(range(1, 1001)), "lr": [i / 1e4 + 1e-4 for i in range(2000)]}}
    with pytest.raises(ConfigError, match="2000000 combinations"):
        parse_spec({"grid": {**GRID, "method": ["aft"]}, "methods": methods})
    few = {"aft": {"epochs": list(range(1, 11))}}
    big = {**GRID, "method": ["aft"], "sigma": [i / 1e6 for i in range(1000)], "chip_seed": list(range(101))}
    with pytest.raises(ConfigError, match="1010000 points"):
        parse_spec({"grid": big, "methods": few})


# --- a named pipe as a config or sweep file --------------------------------------------------------------------
def test_a_named_pipe_is_refused_not_read(tmp_path):
    for name, load in (("c.toml", ChipConfig.from_file), ("s.toml", load_spec)):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        result: list[BaseException] = []

        def read(load=load, fifo=fifo, result=result) -> None:
            try:
                load(fifo)
            except ConfigError as exc:
                result.append(exc)

        t = threading.Thread(target=read)
        t.start()
        t.join(10)
        if t.is_alive():  # unblock the reader before failing
            with open(fifo, "w"):
                pass
            pytest.fail(f"reading {name} as a named pipe blocked")
        assert result and "not a regular file" in str(result[0]) and _one_line(result[0])


# --- a store never loses bytes it did not write ----------------------------------------------------------------
def test_binary_bytes_without_a_newline_are_set_aside_byte_for_byte(tmp_path):
    junk = bytes(b for b in range(256) if b != 0x0A) * 3  # no newline anywhere: all of it a cut last line
    (tmp_path / "results.jsonl").write_bytes(junk)
    store = ResultStore(tmp_path)
    with store.open_writer():
        assert store.set_aside is not None
        assert store.set_aside.read_bytes() == junk
    assert (tmp_path / "results.jsonl").read_bytes() == b""


def test_a_symlink_loop_store_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").symlink_to(out / "results.jsonl")
    cfg = tmp_path / "s.toml"
    cfg.write_text("[grid]\nmodel = ['mlp']\ndataset = ['mnist']\nchip_seed = [1]\n[train]\nepochs = 1\n")
    code = main(["sweep", str(cfg), "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1 and "symbolic link loop" in err
    assert sorted(p.name for p in out.iterdir()) == ["results.jsonl"]  # no model trained, nothing written


# --- the same point under two spellings ------------------------------------------------------------------------
def test_the_same_point_under_two_spellings_is_one_point_or_an_error():
    spec = parse_spec({"grid": {**GRID, "saf_rate": [0.0, -0.0, 0.1], "sigma": [-0.0]}})
    assert len(spec.points) == 2
    with pytest.raises(ConfigError, match='saf_rate and faults.rate name the same chip field'):
        parse_spec({"grid": {**GRID, "saf_rate": [0.1], "faults.rate": [0.2]}})
    spec = parse_spec({"grid": {**GRID, "saf_rate": [0.1], "part": [{"faults.rate": [0.2]}]}})
    assert [p.chip["faults"]["rate"] for p in spec.points] == [0.2]  # a part's spelling replaces the grid's


# --- tuned files and stored records out of range ---------------------------------------------------------------
def test_a_forged_deployment_is_refused_when_programmed():
    from ittrna.chip import Chip
    from ittrna.host import Deployment
    from ittrna.models import build

    model = build("mlp")
    chip = Chip.fabricate(model, ChipConfig(), 0)
    names = [layer.name for layer in chip]
    good = {n: {a: torch.full_like(arr.g, chip.config.cell.g_min) for a, arr in chip.layer(n).arrays.items()}
            for n in names}
    state = model.state_dict()
    for targets, needle in (({names[0]: good[names[0]]}, "none for chip layer"),
                            ({**good, names[1]: {"pos": good[names[1]]["pos"]}}, "name arrays"),
                            ({**good, names[2]: {a: -t for a, t in good[names[2]].items()}}, "accepted conductances"),
                            ({**good, names[2]: {a: t + 1e6 for a, t in good[names[2]].items()}},
                             "accepted conductances")):
        dep = Deployment(state, {n: 1.0 for n in names}, {}, targets, {}, {})
        with pytest.raises(InputError, match=needle) as err:
            chip.program_deployment(dep)
        assert _one_line(err.value)
    assert chip.writes_issued == 0


def test_stored_records_outside_the_grids_ranges_are_refused(tmp_path):
    import json

    base = {"key": "a" * 64, "model": "mlp", "dataset": "mnist", "method": "none", "chip_seed": 1,
            "software_accuracy": 0.9, "chip_accuracy": 0.5, "chip_accuracy_before": 0.5, "writes": 1,
            "writes_performed": 1, "seconds": 1.0, "method_version": 1, "ittrna_version": "0", "model_sha256": "s"}
    for field, value in (("chip_seed", 2**64), ("writes", 2**63), ("saf_rate", 1.5), ("miss_rate", -0.1)):
        (tmp_path / "results.jsonl").write_text(json.dumps({**base, field: value}) + "\n")
        with pytest.raises(FileFormatError, match=field) as err:
            ResultStore(tmp_path).read()
        assert _one_line(err.value)


# --- CIFAR-10 folders that lie -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "labels", "needle"), [
    (np.zeros((4, 3072), np.uint8), [0, 1, 2, 10], "accepted class indices in"),
    (np.zeros((4, 3072), np.uint8), [0, 1, -1, 2], "accepted class indices in"),
    (np.full((4, 3072), 300, np.int64), [0, 1, 2, 3], "accepted bytes"),
    (np.full((4, 3072), 0.5), [0, 1, 2, 3], "accepted bytes"),
    (np.zeros((4, 3072), np.uint8), [0, 1, 2], "one label per image"),
])
def test_a_cifar_folder_with_bad_contents_is_refused(tmp_path, data, labels, needle):
    from ittrna.data import load

    for name in ["test_batch", *[f"data_batch_{i}" for i in range(1, 6)]]:
        with open(tmp_path / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh, protocol=2)
    with pytest.raises(DataError, match=needle) as err:
        load("cifar10", "test", data_dir=tmp_path)
    assert _one_line(err.value)


# --- the command line: closed stdout, flag names, values as typed ------------------------------------------------
def test_closed_stdout_is_an_error_not_lost_output():
    res = subprocess.run(f"{sys.executable} -m ittrna config presets >&-", shell=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert res.returncode != 0 and "standard output is closed" in res.stderr


def test_errors_name_the_flag_and_the_value_as_typed(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["chip", "make", "--model", "m.pt", "--seed", "0_5", "--out", "c.npz"])
    err = capsys.readouterr().err
    assert "'0_5' is not an integer" in err
    with pytest.raises(SystemExit):
        main(["chip", "make", "--model", "m.pt", "--sigma", "1_0", "--out", "c.npz"])
    assert "'1_0' is not a number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["chip", "make", "--model", "m.pt", "--sigma", "3.50", "--out", "c.npz"])
    assert "'3.50' is out of range" in capsys.readouterr().err
    before = _files(tmp_path)
    code = main(["tolerate", "--method", "codesign", "--model", str(tmp_path / "m.pt"), "--chip",
                 str(tmp_path / "c.npz"), "--out", str(tmp_path / "t.pt"), "--chip-out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "--chip-out" in err and "--out " not in err
    assert _files(tmp_path) == before


# --- the adversarial sweep of this stop (tests/ of each class it found) ---------------------------------------
def _cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    return code, err


@pytest.fixture
def files(tmp_path):
    from ittrna.chip import Chip
    from ittrna.models import build, save_checkpoint

    model = build("mlp")
    save_checkpoint(tmp_path / "m.pt", model, {"model": "mlp", "dataset": "mnist", "in_shape": [1, 28, 28],
                                               "num_classes": 10})
    Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.1, "test.miss_rate": 0.5}), 1).save(
        tmp_path / "c.npz")
    return tmp_path


def test_the_other_number_parsers_read_numbers_as_typed():
    from ittrna.cli import _crossbar, _float_list

    for bad in ("1_28x1_28", "128x", "x128", "12.8x128"):
        with pytest.raises(argparse.ArgumentTypeError, match="ROWSxCOLS"):
            _crossbar(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="decimal numbers"):
        _float_list("0_1")
    assert _float_list("-0.0,0.5") == [0.0, 0.5] and str(_float_list("-0.0")[0]) == "0.0"


@pytest.mark.parametrize(("argv", "needle"), [
    (["chip", "make", "--saf-rate", "0.1", "--set", "faults.rate=0.3"], "same field"),
    (["chip", "make", "--crossbar", "64x64", "--set", "mapping.rows=32"], "same field"),
    (["chip", "make", "--set", "faults.rate=0.1", "--set", "faults.rate=0.3"], "given twice"),
    (["sweep", "--saf-rates", "0.1", "--sigmas", "0", "--sigma", "0.7"], "--sigmas"),
    (["sweep", "--saf-rates", "0.1", "--sigmas", "0", "--saf-rate", "0.3"], "--saf-rates"),
    (["tolerate", "--method", "noise", "--epochs", "0", "--set", "method.epochs=3", "--chip", "{d}/c.npz"],
     "same field"),
    (["tolerate", "--method", "none", "--map", "{d}/c.npz", "--test-seed", "7", "--chip", "{d}/c.npz"],
     "--test-seed"),
    (["evaluate", "--chip", "{d}/c.npz", "--seed", "7"], "--seed"),
])
def test_options_that_would_be_ignored_or_overridden_are_refused(files, capsys, argv, needle):
    argv = [a.format(d=files) for a in argv] + ["--model", str(files / "m.pt")]
    if argv[0] in ("chip", "sweep", "tolerate"):
        argv += ["--out", str(files / ("o" if argv[0] == "sweep" else "o.npz" if argv[0] == "chip" else "t.pt"))]
    before = _files(files)
    code, err = _cli(capsys, *argv)
    assert code != 0 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert _files(files) == before


def test_chip_test_defaults_to_the_chips_own_test_settings(files, capsys):
    from ittrna.chip import Chip
    from ittrna.host import MeasuredMap

    code, err = _cli(capsys, "chip", "test", str(files / "c.npz"), "--out", str(files / "map.npz"))
    assert code == 0, err
    measured = MeasuredMap.load(files / "map.npz")
    chip = Chip.load(files / "c.npz")
    reported = sum(int((f["fault"] != 0).sum()) for arrs in measured.layers.values() for f in arrs.values())
    true = sum(int((a.fault != 0).sum()) for layer in chip for a in layer.arrays.values())
    assert measured.design.test.miss_rate == 0.5 and reported < 0.6 * true  # half the faults missed


def test_toml_dates_and_aliased_chip_fields_are_config_errors():
    import datetime

    for grid in ({**GRID, "saf_rate": [datetime.date(1979, 5, 27)]}, {**GRID, "chip_seed": [datetime.time(7, 32)]}):
        with pytest.raises(ConfigError) as err:
            parse_spec({"grid": grid})
        assert _one_line(err.value)
    from ittrna._plain import loads_toml

    with pytest.raises(ConfigError, match="date"):
        loads_toml("[grid]\nsaf_rate = [1979-05-27]\n", "s.toml", ConfigError)
    with pytest.raises(ConfigError, match="given already"):
        parse_spec({"grid": GRID, "chip": {"saf_rate": 0.1, "faults.rate": 0.2}})


def test_store_files_that_are_pipes_links_or_lies_are_refused(tmp_path):
    import json

    pipe = tmp_path / "p"
    pipe.mkdir()
    os.mkfifo(pipe / "results.jsonl")
    with pytest.raises(FileFormatError, match="not a regular file"):
        ResultStore(pipe).read()
    link = tmp_path / "l"
    link.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    (link / "results.jsonl").symlink_to(victim)
    with pytest.raises(InputError, match="symbolic link"), ResultStore(link).open_writer():
        pass
    assert victim.read_text() == "mine\n"
    base = {"key": "a" * 64, "model": "mlp", "dataset": "mnist", "method": "none", "chip_seed": 1,
            "software_accuracy": 0.9, "chip_accuracy": 0.5, "chip_accuracy_before": 0.5, "writes": 1,
            "writes_performed": 1, "seconds": 1.0, "method_version": 1, "ittrna_version": "0", "model_sha256": "s"}
    for extra in ({"seconds": 1e308}, {"sigma": 1e308}, {"sigma": 3.5}):
        (tmp_path / "results.jsonl").write_text(json.dumps({**base, **extra}) + "\n")
        with pytest.raises(FileFormatError, match=next(iter(extra))):
            ResultStore(tmp_path).read()
    (tmp_path / "results.jsonl").write_text(json.dumps({**base, "pattern": "uni\udcffform"}) + "\n")
    with pytest.raises(FileFormatError, match="surrogate"):
        ResultStore(tmp_path).read()


def test_a_sweep_title_file_that_is_a_pipe_does_not_block_a_report(tmp_path):
    from ittrna.experiments.report import _stored_title

    os.mkfifo(tmp_path / "sweep.json")
    t = threading.Thread(target=_stored_title, args=(tmp_path,), daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():
        with open(tmp_path / "sweep.json", "w"):
            pass
        pytest.fail("reading a named pipe as sweep.json blocked")


def test_a_sweep_never_overwrites_its_own_chip_config(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text("[cell]\n")
    cfg = tmp_path / "s.toml"
    cfg.write_text('title = "t"\n[grid]\nmodel = ["mlp"]\ndataset = ["mnist"]\nchip_seed = [1]\n'
                   '[chip]\nconfig = "out/sweep.json"\n')
    code, err = _cli(capsys, "sweep", str(cfg), "--out", str(out))
    assert code != 0 and "the same file" in err and (out / "sweep.json").read_text() == "[cell]\n"


def test_sparse_checkpoints_and_unknown_home_folders_are_one_line_errors(tmp_path, monkeypatch):
    from ittrna.data import cache_dir
    from ittrna.models import build, load_checkpoint, save_checkpoint

    model = build("mlp")
    save_checkpoint(tmp_path / "m.pt", model, {"model": "mlp", "dataset": "mnist", "in_shape": [1, 28, 28],
                                               "num_classes": 10})
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    key = next(iter(payload["state_dict"]))
    payload["state_dict"][key] = payload["state_dict"][key].to_sparse()
    torch.save(payload, tmp_path / "s.pt")
    with pytest.raises(FileFormatError, match="dense tensor") as err:
        load_checkpoint(tmp_path / "s.pt")
    assert _one_line(err.value)
    monkeypatch.setenv("ITTRNA_DATA", "~no_such_user_here/cache")
    with pytest.raises(DataError, match="ITTRNA_DATA"):
        cache_dir()


def test_an_archive_member_declaring_a_huge_array_is_refused_before_allocation(tmp_path):
    import io
    import zipfile

    from ittrna._io import load_npz
    from ittrna.errors import ResourceError

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**11,)})
    head = io.BytesIO()
    np.save(head, np.array('{"kind": "chip"}'))
    with zipfile.ZipFile(tmp_path / "h.npz", "w") as zf:
        zf.writestr("__header__.npy", head.getvalue())
        zf.writestr("big.npy", buf.getvalue() + b"\0" * 64)  # 64 bytes of data for 800 GB declared
    with pytest.raises(ResourceError, match="declare") as err:
        load_npz(tmp_path / "h.npz", "chip")
    assert _one_line(err.value)


def test_a_report_title_that_is_not_text_is_refused(tmp_path, capsys):
    code, err = _cli(capsys, "report", str(tmp_path), "--title", "bad\udcff")
    assert code != 0 and "--title" in err and len(err.strip().splitlines()) == 1


def test_a_write_that_cannot_start_names_the_file_asked_for(tmp_path, capsys):
    from ittrna.models import build, save_checkpoint

    save_checkpoint(tmp_path / "m.pt", build("mlp"), {"model": "mlp", "dataset": "mnist", "in_shape": [1, 28, 28],
                                                       "num_classes": 10})
    out = tmp_path / ("b" * 300 + ".npz")  # longer than any file system takes
    code, err = _cli(capsys, "chip", "make", "--model", str(tmp_path / "m.pt"), "--out", str(out))
    assert code != 0 and str(out) in err and ".tmp" not in err and len(err.strip().splitlines()) == 1
    ok = tmp_path / ("b" * 250 + ".npz")  # a valid name, however long its temporary file's would be
    code, err = _cli(capsys, "chip", "make", "--model", str(tmp_path / "m.pt"), "--out", str(ok))
    assert code == 0 and ok.is_file()


def test_a_recipe_fixes_its_settings_in_configs_and_on_the_command_line(capsys):
    spec = parse_spec({"grid": GRID, "train": {"recipe": "converged", "seed": 3}})
    t = spec.points[0].source.train
    assert (t.recipe, t.epochs, t.lr, t.batch_size, t.seed, t.keep_best) == ("converged", 30, 1e-3, 64, 3, True)
    with pytest.raises(ConfigError, match="train.epochs is set by recipe"):
        parse_spec({"grid": GRID, "train": {"recipe": "converged", "epochs": 5}})
    with pytest.raises(ConfigError, match="unknown"):
        parse_spec({"grid": GRID, "train": {"recipe": "fast"}})
    try:
        code = main(["train", "--model", "mlp", "--dataset", "mnist", "--recipe", "converged", "--lr", "0.1",
                     "--out", "x.pt"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code != 0 and "--lr is set by recipe 'converged'" in err


# --- long names ------------------------------------------------------------------------------------------------
def test_a_valid_long_name_is_written_and_a_too_long_one_leaves_no_new_folders(tmp_path):
    from ittrna._io import atomic_write_text

    long = tmp_path / ("r" * 245 + ".txt")  # 249 bytes: valid, though .NAME.PID-RANDOM.tmp would not be
    atomic_write_text(long, "ok")
    assert long.read_text() == "ok" and sorted(p.name for p in tmp_path.iterdir()) == [long.name]
    atomic_write_text(long, "again")  # stale-temporary clearing and rewriting work with the hashed stem too
    assert long.read_text() == "again"
    too_long = tmp_path / "new" / "deeper" / ("x" * 300 + ".txt")
    with pytest.raises(OSError) as err:
        atomic_write_text(too_long, "no")
    assert str(too_long) in str(err.value)
    assert not (tmp_path / "new").exists()  # the folders made for it are gone again
