"""Behaviour digest: a fingerprint of what every method does on small convolutional and dense models, on
chips of both mapping schemes with spare rows, ADCs and read noise — to show that a refactor changed nothing.

Run it on two trees and compare the outputs (every line must match)::

    PYTHONPATH=OLD/src python tools/digest.py > old.txt
    PYTHONPATH=src python tools/digest.py > new.txt
    diff old.txt new.txt

Synthetic data (a fixed random teacher labels random images), so it needs no dataset. Each line: case,
method, the accuracies and writes, and a sha256 of the deployment (weights, scales, layouts, targets,
registers) and of the chip's effective weights after programming.
"""

from __future__ import annotations

import hashlib
import sys

import torch
from torch import nn

from ittrna.chip import Chip
from ittrna.config import ChipConfig
from ittrna.data import Split
from ittrna.experiments.tolerate import tolerate

METHODS = {
    "none": {}, "program": {"search_images": 200}, "remap": {"search_images": 200, "importance_images": 200},
    "noise": {"epochs": 1}, "aft": {"epochs": 1, "search_images": 200},
    "dynamic": {"epochs": 1, "search_images": 200}, "fat": {"epochs": 1, "search_images": 200},
    "remap-fat": {"epochs": 1, "search_images": 200},
    "ondevice": {"epochs": 1, "eval_every": 5, "eval_images": 100},
    "threshold": {"epochs": 1, "eval_every": 5, "eval_images": 100},
    "codesign": {"calib_images": 64, "iterations": 2, "write_budget": 2000, "digital_epochs": 1},
}
CODESIGN_BASE = {"epochs": 1, "search_images": 200}  # its base's settings (auto: remap-fat for CNNs, else dynamic)


def _settings(method: str, model: nn.Module) -> dict:
    """A method's settings; codesign's base settings nested (composed config) or flat (before the redesign)."""
    from ittrna.methods import get_method

    settings = dict(METHODS[method])
    if method != "codesign":
        return settings
    base = "remap-fat" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "dynamic"
    nested = {**settings, "base": {"method": base, **CODESIGN_BASE}}
    try:
        get_method(method).make_config(nested)
        return nested
    except ValueError:
        return {**settings, **CODESIGN_BASE}


def _hash(obj: object, h: hashlib._Hash) -> None:
    if isinstance(obj, torch.Tensor):
        h.update(obj.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            _hash(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _hash(v, h)
    elif hasattr(obj, "row_map"):
        _hash([obj.row_map, obj.col_sign], h)
    else:
        h.update(repr(obj).encode())


def _data(model: nn.Module, shape: tuple[int, ...], n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return Split(x, y)


def _models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 2 * 2, 10))
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 10))
    return {"conv": (conv, (1, 8, 8)), "mlp": (mlp, (1, 6, 6))}


def main() -> None:
    torch.set_num_threads(1)
    chips = {
        "diff": {"faults": {"rate": 0.1}, "variation": {"sigma": 0.5, "program_noise": 0.05},
                 "mapping": {"rows": 16, "cols": 8, "spare_rows": 2}},
        "offset": {"faults": {"rate": 0.1}, "variation": {"sigma": 0.5, "read_noise": 0.02},
                   "mapping": {"scheme": "offset", "rows": 16, "cols": 8, "adc_bits": 6, "dac_bits": 6},
                   "cell": {"levels": 16}},
    }
    for mname, (model, shape) in _models().items():
        teacher = model
        train, val, test = (_data(teacher, shape, n, s) for n, s in ((600, 1), (200, 2), (300, 3)))
        for cname, cdict in chips.items():
            config = ChipConfig.from_dict(cdict)
            for method in METHODS:
                chip = Chip.fabricate(model, config, seed=5)
                result, dep = tolerate(model, chip, method, train=train, val=val, test=test,
                                       settings=_settings(method, model),
                                       test_seed=3, seed=11)
                h = hashlib.sha256()
                _hash([dep.state_dict, dep.scales, dep.layouts, dep.targets, dep.registers], h)
                _hash({n: chip.effective_matrix(n) for n in chip.layers}, h)
                keys = ("chip_accuracy_before", "chip_accuracy", "writes", "writes_performed", "iterations")
                figures = " ".join(f"{k}={result.get(k)!r}" for k in keys)
                print(f"{mname} {cname} {method} {figures} {h.hexdigest()[:16]}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
