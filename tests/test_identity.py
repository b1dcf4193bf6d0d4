"""A stored result's identity covers every method it builds on (issue: results that cannot go stale)."""

import dataclasses

from ittrna.experiments.grid import DataSettings, parse_spec, point_key
from ittrna.methods import METHODS
from ittrna.methods.base import lineage


def _keys() -> dict[str, str]:
    spec = parse_spec({"grid": {"model": ["mlp"], "dataset": ["mnist"], "method": list(METHODS),
                                "chip_seed": [7]}})
    return {p.method: point_key(p, "0" * 64, DataSettings()) for p in spec.points}


def test_lineage_follows_the_declared_bases():
    assert lineage("none") == {} and lineage("program") == {}
    assert set(lineage("remap-fat")) == {"fat", "remap", "program"}
    assert set(lineage("codesign")) == {"aft", "dynamic", "remap-fat", "fat", "remap", "program"}
    assert set(lineage("threshold")) == {"ondevice", "program"}


def test_bumping_a_base_version_changes_exactly_the_keys_built_on_it(monkeypatch):
    before = _keys()
    assert len(set(before.values())) == len(METHODS)
    spec = METHODS["remap"]
    monkeypatch.setitem(METHODS, "remap", dataclasses.replace(spec, version=spec.version + 1))
    after = _keys()
    changed = {m for m in before if before[m] != after[m]}
    assert changed == {"remap"} | {m for m in METHODS if "remap" in lineage(m)}
    assert changed == {"remap", "aft", "dynamic", "fat", "remap-fat", "codesign"}


def test_a_points_method_seed_is_not_its_chip_seed():
    from ittrna.experiments.grid import method_seed

    seeds = [method_seed(s) for s in (0, 1, 2, 1000, 2**63 - 1)]
    assert all(0 <= m < 2**63 for m in seeds) and len(set(seeds)) == len(seeds)
    assert all(method_seed(s) != s for s in (0, 1, 2, 1000)) and method_seed(5) == method_seed(5)
