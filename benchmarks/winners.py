"""Which method has the lowest mean loss in each non-ideal setting of sweep stores (the counts the docs cite).

    python benchmarks/winners.py docs/results/paper-mlp docs/results/paper-cnn
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from pathlib import Path

from ittrna.experiments.store import ResultStore

SETTING = ("model", "dataset", "saf_rate", "sigma", "stuck_on_share", "program_noise", "read_noise", "miss_rate",
           "theta_noise")


def main(folders: list[str]) -> None:
    wins: Counter[str] = Counter()
    ran: Counter[str] = Counter()
    settings = 0
    for folder in folders:
        cells: dict[tuple, dict[str, list[float]]] = {}
        for r in ResultStore(Path(folder)).read():
            key = tuple(r.get(k) for k in SETTING)
            cells.setdefault(key, {}).setdefault(r["method"], []).append(r["software_accuracy"] - r["chip_accuracy"])
        for key, methods in cells.items():
            if not key[2] and not key[3]:
                continue  # the ideal chip
            settings += 1
            means = {m: round(100 * statistics.fmean(v), 2) for m, v in methods.items()}  # as the tables show
            low = min(means.values())
            wins.update(m for m, v in means.items() if v == low)  # a tie counts for each
            ran.update(means.keys())
    print(f"{settings} non-ideal settings; lowest mean loss in points, to two decimals (ties count for each):")
    for m, n in wins.most_common():
        print(f"  {m}: {n} of the {ran[m]} settings where it ran")


if __name__ == "__main__":
    main(sys.argv[1:])
