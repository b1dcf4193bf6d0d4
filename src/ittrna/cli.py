"""The ``ittrna`` command line: thin wrappers over the library.

Every command has ``--help`` with examples; ``--json`` prints one JSON object as the last line of stdout
(accuracies as fractions in [0, 1]). Bad input (an :class:`~ittrna.errors.InputError`, a bad option, or a
file that cannot be accessed) gives one line on stderr naming the value or file and what is accepted, and a
non-zero exit, no traceback; inputs are checked before any output is written, and no output may overwrite
an input. Any other exception is a bug and surfaces with its traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ittrna.config import MAX_SEED, FaultConfig, TestConfig, TrainConfig, VariationConfig
from ittrna.errors import ConfigError, InputError

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_ERROR = 1


class CliError(Exception):
    """A user error reported as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(EXIT_USAGE)


# --- argument types ---------------------------------------------------------------------------------------
MAX_CHIPS = 100_000
"""Most chips one command fabricates."""


_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(inf|infinity|nan)", re.I)


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        plain = text.strip()
        if not _INT_TEXT.fullmatch(plain) or len(plain) > 4000:  # no '0_5' read as 5, no 5000-digit strings
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer; accepted decimal digits "
                                             f"in [{lo}, {'2**63 - 1' if hi == MAX_SEED else hi}]")
        value = int(plain)
        if not lo <= value <= hi:
            shown = repr(plain) if len(plain) <= 30 else f"an integer of {value.bit_length()} bits"
            bound = "2**63 - 1" if hi == MAX_SEED else str(hi)
            raise argparse.ArgumentTypeError(
                f"{shown} is out of range; accepted an integer >= {lo} and <= {bound}")
        return value

    return parse


def _field(section: type, name: str, kind: type = float) -> Callable[[str], Any]:
    """argparse type for a flag that sets one config field: the text read strictly as ``kind`` (int or float;
    no ``0_5``), then checked by the config section itself, so a range is written once, in its dataclass."""
    def parse(text: str) -> Any:
        plain = text.strip()
        pattern = _INT_TEXT if kind is int else _FLOAT_TEXT
        if not pattern.fullmatch(plain) or len(plain) > 400:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not {'an integer' if kind is int else 'a number'}")
        value = kind(plain)
        try:
            section(**{name: value})
        except ConfigError as exc:  # the section's own message, with the value as typed
            _, _, accepted = str(exc).partition("; accepted ")
            field = f"{getattr(section, '_section', '')}.{name}".lstrip(".")
            raise argparse.ArgumentTypeError(f"{plain!r} is out of range for {field}; accepted {accepted}") from None
        return value

    return parse


def _int_text(text: str) -> int:
    """An integer, read strictly (the setting it goes to checks its range)."""
    plain = text.strip()
    if not _INT_TEXT.fullmatch(plain) or len(plain) > 4000:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer; accepted decimal digits")
    return int(plain)


def _float_list(text: str) -> list[float]:
    parts = [v.strip() for v in text.split(",") if v.strip()]
    if not parts or len(text) > 10_000 or not all(_FLOAT_TEXT.fullmatch(v) for v in parts):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a non-empty comma-separated list of decimal numbers")
    values = [float(v) + 0.0 for v in parts]  # + 0.0: -0.0 is 0.0, one point
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: accepted a non-empty comma-separated list of finite numbers")
    return values


def _crossbar(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and len(p) < 10 for p in parts):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not ROWSxCOLS, e.g. 128x128")
    rows, cols = (int(p) for p in parts)
    if rows < 1 or cols < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: rows and cols must be >= 1")
    return rows, cols


def _emit(args: argparse.Namespace, text: str, payload: dict[str, Any]) -> None:
    if text:
        print(text)
    if getattr(args, "json", False):
        print(json.dumps(payload))


# --- shared option groups ------------------------------------------------------------------------------
def _add_chip_options(p: argparse.ArgumentParser) -> None:
    from ittrna.config import FAULT_PATTERNS, MAPPING_SCHEMES

    g = p.add_argument_group("chip settings (applied over --preset or --config)")
    g.add_argument("--preset", default=None, help="named preset (see `ittrna config presets`); default 'default'")
    g.add_argument("--config", type=Path, default=None, help="chip config file (.toml or .json)")
    g.add_argument("--saf-rate", type=_field(FaultConfig, "rate"), help="stuck-at fault rate, [0, 1)")
    g.add_argument("--stuck-on-share", type=_field(FaultConfig, "stuck_on_share"),
                   help="share of faults stuck_on (at Gmax), [0, 1]")
    g.add_argument("--sigma", type=_field(VariationConfig, "sigma"), help="lognormal variation sigma, [0, 3]")
    g.add_argument("--pattern", choices=FAULT_PATTERNS, help="spatial fault pattern")
    g.add_argument("--crossbar", type=_crossbar, help="tile size ROWSxCOLS, e.g. 128x128")
    g.add_argument("--scheme", choices=MAPPING_SCHEMES, help="weight mapping scheme")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="any config field, e.g. --set cell.levels=16 (repeatable)")


def _chip_config(args: argparse.Namespace) -> Any:
    from ittrna.config import ChipConfig

    if args.preset and args.config:
        raise CliError("give --preset or --config, not both")
    cfg = ChipConfig.from_file(args.config) if args.config else ChipConfig.preset(args.preset or "default")
    changes: dict[str, Any] = {}
    for flag, key in (("saf_rate", "faults.rate"), ("stuck_on_share", "faults.stuck_on_share"),
                      ("sigma", "variation.sigma"), ("pattern", "faults.pattern"), ("scheme", "mapping.scheme")):
        if getattr(args, flag) is not None:
            changes[key] = getattr(args, flag)
    if args.crossbar is not None:
        changes["mapping.rows"], changes["mapping.cols"] = args.crossbar
    given = _set_values(args.set, "SECTION.FIELD=VALUE")
    both = sorted(set(given) & set(changes))
    if both:
        raise CliError(f"--set {both[0]} and a chip option set the same field; give it once")
    changes.update(given)
    return cfg.override(changes) if changes else cfg


def _set_values(items: Sequence[str], form: str, prefix: str = "") -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a dict: VALUE parsed as JSON where it is JSON, else kept as text (the
    config then checks it). The one parser of ``--set`` for every command."""
    from ittrna._plain import check_plain

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().startswith(prefix):
            raise CliError(f"--set {item!r} is not {form}")
        where = f"--set {key.strip()}"
        if key.strip() in out:
            raise CliError(f"{where} is given twice; give each field once")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        except (ValueError, RecursionError):  # int-to-str's digit limit, or nesting
            raise ConfigError(f"{where}: the value {raw[:20]!r}... is too long or nested too deeply") from None
        out[key.strip()] = check_plain(value, where, ConfigError)
    return out


_CHIP_FLAGS = ("preset", "config", "saf_rate", "stuck_on_share", "sigma", "pattern", "crossbar", "scheme")


def _given_chip_settings(args: argparse.Namespace) -> list[str]:
    """The chip-setting options given on the command line (as ``--flag``)."""
    given = [f"--{f.replace('_', '-')}" for f in _CHIP_FLAGS if getattr(args, f, None) is not None]
    return given + (["--set"] if getattr(args, "set", None) else [])


def _load_model(path: Path) -> tuple[Any, dict[str, Any]]:
    from ittrna.models import load_checkpoint

    return load_checkpoint(path)


def _check_seeds(args: argparse.Namespace) -> None:
    if args.seed + args.chips - 1 > MAX_SEED:
        raise CliError(f"--seed {args.seed} with --chips {args.chips} runs past seed 2**63 - 1; accepted "
                       "--seed + --chips - 1 <= 2**63 - 1")


def _test_config(args: argparse.Namespace, own: Any) -> Any:
    """The chip test's settings: ``--miss-rate``/``--theta-noise`` where given, else the chip config's own."""
    from dataclasses import replace

    return replace(own, **{k: getattr(args, k) for k in ("miss_rate", "theta_noise") if getattr(args, k) is not None})


# --- commands --------------------------------------------------------------------------------------------
def cmd_data_list(args: argparse.Namespace) -> None:
    from ittrna.data import DATASETS, cache_dir, status

    rows = [{"name": s.name, "status": status(s.name), "shape": list(s.in_shape), "source": s.source}
            for s in DATASETS.values()]
    text = "\n".join([f"cache: {cache_dir()}"] + [f"{r['name']:<14} {r['status']:<28} {r['source']}" for r in rows])
    _emit(args, text, {"cache": str(cache_dir()), "datasets": rows})


def cmd_data_fetch(args: argparse.Namespace) -> None:
    from ittrna.data import fetch

    out = {name: str(fetch(name, force=args.force)) for name in args.names}
    _emit(args, "\n".join(f"{n}: ok ({p})" for n, p in out.items()), {"fetched": out})


def cmd_train(args: argparse.Namespace) -> None:
    from ittrna.config import TrainConfig
    from ittrna.data import DATASETS
    from ittrna.experiments.jobs import train_checkpoint
    from ittrna.models import MODELS

    if args.model not in MODELS:
        raise CliError(f"unknown model {args.model!r}; accepted one of {sorted(MODELS)}")
    if args.dataset not in DATASETS:
        raise CliError(f"unknown dataset {args.dataset!r}; accepted one of {sorted(DATASETS)}")
    if args.recipe is not None:
        from ittrna.training import RECIPE_FIELDS, get_recipe

        get_recipe(args.recipe, [f for f in RECIPE_FIELDS if getattr(args, f) is not None], "--")  # no clash
    given = {f: getattr(args, f) for f in ("epochs", "lr", "batch_size", "patience") if getattr(args, f) is not None}
    res = train_checkpoint(args.model, args.dataset, args.out, TrainConfig(seed=args.seed, **given),
                           recipe=args.recipe, device=args.device, data_dir=args.data_dir, progress=not args.quiet)
    stop = f", kept epoch {res['best_epoch']} (best validation accuracy)" if res["keep_best"] else ""
    text = (f"{args.model} on {args.dataset}: test accuracy {100 * res['test_accuracy']:.2f}% (val "
            f"{100 * res['val_accuracy']:.2f}%), {res['epochs_run']} epochs in {res['seconds']:.1f}s "
            f"({res['seconds_per_epoch']:.1f}s/epoch){stop} -> {args.out}")
    _emit(args, text, {k: res[k] for k in ("test_accuracy", "val_accuracy", "seconds", "seconds_per_epoch")}
          | {"out": str(args.out)})

def cmd_chip_make(args: argparse.Namespace) -> None:
    from ittrna._validate import check_output
    from ittrna.chip import Chip

    check_output(args.out, ".npz", {"--model": args.model, "--config": args.config}, what="a chip")
    cfg = _chip_config(args)
    model, _ = _load_model(args.model)
    chip = Chip.fabricate(model, cfg, args.seed)
    chip.save(args.out)
    s = chip.summary()
    text = (f"chip (seed {args.seed}): {s['cells']} cells on {s['tiles']} tiles, stuck_on "
            f"{100 * s['stuck_on_fraction']:.2f}%, stuck_off {100 * s['stuck_off_fraction']:.2f}% -> {args.out}")
    _emit(args, text, {**s, "seed": args.seed, "out": str(args.out)})


def cmd_chip_show(args: argparse.Namespace) -> None:
    from ittrna._validate import check_output
    from ittrna.chip import Chip

    if args.png is not None:
        check_output(args.png, ".png", {"chip": args.chip}, what="the fault map image", flag="--png")
    chip = Chip.load(args.chip)
    rows = chip.stats()
    lines = [f"chip seed {chip.seed}, scheme {chip.config.mapping.scheme}, "
             f"tiles {chip.config.mapping.rows}x{chip.config.mapping.cols}",
             f"{'layer':<12} {'kind':<7} {'matrix':>11} {'tiles':>6} {'cells':>9} {'stuck_on%':>9} "
             f"{'stuck_off%':>10} {'theta std':>9}"]
    for r in rows:
        lines.append(f"{r['layer']:<12} {r['kind']:<7} {'x'.join(map(str, r['matrix'])):>11} "
                     f"{'x'.join(map(str, r['tiles'])):>6} {r['cells']:>9} {100 * r['stuck_on_fraction']:>9.2f} "
                     f"{100 * r['stuck_off_fraction']:>10.2f} {r['theta_std']:>9.3f}")
    if args.png:
        from ittrna.experiments.report import plot_fault_map

        plot_fault_map(chip, args.png)
        lines.append(f"fault map -> {args.png}")
    _emit(args, "\n".join(lines), {"summary": chip.summary(), "layers": rows,
                                   "png": str(args.png) if args.png else None})


def cmd_chip_test(args: argparse.Namespace) -> None:

    from ittrna._validate import check_output
    from ittrna.chip import Chip

    check_output(args.out, ".npz", {"chip": args.chip}, what="a measured defect map")
    chip = Chip.load(args.chip)
    measured = chip.test(seed=args.seed, test=_test_config(args, chip.config.test))
    measured.save(args.out)
    _emit(args, f"measured defect map -> {args.out}", {"out": str(args.out)})


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ittrna.experiments.jobs import evaluate_checkpoint

    if args.chip is not None:
        if _given_chip_settings(args):
            raise CliError(f"{', '.join(_given_chip_settings(args))} cannot change a saved chip (--chip); give "
                           "chip settings with --chips only")
        if args.seed is not None:
            raise CliError("--seed numbers fabricated chips (--chips); a saved chip (--chip) has its own seed")
        res = evaluate_checkpoint(args.model, chip_path=args.chip, split=args.split, data_dir=args.data_dir,
                                  progress=not args.quiet)
    else:
        args.seed = 0 if args.seed is None else args.seed
        _check_seeds(args)
        res = evaluate_checkpoint(args.model, config=_chip_config(args), seed=args.seed, chips=args.chips,
                                  split=args.split, data_dir=args.data_dir, progress=not args.quiet)
    text = (f"{res['model']} on {res['dataset']} ({args.split}): software {100 * res['ideal_accuracy']:.2f}%, on "
            f"chip {100 * res['accuracy_mean']:.2f} ± {100 * res['accuracy_std']:.2f}% over {len(res['accuracies'])} "
            "chip(s)")
    _emit(args, text, {k: res[k] for k in ("ideal_accuracy", "accuracy_mean", "accuracy_std", "accuracies")})

_SWEEP_FLAGS = ("model", "saf_rates", "sigmas", "chips", "seed", "split", "data_dir")


def _strict_json(value: Any) -> Any:
    """NaN/inf -> None, recursively (the --json line is strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict_json(v) for v in value]
    return value


def cmd_sweep(args: argparse.Namespace) -> None:
    from ittrna.experiments.backends import make_backend
    from ittrna.experiments.sweep import run_spec

    out: Path = args.out
    if args.config_file is not None:
        given = [f"--{f.replace('_', '-')}" for f in _SWEEP_FLAGS if getattr(args, f) is not None]
        given += _given_chip_settings(args)
        if given:
            raise CliError(f"{', '.join(given)} belong to the flag form; with CONFIG.toml put them in the config "
                           "(see docs/experiments.md)")
        if args.address and args.backend != "ray":
            raise CliError("--address is for --backend ray")
        from ittrna.experiments.grid import spec_inputs

        _check_sweep_outputs(out, {"CONFIG": args.config_file,
                                   **{f"[chip] config {p}": p for p in spec_inputs(args.config_file)}})
        from ittrna.experiments.grid import load_spec

        spec = load_spec(args.config_file)
        with make_backend(args.backend, args.workers, args.address) as backend:
            outcome = run_spec(spec, out, backend=backend, progress=not args.quiet)
        text = (f"{len(outcome.records)} points ({outcome.computed} computed, "
                f"{len(outcome.records) - outcome.computed} stored) -> {out}/results.jsonl, {out}/results.csv"
                + (f"\npartial last line set aside in {outcome.set_aside}" if outcome.set_aside else "")
                + f"\nreport: ittrna report {out} --html")
        _emit(args, text, {"points": len(outcome.records), "computed": outcome.computed,
                           "trained": outcome.trained, "out": str(out),
                           "set_aside": str(outcome.set_aside) if outcome.set_aside else None})
        return
    if args.model is None:
        raise CliError("give a sweep config (ittrna sweep CONFIG.toml --out DIR) or the flag form's --model")
    _cmd_sweep_flags(args)


def _check_sweep_outputs(out: Path, inputs: dict[str, Path | None]) -> None:
    from ittrna._validate import check_output

    check_output(out, None, inputs, what="the results folder")
    for name, suffix in (("results.jsonl", ".jsonl"), ("results.csv", ".csv"), ("sweep.json", ".json"),
                         ("summary.csv", ".csv"),
                         ("summary.json", ".json"), ("collapse.png", ".png")):
        check_output(out / name, suffix, inputs, what=f"the sweep's {name}")


def _cmd_sweep_flags(args: argparse.Namespace) -> None:
    from ittrna.experiments.backends import make_backend
    from ittrna.experiments.sweep import collapse_study

    out: Path = args.out
    for single, curve in (("saf_rate", "--saf-rates"), ("sigma", "--sigmas")):
        if getattr(args, single) is not None:
            raise CliError(f"--{single.replace('_', '-')} is a single chip setting; the flag form sweeps {curve} "
                           "(the other curve at 0)")
    args.chips = args.chips if args.chips is not None else 5
    args.seed = args.seed if args.seed is not None else 0
    _check_sweep_outputs(out, {"--model": args.model, "--config": args.config})
    _check_seeds(args)
    base = _chip_config(args)
    with make_backend(args.backend, args.workers, args.address) as backend:
        study = collapse_study(args.model, base, out, saf_rates=args.saf_rates, sigmas=args.sigmas,
                               seeds=range(args.seed, args.seed + args.chips), split=args.split or "test",
                               data_dir=args.data_dir, backend=backend, progress=not args.quiet)
    _emit(args, study.text, {"ideal_accuracy": study.ideal, "rows": study.rows, "out": str(out)})


def cmd_report(args: argparse.Namespace) -> None:
    from ittrna.experiments.report import write_report

    if args.title is not None:
        try:
            args.title.encode("utf-8")
        except UnicodeEncodeError:
            raise CliError(f"--title {args.title!r} is not valid text (it holds bytes that are not UTF-8); "
                           "accepted UTF-8 text") from None

    for name in ("report.md", "report.csv", "report.html"):
        if (args.folder / name).is_dir():
            raise CliError(f"{args.folder / name} is a folder; the report writes a file there")
    rep = write_report(args.folder, html=args.html, title=args.title)
    lines = [f"{rep.records} records, {len(rep.rows)} cells -> {rep.markdown}"]
    lines += [f"plot: {p}" for p in rep.plots]
    if rep.html is not None:
        lines.append(f"html: {rep.html}")
    _emit(args, "\n".join(lines), {"records": rep.records, "cells": _strict_json(rep.rows),
                                    "markdown": str(rep.markdown), "plots": [str(p) for p in rep.plots],
                                    "html": str(rep.html) if rep.html else None})


def cmd_methods(args: argparse.Namespace) -> None:
    from ittrna.methods import METHODS

    rows = [{"name": s.name, "kind": s.kind, "version": s.version, "description": s.description,
             "settings": s.config().to_dict()} for s in METHODS.values()]
    text = "\n".join(f"{r['name']:<10} {r['kind']:<11} v{r['version']}  {r['description']}" for r in rows)
    _emit(args, text, {"methods": rows})


def cmd_tolerate(args: argparse.Namespace) -> None:
    from ittrna.experiments.jobs import tolerate_files
    from ittrna.methods import get_method

    spec = get_method(args.method)
    settings = _set_values(args.set, "method.FIELD=VALUE", prefix="method.")
    for flag, field in (("epochs", "epochs"), ("iterations", "iterations"), ("write_budget", "write_budget")):
        if getattr(args, flag) is not None:
            if field not in spec.config.__dataclass_fields__:  # type: ignore[attr-defined]
                raise CliError(f"--{flag.replace('_', '-')} sets method.{field}, which method {args.method!r} does "
                               "not have (`ittrna methods --json` lists each method's settings)")
            if f"method.{field}" in settings:
                raise CliError(f"--{flag.replace('_', '-')} and --set method.{field} set the same field; give it once")
            settings[f"method.{field}"] = getattr(args, flag)
    test = {k: getattr(args, k) for k in ("miss_rate", "theta_noise") if getattr(args, k) is not None}
    result = tolerate_files(args.model, args.chip, args.method, args.out, settings=settings, chip_out=args.chip_out,
                            map_path=args.map, test=test, test_seed=args.test_seed, seed=args.seed,
                            data_dir=args.data_dir, progress=not args.quiet)
    chip_out = result.get("chip_out")
    text = (f"{args.method} on {args.chip}: software {100 * result['ideal_accuracy']:.2f}%, chip before "
            f"{100 * result['chip_accuracy_before']:.2f}%, after {100 * result['chip_accuracy']:.2f}% "
            f"({result['writes']} writes issued, {result['iterations']} on-device iterations, "
            f"{result['seconds']:.1f}s) -> {args.out}" + (f", programmed chip -> {chip_out}" if chip_out else ""))
    payload = {k: result[k] for k in ("method", "ideal_accuracy", "chip_accuracy_before", "chip_accuracy",
                                      "writes", "writes_performed", "max_writes_per_cell", "cells_worn_out",
                                      "iterations", "forward_passes", "seconds")}
    if chip_out is not None:
        payload["chip_out"] = chip_out
    _emit(args, text, {**payload, "version": result["version"], "out": str(args.out),
                       "val_accuracy": result["report"].get("val_accuracy")})

def cmd_config_show(args: argparse.Namespace) -> None:
    from ittrna.config import ChipConfig

    cfg = ChipConfig.from_file(args.config) if args.config else ChipConfig.preset(args.preset)
    if args.json:  # the config as one JSON object (the same as --format json, on one line)
        _emit(args, "", {"config": json.loads(cfg.to_json())})
        return
    print(cfg.to_json() if args.format == "json" else cfg.to_toml())


def cmd_config_presets(args: argparse.Namespace) -> None:
    from ittrna.config import PRESETS

    rows = {name: " ".join((f.__doc__ or "").split()) for name, f in PRESETS.items()}
    _emit(args, "\n".join(f"{n:<16} {d}" for n, d in rows.items()), {"presets": rows})


# --- parser ----------------------------------------------------------------------------------------------
def _sub(subs: Any, name: str, help_: str, examples: str, func: Callable[[argparse.Namespace], None]
         ) -> argparse.ArgumentParser:
    """A command's parser: its help with examples and the ``--json`` flag every command takes."""
    # argparse %-formats a subcommand's help in its parent's listing: a literal % must be doubled there
    p: argparse.ArgumentParser = subs.add_parser(
        name, help=help_.replace("%", "%%"), description=help_, epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The full ``ittrna`` argument parser (built without importing torch: names come from
    :mod:`ittrna.registry` and the config's choices)."""
    from ittrna.registry import DATASETS, METHODS, MODELS

    parser = _Parser(prog="ittrna", description="Deep neural networks on imperfect RRAM crossbars.",
                     epilog="examples:\n  ittrna train --model mlp --dataset mnist --epochs 5 --out mlp.pt\n"
                            "  ittrna evaluate --model mlp.pt --chips 5 --saf-rate 0.1\n",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = parser.add_subparsers(dest="command", required=True)

    data = subs.add_parser("data", help="list and fetch datasets")
    dsubs = data.add_subparsers(dest="data_command", required=True)
    _sub(dsubs, "list", "show datasets and the state of the cache", "  ittrna data list\n", cmd_data_list)
    p = _sub(dsubs, "fetch", "fetch datasets into the cache and verify them by sha256",
             "  ittrna data fetch mnist fashion-mnist\n", cmd_data_fetch)
    p.add_argument("names", nargs="+", choices=DATASETS.names(), metavar="NAME",
                   help=f"one of {DATASETS.names()} (cifar10 is user-provided: give --data-dir where it is used)")
    p.add_argument("--force", action="store_true", help="fetch again even if the cached copy verifies")

    p = _sub(subs, "train", "train a reference model in software (ideal weights)",
             "  ittrna train --model mlp --dataset mnist --recipe converged --out mlp.pt\n"
             "  ittrna train --model mlp --dataset mnist --epochs 5 --out mlp.pt\n"
             "  ittrna train --model lenet5 --dataset fashion-mnist --epochs 10 --seed 1 --out lenet.pt --json\n",
             cmd_train)
    p.add_argument("--model", required=True, help=f"one of {sorted(MODELS)}")
    p.add_argument("--dataset", required=True, help=f"one of {sorted(DATASETS)}")
    p.add_argument("--recipe", default=None, metavar="NAME",
                   help="a named recipe: 'converged' = 30 epochs of cosine decay to zero, the best-validation "
                        "epoch kept (the references of every table; docs/REPRODUCTION.md). Sets --epochs, --lr, "
                        "--batch-size")
    p.add_argument("--epochs", type=_field(TrainConfig, "epochs", int), default=None, help="default 5 (a quick model)")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED), default=0)
    p.add_argument("--lr", type=_field(TrainConfig, "lr"), default=None, help="Adam learning rate, default 1e-3")
    p.add_argument("--batch-size", type=_field(TrainConfig, "batch_size", int), default=None, help="default 64")
    p.add_argument("--patience", type=_field(TrainConfig, "patience", int), default=None,
                   help="train to convergence: stop after this many epochs without a better validation accuracy "
                        "and keep the best epoch (--epochs is then the maximum and spans the cosine schedule)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.pt)")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset folder (required for cifar10)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    chip = subs.add_parser("chip", help="fabricate, inspect and test simulated chips")
    csubs = chip.add_subparsers(dest="chip_command", required=True)
    p = _sub(csubs, "make", "fabricate a chip sized for a trained model and save it",
             "  ittrna chip make --model mlp.pt --saf-rate 0.1 --sigma 0.5 --seed 3 --out chip.npz\n"
             "  ittrna chip make --model mlp.pt --preset date17 --pattern lines --crossbar 64x64 --out c.npz\n",
             cmd_chip_make)
    p.add_argument("--model", type=Path, required=True, help="checkpoint from `ittrna train`")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED), default=0, help="fabrication seed")
    p.add_argument("--out", type=Path, required=True, help="chip file to write (.npz)")
    _add_chip_options(p)
    p = _sub(csubs, "show", "print per-layer statistics of a chip and draw its fault map",
             "  ittrna chip show chip.npz --png faults.png\n", cmd_chip_show)
    p.add_argument("chip", type=Path)
    p.add_argument("--png", type=Path, default=None, help="write the fault map image here")
    p = _sub(csubs, "test", "run the post-fabrication test: write the measured defect map",
             "  ittrna chip test chip.npz --miss-rate 0.05 --theta-noise 0.05 --out map.npz\n", cmd_chip_test)
    p.add_argument("chip", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--miss-rate", type=_field(TestConfig, "miss_rate"), default=None,
                   help="fraction of faults missed (default: the chip config's test.miss_rate)")
    p.add_argument("--theta-noise", type=_field(TestConfig, "theta_noise"), default=None,
                   help="sigma of theta measurement error (default: the chip config's test.theta_noise)")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED), default=0)

    p = _sub(subs, "evaluate", "accuracy of a trained model on one saved chip or on K fabricated chips",
             "  ittrna evaluate --model mlp.pt --chip chip.npz\n"
             "  ittrna evaluate --model mlp.pt --chips 5 --saf-rate 0.2 --seed 100 --json\n", cmd_evaluate)
    p.add_argument("--model", type=Path, required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--chip", type=Path, default=None, help="a saved chip (.npz)")
    src.add_argument("--chips", type=_int_in(1, MAX_CHIPS), default=5, help="number of chips to fabricate")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED), default=None,
                   help="first chip seed (seeds N..N+K-1), default 0; not with --chip")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--quiet", action="store_true")
    _add_chip_options(p)

    p = _sub(subs, "sweep", "run a sweep: a TOML grid of models, chip settings, methods and chip seeds (or, with "
             "--model, the collapse curves of a checkpoint); crash-safe and resumable",
             "  ittrna sweep configs/quick.toml --out runs/quick\n"
             "  ittrna sweep configs/paper-mlp.toml --out runs/mlp --backend ray --workers 2\n"
             "  ittrna sweep study.toml --out runs/s --backend ray --address auto\n"
             "  ittrna sweep --model mlp.pt --saf-rates 0,0.1,0.2,0.3 --sigmas 0,0.5,1,1.5 --chips 5 --out out/\n"
             "  ittrna report runs/quick --html\n", cmd_sweep)
    p.add_argument("config_file", nargs="?", type=Path, default=None, metavar="CONFIG.toml",
                   help="sweep config (docs/experiments.md); omit for the flag form (--model ...)")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for results.jsonl and results.csv (and the flag form's summary and plot)")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: this process (or a process pool with --workers > 1); ray: Ray tasks")
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. auto or HOST:PORT); default: "
                   "start a local Ray")
    p.add_argument("--workers", type=_int_in(1, 4096), default=None,
                   help="parallel workers (local: processes, default 1; ray: CPUs, default all)")
    p.add_argument("--quiet", action="store_true")
    f = p.add_argument_group("flag form (instead of CONFIG.toml)")
    f.add_argument("--model", type=Path, default=None, help="software checkpoint from `ittrna train`")
    f.add_argument("--saf-rates", type=_float_list, default=None, help="default 0,0.05,...,0.3 (sigma = 0)")
    f.add_argument("--sigmas", type=_float_list, default=None, help="default 0,0.25,...,1.5 (no faults)")
    f.add_argument("--chips", type=_int_in(1, MAX_CHIPS), default=None, help="chips per point, default 5")
    f.add_argument("--seed", type=_int_in(0, MAX_SEED), default=None, help="first chip seed, default 0")
    f.add_argument("--split", choices=["test", "val"], default=None, help="default test")
    f.add_argument("--data-dir", type=Path, default=None)
    _add_chip_options(p)

    p = _sub(subs, "report", "statistics per grid cell (mean ± std, 95 % CI), report.md and plots of a sweep folder",
             "  ittrna report runs/quick\n  ittrna report runs/quick --html   # also one self-contained report.html\n",
             cmd_report)
    p.add_argument("folder", type=Path, help="a sweep's --out folder")
    p.add_argument("--html", action="store_true", help="also write report.html (plots embedded)")
    p.add_argument("--title", default=None, help="report title")

    _sub(subs, "methods", "list the tolerance methods", "  ittrna methods\n  ittrna methods --json\n", cmd_methods)
    p = _sub(subs, "tolerate", "run a tolerance method for one chip, program the chip and evaluate it",
             "  ittrna tolerate --method remap-fat --model mlp.pt --chip chip.npz --out tuned.pt\n"
             "  ittrna tolerate --method fat --model mlp.pt --chip chip.npz --miss-rate 0.05 --theta-noise 0.1 "
             "--out t.pt\n"
             "  ittrna tolerate --method aft --model mlp.pt --chip chip.npz --map map.npz --epochs 2 "
             "--set method.tau=0.5 --out t.pt --json\n"
             "  ittrna evaluate --model t.pt --chip chip.npz      # reproduces chip_accuracy\n"
             "  ittrna tolerate --method codesign --model lenet5.pt --chip chip.npz --iterations 5 "
             "--write-budget 20000 --out c.pt   # also writes c.chip.npz, the programmed chip\n"
             "  ittrna evaluate --model c.pt --chip c.chip.npz    # reproduces an on-device result\n", cmd_tolerate)
    p.add_argument("--method", required=True, choices=list(METHODS), help="tolerance method (`ittrna methods`)")
    p.add_argument("--model", type=Path, required=True, help="software checkpoint from `ittrna train`")
    p.add_argument("--chip", type=Path, required=True, help="fabricated chip from `ittrna chip make`")
    p.add_argument("--map", type=Path, default=None, help="measured map from `ittrna chip test` (else tested here)")
    p.add_argument("--miss-rate", type=_field(TestConfig, "miss_rate"),
                   default=None, help="test here with this miss rate")
    p.add_argument("--theta-noise", type=_field(TestConfig, "theta_noise"),
                   default=None, help="test here with this theta error")
    p.add_argument("--test-seed", type=_int_in(0, MAX_SEED), default=None,
                   help="seed of the test's imperfections, default 0 (not with --map: that test is done)")
    p.add_argument("--epochs", type=_int_text, default=None, help="retraining epochs (method.epochs)")
    p.add_argument("--iterations", type=_int_text, default=None,
                   help="on-device iterations at most (method.iterations, codesign)")
    p.add_argument("--write-budget", type=_int_text, default=None,
                   help="on-device cell writes allowed after the first programming (method.write_budget)")
    p.add_argument("--chip-out", type=Path, default=None,
                   help="on-device methods: where to save the programmed chip (default: OUT with .chip.npz)")
    p.add_argument("--set", action="append", default=[], metavar="method.FIELD=VALUE",
                   help="any method setting, e.g. --set method.headroom_min=0.2 (repeatable)")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED), default=0, help="seed of the method's own randomness")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True, help="tuned file to write (.pt)")
    p.add_argument("--quiet", action="store_true")

    cfg = subs.add_parser("config", help="show chip configurations and presets")
    gsubs = cfg.add_subparsers(dest="config_command", required=True)
    p = _sub(gsubs, "show", "print a preset or config file as TOML or JSON",
             "  ittrna config show --preset date17 --format toml > my-chip.toml\n"
             "  ittrna config show --preset hfo2-4mb --json\n", cmd_config_show)
    p.add_argument("--preset", default="default")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--format", choices=["toml", "json"], default="toml")
    _sub(gsubs, "presets", "list the named presets", "  ittrna config presets\n", cmd_config_presets)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ittrna`` command; returns the exit status."""
    for stream in (sys.stdout, sys.stderr):  # a path or title that is not valid Unicode is shown, not a crash
        if stream is not None and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if sys.stdout is None or sys.stdout.closed:  # started with stdout closed: the output would be lost silently
        sys.stderr.write("ittrna: error: standard output is closed; the command's output would be lost "
                         "(redirect it to a file or /dev/null instead)\n")
        return EXIT_ERROR
    try:
        args.func(args)
        sys.stdout.flush()
    except (CliError, InputError) as exc:
        sys.stderr.write(f"ittrna: error: {_one_line(str(exc))}\n")
        return EXIT_USAGE if isinstance(exc, (CliError, ConfigError)) else EXIT_ERROR
    except OSError as exc:  # file access: missing file, permission, disk full; name the path
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        reason = exc.strerror or str(exc)
        sys.stderr.write(f"ittrna: error: {where + ': ' if where else ''}{_one_line(reason)}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("ittrna: interrupted\n")
        return 130
    return 0
