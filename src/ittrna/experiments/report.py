"""Tables (text, CSV) and plots of sweep results."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ittrna._io import atomic_write, atomic_write_text

__all__ = ["format_table", "plot_collapse", "write_csv"]

_AXIS_LABEL = {"saf_rate": "stuck-at-fault rate", "sigma": "variation sigma (log G)"}


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
        ax.set_xlabel(_AXIS_LABEL.get(name, name))
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
