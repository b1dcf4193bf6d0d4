"""The paper's headline claims beside what the sweeps of ``configs/paper-*.toml`` measured.

ITT-RNA (Song et al., IEEE TCAD 2020) claims < 1.1 points of accuracy loss under resistance variation (MLP and
CNN), < 1 point at 20 % stuck-at faults, and few on-device iterations for the CNN co-design. This prints, for
each (model, dataset) in the given sweep folders and each claim setting present there, the loss of ``none``,
of the best baseline, and of the ITT-RNA methods (``aft``, ``dynamic``, ``codesign``), mean ± std over chips.

Two references: the software model (the paper's) and a *strict* one, the best mean accuracy any method reached
on the ideal chip of the same sweep (no faults, no variation, no noise). Retraining methods fine-tune the
software model a little further, so against the software model they can show negative losses; the strict loss
charges that back. "Best baseline" is the baseline with the highest mean accuracy among those run at the
setting (chosen after the fact, which favours the baselines). For on-device methods a line under the table
gives their iterations and the writes after the first programming, mean per chip.

    python benchmarks/paper_claims.py docs/results/paper-mlp docs/results/paper-cnn
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ittrna.errors import InputError
from ittrna.experiments.report import points, summarize
from ittrna.experiments.store import ResultStore

#: Chip fields that make a chip imperfect (0 = perfect); a missing field counts as 0.
IMPERFECTIONS = ("saf_rate", "sigma", "program_noise", "read_noise", "miss_rate", "theta_noise")

#: (name, the claim setting's non-zero imperfections, the paper's claim for the ITT-RNA method)
CLAIMS: list[tuple[str, dict[str, float], str]] = [
    ("σ 0.5", {"sigma": 0.5}, "< 1.1"),
    ("σ 1.0", {"sigma": 1.0}, "< 1.1"),
    ("σ 1.5", {"sigma": 1.5}, "—"),
    ("σ 2.0", {"sigma": 2.0}, "—"),
    ("SAF 10 %", {"saf_rate": 0.1}, "—"),
    ("SAF 20 %", {"saf_rate": 0.2}, "< 1"),
    ("SAF 20 % + σ 1.0", {"saf_rate": 0.2, "sigma": 1.0}, "—"),
    ("hard chip (SAF 20 %, σ 1.0, noise, imperfect test)",
     {"saf_rate": 0.2, "sigma": 1.0, "program_noise": 0.1, "read_noise": 0.02, "miss_rate": 0.05,
      "theta_noise": 0.2}, "few iterations"),
]
OURS = ("aft", "dynamic", "codesign")
BASELINES = ("program", "remap", "fat", "remap-fat", "noise", "ondevice", "threshold")


def _setting(row: dict[str, Any]) -> dict[str, float]:
    return {f: float(row.get(f) or 0.0) for f in IMPERFECTIONS}


def _matches(row: dict[str, Any], claim: dict[str, float]) -> bool:
    s = _setting(row)
    return all(math.isclose(s[f], claim.get(f, 0.0), abs_tol=1e-12) for f in IMPERFECTIONS)


def _loss(row: dict[str, Any], reference: float, chips: int) -> str:
    """``loss ± std`` in points against ``reference``; ``(n=K)`` where the cell has fewer than ``chips`` chips."""
    n = f" (n={row['chips']})" if row["chips"] < chips else ""
    return f"{points(reference - row['chip_accuracy_mean'])} ± {100 * row['chip_accuracy_std']:.2f}{n}"


def claims_table(folders: Sequence[Path]) -> str:
    """The claims tables (markdown) of the sweeps in ``folders``."""
    out: list[str] = []
    for folder in folders:
        records = ResultStore(folder).read()
        if not records:
            raise InputError(f"{folder} holds no sweep results; run `ittrna sweep` into it first")
        rows, _ = summarize(records)
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault((str(r["model"]), str(r["dataset"])), []).append(r)
        for (model, dataset), rs in groups.items():
            soft = statistics.fmean(r["software_accuracy"] for r in rs)
            ideal = [r for r in rs if all(v == 0.0 for v in _setting(r).values())]
            best = max(ideal, key=lambda r: r["chip_accuracy_mean"], default=None)
            strict = max(soft, best["chip_accuracy_mean"]) if best else soft
            which = f"`{best['method']}` on the ideal chip" if best and strict > soft else "the software model"
            chips = max(r["chips"] for r in rs)
            present = {str(r["method"]) for r in rs}
            mine = [m for m in OURS if m in present]
            out += [f"#### `{model}` on {dataset} ({folder.name}): software {100 * soft:.2f} %, strict reference "
                    f"{100 * strict:.2f} % ({which})", "",
                    "| setting | paper (ITT-RNA) | `none` | best baseline | " + " | ".join(f"`{m}`" for m in mine)
                    + " | strict: " + ", ".join(f"`{m}`" for m in mine) + " |",
                    "|---|---|---|---|" + "---|" * len(mine) + "---|"]
            notes: list[str] = []
            for name, claim, paper in CLAIMS:
                cells = {str(r["method"]): r for r in rs if _matches(r, claim)}
                if not cells:
                    continue
                base = [cells[m] for m in BASELINES if m in cells]
                top = max(base, key=lambda r: r["chip_accuracy_mean"], default=None)
                ours = [cells.get(m) for m in mine]
                out.append(" | ".join([
                    f"| {name}", paper, _loss(cells["none"], soft, chips) if "none" in cells else "—",
                    f"`{top['method']}` {_loss(top, soft, chips)}" if top else "—",
                    *(_loss(r, soft, chips) if r else "—" for r in ours),
                    ", ".join(_loss(r, strict, chips) if r else "—" for r in ours)]) + " |")
                cost = [f"`{m}` {cells[m]['iterations_mean']:,.0f} iterations, "
                        f"{cells[m]['ondevice_writes_mean']:,.0f} writes after the first programming"
                        for m in cells if cells[m]["iterations_mean"] > 0]
                if cost:
                    notes.append(f"On-device cost at {name}, mean per chip: " + "; ".join(cost) + ".")
            out += ["", *notes, ""] if notes else [""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="sweep --out folders (runs/paper-mlp runs/paper-cnn)")
    args = ap.parse_args(argv)
    try:
        print(claims_table(args.folders))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
