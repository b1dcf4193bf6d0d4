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


# --- composition: a method that runs another holds that method's config ------------------------------------
def test_methods_are_keyed_by_their_config_class():
    from ittrna.methods.base import BY_CONFIG, spec_for
    from ittrna.methods.configs import CodesignConfig, DynamicConfig, RemapFatConfig

    live = {c: n for c, n in BY_CONFIG.items() if n in METHODS}
    assert len(set(live.values())) == len(live)  # one config class per method
    assert {spec_for(METHODS[n].config()).name for n in METHODS} == set(METHODS)
    assert spec_for(RemapFatConfig()).name == "remap-fat" and spec_for(DynamicConfig()).name == "dynamic"
    assert spec_for(CodesignConfig()).name == "codesign"


def test_a_shared_config_class_is_refused():
    import pytest

    from ittrna.config import ConfigError
    from ittrna.methods.base import register
    from ittrna.methods.configs import ProgramConfig

    with pytest.raises(ConfigError, match="already belongs to method 'program'"):
        register("program-again", "off-device", ProgramConfig, 1, "a second owner")(lambda *a: None)
    assert "program-again" not in METHODS


def test_a_composed_config_holds_its_base_and_its_identity_covers_the_base_settings():
    from ittrna.methods.configs import CodesignConfig, DynamicConfig

    spec = METHODS["codesign"]
    cfg = spec.make_config({"base": {"method": "dynamic", "epochs": 2}, "iterations": 3})
    assert isinstance(cfg, CodesignConfig) and cfg.base == DynamicConfig(epochs=2)
    assert cfg.to_dict()["base"] == {"method": "dynamic", **DynamicConfig(epochs=2).to_dict()}
    assert spec.make_config(cfg.to_dict()) == cfg  # a stored record's settings rebuild the same config
    again = cfg.override({"method.base.epochs": 1, "method.base.tau": 0.5})
    assert again.base == DynamicConfig(epochs=1, tau=0.5)
    named = spec.make_config({}).override({"base.method": "aft", "base.epochs": 0})  # auto, then a base named
    assert type(named.base).__name__ == "AftConfig" and named.base.epochs == 0
    # the store key covers the base's settings: a change there is another record
    spec_ = parse_spec({"grid": {"model": ["mlp"], "dataset": ["mnist"], "method": ["codesign"], "chip_seed": [7]},
                        "methods": {"codesign": {"base": {"method": "dynamic", "epochs": 2}}}})
    spec2 = parse_spec({"grid": {"model": ["mlp"], "dataset": ["mnist"], "method": ["codesign"], "chip_seed": [7]},
                        "methods": {"codesign": {"base": {"method": "dynamic", "epochs": 3}}}})
    (p1,), (p2,) = spec_.points, spec2.points
    assert point_key(p1, "0" * 64, DataSettings()) != point_key(p2, "0" * 64, DataSettings())


def test_a_composed_config_refuses_a_base_it_cannot_start_from():
    import pytest

    from ittrna.config import ConfigError

    spec = METHODS["codesign"]
    for bad, needle in (({"method": "ondevice"}, "method.base"), ({"method": "magic"}, "method.base.method"),
                        ({"epochs": 1}, "method.base"), ({"method": "dynamic", "epochs": -1}, "method.base.epochs")):
        with pytest.raises(ConfigError, match=needle):
            spec.make_config({"base": bad})


def test_ondevice_holds_the_program_config_it_starts_from():
    from ittrna.methods.configs import ProgramConfig

    cfg = METHODS["ondevice"].make_config({"program": {"search_images": 300}})
    assert cfg.program == ProgramConfig(search_images=300)
    assert METHODS["threshold"].config().program == ProgramConfig()
