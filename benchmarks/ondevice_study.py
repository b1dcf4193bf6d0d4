"""On-device study (issue #8): chip-in-the-loop methods against off-device ones on the hard chip.

For each setting, method and chip seed: fabricate the chip, test it (imperfectly), run the method — on-device
methods through a chip-in-the-loop session on the true chip — and measure the test split on the chip as the
method left it. Records carry accuracy, writes issued and performed, the largest count on one cell, cells worn
out, on-device iterations, chip forward passes and seconds, plus each on-device run's validation-accuracy
history against writes (for the accuracy-versus-writes plot).

    python benchmarks/ondevice_study.py --model lenet5.pt --out study-lenet5 --seeds 3000 --chips 5

Records go to OUT/results.jsonl (a rerun skips what is there), the table to OUT/table.md and the curve to
OUT/accuracy_vs_writes.png. Chip seeds 3000-3004 were never used while developing (development used 1 and 2).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _study import load_records, parse_args, pending, run_jobs

HARD = {"faults.rate": 0.2, "faults.stuck_on_share": 0.162, "variation.sigma": 1.0,
        "variation.program_noise": 0.1, "variation.read_noise": 0.02, "test.miss_rate": 0.05,
        "test.theta_noise": 0.2}
SETTINGS: dict[str, dict[str, Any]] = {
    "hard": HARD,
    # full on-device retraining writes a cell up to ~860 times per epoch: these cells wear out a quarter in
    "hard-low-endurance": {**HARD, "endurance.endurance": 200.0},
}

_STATE: dict[str, Any] = {}


def _init(model_path: str, threads: int) -> None:
    import torch

    from ittrna.data import load
    from ittrna.models import load_checkpoint

    torch.set_num_threads(threads)
    model, meta = load_checkpoint(model_path)
    _STATE.update(model=model, meta=meta, splits={s: load(meta["dataset"], s) for s in ("train", "val", "test")})


def _run(job: tuple[str, str, int, dict[str, Any]]) -> dict[str, Any]:
    from ittrna.chip import Chip
    from ittrna.config import ChipConfig
    from ittrna.experiments.tolerate import tolerate

    setting, method, seed, overrides = job
    model, splits = _STATE["model"], _STATE["splits"]
    chip = Chip.fabricate(model, ChipConfig().override(SETTINGS[setting]), seed)
    t0 = time.perf_counter()
    result, _ = tolerate(model, chip, method, train=splits["train"], val=splits["val"], test=splits["test"],
                         settings=overrides, seed=seed)
    rep = result["report"]
    keep = ("writes", "writes_performed", "max_writes_per_cell", "fraction_cells_written", "cells_worn_out",
            "iterations", "forward_passes", "evaluation_writes", "seconds", "version")
    return {"setting": setting, "method": method, "chip_seed": seed, "model": _STATE["meta"]["model"],
            "dataset": _STATE["meta"]["dataset"], "software_accuracy": result["ideal_accuracy"],
            "chip_accuracy": result["chip_accuracy"], "chip_accuracy_before": result["chip_accuracy_before"],
            **{k: result[k] for k in keep}, "wall_seconds": time.perf_counter() - t0,
            "val_accuracy": rep.get("val_accuracy"), "writes_at_best": rep.get("writes_at_best"),
            "ondevice_writes": rep.get("ondevice_writes", 0), "history": rep.get("history"), "settings": overrides}


def _ms(values: list[float], fmt: str = ".2f") -> str:
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{fmt}} ± {sd:{fmt}}"


def _big(values: list[float]) -> str:
    return f"{statistics.fmean(values):,.0f}" if values else "—"


def table(records: list[dict[str, Any]], setting: str, methods: list[str]) -> str:
    """Markdown: per method accuracy, loss, writes, wear, iterations, forward passes, seconds per chip."""
    out = ["| method | chips | accuracy % | loss pp | writes issued | writes performed | on-device writes | "
           "max/cell | cells worn out | iterations | forward passes | s/chip |", "|" + "---|" * 12]
    for m in methods:
        rs = [r for r in records if r["method"] == m and r["setting"] == setting]
        if not rs:
            continue
        out.append(
            f"| `{m}` | {len(rs)} | {_ms([100 * r['chip_accuracy'] for r in rs])} | "
            f"{_ms([100 * (r['software_accuracy'] - r['chip_accuracy']) for r in rs])} | "
            f"{_big([r['writes'] for r in rs])} | {_big([r['writes_performed'] for r in rs])} | "
            f"{_big([r['ondevice_writes'] or 0 for r in rs])} | {_big([r['max_writes_per_cell'] for r in rs])} | "
            f"{_big([r['cells_worn_out'] for r in rs])} | {_big([r['iterations'] for r in rs])} | "
            f"{_big([r['forward_passes'] for r in rs])} | {statistics.fmean(r['seconds'] for r in rs):.0f} |")
    ratios = _ratios(records, setting)
    if ratios:
        out.append("")
        out += ratios
    return "\n".join(out)


def _ratios(records: list[dict[str, Any]], setting: str) -> list[str]:
    """codesign's writes against the writes ondevice issued to reach its best validation accuracy, paired by
    chip seed."""
    by = {(r["method"], r["chip_seed"]): r for r in records if r["setting"] == setting}
    total, ondev = [], []
    for (m, seed), r in by.items():
        o = by.get(("ondevice", seed))
        if m != "codesign" or o is None or not o.get("writes_at_best"):
            continue
        total.append(100 * r["writes"] / o["writes_at_best"])
        best_ondevice = o["writes_at_best"] - (o["writes"] - o["ondevice_writes"])
        if best_ondevice > 0:
            ondev.append(100 * r["ondevice_writes"] / best_ondevice)
    if not total:
        return []
    return [f"codesign's writes / ondevice's writes to its best validation accuracy (paired by chip): total "
            f"{_ms(total, '.3f')} %, after the first programming {_ms(ondev, '.3f')} %"]


def plot(records: list[dict[str, Any]], setting: str, path: Path) -> None:
    """Chip validation accuracy against total writes issued (log axis) for each on-device run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"ondevice": "tab:red", "threshold": "tab:orange", "codesign": "tab:blue"}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for m, colour in colours.items():
        rs = [r for r in records if r["method"] == m and r["setting"] == setting and r.get("history")]
        for i, r in enumerate(rs):
            xs = [h["writes"] for h in r["history"]]
            ys = [100 * h["val_accuracy"] for h in r["history"]]
            ax.plot(xs, ys, "-o", color=colour, ms=2.5, lw=1, alpha=0.7, label=m if i == 0 else None)
    for m, marker in (("aft", "s"),):  # `none` (~20 % on the hard chip) would crush the scale
        rs = [r for r in records if r["method"] == m and r["setting"] == setting]
        if rs:
            ax.scatter([r["writes"] for r in rs], [100 * r["chip_accuracy"] for r in rs], marker=marker,
                       color="k", label=f"{m} (test)")
    sw = [100 * r["software_accuracy"] for r in records if r["setting"] == setting]
    if sw:
        ax.axhline(sw[0], color="grey", ls="--", lw=1, label="software")
    ax.set_xscale("log")
    ax.set_xlabel("cell writes issued (log)")
    ax.set_ylabel("chip accuracy % (validation images)")
    lo = min([100 * h["val_accuracy"] for r in records if r.get("history") and r["setting"] == setting
              for h in r["history"]] or [90.0])
    ax.set_ylim(max(lo - 1, 90.0 if lo > 91 else lo - 1), 100)
    ax.set_title(f"{records[0]['model']} on {records[0]['dataset']}, {setting} chip: accuracy vs writes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args, settings, methods, overrides = parse_args(__doc__, argv, settings="hard", all_settings=list(SETTINGS),
                                                    methods="none,aft,threshold,ondevice,codesign", seeds=3000)
    store = args.out / "results.jsonl"
    records = load_records(store)
    if not args.table_only:
        jobs = pending(records, settings, methods, range(args.seeds, args.seeds + args.chips), overrides)
        run_jobs(store, jobs, records, args.workers, _init, (args.model, args.threads), _run,
                 lambda r: f"{100 * r['chip_accuracy']:.2f}% (software {100 * r['software_accuracy']:.2f}%, "
                           f"{r['writes']:,} writes, {r['seconds']:.0f}s)")
    texts = []
    for s in settings:
        if any(r["setting"] == s for r in records):
            texts.append(f"### {s}\n\n" + table(records, s, methods))
            plot([r for r in records if r["setting"] == s], s, args.out / f"accuracy_vs_writes_{s}.png")
    text = "\n\n".join(texts)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    raise SystemExit(main())
