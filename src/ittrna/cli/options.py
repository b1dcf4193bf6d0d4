"""The command line's shared parts: exit codes, one-line errors, argument types (ranges from the config
fields), option groups and the helpers every command uses."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ittrna.config import MAX_SEED, FaultConfig, VariationConfig
from ittrna.errors import ConfigError

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


def _time(text: str) -> float:
    """A time after programming: seconds, or a number with a unit (``1s``, ``1h``, ``1d``, ``1y``), checked by
    :func:`ittrna.config.parse_time` (the one owner of the units and the range)."""
    from ittrna.config import parse_time

    try:
        return parse_time(text[:80], "--time")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--time = ")) from None


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
