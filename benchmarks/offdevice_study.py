"""Off-device tolerance study: every method on the same simulated chips, test split, mean ± std over chips.

For each setting (chip configuration), method and chip seed: fabricate the chip, test it (the measured map is
all the method sees), run the method on the training/validation splits, program the true chip with its
deployment and measure the test split. Losses are software accuracy minus chip accuracy, in points.

    python benchmarks/offdevice_study.py --model mlp.pt --out study-mlp --seeds 1000 --chips 5 --workers 2

Records go to OUT/results.jsonl (one line per chip run; a rerun skips what is there), the table to
OUT/table.md. Chip seeds 1000-1004 were never used while developing the methods (development used 7 and 11).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

from _study import load_records, parse_args, pending, run_jobs

SETTINGS: dict[str, dict[str, Any]] = {
    "saf20": {"faults.rate": 0.2},
    "sigma1": {"variation.sigma": 1.0},
    "sigma2": {"variation.sigma": 2.0},
    "saf20+sigma1": {"faults.rate": 0.2, "variation.sigma": 1.0},
    "saf20+sigma1+test": {"faults.rate": 0.2, "variation.sigma": 1.0, "test.miss_rate": 0.05,
                          "test.theta_noise": 0.1},
}

_STATE: dict[str, Any] = {}


def _init(model_path: str, threads: int, device: str) -> None:
    import torch

    from ittrna.data import load
    from ittrna.models import load_checkpoint

    torch.set_num_threads(threads)
    model, meta = load_checkpoint(model_path)
    _STATE.update(model=model, meta=meta, device=device,
                  splits={s: load(meta["dataset"], s) for s in ("train", "val", "test")})


def _run(job: tuple[str, str, int, dict[str, Any]]) -> dict[str, Any]:
    from ittrna.chip import Chip
    from ittrna.config import ChipConfig
    from ittrna.experiments.tolerate import tolerate

    setting, method, seed, overrides = job
    model, splits = _STATE["model"], _STATE["splits"]
    cfg = ChipConfig().override(SETTINGS[setting])
    chip = Chip.fabricate(model, cfg, seed)
    t0 = time.perf_counter()
    result, _ = tolerate(model, chip, method, train=splits["train"], val=splits["val"], test=splits["test"],
                         settings=overrides, seed=seed, device=_STATE["device"])
    return {"setting": setting, "method": method, "chip_seed": seed, "model": _STATE["meta"]["model"],
            "software_accuracy": result["ideal_accuracy"], "chip_accuracy": result["chip_accuracy"],
            "chip_accuracy_before": result["chip_accuracy_before"], "seconds": result["seconds"],
            "wall_seconds": time.perf_counter() - t0, "val_accuracy": result["report"].get("val_accuracy"),
            "version": result["version"], "settings": overrides}


def table(records: list[dict[str, Any]], settings: list[str], methods: list[str]) -> str:
    """Markdown: loss (pp) mean ± std per (method, setting), and seconds per chip."""
    head = "| method | " + " | ".join(settings) + " | s/chip |"
    out = [head, "|" + "---|" * (len(settings) + 2)]
    for m in methods:
        cells, secs = [], []
        for s in settings:
            rs = [r for r in records if r["method"] == m and r["setting"] == s]
            if not rs:
                cells.append("—")
                continue
            loss = [100 * (r["software_accuracy"] - r["chip_accuracy"]) for r in rs]
            sd = statistics.stdev(loss) if len(loss) > 1 else 0.0
            cells.append(f"{statistics.fmean(loss):.2f} ± {sd:.2f} (n={len(rs)})")
            secs += [r["seconds"] for r in rs]
        out.append(f"| `{m}` | " + " | ".join(cells) + f" | {statistics.fmean(secs) if secs else 0:.1f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args, settings, methods, overrides = parse_args(
        __doc__, argv, settings=",".join(SETTINGS), all_settings=list(SETTINGS),
        methods="none,noise,program,remap,aft,dynamic,fat,remap-fat", seeds=1000, device=True)
    store = args.out / "results.jsonl"
    records = load_records(store)
    if args.table_only:
        print(table(records, settings, methods))
        return 0
    jobs = pending(records, settings, methods, range(args.seeds, args.seeds + args.chips), overrides)
    slow = {"fat": 0, "remap-fat": 0, "dynamic": 1, "aft": 1, "noise": 2}  # slow methods first: the pool
    jobs.sort(key=lambda j: slow.get(j[1], 3))  # stays busy to the end
    run_jobs(store, jobs, records, args.workers, _init, (args.model, args.threads, args.device), _run,
             lambda r: f"{100 * r['chip_accuracy']:.2f}% (software {100 * r['software_accuracy']:.2f}%, "
                       f"{r['seconds']:.1f}s)")
    text = table(records, settings, methods)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    raise SystemExit(main())
