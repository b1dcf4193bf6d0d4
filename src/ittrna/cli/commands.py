"""The commands: each parses its flags, calls one library function and prints (text, or ``--json``)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ittrna.cli.options import (
    CliError,
    _check_seeds,
    _chip_config,
    _emit,
    _given_chip_settings,
    _load_model,
    _set_values,
    _test_config,
)
from ittrna.config import TrainConfig
from ittrna.errors import ConfigError


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
    from ittrna.data import DATASETS
    from ittrna.experiments.jobs import train_checkpoint
    from ittrna.models import MODELS, is_definition

    if args.model not in MODELS and not is_definition(args.model):
        raise CliError(f"unknown model {args.model!r}; accepted one of {sorted(MODELS)}, or a definition "
                       "FILE.py:FUNCTION or package.module:FUNCTION")
    model_args = _json_object(args.model_args, "--model-args") if args.model_args is not None else None
    if model_args is not None and args.model in MODELS:
        raise CliError(f"--model-args is for a definition; zoo model {args.model!r} takes none")
    if args.dataset not in DATASETS:
        raise CliError(f"unknown dataset {args.dataset!r}; accepted one of {sorted(DATASETS)}")
    if args.recipe is not None:
        from ittrna.training import RECIPE_FIELDS, get_recipe

        get_recipe(args.recipe, [f for f in RECIPE_FIELDS if getattr(args, f) is not None], "--")  # no clash
    given = {f: getattr(args, f) for f in ("epochs", "lr", "batch_size", "patience") if getattr(args, f) is not None}
    res = train_checkpoint(args.model, args.dataset, args.out, TrainConfig(seed=args.seed, **given),
                           recipe=args.recipe, device=args.device, data_dir=args.data_dir, progress=not args.quiet,
                           model_args=model_args, resume=args.resume)
    stop = f", kept epoch {res['best_epoch']} (best validation accuracy)" if res["keep_best"] else ""
    text = (f"{args.model} on {args.dataset}: test accuracy {100 * res['test_accuracy']:.2f}% (val "
            f"{100 * res['val_accuracy']:.2f}%), {res['epochs_run']} epochs in {res['seconds']:.1f}s "
            f"({res['seconds_per_epoch']:.1f}s/epoch){stop} -> {args.out}")
    _emit(args, text, {k: res[k] for k in ("test_accuracy", "val_accuracy", "seconds", "seconds_per_epoch")}
          | {"out": str(args.out)})

def cmd_import_weights(args: argparse.Namespace) -> None:
    from ittrna.experiments.jobs import import_weights

    model_args = _json_object(args.model_args, "--model-args") if args.model_args is not None else None
    meta = import_weights(args.model, args.state_dict, args.dataset, args.out, model_args=model_args,
                          data_dir=args.data_dir)
    text = (f"{meta['model']} on {meta['dataset']} from {args.state_dict}: test accuracy "
            f"{100 * meta['test_accuracy']:.2f}% (val {100 * meta['val_accuracy']:.2f}%) -> {args.out}")
    _emit(args, text, {k: meta[k] for k in ("model", "dataset", "val_accuracy", "test_accuracy")}
          | {"out": str(args.out)})


def cmd_fold_bn(args: argparse.Namespace) -> None:
    from ittrna.experiments.jobs import fold_checkpoint

    res = fold_checkpoint(args.model, args.out, data_dir=args.data_dir)
    was = res["unfolded"]
    kept = "".join(f"\n  stays: {bn} ({why})" for bn, _, why in res["left"])
    text = (f"{res['model']}: {len(res['folded_batchnorm'])} BatchNorm layers folded into the layers before them; "
            f"test accuracy {100 * was['test_accuracy']:.2f}% -> {100 * res['test_accuracy']:.2f}% (val "
            f"{100 * was['val_accuracy']:.2f}% -> {100 * res['val_accuracy']:.2f}%) -> {args.out}{kept}")
    _emit(args, text, {"folded": res["folded_batchnorm"], "left": res["left"], "out": str(args.out)}
          | {k: res[k] for k in ("val_accuracy", "test_accuracy")} | {"unfolded": was})


def cmd_chip_make(args: argparse.Namespace) -> None:
    from ittrna._validate import check_output
    from ittrna.chip import Chip
    from ittrna.graph import digital_modules

    check_output(args.out, ".npz", {"--model": args.model, "--config": args.config}, what="a chip")
    cfg = _chip_config(args)
    model, _ = _load_model(args.model)
    chip = Chip.fabricate(model, cfg, args.seed)
    chip.save(args.out)
    s = chip.summary()
    digital = digital_modules(model)
    text = (f"chip (seed {args.seed}): {len(chip.layers)} layers, {s['cells']} cells on {s['tiles']} tiles, stuck_on "
            f"{100 * s['stuck_on_fraction']:.2f}%, stuck_off {100 * s['stuck_off_fraction']:.2f}% -> {args.out}")
    if digital:
        text += "\nstays digital:" + "".join(f"\n  {n} ({kind}): {why}" for n, kind, why in digital)
    _emit(args, text, {**s, "seed": args.seed, "out": str(args.out), "layers": list(chip.layers),
                       "digital": [{"name": n, "type": kind, "why": why} for n, kind, why in digital]})


def cmd_chip_show(args: argparse.Namespace) -> None:
    from ittrna._validate import check_output
    from ittrna.chip import Chip

    if args.png is not None:
        check_output(args.png, ".png", {"chip": args.chip}, what="the fault map image", flag="--png")
    chip = Chip.load(args.chip)
    rows = chip.stats()
    rel, wires = chip.config.relaxation, chip.config.wires
    lines = [f"chip seed {chip.seed}, scheme {chip.config.mapping.scheme}, "
             f"tiles {chip.config.mapping.rows}x{chip.config.mapping.cols}, clock {chip.now:g} s, relaxation "
             f"{rel.model} (compensation {rel.compensation}), r_wire {wires.r_wire:g} ohm",
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
    _emit(args, "\n".join(lines), {"summary": chip.summary(), "layers": rows, "now": chip.now,
                                   "relaxation": rel.model, "compensation": rel.compensation,
                                   "r_wire": wires.r_wire,
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
                                  progress=not args.quiet, time=args.time, ablate=args.ablate)
    else:
        args.seed = 0 if args.seed is None else args.seed
        _check_seeds(args)
        res = evaluate_checkpoint(args.model, config=_chip_config(args), seed=args.seed, chips=args.chips,
                                  split=args.split, data_dir=args.data_dir, progress=not args.quiet, time=args.time,
                                  ablate=args.ablate)  # refused there: an ablation needs one saved chip
    text = (f"{res['model']} on {res['dataset']} ({args.split}): software {100 * res['ideal_accuracy']:.2f}%, on "
            f"chip {100 * res['accuracy_mean']:.2f} ± {100 * res['accuracy_std']:.2f}% over {len(res['accuracies'])} "
            "chip(s)")
    if "ablation" in res:
        ab = res["ablation"]
        lines = [f"per layer (chip {100 * ab['chip']:.2f}%, all digital {100 * ab['digital']:.2f}%):",
                 f"{'layer':<28} {'ideal, rest on chip':>20} {'gain':>7} {'alone on chip':>14} {'loss':>7}"]
        lines += [f"{r['layer']:<28} {100 * r['ideal']:>19.2f}% {100 * r['gain_if_ideal']:>+7.2f} "
                  f"{100 * r['alone']:>13.2f}% {100 * r['loss_alone']:>7.2f}" for r in ab["layers"]]
        text += "\n" + "\n".join(lines)
    _emit(args, text, {k: res[k] for k in ("ideal_accuracy", "accuracy_mean", "accuracy_std", "accuracies",
                                           "ablation") if k in res})

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
                            data_dir=args.data_dir, progress=not args.quiet, time=args.time,
                            compensation=args.compensate, refresh=args.refresh)
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
    for key in ("time", "compensation", "compensation_forward_passes", "compensation_writes", "refresh_writes",
                "refresh_full_writes"):
        if key in result and (key != "time" or result[key]):
            payload[key] = result[key]
    if "refresh_writes" in result:
        text += (f"; refresh at {result['time']:g} s: {result['refresh_writes']} writes "
                 f"({100 * result['refresh_writes'] / max(1, result['refresh_full_writes']):.2f}% of re-programming "
                 "the whole chip)")
    _emit(args, text, {**payload, "version": result["version"], "out": str(args.out),
                       "val_accuracy": result["report"].get("val_accuracy")})

def cmd_config_show(args: argparse.Namespace) -> None:
    from ittrna.config import ChipConfig

    if args.config and args.preset is not None:
        raise CliError("give --preset or --config, not both")
    cfg = ChipConfig.from_file(args.config) if args.config else ChipConfig.preset(args.preset or "default")
    if args.json:  # the config as one JSON object (the same as --format json, on one line)
        _emit(args, "", {"config": json.loads(cfg.to_json())})
        return
    print(cfg.to_json() if args.format == "json" else cfg.to_toml())


def cmd_config_presets(args: argparse.Namespace) -> None:
    from ittrna.config import PRESETS

    rows = {name: " ".join((f.__doc__ or "").split()) for name, f in PRESETS.items()}
    _emit(args, "\n".join(f"{n:<16} {d}" for n, d in rows.items()), {"presets": rows})


def _json_object(text: str, flag: str) -> dict[str, Any]:
    """A flag's JSON object (plain values only)."""
    from ittrna._plain import check_plain

    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError):
        raise CliError(f"{flag} {text[:40]!r} is not JSON; accepted an object, e.g. '{{\"width\": 16}}'") from None
    if not isinstance(value, dict):
        raise CliError(f"{flag} {text[:40]!r} is not a JSON object; accepted e.g. '{{\"width\": 16}}'")
    return dict(check_plain(value, flag, ConfigError))
