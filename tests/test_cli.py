import json

import pytest

from ittrna.cli import main
from ittrna.models import build, save_checkpoint


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> bool:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return len(lines) == 1 and "Traceback" not in err


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "mlp.pt"
    save_checkpoint(path, build("mlp"), {"model": "mlp", "dataset": "mnist", "in_shape": [1, 28, 28],
                                         "num_classes": 10})
    return path


@pytest.mark.parametrize("argv", [
    ("train", "--model", "resnet", "--dataset", "mnist", "--out", "x.pt"),
    ("train", "--model", "mlp", "--dataset", "imagenet", "--out", "x.pt"),
    ("train", "--model", "mlp", "--dataset", "mnist", "--epochs", "-1", "--out", "x.pt"),
    ("evaluate", "--model", "/nonexistent/model.pt"),
    ("chip", "make", "--model", "m.pt", "--saf-rate", "1.5", "--out", "c.npz"),
    ("chip", "make", "--model", "m.pt", "--crossbar", "0x128", "--out", "c.npz"),
    ("chip", "show", "/nonexistent.npz"),
    ("config", "show", "--preset", "nope"),
])
def test_bad_input_one_line_error(capsys, argv):
    code, _, err = run(capsys, *argv)
    assert code != 0 and one_line_error(err), err


def test_wrong_file_type(capsys, tmp_path):
    bogus = tmp_path / "model.pt"
    bogus.write_text("not a checkpoint")
    code, _, err = run(capsys, "chip", "make", "--model", str(bogus), "--out", str(tmp_path / "c.npz"))
    assert code != 0 and one_line_error(err) and "not an ittrna checkpoint" in err
    code, _, err = run(capsys, "chip", "show", str(bogus))
    assert code != 0 and one_line_error(err)


def test_negative_epochs_message_names_range(capsys):
    code, _, err = run(capsys, "train", "--model", "mlp", "--dataset", "mnist", "--epochs", "-3", "--out", "x.pt")
    assert code == 2 and "'-3' is out of range for train.epochs; accepted an integer in [0, 100000]" in err


def test_chip_make_show_test_json(capsys, ckpt, tmp_path):
    chip = tmp_path / "c.npz"
    code, out, err = run(capsys, "chip", "make", "--model", str(ckpt), "--saf-rate", "0.1", "--sigma", "0.3",
                         "--pattern", "clustered", "--crossbar", "64x64", "--seed", "3", "--out", str(chip), "--json")
    assert code == 0, err
    payload = json.loads(out.strip().splitlines()[-1])
    # exact over whole arrays (tests/test_chip.py); over the cells that carry weights, close to it
    assert payload["stuck_on_fraction"] + payload["stuck_off_fraction"] == pytest.approx(0.1, abs=0.01)
    assert 0 < payload["cells"] < payload["cells_total"] and payload["out"] == str(chip)
    code, out, _ = run(capsys, "chip", "show", str(chip), "--png", str(tmp_path / "f.png"), "--json")
    assert code == 0 and (tmp_path / "f.png").stat().st_size > 1000
    shown = json.loads(out.strip().splitlines()[-1])
    assert len(shown["layers"]) == 3
    code, out, _ = run(capsys, "chip", "test", str(chip), "--miss-rate", "0.1", "--out", str(tmp_path / "m.npz"))
    assert code == 0 and (tmp_path / "m.npz").exists()


def test_config_commands(capsys, tmp_path):
    code, out, _ = run(capsys, "config", "show", "--preset", "date17", "--format", "toml")
    assert code == 0 and "r_off = inf" in out
    (tmp_path / "c.toml").write_text(out)
    code, out, _ = run(capsys, "config", "show", "--config", str(tmp_path / "c.toml"), "--format", "json")
    assert code == 0 and json.loads(out)["cell"]["r_off"] == "inf"
    code, out, _ = run(capsys, "config", "presets", "--json")
    assert code == 0 and "date17" in json.loads(out.strip().splitlines()[-1])["presets"]


def test_set_override_and_bad_set(capsys, ckpt, tmp_path):
    code, _, err = run(capsys, "chip", "make", "--model", str(ckpt), "--set", "cell.levels=1",
                       "--out", str(tmp_path / "c.npz"))
    assert code == 2 and one_line_error(err) and "cell.levels" in err


def test_evaluate_and_train_json(capsys, tmp_path, mnist_test):
    out_pt = tmp_path / "m.pt"
    code, out, err = run(capsys, "train", "--model", "mlp", "--dataset", "mnist", "--epochs", "0",
                         "--out", str(out_pt), "--json", "--quiet")
    assert code == 0, err
    t = json.loads(out.strip().splitlines()[-1])
    from ittrna.models import load_checkpoint
    from ittrna.training import accuracy

    assert set(t) >= {"test_accuracy", "seconds", "out"}
    assert t["test_accuracy"] == accuracy(load_checkpoint(out_pt)[0], mnist_test)  # what the file holds
    code, out, err = run(capsys, "evaluate", "--model", str(out_pt), "--chips", "2", "--saf-rate", "0.1",
                         "--json", "--quiet")
    assert code == 0, err
    e = json.loads(out.strip().splitlines()[-1])
    import statistics

    assert len(e["accuracies"]) == 2 and e["ideal_accuracy"] == t["test_accuracy"]
    assert e["accuracy_mean"] == statistics.fmean(e["accuracies"]) and e["accuracy_std"] == pytest.approx(
        statistics.stdev(e["accuracies"]))


def test_sweep_resumes(capsys, tmp_path, trained_mlp, mnist_test):
    pt = tmp_path / "m.pt"
    save_checkpoint(pt, trained_mlp, {"model": "mlp", "dataset": "mnist", "in_shape": [1, 28, 28],
                                      "num_classes": 10})
    args = ("sweep", "--model", str(pt), "--saf-rates", "0,0.2", "--sigmas", "0.5", "--chips", "2",
            "--out", str(tmp_path / "s"), "--quiet", "--json")
    code, out, err = run(capsys, *args)
    assert code == 0, err
    first = json.loads(out.strip().splitlines()[-1])
    lines = (tmp_path / "s" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 6
    code, out, _ = run(capsys, *args)  # resumed: nothing recomputed, same numbers
    assert len((tmp_path / "s" / "results.jsonl").read_text().splitlines()) == 6
    assert json.loads(out.strip().splitlines()[-1])["rows"] == first["rows"]
    # another chip setting in the same folder is not mistaken for the stored results
    code, out, _ = run(capsys, *args, "--pattern", "lines")
    assert code == 0 and len((tmp_path / "s" / "results.jsonl").read_text().splitlines()) == 12
    assert json.loads(out.strip().splitlines()[-1])["rows"] != first["rows"]
    assert (tmp_path / "s" / "collapse.png").stat().st_size > 1000


def test_saved_chip_evaluates_like_a_fresh_one(capsys, tmp_path, trained_mlp, mnist_test):
    pt = tmp_path / "m.pt"
    save_checkpoint(pt, trained_mlp, {"model": "mlp", "dataset": "mnist", "in_shape": [1, 28, 28],
                                      "num_classes": 10})
    chip = tmp_path / "c.npz"
    assert run(capsys, "chip", "make", "--model", str(pt), "--saf-rate", "0.15", "--sigma", "0.4",
               "--seed", "42", "--out", str(chip))[0] == 0
    code, out, err = run(capsys, "evaluate", "--model", str(pt), "--chip", str(chip), "--json")
    assert code == 0, err
    saved = json.loads(out.strip().splitlines()[-1])
    code, out, _ = run(capsys, "evaluate", "--model", str(pt), "--chips", "1", "--seed", "42", "--saf-rate", "0.15",
                       "--sigma", "0.4", "--json", "--quiet")
    fresh = json.loads(out.strip().splitlines()[-1])
    assert saved["accuracies"] == fresh["accuracies"]
    assert saved["accuracy_mean"] < saved["ideal_accuracy"] - 0.02


def test_chip_for_another_model_is_a_clear_error(capsys, tmp_path, ckpt):
    other = tmp_path / "deep.pt"
    save_checkpoint(other, build("mlp-deep"), {"model": "mlp-deep", "dataset": "mnist", "in_shape": [1, 28, 28],
                                               "num_classes": 10})
    chip = tmp_path / "c.npz"
    assert run(capsys, "chip", "make", "--model", str(other), "--out", str(chip))[0] == 0
    code, _, err = run(capsys, "evaluate", "--model", str(ckpt), "--chip", str(chip))
    assert code != 0 and one_line_error(err) and "weight shape" in err


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory, mnist_train):
    """An MLP trained briefly on 5000 images (enough for chip effects to show)."""
    from ittrna.training import train

    path = tmp_path_factory.mktemp("tol") / "mlp.pt"
    model = train(build("mlp", seed=0), mnist_train.subset(5000), epochs=1, progress=False)
    save_checkpoint(path, model, {"model": "mlp", "dataset": "mnist", "in_shape": [1, 28, 28], "num_classes": 10})
    return path


def test_methods_lists_the_registry(capsys):
    from ittrna.methods import METHODS

    code, out, _ = run(capsys, "methods", "--json")
    assert code == 0
    listed = json.loads(out.strip().splitlines()[-1])["methods"]
    assert [m["name"] for m in listed] == list(METHODS)
    assert all(m["description"] and m["version"] >= 1 for m in listed)


def test_tolerate_then_evaluate_reproduces_chip_accuracy(capsys, trained_ckpt, tmp_path):
    chip = tmp_path / "chip.npz"
    assert run(capsys, "chip", "make", "--model", str(trained_ckpt), "--saf-rate", "0.2", "--sigma", "0.5",
               "--seed", "5", "--out", str(chip))[0] == 0
    tuned = tmp_path / "tuned.pt"
    code, out, err = run(capsys, "tolerate", "--method", "remap", "--model", str(trained_ckpt), "--chip", str(chip),
                         "--miss-rate", "0.05", "--set", "method.search_images=1000", "--out", str(tuned),
                         "--json", "--quiet")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert set(res) >= {"method", "ideal_accuracy", "chip_accuracy_before", "chip_accuracy", "writes", "seconds"}
    assert res["method"] == "remap" and res["writes"] > 0
    assert res["chip_accuracy"] > res["chip_accuracy_before"]
    code, out, err = run(capsys, "evaluate", "--model", str(tuned), "--chip", str(chip), "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["accuracy_mean"] == pytest.approx(res["chip_accuracy"], abs=0)
    # the per-layer ablation of that chip: its whole-chip reading is the one just reproduced
    code, out, err = run(capsys, "evaluate", "--model", str(tuned), "--chip", str(chip), "--ablate", "--json")
    assert code == 0, err
    ab = json.loads(out.strip().splitlines()[-1])["ablation"]
    assert ab["chip"] == res["chip_accuracy"] and [r["layer"] for r in ab["layers"]] == ["1", "3", "5"]
    assert all(r["gain_if_ideal"] == pytest.approx(r["ideal"] - ab["chip"]) for r in ab["layers"])
    assert "per layer" in out and "alone on chip" in out
    code, _, err = run(capsys, "evaluate", "--model", str(tuned), "--ablate")  # fresh chips: nothing to ablate
    assert code != 0 and one_line_error(err) and "--chip" in err
    # the tuned file belongs to its chip
    other = tmp_path / "other.npz"
    run(capsys, "chip", "make", "--model", str(trained_ckpt), "--saf-rate", "0.2", "--seed", "6", "--out", str(other))
    code, _, err = run(capsys, "evaluate", "--model", str(tuned), "--chip", str(other))
    assert code != 0 and one_line_error(err) and "another chip" in err
    code, _, err = run(capsys, "evaluate", "--model", str(tuned), "--chips", "2")  # fresh chips: refused
    assert code != 0 and one_line_error(err) and "tuned for one chip" in err


def test_tolerate_on_device_saves_the_programmed_chip_that_reproduces_it(capsys, trained_ckpt, tmp_path):
    chip = tmp_path / "chip.npz"
    assert run(capsys, "chip", "make", "--model", str(trained_ckpt), "--saf-rate", "0.2", "--sigma", "0.5",
               "--seed", "5", "--out", str(chip))[0] == 0
    before = chip.read_bytes()
    tuned = tmp_path / "c.pt"
    code, out, err = run(capsys, "tolerate", "--method", "codesign", "--model", str(trained_ckpt), "--chip",
                         str(chip), "--iterations", "1", "--write-budget", "500",
                         "--set", "method.digital_epochs=0", "--set", "method.calib_images=256",
                         "--set", "method.base.method=dynamic", "--set", "method.base.epochs=0",
                         "--set", "method.base.search_images=500", "--out", str(tuned), "--json", "--quiet")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["iterations"] <= 1 and res["forward_passes"] > 0 and res["chip_out"] == str(tmp_path / "c.chip.npz")
    assert chip.read_bytes() == before  # the fabricated chip file is an input: never overwritten
    code, out, err = run(capsys, "evaluate", "--model", str(tuned), "--chip", res["chip_out"], "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["accuracy_mean"] == res["chip_accuracy"]
    code, _, err = run(capsys, "evaluate", "--model", str(tuned), "--chip", str(chip))  # the fresh chip
    assert code != 0 and one_line_error(err) and "programmed chip" in err
    code, _, err = run(capsys, "tolerate", "--method", "program", "--model", str(trained_ckpt), "--chip", str(chip),
                       "--chip-out", str(tmp_path / "x.npz"), "--out", str(tmp_path / "p.pt"))
    assert code != 0 and one_line_error(err) and "--chip-out" in err
    code, _, err = run(capsys, "tolerate", "--method", "codesign", "--model", str(trained_ckpt), "--chip", str(chip),
                       "--chip-out", str(chip), "--out", str(tmp_path / "q.pt"))
    assert code != 0 and one_line_error(err) and not (tmp_path / "q.pt").exists()


@pytest.mark.parametrize(("extra", "needle"), [
    (["--method", "magic"], "invalid choice"),
    (["--method", "fat", "--set", "method.bogus=1"], "method.bogus"),
    (["--method", "fat", "--set", "faults.rate=0.1"], "method.FIELD"),
    (["--method", "program", "--epochs", "2"], "method.epochs"),
    (["--method", "program", "--write-budget", "2"], "method.write_budget"),
    (["--method", "codesign", "--iterations", "11"], "method.iterations"),
    (["--method", "codesign", "--epochs", "1"], "does not have"),  # its retraining is its base's: method.base.epochs
    (["--method", "fat", "--epochs", "-1"], "-1"),
    (["--method", "fat", "--set", "method.lr=0"], "method.lr"),
    (["--method", "program", "--map", "{other_map}"], "another chip"),
    (["--method", "program", "--map", "{map}", "--miss-rate", "0.1"], "--map"),
])
def test_tolerate_bad_input(capsys, trained_ckpt, tmp_path, extra, needle):
    chip, other = tmp_path / "chip.npz", tmp_path / "other.npz"
    run(capsys, "chip", "make", "--model", str(trained_ckpt), "--saf-rate", "0.1", "--seed", "1", "--out", str(chip))
    run(capsys, "chip", "make", "--model", str(trained_ckpt), "--saf-rate", "0.1", "--seed", "2", "--out", str(other))
    run(capsys, "chip", "test", str(chip), "--out", str(tmp_path / "map.npz"))
    run(capsys, "chip", "test", str(other), "--out", str(tmp_path / "other_map.npz"))
    capsys.readouterr()
    args = [a.format(map=tmp_path / "map.npz", other_map=tmp_path / "other_map.npz") for a in extra]
    out = tmp_path / "t.pt"
    code, _, err = run(capsys, "tolerate", "--model", str(trained_ckpt), "--chip", str(chip), "--out", str(out),
                       "--quiet", *args)
    assert code != 0 and one_line_error(err) and needle in err, err
    assert not out.exists()


def _parsers(parser, path=()):
    """Every (command path, parser) of the parser tree, the root first."""
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_help_renders(capsys):
    """`--help` at every level of the command tree renders (argparse %-formats help texts: one stray % in a
    subcommand's help crashed `ittrna --help`), exits 0 and shows the command's name."""
    from ittrna.cli import build_parser

    paths = [path for path, _ in _parsers(build_parser())]
    assert len(paths) >= 14 and ("report",) in paths and ("config", "show") in paths
    for path in paths:
        code, out, err = run(capsys, *path, "--help")
        assert code == 0 and "Traceback" not in err and "usage: ittrna" in out, (path, err)
        assert " ".join(("ittrna", *path)) in out


def test_every_command_takes_json():
    """README: every command takes --json (the group parsers `data`, `chip`, `config` are not commands)."""
    from ittrna.cli import build_parser

    leaves = [(path, p) for path, p in _parsers(build_parser()) if p.get_default("func") is not None]
    assert len(leaves) >= 11
    for path, p in leaves:
        assert any("--json" in a.option_strings for a in p._actions), path


def test_config_show_json(capsys):
    code, out, _ = run(capsys, "config", "show", "--preset", "date17", "--json")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["config"]["cell"]["r_off"] == "inf"


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["tolerate", "--help"], ["sweep", "--help"],
                                  ["data", "fetch", "--help"], ["config", "show", "--help"]])
def test_help_does_not_import_torch(argv):
    """Help is instant: no torch (nor numpy) is imported to render it; the choices come from ittrna.registry."""
    import subprocess
    import sys

    code = ("import sys\nfrom ittrna.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'numpy') if m in sys.modules)\n"
            "sys.stderr.write('HEAVY=' + ','.join(heavy))\n")
    res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert "usage: ittrna" in res.stdout, res.stderr
    assert res.stderr.strip().endswith("HEAVY="), res.stderr[-300:]


def test_tolerate_later_with_compensation_and_refresh(capsys, trained_ckpt, tmp_path):
    chip = tmp_path / "chip.npz"
    assert run(capsys, "chip", "make", "--model", str(trained_ckpt), "--preset", "cmo-hfox", "--saf-rate", "0.1",
               "--seed", "5", "--out", str(chip))[0] == 0
    code, out, err = run(capsys, "tolerate", "--method", "none", "--model", str(trained_ckpt), "--chip", str(chip),
                         "--time", "1y", "--compensate", "registers", "--refresh", "0.01", "--out",
                         str(tmp_path / "t.pt"), "--json", "--quiet")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["time"] == pytest.approx(365.25 * 86400) and res["compensation"] == ["registers"]
    assert res["compensation_writes"] == 0 and res["compensation_forward_passes"] > 0
    assert 0 < res["refresh_writes"] <= 0.01 * res["refresh_full_writes"]
    code, out, _ = run(capsys, "tolerate", "--method", "none", "--model", str(trained_ckpt), "--chip", str(chip),
                       "--time", "1y", "--refresh", "0.01", "--out", str(tmp_path / "u.pt"), "--quiet")
    assert code == 0 and "refresh at 3.15576e+07 s:" in out and "% of re-programming the whole chip" in out
