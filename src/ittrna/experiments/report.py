"""Reports of sweep results: per-cell statistics (mean ± std, 95 % confidence interval), ``report.md``,
PNG plots and a self-contained ``report.html``; and the flag form's collapse table and plot."""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import statistics
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ittrna._io import atomic_write, atomic_write_text

__all__ = ["Pivot", "Report", "format_table", "pivot", "plot_collapse", "plot_curves", "plot_fault_map", "plot_writes",
           "points", "summarize", "write_csv", "write_report"]

_PLOT_AXES = {"saf_rate": "stuck-at-fault rate", "sigma": "variation σ (log G)",
              "time": "time after programming (log)", "mapping.rows": "tile rows (crossbar size, log2)"}
_PLOT_FILES = {"saf_rate": "saf_rate", "sigma": "sigma", "time": "time", "mapping.rows": "tile_size"}
"""The plots a report draws: x column -> file name part (``plots/accuracy_vs_<part>.png``)."""
_TIME_TICKS = {1.0: "1 s", 60.0: "1 min", 3600.0: "1 h", 86400.0: "1 d", 7 * 86400.0: "1 w",
               365.25 * 86400 / 12: "1 mo", 365.25 * 86400: "1 y", 10 * 365.25 * 86400: "10 y"}
"""Tick labels of a time axis (seconds)."""


def format_table(rows: Sequence[dict[str, Any]], ideal: float | None = None) -> str:
    """A fixed-width text table of aggregated rows (accuracies in percent)."""
    out = [f"{'axis':<10} {'value':>6} {'chips':>5} {'accuracy %':>16} {'min %':>7}"
           + (f" {'loss pts':>8}" if ideal is not None else "")]
    for r in rows:
        line = (f"{r['axis']:<10} {r['value']:>6.3g} {r['chips']:>5} "
                f"{100 * r['mean']:>8.2f} ± {100 * r['std']:<5.2f} {100 * r['min']:>7.2f}")
        if ideal is not None:
            line += f" {100 * (ideal - r['mean']):>8.2f}"
        out.append(line)
    return "\n".join(out)


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write aggregated rows as CSV, atomically."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def plot_collapse(path: str | Path, rows: Sequence[dict[str, Any]], *, title: str, ideal: float | None) -> None:
    """One panel per axis: mean accuracy with +/- std error bars over chips, and the software accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = sorted({r["axis"] for r in rows})
    fig, axes = plt.subplots(1, len(axes_names), figsize=(5 * len(axes_names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], axes_names, strict=True):
        sel = [r for r in rows if r["axis"] == name]
        ax.errorbar([r["value"] for r in sel], [100 * r["mean"] for r in sel],
                    yerr=[100 * r["std"] for r in sel], marker="o", capsize=3, label="on chip (mean ± std)")
        if ideal is not None:
            ax.axhline(100 * ideal, color="gray", ls="--", label="software")
        ax.set_xlabel(_PLOT_AXES.get(name, name))
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


# --- reports of a sweep folder -----------------------------------------------------------------------------
_NOT_CELL = {"key", "chip_seed", "ittrna_version", "torch_version"}
"""Record fields that never split a cell (a cell's records differ in them)."""
_ALWAYS = ("model", "dataset", "method")


def _cell_columns(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(columns that identify a cell, those shown: the always-shown ones and those that vary)."""
    from ittrna.experiments.grid import CHIP_AXES
    from ittrna.experiments.store import MEASURES

    seen = list(dict.fromkeys(k for r in records for k in r if k not in MEASURES and k not in _NOT_CELL))

    def order(name: str) -> tuple[int, int, str]:
        if name in ("model", "dataset"):
            return (0, ("model", "dataset").index(name), "")
        if name in CHIP_AXES:
            return (1, list(CHIP_AXES).index(name), "")
        if name == "method":
            return (3, 0, "")
        if name.startswith("method."):
            return (4, 0, name)
        if name in ("method_version", "model_sha256"):
            return (5, 0, name)
        return (2, 0, name)

    cols = sorted(seen, key=order)
    shown = [c for c in cols if c in _ALWAYS
             or (c not in ("model_sha256",) and len({json.dumps(r.get(c)) for r in records}) > 1)]
    return cols, shown


def summarize(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per grid cell (every point field but the chip seed): the chips, mean ± std (sample) and 95 %
    confidence interval of the chip accuracy (Student t, n - 1 degrees of freedom, clipped to [0, 1]; none for
    one chip), the
    software accuracy, the loss in points, the accuracy before the method, writes (all, and on-device: after the
    first programming), on-device iterations and seconds. Returns
    (rows, the cell columns worth showing)."""
    from scipy import stats

    cols, shown = _cell_columns(records)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(json.dumps([r.get(c) for c in cols]), []).append(r)
    rows = []
    for members in groups.values():
        acc = [float(r["chip_accuracy"]) for r in members]
        n = len(acc)
        mean = statistics.fmean(acc)
        std = statistics.stdev(acc) if n > 1 else 0.0
        half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else math.nan
        low, high = (max(0.0, mean - half), min(1.0, mean + half)) if n > 1 else (math.nan, math.nan)
        soft = statistics.fmean(float(r["software_accuracy"]) for r in members)
        row = {c: members[0].get(c) for c in cols}
        row.update(chips=n, software_accuracy=soft, chip_accuracy_mean=mean, chip_accuracy_std=std,
                   ci95_low=low, ci95_high=high, loss_mean=soft - mean,
                   chip_accuracy_before_mean=statistics.fmean(float(r["chip_accuracy_before"]) for r in members),
                   writes_mean=statistics.fmean(float(r["writes"]) for r in members),
                   ondevice_writes_mean=statistics.fmean(float(r.get("ondevice_writes") or 0) for r in members),
                   iterations_mean=statistics.fmean(float(r.get("iterations") or 0) for r in members),
                   seconds_mean=statistics.fmean(float(r["seconds"]) for r in members))
        if any("refresh_writes" in r for r in members):  # a refresh at the evaluation time: its own writes
            row.update(refresh_writes_mean=statistics.fmean(float(r.get("refresh_writes") or 0) for r in members),
                       refresh_fraction_mean=statistics.fmean(float(r.get("refresh_writes") or 0)
                                                              / max(1, int(r.get("refresh_full_writes") or 0))
                                                              for r in members))
        rows.append(row)

    def sort_key(row: dict[str, Any]) -> list[Any]:
        return [(0, row[c]) if isinstance(row[c], (int, float)) else (1, str(row[c])) for c in cols]

    rows.sort(key=sort_key)
    return rows, shown


@dataclass
class Pivot:
    """One (model, dataset)'s cells as a wide table: a row per setting, a column per method.

    Attributes:
        model, dataset: the group.
        settings: the setting columns (the shown cell columns but model, dataset and method).
        methods: the method columns, in the order given.
        rows: per setting, its values and per method the cell (a :func:`summarize` row) or ``None``.
    """

    model: str
    dataset: str
    settings: list[str]
    methods: list[str]
    rows: list[tuple[list[Any], list[dict[str, Any] | None]]]


def pivot(rows: Sequence[dict[str, Any]], shown: Sequence[str],
          method_order: Sequence[str] | None = None) -> list[Pivot]:
    """The cells of :func:`summarize` as wide tables, one per (model, dataset): setting × method.

    Args:
        rows, shown: what :func:`summarize` returned.
        method_order: method columns in this order (``none`` first, then the order of a sweep's config is what a
            report passes); methods not named follow alphabetically.

    Returns:
        One :class:`Pivot` per (model, dataset), settings in the rows' (sorted) order.
    """
    # A method's own settings (``method.*``) are not chip settings: they go into the method's column label, so a
    # setting of one method never splits every chip setting's row in two.
    settings = [c for c in shown if c not in ("model", "dataset", "method", "method_version")
                and not c.startswith("method.")]
    method_settings = [c for c in shown if c.startswith("method.")]
    order = list(method_order or [])
    out = []
    for (model, dataset), rs in _groups(rows).items():
        label = functools.partial(_method_label, versions=_versions(rs), settings=method_settings)
        method_of = {label(r): str(r["method"]) for r in rs}  # column label -> method (no parsing of labels)
        present = sorted(method_of, key=lambda x: (method_of[x], x))
        methods = [x for m in order for x in present if method_of[x] == m]
        methods += [x for x in present if x not in methods]
        table: dict[str, tuple[list[Any], dict[str, dict[str, Any]]]] = {}
        for r in rs:
            values = [r.get(c) for c in settings]
            table.setdefault(json.dumps(values), (values, {}))[1][label(r)] = r
        out.append(Pivot(model, dataset, settings, methods,
                         [(values, [cells.get(m) for m in methods]) for values, cells in table.values()]))
    return out


def _versions(rows: Sequence[dict[str, Any]]) -> dict[str, set[Any]]:
    """The method versions present per method."""
    out: dict[str, set[Any]] = {}
    for r in rows:
        out.setdefault(str(r["method"]), set()).add(r.get("method_version"))
    return out


def _method_label(r: dict[str, Any], versions: dict[str, set[Any]], settings: Sequence[str] = ()) -> str:
    """A pivot column's name: the method, with its version only where the store mixes several of it, and the
    method settings among ``settings`` that its record gives (``remap-fat (epochs=1)``)."""
    m = str(r["method"])
    name = m if len(versions[m]) == 1 else f"{m} v{r.get('method_version')}"
    given = [f"{c.removeprefix('method.')}={_cell_text(r[c])}" for c in settings if r.get(c) is not None]
    return f"{name} ({', '.join(given)})" if given else name


def _loss_text(cell: dict[str, Any] | None, chips: int = 0) -> str:
    """``loss ± std``, with ``(n=K)`` where the cell has fewer chips than ``chips`` (a sweep still running)."""
    if cell is None:
        return ""
    text = f"{points(cell['loss_mean'])} ± {_pct(cell['chip_accuracy_std'])}"
    return text + (f" (n={cell['chips']})" if cell["chips"] < chips else "")


def _most_chips(p: Pivot) -> int:
    return max((c["chips"] for _, cells in p.rows for c in cells if c is not None), default=0)


def _method_order(records: Sequence[dict[str, Any]]) -> list[str]:
    """``none`` first, then methods in the order their first record appears (a sweep's grid order)."""
    seen = dict.fromkeys(str(r.get("method")) for r in records)
    return ["none", *[m for m in seen if m != "none"]]


_PIVOT_NOTE = ("Loss in points (software − chip accuracy), mean ± sample std over chips; (n=K): fewer chips than "
               "the other cells; an empty cell: not in the grid, or not run yet. A negative loss: the chips scored "
               "above the software model (retraining can improve on it; otherwise it is the chip-to-chip spread).")


def points(x: float) -> str:
    """A fraction as points with two decimals; a value that rounds to zero is ``0.00``, never ``-0.00``."""
    text = f"{100 * x:.2f}"
    return "0.00" if text == "-0.00" else text


def _pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{100 * x:.2f}"


def _cell_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "" if value is None else str(value)


_HEAD = ["chips", "software %", "chip % (mean ± std)", "95 % CI", "loss (points)", "before %", "writes", "s/chip"]


def _row_cells(row: dict[str, Any], shown: Sequence[str]) -> list[str]:
    ci = "—" if math.isnan(row["ci95_low"]) else f"[{_pct(row['ci95_low'])}, {_pct(row['ci95_high'])}]"
    return [_cell_text(row[c]) for c in shown] + [
        str(row["chips"]), _pct(row["software_accuracy"]),
        f"{_pct(row['chip_accuracy_mean'])} ± {_pct(row['chip_accuracy_std'])}", ci,
        points(row["loss_mean"]), _pct(row["chip_accuracy_before_mean"]), f"{row['writes_mean']:.0f}",
        f"{row['seconds_mean']:.1f}"]


def _groups(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((str(r["model"]), str(r["dataset"])), []).append(r)
    return out


def _curve_columns(shown: Sequence[str], x: str, rows: Sequence[dict[str, Any]] = ()) -> list[str]:
    """The shown columns that tell curves along ``x`` apart (the method among them; its version is not; nor a
    column that only follows ``x``, like a tile's columns beside its rows)."""
    return [c for c in shown if c not in (x, "model", "dataset", "method_version") and not _follows(rows, x, c)]


def _follows(rows: Sequence[dict[str, Any]], x: str, column: str) -> bool:
    """Whether ``column`` varies across ``rows`` but takes one value at each value of ``x``."""
    if column == "method":
        return False
    at: dict[str, set[str]] = {}
    for r in rows:
        at.setdefault(json.dumps(r.get(x)), set()).add(json.dumps(r.get(column)))
    return len(set.union(*at.values())) > 1 and all(len(v) == 1 for v in at.values()) if at else False


def _series(rows: Sequence[dict[str, Any]], x: str,
            shown: Sequence[str]) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Curves along ``x``: one per combination of the other shown columns, kept with >= 2 x values.

    Returns:
        The curves by label, and the settings every kept curve shares ("sigma=0, program_noise=0"), which
        the labels leave out so that they name only what tells the curves apart (the method always stays).
    """
    others = _curve_columns(shown, x, rows)
    versions = _versions(rows)
    keyed: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = {}
    for r in rows:
        if not isinstance(r.get(x), (int, float)):
            continue
        key = tuple((c, _method_label(r, versions) if c == "method" else f"{c}={_cell_text(r[c])}")
                    for c in others if r.get(c) is not None)
        keyed.setdefault(key, []).append(r)
    kept = {k: sorted(v, key=lambda r: r[x]) for k, v in keyed.items() if len({r[x] for r in v}) >= 2}
    if not kept:
        return {}, ""
    common = {(c, t) for c, t in set.intersection(*(set(k) for k in kept)) if c != "method"}
    series = {", ".join(t for c, t in k if (c, t) not in common) or "chip": v
              for k, v in kept.items()}
    shared = ", ".join(t for c, t in next(iter(kept)) if (c, t) in common)
    return series, shared


_LINE_STYLES = ("-", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
_MARKERS = ("o", "s", "^", "D", "v")


def _method_colors(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One colour per method, the same in every panel and plot of a report (tab10, tab20 past ten)."""
    import matplotlib

    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    cmap = matplotlib.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def plot_curves(path: str | Path, rows: Sequence[dict[str, Any]], shown: Sequence[str], x: str) -> bool:
    """Chip accuracy (mean, 95 % CI bars) against ``x`` per method, one panel per (model, dataset), the
    software accuracy dashed; False (nothing written) when no curve has two x values."""
    groups = {g: _series(rs, x, shown) for g, rs in _groups(rows).items()}
    groups = {g: s for g, s in groups.items() if s[0]}
    if not groups:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    color = _method_colors(rows)
    variant_of = [c for c in _curve_columns(shown, x, rows) if c != "method"]
    fig, axes = plt.subplots(1, len(groups), figsize=(8.5 * len(groups), 4.4), squeeze=False)
    for ax, ((model, dataset), (series, shared)) in zip(axes[0], groups.items(), strict=True):
        soft = []
        variants: dict[tuple[str, ...], int] = {}  # one method, one colour; the other settings, one line style
        for label, rs in series.items():
            v = variants.setdefault(tuple(_cell_text(rs[0].get(c)) for c in variant_of), len(variants))
            yerr = [[0.0 if math.isnan(r["ci95_low"]) else 100 * (r["chip_accuracy_mean"] - r["ci95_low"]) for r in rs],
                    [0.0 if math.isnan(r["ci95_high"]) else 100 * (r["ci95_high"] - r["chip_accuracy_mean"])
                     for r in rs]]
            ax.errorbar([r[x] for r in rs], [100 * r["chip_accuracy_mean"] for r in rs], yerr=yerr,
                        color=color[str(rs[0]["method"])], ls=_LINE_STYLES[v % len(_LINE_STYLES)],
                        marker=_MARKERS[v % len(_MARKERS)], capsize=3, label=label)
            soft += [r["software_accuracy"] for r in rs]
        ax.axhline(100 * statistics.fmean(soft), color="gray", ls="--", label="software")
        ax.set_title(f"{model} / {dataset}" + ("\n" + textwrap.fill(shared, 90) if shared else ""), fontsize=9)
        ax.set_xlabel(_PLOT_AXES.get(x, x))
        if x == "time":  # log time; a time of 0 (right after programming) on a linear stretch below 1 s
            times = [r[x] for rs in series.values() for r in rs]
            if min(times) > 0:
                ax.set_xscale("log")
                ax.set_xlim(min(times) / 3, max(times) * 3)
            else:
                ax.set_xscale("symlog", linthresh=1.0)
                ax.set_xlim(-0.5, max(times) * 3)
            ticks = [t for t in _TIME_TICKS if any(abs(t - r[x]) < 1e-6 * t for rs in series.values() for r in rs)]
            ax.set_xticks(ticks, [_TIME_TICKS[t] for t in ticks])
        ax.set_ylabel("chip accuracy (%), mean and 95 % CI")
        if x == "mapping.rows":  # tile sizes are powers of two; IR drop moves accuracy by points, not tens
            sizes = sorted({r[x] for rs in series.values() for r in rs})
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [str(v) for v in sizes])
        else:
            ax.set_ylim(0, 101)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return True


def plot_writes(path: str | Path, rows: Sequence[dict[str, Any]]) -> bool:
    """Chip accuracy against writes issued (log scale) for the cells whose method wrote cells, one colour
    per method and one panel per (model, dataset); False (nothing written) when no cell wrote."""
    groups = {g: [r for r in rs if r["writes_mean"] > 0] for g, rs in _groups(rows).items()}
    groups = {g: rs for g, rs in groups.items() if rs}
    if not groups:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    color = _method_colors(rows)  # the colours of the curve plots
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4.4), squeeze=False)
    for ax, ((model, dataset), rs) in zip(axes[0], groups.items(), strict=True):
        for method in dict.fromkeys(str(r["method"]) for r in rs):
            sel = [r for r in rs if r["method"] == method]
            ax.scatter([r["writes_mean"] for r in sel], [100 * r["chip_accuracy_mean"] for r in sel],
                       color=color[method], label=method)
        ax.set_xscale("log")
        ax.set_title(f"{model} / {dataset}")
        ax.set_xlabel("cell writes issued per chip (log)")
        ax.set_ylabel("chip accuracy (%), mean")
        ax.set_ylim(0, 101)
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return True


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    rows: list[dict[str, Any]]
    shown: list[str]
    markdown: Path
    plots: list[Path]
    html: Path | None = None
    records: int = 0
    pivots: list[Pivot] = field(default_factory=list)


def _software_text(p: Pivot) -> str:
    soft = {round(c["software_accuracy"], 6) for _, cells in p.rows for c in cells if c is not None}
    return f" (software {_pct(soft.pop())} %)" if len(soft) == 1 else ""


def _markdown(title: str, rows: Sequence[dict[str, Any]], shown: Sequence[str], plots: Sequence[Path],
              n_records: int, pivots: Sequence[Pivot] = ()) -> str:
    out = [f"# {title}", "", f"{n_records} records, {len(rows)} cells. Chip accuracy over chips: mean ± sample "
           "std and the 95 % confidence interval of the mean (Student t); loss = software − chip, in points.", ""]
    if pivots:
        out += ["## Loss by method", "", _PIVOT_NOTE, ""]
    for pv in pivots:
        width = len(pv.settings) + len(pv.methods)
        out += [f"### {pv.model} on {pv.dataset}{_software_text(pv)}", "",
                "| " + " | ".join([*pv.settings, *pv.methods]) + " |", "|" + "---|" * width]
        most = _most_chips(pv)
        for values, cells in pv.rows:
            texts = [*(_cell_text(v) for v in values), *(_loss_text(c, most) for c in cells)]
            out.append("| " + " | ".join(texts) + " |")
        out.append("")
    for (model, dataset), rs in _groups(rows).items():
        cols = [c for c in shown if c not in ("model", "dataset")]
        out += [f"## {model} on {dataset}: every cell", "", "| " + " | ".join([*cols, *_HEAD]) + " |",
                "|" + "---|" * (len(cols) + len(_HEAD))]
        for r in rs:
            out.append("| " + " | ".join(_row_cells(r, cols)) + " |")
        out.append("")
    for p in plots:
        out += [f"![{p.stem}]({p.parent.name}/{p.name})", ""]
    return "\n".join(out)


def _html(title: str, rows: Sequence[dict[str, Any]], shown: Sequence[str], plots: Sequence[Path],
          n_records: int, pivots: Sequence[Pivot] = ()) -> str:
    import base64
    import html

    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
             "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;"
             "text-align:right;white-space:nowrap}div.t{overflow-x:auto}th{background:#f2f2f2}td.l{text-align:left}img{max-width:100%;display:block;"
             "margin:1em 0}</style></head><body>", f"<h1>{e(title)}</h1>",
             f"<p>{n_records} records, {len(rows)} cells. Chip accuracy over chips: mean ± sample std and the 95 % "
             "confidence interval of the mean (Student t); loss = software − chip, in points.</p>"]
    if pivots:
        parts.append(f"<h2>Loss by method</h2><p>{e(_PIVOT_NOTE)}</p>")
    for pv in pivots:
        parts.append(f"<h3>{e(pv.model)} on {e(pv.dataset)}{e(_software_text(pv))}</h3>")
        parts.append('<div class="t"><table><thead><tr>'
                     + "".join(f"<th>{e(h)}</th>" for h in [*pv.settings, *pv.methods]) + "</tr></thead><tbody>")
        most = _most_chips(pv)
        for values, cells in pv.rows:
            parts.append("<tr>" + "".join(f'<td class="l">{e(_cell_text(v))}</td>' for v in values)
                         + "".join(f"<td>{e(_loss_text(c, most))}</td>" for c in cells) + "</tr>")
        parts.append("</tbody></table></div>")
    for (model, dataset), rs in _groups(rows).items():
        cols = [c for c in shown if c not in ("model", "dataset")]
        parts.append(f"<h2>{e(model)} on {e(dataset)}: every cell</h2>")
        parts.append('<div class="t"><table><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in [*cols, *_HEAD])
                     + "</tr></thead><tbody>")
        for r in rs:
            texts = _row_cells(r, cols)
            parts.append("<tr>" + "".join(f'<td class="l">{e(c)}</td>' if i < len(cols) else f"<td>{e(c)}</td>"
                                          for i, c in enumerate(texts)) + "</tr>")
        parts.append("</tbody></table></div>")
    for p in plots:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        parts.append(f'<h2>{e(p.stem.replace("_", " "))}</h2><img alt="{e(p.stem)}" '
                     f'src="data:image/png;base64,{data}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _stored_title(root: Path) -> str | None:
    """The title of the last sweep config run into ``root`` (``sweep.json``), if any."""
    from ittrna._plain import loads_json, read_small_text
    from ittrna.errors import FileFormatError

    path = root / "sweep.json"
    if not path.exists():
        return None
    try:  # a pipe, a huge or a deep file, a surrogate in the title: no title (the report needs none)
        data = loads_json(read_small_text(path, "sweep title", 1 << 20, FileFormatError), str(path), FileFormatError)
    except FileFormatError:
        return None
    title = data.get("title") if isinstance(data, dict) else None
    return title if isinstance(title, str) and title else None


def write_report(folder: str | Path, *, html: bool = False, title: str | None = None) -> Report:
    """Write ``report.md``, ``report.csv`` (one row per cell) and the plots (``plots/*.png``) of the sweep in
    ``folder``, and
    with ``html`` one self-contained ``report.html`` (plots embedded).

    Raises:
        InputError: no results in ``folder``, or an invalid record (named by line).
    """
    from ittrna.errors import InputError
    from ittrna.experiments.store import ResultStore, records_to_csv

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; accepted a sweep's --out folder")
    records = ResultStore(root).read()
    if not records:
        raise InputError(f"{root} holds no sweep results (results.jsonl is missing or empty); run `ittrna sweep` "
                         "into it first")
    rows, shown = summarize(records)
    plots = []
    (root / "plots").mkdir(exist_ok=True)
    for x, part in _PLOT_FILES.items():
        p = root / "plots" / f"accuracy_vs_{part}.png"
        if plot_curves(p, rows, shown, x):
            plots.append(p)
    p = root / "plots" / "accuracy_vs_writes.png"
    if plot_writes(p, rows):
        plots.append(p)
    name = title or _stored_title(root) or f"Sweep report: {root.resolve().name}"
    atomic_write_text(root / "report.csv", records_to_csv([{k: v for k, v in r.items()} for r in rows]))
    pivots = pivot(rows, shown, _method_order(records))
    md = root / "report.md"
    atomic_write_text(md, _markdown(name, rows, shown, plots, len(records), pivots))
    out = Report(rows, shown, md, plots, records=len(records), pivots=pivots)
    if html:
        out.html = root / "report.html"
        atomic_write_text(out.html, _html(name, rows, shown, plots, len(records), pivots))
    return out


def plot_fault_map(chip: Any, path: Path) -> None:
    """A PNG of every layer's fault map per cell array (healthy, stuck_off, stuck_on), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from ittrna._io import atomic_write

    layers = list(chip)
    n_arr = max(len(layer.arrays) for layer in layers)
    fig, axes = plt.subplots(len(layers), n_arr, figsize=(4 * n_arr, 2.6 * len(layers)), squeeze=False)
    cmap = ListedColormap(["#f4f4f4", "#1f4e9c", "#d62728"])  # healthy, stuck_off, stuck_on
    for i, layer in enumerate(layers):
        for j, (aname, arr) in enumerate(layer.arrays.items()):
            ax = axes[i][j]
            ax.imshow(arr.fault.cpu().numpy(), cmap=cmap, vmin=0, vmax=2, interpolation="nearest", aspect="equal")
            ax.set_title(f"{layer.name} / {aname}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        for j in range(len(layer.arrays), n_arr):
            axes[i][j].axis("off")
    fig.suptitle("fault map: grey healthy, blue stuck_off (Gmin), red stuck_on (Gmax)")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
