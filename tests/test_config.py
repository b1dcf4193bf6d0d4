import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ittrna.config import PRESETS, ChipConfig, ConfigError


def test_defaults_match_issue():
    cfg = ChipConfig()
    assert cfg.cell.r_on == 10e3 and cfg.cell.r_off == 1e6 and cfg.cell.levels is None
    assert cfg.mapping.scheme == "differential" and (cfg.mapping.rows, cfg.mapping.cols) == (128, 128)
    assert cfg.mapping.adc_bits is None and cfg.mapping.dac_bits is None
    assert cfg.faults.pattern == "uniform"
    assert cfg.faults.stuck_on_share == pytest.approx(1.75 / (1.75 + 9.04))
    assert cfg.cell.g_max == pytest.approx(1e-4) and cfg.cell.g_min == pytest.approx(1e-6)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_roundtrip_toml_and_json(name):
    cfg = ChipConfig.preset(name)
    assert ChipConfig.from_toml(cfg.to_toml()) == cfg
    assert ChipConfig.from_json(cfg.to_json()) == cfg


def test_date17_has_zero_gmin():
    cfg = ChipConfig.preset("date17")
    assert math.isinf(cfg.cell.r_off) and cfg.cell.g_min == 0.0


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("faults.rate", -0.1, "faults.rate"),
        ("faults.rate", 1.0, "faults.rate"),
        ("faults.stuck_on_share", 1.5, "faults.stuck_on_share"),
        ("variation.sigma", -0.01, "variation.sigma"),
        ("variation.sigma", 3.5, "variation.sigma"),
        ("mapping.rows", 0, "mapping.rows"),
        ("mapping.cols", 0, "mapping.cols"),
        ("mapping.scheme", "bogus", "mapping.scheme"),
        ("faults.pattern", "spiral", "faults.pattern"),
        ("cell.r_on", -5.0, "cell.r_on"),
        ("cell.levels", 1, "cell.levels"),
        ("mapping.adc_bits", 0, "mapping.adc_bits"),
    ],
)
def test_invalid_values_are_rejected_naming_the_field(field, value, needle):
    with pytest.raises(ConfigError) as err:
        ChipConfig().override({field: value})
    msg = str(err.value)
    assert needle in msg and repr(value) in msg and "\n" not in msg


def test_r_off_must_exceed_r_on():
    with pytest.raises(ConfigError, match="cell.r_off"):
        ChipConfig().override({"cell.r_off": 5e3})


def test_unknown_fields_rejected():
    with pytest.raises(ConfigError, match="faults.bogus"):
        ChipConfig().override({"faults.bogus": 1})
    with pytest.raises(ConfigError, match="bogus"):
        ChipConfig.from_dict({"faults": {"bogus": 1}})


def test_unknown_preset():
    with pytest.raises(ConfigError, match="date17"):
        ChipConfig.preset("nope")


def test_file_io(tmp_path):
    cfg = ChipConfig.preset("date17").override({"faults.rate": 0.2, "cell.levels": 16})
    for suffix in (".toml", ".json"):
        path = tmp_path / f"c{suffix}"
        cfg.save(path)
        assert ChipConfig.from_file(path) == cfg
    with pytest.raises(ConfigError, match="suffix"):
        ChipConfig.from_file(tmp_path / "c.yaml")


def test_shipped_config_files_load():
    from pathlib import Path

    files = sorted((Path(__file__).parent.parent / "configs" / "chips").glob("*.toml"))
    assert files, "configs/chips/ should ship example chip configs"
    for f in files:
        ChipConfig.from_file(f)


@given(
    rate=st.floats(0, 0.999),
    share=st.floats(0, 1),
    sigma=st.floats(0, 3),
    rows=st.integers(1, 1024),
)
def test_roundtrip_property(rate, share, sigma, rows):
    cfg = ChipConfig().override(
        {"faults.rate": rate, "faults.stuck_on_share": share, "variation.sigma": sigma, "mapping.rows": rows}
    )
    assert ChipConfig.from_toml(cfg.to_toml()) == cfg
    assert ChipConfig.from_json(cfg.to_json()) == cfg


def test_json_dict_is_strict_json_and_roundtrips():
    import json

    cfg = ChipConfig.preset("date17")
    data = cfg.to_json_dict()
    json.dumps(data, allow_nan=False)  # strict JSON: no Infinity
    assert ChipConfig.from_dict(data) == cfg
