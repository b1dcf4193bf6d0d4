"""A user's own network enters by its definition (``FILE.py:FUNCTION`` or ``module:FUNCTION``): built
deterministically, checkpointed pickle-free with its file's hash, and run on a chip — also third-party
definitions (pytorchcv's CIFAR ResNet-20, imported per module)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from conftest import import_or_fail
from torch import nn

from ittrna.chip import Chip
from ittrna.config import ChipConfig
from ittrna.errors import FileFormatError, InputError
from ittrna.models import build, load_checkpoint, parse_definition, save_checkpoint, trust_definition
from ittrna.nn import deploy

NET = '''
import contextlib

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding="same", bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


def build(in_shape, num_classes, width=4):
    return nn.Sequential(nn.Conv2d(in_shape[0], width, 3, padding=1), Block(width), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(4 * width, num_classes))
'''


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "my_net.py"
    path.write_text(NET)
    return path


def test_a_definition_builds_deterministically_and_leaves_global_random_state_alone(net_file):
    state = torch.random.get_rng_state()
    a = build(f"{net_file}:build", (1, 12, 12), 10, seed=3, args={"width": 6})
    b = build(f"{net_file}:build", (1, 12, 12), 10, seed=3, args={"width": 6})
    c = build(f"{net_file}:build", (1, 12, 12), 10, seed=4, args={"width": 6})
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a[0].weight, c[0].weight)
    assert a[0].out_channels == 6


def test_a_checkpoint_of_a_definition_loads_only_with_the_same_file(net_file, tmp_path):
    defn = parse_definition(f"{net_file}:build", {"width": 5})
    model = defn.build((1, 12, 12), 10, seed=1)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, {"model": defn.name, "definition": defn.to_dict(), "in_shape": [1, 12, 12],
                                  "num_classes": 10, "dataset": "mnist"})
    with pytest.raises(InputError, match="--definition"):  # a checkpoint never runs code by itself
        load_checkpoint(path)
    trust_definition(f"{net_file}:build")  # the user names it (the CLI's --definition)
    again, meta = load_checkpoint(path)
    x = torch.rand(3, 1, 12, 12)
    assert torch.equal(again.eval()(x), model.eval()(x)) and meta["definition"]["sha256"] == defn.sha256
    net_file.write_text(NET.replace("width=4", "width=7"))  # the definition changed: not run, refused
    with pytest.raises(InputError, match="has changed since the checkpoint was made"):
        load_checkpoint(path)
    net_file.unlink()
    with pytest.raises(InputError, match="missing"):
        load_checkpoint(path)


def test_bad_definitions_are_one_line_errors(net_file):
    for text, needle in ((f"{net_file}:nothing", "not a function"), ("no/such/file.py:build", "missing"),
                         ("ittrna_no_such_module:build", "cannot be imported"), ("not a definition", "not a zoo")):
        with pytest.raises(InputError, match=needle) as err:
            build(text) if "not a zoo" not in needle else parse_definition(text)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="cannot be called"):
        build(f"{net_file}:build", (1, 12, 12), 10, args={"depth": 3})
    assert build(f"{net_file}:build", (1, 12, 12), 7, args={"width": 2})[-1].out_features == 7
    with pytest.raises(FileFormatError):
        from ittrna.models.definitions import Definition

        Definition.from_dict({"source": "x.py", "function": "build", "sha256": "bad"}, "m.pt")


def test_an_ideal_chip_computes_what_torch_computes_for_a_third_party_resnet():
    import_or_fail("pytorchcv.models.resnet_cifar", "ITTRNA_REQUIRE_PYTORCHCV")
    model = build("pytorchcv.models.resnet_cifar:resnet20_cifar10", (1, 32, 32), 10, seed=0,
                  args={"in_channels": 1, "in_size": [32, 32]}).eval()  # its final pooling is fixed at 8x8
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 + 2 and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    chip = Chip.fabricate(model, ChipConfig(), 0)
    assert len(chip.layers) == len(convs) + 1  # every conv and the classifier on crossbars
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
        got = deploy(model, chip)(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)


def test_resnet20_and_mobilenet_tiny_deploy_and_an_ideal_chip_equals_torch():
    """The zoo's BatchNorm networks: every Linear/Conv2d on crossbars, the depthwise convolutions included;
    BatchNorm stays digital (reported); an ideal chip computes what torch computes (BatchNorm in eval mode)."""
    from ittrna.graph import digital_modules, mapped_modules

    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    for name, mapped, grouped in (("resnet20", 22, 0), ("mobilenet-tiny", 12, 5)):
        model = build(name, (1, 28, 28), 10, seed=0).eval()
        assert len(mapped_modules(model)) == mapped
        why = [w for _, _, w in digital_modules(model)]
        assert why == ["normalisation: digital by design (its statistics and affine stay in software)"] * sum(
            isinstance(m, nn.BatchNorm2d) for m in model.modules())
        chip = Chip.fabricate(model, ChipConfig(), 0)
        assert sum(layer.grid.groups > 1 for layer in chip.layers.values()) == grouped
        with torch.no_grad():
            assert torch.allclose(deploy(model, chip)(x), model(x), rtol=1e-4, atol=1e-4)


class _Grouped(nn.Module):
    """Grouped and depthwise convolutions of every kind the mapping takes: 2-D depthwise, 2-D grouped with
    ``padding="same"``, 1-D grouped, and a depthwise convolution with a channel multiplier."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.gc = nn.Conv2d(8, 12, 3, padding="same", groups=4)
        self.mult = nn.Conv2d(12, 24, 3, padding=1, groups=12, padding_mode="reflect")
        self.c1d = nn.Conv1d(24, 6, 3, groups=3)
        self.fc = nn.Linear(6 * 4, 10)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = torch.relu(self.gc(torch.relu(self.dw(h))))
        h = torch.relu(self.mult(h)).mean(2)  # (B, 24, 6)
        return self.fc(torch.relu(self.c1d(h)).flatten(1))


@pytest.mark.parametrize("over", [{}, {"mapping.rows": 8, "mapping.cols": 4},
                                  {"mapping.rows": 8, "mapping.cols": 4, "mapping.spare_rows": 2},
                                  {"mapping.scheme": "offset", "mapping.rows": 8, "mapping.cols": 4}])
def test_grouped_convolutions_map_each_group_on_its_own_tiles_and_an_ideal_chip_equals_torch(over):
    from ittrna.mapping import grouped_matmul, tile_partials, weight_to_matrix

    torch.manual_seed(0)
    model = _Grouped().eval()
    x = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    chip = Chip.fabricate(model, ChipConfig().override(over), 0)
    rows, cols = chip.config.mapping.rows, chip.config.mapping.cols
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups > 1:
            grid = chip.layer(name).grid
            k, n, g = module.weight[0].numel(), module.out_channels, module.groups
            assert (grid.k, grid.n, grid.groups) == (k, n, g)
            per_group = -(-k // rows) * rows * -(-(n // g) // cols) * cols  # whole tiles of one group's matrix
            cells = {a: arr.g.numel() for a, arr in chip.layer(name).arrays.items()}
            tile_rows = rows + chip.config.mapping.spare_rows
            assert max(cells.values()) == g * per_group // rows * tile_rows  # no cells for block-diagonal zeros
            # each tile column's partial sums come from its own group's inputs only
            w, xs = weight_to_matrix(module.weight.detach()), torch.randn(7, g * k)
            assert torch.allclose(tile_partials(xs, w, grid).sum(1).reshape(7, -1)[:, grid.column_index],
                                  grouped_matmul(xs, w, g), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(deploy(model, chip)(x), model(x), rtol=1e-4, atol=1e-5)
        fine = Chip.fabricate(model, ChipConfig().override({**over, "mapping.adc_bits": 24, "mapping.dac_bits": 24}), 0)
        assert torch.allclose(deploy(model, fine)(x), model(x), rtol=1e-3, atol=1e-4)  # tile by tile, per group


def test_a_grouped_chip_and_its_map_round_trip_through_their_files_and_another_grouping_is_refused(tmp_path):
    from ittrna.host import MeasuredMap
    from ittrna.methods import Context, apply_method

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8)).eval()
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.1, "mapping.rows": 16, "mapping.cols": 4}), 3)
    deploy(model, chip)
    chip.save(tmp_path / "c.npz")
    again = Chip.load(tmp_path / "c.npz")
    assert again.layer("1").grid.groups == 8
    assert torch.equal(again.effective_matrix("1"), chip.effective_matrix("1"))
    chip.test().save(tmp_path / "m.npz")
    assert MeasuredMap.load(tmp_path / "m.npz").grid("1").groups == 8
    class Dense(nn.Module):  # the same layer names and weight shapes, its second convolution not grouped
        def __init__(self):
            super().__init__()
            self.add_module("0", nn.Conv2d(1, 8, 3, padding=1))
            self.add_module("1", nn.Conv2d(1, 8, 3, padding=1))

        def forward(self, x):
            return self._modules["0"](x) + self._modules["1"](x)

    dense = Dense().eval()
    with pytest.raises(InputError, match="groups"):
        deploy(dense, chip)
    data = _small_data(model, (1, 5, 5), 16, 1)
    with pytest.raises(InputError, match="groups"):
        apply_method("program", dense, chip.test(), Context(data, data), {})


def test_a_faulty_grouped_layer_reads_back_each_groups_own_cells():
    """A stuck cell of group q changes only group q's output channels."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4, bias=False))
    chip = Chip.fabricate(conv, ChipConfig().override({"mapping.rows": 16, "mapping.cols": 8}), 0)
    deployed = deploy(conv, chip)
    layer = chip.layer("0")
    ideal = chip.effective_matrix("0").clone()  # (9, 4)
    with torch.no_grad():
        pos = layer.arrays["pos"]
        pos.fault[3, 2 * 8] = 2  # tile column 2 = group 2's first (only) column: stuck_on
        chip.forget_reads()
        bad = chip.effective_matrix("0")
    changed = (bad - ideal).abs() > 1e-6
    assert changed[3, 2] and int(changed.sum()) == 1
    del deployed


def test_attention_keeps_working_its_projections_stay_digital_and_its_ffn_maps():
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True).eval()
    from ittrna.graph import digital_modules, mapped_modules

    assert [n for n, _ in mapped_modules(layer)] == ["linear1", "linear2"]
    assert any(n == "self_attn.out_proj" for n, _, _ in digital_modules(layer))
    chip = Chip.fabricate(layer, ChipConfig(), 0)
    x = torch.rand(2, 5, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(deploy(layer, chip)(x), layer(x), rtol=1e-4, atol=1e-5)


# --- every registered method on networks we did not write -------------------------------------------------
SMALL = {"epochs": 1, "search_images": 100, "headroom_steps": 2, "search_passes": 1, "importance_images": 16,
         "eval_every": 4, "eval_images": 32, "batch_size": 16, "iterations": 1, "calib_images": 16,
         "write_budget": 4000, "digital_epochs": 1}


FAST_SEARCH = {"search": "output", "output_images": 16}
"""The scale search by layer outputs, for the large third-party networks: the end-to-end ``accuracy`` search
on a ResNet graph has its own test (``test_the_scale_search_skips_fixed_prefixes_of_any_graph_...``), and on
every method here it took 2.5x the time (117 s against 46 s on pytorchcv's resnet20)."""


def _settings(method: str, extra: dict | None = None) -> dict:
    from ittrna.methods import METHODS

    small = {**SMALL, **(extra or {})}
    fields = METHODS[method].config().to_dict()
    out = {k: v for k, v in small.items() if k in fields}
    if "base" in fields:  # codesign: its base (remap-fat for CNNs) with the same small settings
        from ittrna.methods.configs import RemapFatConfig

        base = RemapFatConfig().to_dict()
        out["base"] = {"method": "remap-fat", **{k: v for k, v in small.items() if k in base}}
    if "program" in fields:
        out["program"] = {k: v for k, v in small.items() if k in fields["program"]}
    return out


def _small_data(model: nn.Module, shape: tuple[int, ...], n: int, seed: int):
    from ittrna.data import Split

    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    return Split(x, y)


def _mobilenetv2_wd4() -> nn.Module:
    """pytorchcv's MobileNetV2 at width 1/4 (17 depthwise convolutions, ReLU6, BatchNorm, residual additions)
    for 1x32x32 inputs: its fixed 7x7 final pooling made adaptive, as a user adapting it to small images does."""
    zoo = import_or_fail("pytorchcv.models.mobilenetv2", "ITTRNA_REQUIRE_PYTORCHCV")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = zoo.mobilenetv2_wd4(in_channels=1, in_size=(32, 32), num_classes=10)
    model.features.final_pool = nn.AdaptiveAvgPool2d(1)
    return model


def _own_networks():
    yield "bn-residual", lambda d: build(f"{d}:build", (1, 12, 12), 10, seed=0, args={"width": 4}), (1, 12, 12)
    yield "pytorchcv-resnet20", lambda d: build("pytorchcv.models.resnet_cifar:resnet20_cifar10", (1, 32, 32), 10,
                                                  seed=0, args={"in_channels": 1, "in_size": [32, 32]}), (1, 32, 32)
    yield "pytorchcv-mobilenetv2", lambda d: _mobilenetv2_wd4(), (1, 32, 32)
    yield "grouped", lambda d: _Grouped(), (1, 6, 6)


def test_an_ideal_chip_computes_what_torch_computes_for_a_third_party_mobilenet():
    import_or_fail("pytorchcv.models.mobilenetv2", "ITTRNA_REQUIRE_PYTORCHCV")
    model = _mobilenetv2_wd4().eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [m for m in convs if m.groups > 1 and m.groups == m.in_channels]
    assert len(depthwise) == 17
    chip = Chip.fabricate(model, ChipConfig().override({"mapping.rows": 32, "mapping.cols": 16}), 0)
    assert len(chip.layers) == len(convs)  # every convolution on crossbars, the depthwise ones included
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(deploy(model, chip)(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("network", ["bn-residual", "pytorchcv-resnet20", "pytorchcv-mobilenetv2", "grouped"])
def test_every_method_runs_on_a_network_we_did_not_write(network, net_file):
    from ittrna.experiments.tolerate import tolerate
    from ittrna.methods import METHODS

    if network.startswith("pytorchcv"):
        import_or_fail("pytorchcv.models.resnet_cifar", "ITTRNA_REQUIRE_PYTORCHCV")
    (make, shape), = [(m, s) for n, m, s in _own_networks() if n == network]
    model = make(net_file).eval()
    train, val, test = (_small_data(model, shape, n, s) for n, s in ((64, 1), (100, 2), (32, 3)))
    rows, cols = (16, 8) if network == "pytorchcv-mobilenetv2" else (64, 64)  # small tiles for 17 depthwise layers
    config = ChipConfig().override({"faults.rate": 0.1, "variation.sigma": 0.3, "mapping.rows": rows,
                                    "mapping.cols": cols})
    for method in METHODS:
        chip = Chip.fabricate(model, config, 5)
        settings = _settings(method, FAST_SEARCH if network.startswith("pytorchcv") else None)
        result, dep = tolerate(model, chip, method, train=train, val=val, test=test, settings=settings)
        assert 0.0 <= result["chip_accuracy"] <= 1.0, method
        assert set(dep.state_dict) == set(model.state_dict()), method  # BatchNorm buffers included


# --- BatchNorm re-estimation ---------------------------------------------------------------------------------
def test_bn_reestimation_sets_each_layers_statistics_to_those_of_its_input_on_the_host_model(net_file):
    """``bn`` changes the BatchNorm statistics and nothing else of ``program``'s deployment (zero writes more)."""
    from ittrna.methods import Context, apply_method

    model = build(f"{net_file}:build", (1, 12, 12), 10, seed=0, args={"width": 4}).eval()
    train, val = _small_data(model, (1, 12, 12), 96, 1), _small_data(model, (1, 12, 12), 100, 2)
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.15, "variation.sigma": 0.5}), 3)
    settings = {"images": 64, "batch_size": 16, "program": {"search_images": 100, "headroom_steps": 2}}
    dep = apply_method("bn", model, chip.test(), Context(train, val, seed=4), settings)
    base = apply_method("program", model, chip.test(), Context(train, val, seed=4), settings["program"])
    assert dep.report["norm_layers"] == 1
    for key in ("1.bn.running_mean", "1.bn.running_var"):
        assert not torch.equal(dep.state_dict[key], model.state_dict()[key])
    # every crossbar weight, scale and target is program's: re-estimation writes nothing more
    assert all(torch.equal(dep.state_dict[k], base.state_dict[k]) for k in base.state_dict if "bn" not in k)
    assert dep.scales == base.scales


def test_bn_chip_costs_zero_writes_beyond_the_programming_and_reads_the_chip(net_file):
    from ittrna.experiments.tolerate import tolerate

    model = build(f"{net_file}:build", (1, 12, 12), 10, seed=0, args={"width": 4}).eval()
    train, val, test = (_small_data(model, (1, 12, 12), n, s) for n, s in ((96, 1), (100, 2), (64, 3)))
    cfg = ChipConfig().override({"faults.rate": 0.15, "variation.sigma": 0.5})
    settings = {"images": 64, "batch_size": 16, "program": {"search_images": 100, "headroom_steps": 2}}
    out, _ = tolerate(model, Chip.fabricate(model, cfg, 3), "bn-chip", train=train, val=val, test=test,
                        settings=settings)
    prog, _ = tolerate(model, Chip.fabricate(model, cfg, 3), "program", train=train, val=val, test=test,
                       settings=settings["program"])
    assert out["writes"] == prog["writes"] and out["ondevice_writes"] == 0 and out["evaluation_writes"] == 0
    assert out["forward_passes"] >= 4  # 64 images in batches of 16 for the one BatchNorm, plus validation


def test_bn_on_a_network_without_batchnorm_is_program():
    from ittrna.methods import Context, apply_method

    model = build("mlp", (1, 8, 8), 10, seed=0)
    train, val = _small_data(model, (1, 8, 8), 64, 1), _small_data(model, (1, 8, 8), 100, 2)
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.1}), 1)
    a = apply_method("bn", model, chip.test(), Context(train, val), {"program": {"search_images": 100}})
    b = apply_method("program", model, chip.test(), Context(train, val), {"search_images": 100})
    assert a.report["norm_layers"] == 0 and a.scales == b.scales
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in b.state_dict)


def test_the_output_search_keeps_a_healthy_chip_and_minimises_each_layers_output_error(net_file):
    from ittrna.methods import METHODS, Context, apply_method
    from ittrna.methods.retrain import Pipeline

    model = _Grouped().eval()
    train, val = _small_data(model, (1, 6, 6), 64, 1), _small_data(model, (1, 6, 6), 100, 2)
    healthy = Chip.fabricate(model, ChipConfig(), 1)
    dep = apply_method("program", model, healthy.test(), Context(train, val), {"search": "output"})
    assert set(dep.report["headroom"].values()) == {1.0}  # every weight kept
    faulty = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.2, "variation.sigma": 0.5}), 1)
    measured = faulty.test()
    dep = apply_method("program", model, measured, Context(train, val), {"search": "output", "headroom_steps": 6})
    p = Pipeline(model, measured, Context(train, val))
    moments = p.input_moments(64, 4096)
    for name, m in p.mods.items():  # the chosen headroom's output error is the least of the candidates
        w, g = p.matrix(name), getattr(m, "groups", 1)

        def error(h: float, name: str = name, w: torch.Tensor = w, g: int = g) -> float:
            d = (p.host.effective_matrix(name, w, h * p.scales[name]) - w).double().reshape(w.shape[0], g, -1)
            return float(torch.einsum("gkl,kgn,lgn->", moments[name], d, d))
        chosen = dep.report["headroom"][name]
        assert all(error(chosen) <= error(h) + 1e-12 for h in Pipeline._headrooms(METHODS["program"].config(
            headroom_steps=6))), name
    # the store key of the earlier behaviour is unchanged: the added fields at their old values are left out
    cfg = METHODS["remap-fat"].make_config({})
    assert "search" not in cfg.identity_dict() and cfg.to_dict()["search"] == "accuracy"
    assert METHODS["remap-fat"].make_config({"search": "output"}).identity_dict()["search"] == "output"


def test_reestimate_takes_each_layers_input_with_the_earlier_layers_already_set():
    """The step itself: running mean and unbiased variance of each layer's input, layer by layer (the second
    layer's input is read only after the first layer's statistics are set)."""
    from ittrna.methods.normalize import reestimate

    a, b = nn.BatchNorm2d(2), nn.BatchNorm1d(3)
    images = torch.arange(24.0).view(24, 1)
    order: list[str] = []

    def read_input(x: torch.Tensor, name: str) -> torch.Tensor:
        if name == "a":
            return torch.cat([x, 2 * x], 1).view(-1, 2, 1, 1).expand(-1, 2, 2, 2)  # (N, 2, 2, 2)
        assert order == ["a"] and torch.allclose(a.running_mean, torch.tensor([11.5, 23.0]), atol=1e-5)
        return torch.cat([x, -x, x + float(a.running_mean[0])], 1)  # (N, 3): uses a's new statistics

    reestimate([("a", a), ("b", b)], images, 5, read_input, order.append)
    assert order == ["a", "b"]
    x = images.squeeze(1)
    var = x.var(unbiased=False) * (24 * 4 / (24 * 4 - 1))  # 4 positions per image and channel in a
    assert torch.allclose(a.running_var, torch.stack([var, 4 * var]), rtol=1e-5)
    assert torch.allclose(b.running_mean, torch.tensor([11.5, -11.5, 23.0]), atol=1e-5)
    assert torch.allclose(b.running_var, torch.full((3,), float(x.var())), rtol=1e-5)



# --- sweeps ---------------------------------------------------------------------------------------------------
def test_a_sweep_trains_and_evaluates_a_definition_and_an_edited_file_is_another_model(tmp_path, mnist_train):
    from ittrna.experiments.grid import load_spec
    from ittrna.experiments.sweep import run_spec

    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "my_net.py").write_text(NET)
    config = tmp_path / "sweep.toml"
    config.write_text('[grid]\nmodel = ["nets/my_net.py:build"]\ndataset = ["mnist"]\nsaf_rate = [0.1]\n'
                      'method = ["none"]\nchip_seed = [1]\n[train]\nepochs = 1\n'
                      '[data]\ntrain_size = 256\nval_size = 128\ntest_size = 128\n')
    spec = load_spec(config)
    (point,) = spec.points
    import json

    assert json.loads(point.source.definition)["source"] == str((tmp_path / "nets" / "my_net.py").resolve())
    outcome = run_spec(spec, tmp_path / "out", progress=False)
    (record,) = outcome.records
    assert 0 <= record["chip_accuracy"] <= 1 and record["model"] == "nets/my_net.py:build"
    before = point.source.ref
    (tmp_path / "nets" / "my_net.py").write_text(NET.replace("width=4", "width=5"))
    assert load_spec(config).points[0].source.ref != before  # the edited definition is trained again


def test_a_sweep_takes_a_checkpoint_file_in_its_model_axis(tmp_path, mnist_train):
    """A reference trained once (a committed checkpoint) enters a TOML sweep by its path, relative to the
    config: no retraining; the weights' hash is the model's identity, a checkpoint of another dataset is refused."""
    from ittrna.errors import ConfigError
    from ittrna.experiments.grid import load_spec
    from ittrna.experiments.sweep import run_spec

    net = build("mlp", (1, 28, 28), 10, seed=3)
    (tmp_path / "refs").mkdir()
    save_checkpoint(tmp_path / "refs" / "m.pt", net, {"model": "mlp", "dataset": "mnist", "in_shape": [1, 28, 28],
                                                      "num_classes": 10})
    body = ('model = ["refs/m.pt", "mlp"]\ndataset = ["{ds}"]\nsaf_rate = [0.1]\nmethod = ["none"]\n'
            'chip_seed = [1]\n')
    config = tmp_path / "sweep.toml"
    config.write_text("[grid]\n" + body.format(ds="mnist") + "[train]\nepochs = 0\n"
                      "[data]\ntrain_size = 256\nval_size = 128\ntest_size = 128\n")
    spec = load_spec(config)
    from_file = [p for p in spec.points if p.source.path is not None]
    assert len(from_file) == 1 and from_file[0].source.train is None
    assert from_file[0].source.path == str((tmp_path / "refs" / "m.pt").resolve())
    assert from_file[0].columns["model"] == "mlp" and from_file[0].columns["checkpoint"] == "m.pt"
    outcome = run_spec(spec, tmp_path / "out", progress=False)
    by_file = {r.get("checkpoint"): r for r in outcome.records}
    assert set(by_file) == {"m.pt", None}
    from ittrna.experiments.points import weights_sha256

    assert by_file["m.pt"]["model_sha256"] == weights_sha256(net.state_dict())  # the file's weights, not retrained
    assert by_file[None]["model_sha256"] != by_file["m.pt"]["model_sha256"]
    config.write_text("[grid]\n" + body.format(ds="fashion-mnist"))
    with pytest.raises(ConfigError, match="m.pt was trained on 'mnist'"):
        load_spec(config)
    config.write_text("[grid]\n" + body.replace("refs/m.pt", "refs/none.pt").format(ds="mnist"))
    with pytest.raises(ConfigError, match="none.pt: no such file"):
        load_spec(config)


# --- weights trained elsewhere ---------------------------------------------------------------------------------
def test_import_weights_makes_a_checkpoint_with_the_measured_accuracy(tmp_path, capsys, mnist_test):
    import json

    from ittrna.cli import main
    from ittrna.training import accuracy

    net = build("mlp", (1, 28, 28), 10, seed=5)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    code = main(["import-weights", "--model", "mlp", "--state-dict", str(tmp_path / "w.pth"), "--dataset", "mnist",
                 "--out", str(tmp_path / "m.pt"), "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and out["test_accuracy"] == accuracy(net.eval(), mnist_test)
    model, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["imported_from"] == str(tmp_path / "w.pth") and len(meta["imported_sha256"]) == 64
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), net.state_dict().values(), strict=True))
    # another network's weights, and a file that is not a state_dict: one line each, nothing written
    torch.save(build("lenet5", (1, 28, 28), 10).state_dict(), tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not torch")
    for bad, needle in (("other.pth", "state_dict["), ("junk.pth", "not a torch state_dict")):
        code = main(["import-weights", "--model", "mlp", "--state-dict", str(tmp_path / bad), "--dataset", "mnist",
                     "--out", str(tmp_path / "x.pt")])
        err = capsys.readouterr().err
        assert code != 0 and needle in err and err.count("\n") == 1 and not (tmp_path / "x.pt").exists()


def test_the_scale_search_skips_fixed_prefixes_of_any_graph_and_chooses_the_same(monkeypatch):
    """program on a network whose root is not a Sequential (resnet20): recording the inputs of each searched
    layer's Sequential ancestors and starting there gives the scales, headrooms and deployment of full passes."""
    from ittrna.methods import Context, apply_method
    from ittrna.methods.retrain import Pipeline

    model = build("resnet20", (1, 16, 16), 10, seed=0).eval()
    train, val = _small_data(model, (1, 16, 16), 64, 1), _small_data(model, (1, 16, 16), 200, 2)
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.1, "variation.sigma": 0.5}), 2)
    settings = {"search_images": 200, "headroom_steps": 3, "search_passes": 1}
    used: list[bool] = []
    original = Pipeline._skip_before

    def spy(self, name, weights, batches):  # count the layers whose prefix was skipped
        cm = original(self, name, weights, batches)
        state = cm.__enter__()
        used.append(state is not None)
        try:
            yield state
        finally:
            cm.__exit__(None, None, None)

    monkeypatch.setattr(Pipeline, "_skip_before", contextlib.contextmanager(spy))
    fast = apply_method("program", model, chip.test(), Context(train, val), settings)
    assert sum(used) >= 15  # every layer past the first block of each stage

    def never(self, name, weights, batches):
        yield None

    monkeypatch.setattr(Pipeline, "_skip_before", contextlib.contextmanager(never))
    full = apply_method("program", model, chip.test(), Context(train, val), settings)
    assert fast.scales == full.scales and fast.report["headroom"] == full.report["headroom"]
    assert all(torch.equal(fast.targets[n][a], full.targets[n][a]) for n in full.targets for a in full.targets[n])


def test_conv1d_maps_onto_crossbars_and_an_ideal_chip_equals_torch():
    """A 1-D CNN (any padding mode, "same" included): its Conv1d layers go on crossbars, tiled with ADC/DAC too."""
    from ittrna.graph import mapped_modules

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 5, padding="same", padding_mode="reflect"), nn.ReLU(),
                          nn.Conv1d(4, 6, 3, stride=2, dilation=2), nn.Flatten(), nn.LazyLinear(3))
    x = torch.rand(5, 2, 20, generator=torch.Generator().manual_seed(1))
    model(x)  # materialise the lazy layer
    model.eval()
    assert [n for n, _ in mapped_modules(model)] == ["0", "2", "4"]
    chip = Chip.fabricate(model, ChipConfig(), 0)
    assert chip.layer("0").kind == "conv1d"
    with torch.no_grad():
        assert torch.allclose(deploy(model, chip)(x), model(x), rtol=1e-4, atol=1e-5)
        tiled = ChipConfig().override({"mapping.dac_bits": 16, "mapping.adc_bits": 16, "mapping.rows": 8})
        assert torch.allclose(deploy(model, Chip.fabricate(model, tiled, 0))(x), model(x), rtol=1e-2, atol=1e-3)


def test_a_crafted_checkpoint_runs_no_code_it_names(tmp_path):
    """A checkpoint naming any function (a module's, or a file on disk with its true hash) runs nothing: only a
    definition the user named loads."""
    import hashlib
    import shutil

    marker = tmp_path / "ran"
    victim = tmp_path / "victim"
    victim.mkdir()
    state = build("mlp", (1, 8, 8), 10).state_dict()
    shutil_file = Path(shutil.__file__)
    crafted = {
        "module.pt": {"source": "os", "function": "system", "args": {"command": f"touch {marker}"}, "sha256": None},
        "file.pt": {"source": str(shutil_file), "function": "rmtree", "args": {"path": str(victim)},
                    "sha256": hashlib.sha256(shutil_file.read_bytes()).hexdigest()},
    }
    for name, definition in crafted.items():
        torch.save({"format": 1, "meta": {"model": "x", "definition": definition, "in_shape": [1, 8, 8],
                                          "num_classes": 10}, "state_dict": state}, tmp_path / name)
        with pytest.raises(InputError, match="--definition"):
            load_checkpoint(tmp_path / name)
    assert not marker.exists() and victim.is_dir()



class _InPlaceAndTwice(nn.Module):
    """A root that is not a Sequential, an in-place op first in a nested Sequential, and a layer called twice."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 12), nn.Sequential(nn.LeakyReLU(0.1, inplace=True),
                                                                   nn.Linear(12, 12)))
        self.head = nn.Linear(12, 10)
        self.twice = nn.Linear(16, 16)

    def forward(self, x):
        x = x.flatten(1)
        return self.head(self.body(self.twice(self.twice(x))))


def test_skipped_prefixes_survive_in_place_ops_and_layers_called_twice(monkeypatch):
    from ittrna.methods import Context, apply_method
    from ittrna.methods.retrain import Pipeline

    torch.manual_seed(0)
    model = _InPlaceAndTwice().eval()
    train, val = _small_data(model, (1, 4, 4), 64, 1), _small_data(model, (1, 4, 4), 300, 2)
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.15, "variation.sigma": 0.5}), 4)
    settings = {"search_images": 300, "headroom_steps": 5, "search_passes": 2, "search_z": 0.0}
    fast = apply_method("program", model, chip.test(), Context(train, val), settings)

    def never(self, name, weights, batches):
        yield None

    monkeypatch.setattr(Pipeline, "_skip_before", contextlib.contextmanager(never))
    full = apply_method("program", model, chip.test(), Context(train, val), settings)
    assert fast.scales == full.scales and fast.report["headroom"] == full.report["headroom"]


# --- long trainings outlive a session ------------------------------------------------------------------------
def test_an_interrupted_training_resumes_bit_for_bit(tmp_path, mnist_train):
    from ittrna.training import TrainHooks, fit

    data, val = mnist_train.subset(600), mnist_train.subset(700).subset(200)
    straight = build("mlp", seed=3)
    fit(straight, data, epochs=3, seed=5, val=val, progress=False)

    class Killed(Exception):
        pass

    def kill_at_epoch_2(epoch: int) -> None:
        if epoch == 2:
            raise Killed

    partial = tmp_path / "m.pt.partial"
    again = build("mlp", seed=3)
    with pytest.raises(Killed):
        fit(again, data, epochs=3, seed=5, val=val, progress=False, resume=partial,
            hooks=TrainHooks(before_epoch=kill_at_epoch_2))
    assert partial.exists()
    resumed = build("mlp", seed=3)  # a fresh process: only the file carries the state
    rep = fit(resumed, data, epochs=3, seed=5, val=val, progress=False, resume=partial)
    assert rep.epochs == 3 and len(rep.val_history) == 4
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values(),
                                                 strict=True))
    with pytest.raises(InputError, match="lr"):  # other settings: refused, nothing changed
        fit(build("mlp", seed=3), data, epochs=3, lr=0.01, seed=5, val=val, progress=False, resume=partial)


def test_augmentation_translates_and_mirrors_each_image_and_the_same_generator_gives_the_same_batch():
    from ittrna.data import DATASETS, Augmentation

    x = torch.rand(64, 2, 6, 5)
    aug = Augmentation(pad=2, flip=True)
    a = aug.apply(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, aug.apply(x, torch.Generator().manual_seed(1)))
    assert a.shape == x.shape and not torch.equal(a, x)
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(64):  # every image is one window of its padded self, mirrored or not: nothing else
        windows = [padded[i, :, dy:dy + 6, dx:dx + 5] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(2)) for w in windows), i
    assert torch.equal(Augmentation(pad=0, flip=False).apply(x, torch.Generator()), x)
    assert not DATASETS["mnist"].augmentation.flip and DATASETS["fashion-mnist"].augmentation.flip  # digits
    with pytest.raises(Exception, match="pad"):
        Augmentation(pad=17, flip=False)


def test_the_augmented_recipe_augments_and_resumes_bit_for_bit(tmp_path, mnist_train):
    from ittrna.training import RECIPES, TrainHooks, fit

    recipe = RECIPES["converged-augmented"]
    aug = recipe.augmentation("fashion-mnist")
    assert aug is not None and RECIPES["converged"].augmentation("fashion-mnist") is None
    data, val = mnist_train.subset(300), mnist_train.subset(500).subset(100)
    plain, augmented = build("mlp", seed=3), build("mlp", seed=3)
    fit(plain, data, epochs=2, seed=5, progress=False)
    fit(augmented, data, epochs=2, seed=5, progress=False, augment=aug)
    assert any(not torch.equal(p, q) for p, q in zip(plain.state_dict().values(), augmented.state_dict().values(),
                                                      strict=True))  # the augmentation was applied

    class Killed(Exception):
        pass

    def kill(epoch: int) -> None:
        if epoch == 1:
            raise Killed

    straight = build("mlp", seed=3)
    fit(straight, data, epochs=2, seed=5, val=val, progress=False, augment=aug)
    partial = tmp_path / "m.pt.partial"
    with pytest.raises(Killed):
        fit(build("mlp", seed=3), data, epochs=2, seed=5, val=val, progress=False, augment=aug, resume=partial,
            hooks=TrainHooks(before_epoch=kill))
    resumed = build("mlp", seed=3)
    fit(resumed, data, epochs=2, seed=5, val=val, progress=False, augment=aug, resume=partial)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values(),
                                                 strict=True))
    with pytest.raises(InputError, match="augment"):  # resumed without the augmentation: refused
        fit(build("mlp", seed=3), data, epochs=2, seed=5, val=val, progress=False, resume=partial)


class _Shared(nn.Module):
    """One Linear applied twice in a pass (weight sharing, as in a recurrent cell unrolled)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 8)
        self.shared = nn.Linear(8, 8)
        self.out = nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.inp(x.flatten(1)))
        h = torch.relu(self.shared(h))
        return self.out(torch.relu(self.shared(h)))


def test_a_layer_called_twice_keeps_every_calls_recording_and_the_chip_loop_follows_the_chip():
    from ittrna.host import Deployment
    from ittrna.methods.ondevice import _ChipLoop
    from ittrna.session import ChipSession

    torch.manual_seed(0)
    model = _Shared().eval()
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.1, "variation.sigma": 0.5}), 3)
    session = ChipSession(chip, model)
    session.deploy(Deployment({k: v.clone() for k, v in model.state_dict().items()}))
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    logits, rec = session.forward(x, record=True)
    assert rec["shared"][0].shape == (10, 8) and rec["inp"][0].shape == (5, 16)  # two calls of 5 rows each
    loop = _ChipLoop(model, session, session.layer_names)
    assert torch.allclose(loop(x), logits, atol=1e-5)  # each call takes its own part of the recording


class _SharedNorm(nn.Module):
    """One BatchNorm applied after two convolutions (a normalisation shared between calls)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 6 * 6, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.a(x)))
        return self.head(self.bn(self.b(x)).flatten(1))


def test_a_batchnorm_called_twice_is_re_estimated_from_both_calls_off_and_on_the_chip():
    """``taps`` and the host model give every call's input; the statistics pool both calls (not the first only)."""
    from ittrna.experiments.tolerate import tolerate
    from ittrna.host import Deployment
    from ittrna.methods import Context, apply_method
    from ittrna.session import ChipSession

    torch.manual_seed(0)
    model = _SharedNorm().eval()
    with torch.no_grad():
        model.bn.running_mean.fill_(0.3)
        model.bn.running_var.fill_(2.0)
    train, val, test = (_small_data(model, (1, 6, 6), n, s) for n, s in ((64, 1), (100, 2), (32, 3)))
    seen: list[torch.Tensor] = []
    hook = model.bn.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].detach()))
    with torch.no_grad():
        model(train.x)
    hook.remove()
    both = torch.cat(seen).transpose(0, 1).flatten(1).double()  # (C, both calls' values)
    first = seen[0].transpose(0, 1).flatten(1).double()
    assert not torch.allclose(both.mean(1), first.mean(1), atol=1e-2)  # the calls differ: the test can tell
    chip = Chip.fabricate(model, ChipConfig(), 1)  # healthy: the chip realises the weights
    session = ChipSession(chip, model)
    session.deploy(Deployment({k: v.clone() for k, v in model.state_dict().items()}))
    _, taps = session.forward(train.x[:5], taps=["bn"])
    assert taps["taps:bn"][0].shape == (10, 3, 6, 6)  # two calls of 5 images
    settings = {"images": 64, "batch_size": 16, "program": {"search": "output"}}
    dep = apply_method("bn", model, chip.test(), Context(train, val, seed=4), settings)
    assert torch.allclose(dep.state_dict["bn.running_mean"].double(), both.mean(1), atol=1e-4)
    assert torch.allclose(dep.state_dict["bn.running_var"].double(), both.var(1), rtol=1e-3)
    out, tuned = tolerate(model, Chip.fabricate(model, ChipConfig(), 1), "bn-chip", train=train, val=val,
                          test=test, settings=settings)
    assert out["ondevice_writes"] == 0
    assert torch.allclose(tuned.state_dict["bn.running_mean"].double(), both.mean(1), atol=1e-4)


def test_layer_ablation_makes_one_layer_digital_at_a_time_on_a_third_party_resnet():
    """`digital_layers` swaps chip layers for their own digital modules and restores them; all of them
    digital is the software network bit for bit; `layer_ablation` reads the chip, all-digital and per layer
    (data-flow order), each reading with the chip's read noise restarted, and writes nothing."""
    from ittrna.data import Split
    from ittrna.nn import digital_layers, layer_ablation
    from ittrna.training import accuracy

    import_or_fail("pytorchcv.models.resnet_cifar", "ITTRNA_REQUIRE_PYTORCHCV")
    model = build("pytorchcv.models.resnet_cifar:resnet20_cifar10", (1, 32, 32), 10, seed=0,
                  args={"in_channels": 1, "in_size": [32, 32]}).eval()
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.2, "variation.read_noise": 0.05}), 3)
    deployed = deploy(model, chip).eval()
    x = torch.rand(24, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    names = list(chip.layers)
    with torch.no_grad():
        chip.restart_reads()
        on_chip = deployed(x)
        with digital_layers(deployed, names) as d:
            assert torch.equal(d(x), model(x))  # every layer digital: the software network
        with digital_layers(deployed, [names[0]]):
            one = deployed(x)
        chip.restart_reads()
        assert torch.equal(deployed(x), on_chip)  # restored
    assert not torch.allclose(one, on_chip)
    with pytest.raises(InputError, match="not on the chip"):
        with digital_layers(deployed, ["features.nope"]):
            pass
    data = Split(x, model(x).argmax(1).detach())  # labels: the software network's own answers
    writes = chip.writes_issued
    ab = layer_ablation(deployed, data, layers=names[:3])
    assert chip.writes_issued == writes
    assert ab["digital"] == 1.0 and [r["layer"] for r in ab["layers"]] == names[:3]
    chip.restart_reads()
    assert ab["chip"] == accuracy(deployed, data)
    with digital_layers(deployed, [n for n in names if n != names[1]]):
        chip.restart_reads()
        assert ab["layers"][1]["alone"] == accuracy(deployed, data)
    assert all(r["loss_alone"] == ab["digital"] - r["alone"] for r in ab["layers"])


class _FoldMix(nn.Module):
    """Definition order differs from data-flow order; one convolution's output also feeds a residual addition
    before its BatchNorm (folding that one would change the output); one BatchNorm follows a ReLU."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8 * 4 * 4, 10)
        self.bn_head = nn.BatchNorm1d(10)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.bn_act = nn.BatchNorm2d(8)

    def forward(self, x):
        a = self.bn1(self.c1(x))  # foldable
        b = self.c2(a)
        y = torch.relu(self.bn2(b) + b)  # b is used twice: bn2 stays
        y = self.bn_act(torch.relu(y))  # after a ReLU: stays
        y = nn.functional.adaptive_avg_pool2d(y, 4).flatten(1)
        return self.bn_head(self.head(y))  # foldable (Linear -> BatchNorm1d)


def _random_bn_statistics(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            with torch.no_grad():
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))


def test_batchnorm_folds_into_the_layer_before_it_only_where_the_output_stays_the_same():
    from ittrna.graph import fold_batchnorm

    model = _FoldMix().eval()
    _random_bn_statistics(model, 0)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, pairs, left = fold_batchnorm(model, x)
    assert pairs == [("c1", "bn1"), ("head", "bn_head")]  # data-flow order, not definition order
    assert {bn for bn, _, _ in left} == {"bn2", "bn_act"}
    why = {bn: (layer, reason) for bn, layer, reason in left}
    assert why["bn2"][0] == "c2" and "used elsewhere" in why["bn2"][1]
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.bn_head, nn.Identity)
    assert isinstance(folded.bn2, nn.BatchNorm2d) and folded.c2.bias is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is not changed
    y = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))  # other images than the check's
    with torch.no_grad():
        assert torch.allclose(folded(y), model(y), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(folded.c1.weight, model.c1.weight)  # the scale is in the weights now


def test_a_folded_third_party_resnet_checkpoint_reloads_its_layout_and_runs_on_a_chip(tmp_path):
    from ittrna.graph import digital_modules, fold_batchnorm, mapped_modules

    import_or_fail("pytorchcv.models.resnet_cifar", "ITTRNA_REQUIRE_PYTORCHCV")
    spec = "pytorchcv.models.resnet_cifar:resnet20_cifar10"
    trust_definition(spec)
    model = build(spec, (1, 32, 32), 10, seed=0, args={"in_channels": 1, "in_size": [32, 32]}).eval()
    _random_bn_statistics(model, 3)
    x = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    folded, pairs, left = fold_batchnorm(model, x)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(pairs) == n_bn == 21 and left == []  # every convolution's BatchNorm, the 2 shortcuts' included
    assert not any("normalisation" in why for _, _, why in digital_modules(folded))
    assert [n for n, _ in mapped_modules(folded)] == [n for n, _ in mapped_modules(model)]
    meta = {"model": "resnet20_cifar10", "definition": parse_definition(spec,
            {"in_channels": 1, "in_size": [32, 32]}).to_dict(), "in_shape": [1, 32, 32], "num_classes": 10,
            "folded_batchnorm": [list(p) for p in pairs]}
    save_checkpoint(tmp_path / "f.pt", folded, meta)
    again, _ = load_checkpoint(tmp_path / "f.pt")
    with torch.no_grad():
        assert torch.equal(again(x), folded(x))
        chip = Chip.fabricate(again, ChipConfig(), 1)  # an ideal chip computes the folded network
        assert torch.allclose(deploy(again, chip).eval()(x), model(x), rtol=1e-4, atol=1e-4)
    # a recorded fold that does not fit the model is a one-line error naming the field
    save_checkpoint(tmp_path / "bad.pt", folded, {**meta, "folded_batchnorm": [["features.nope", "x"]]})
    with pytest.raises(FileFormatError, match="meta.folded_batchnorm"):
        load_checkpoint(tmp_path / "bad.pt")
    save_checkpoint(tmp_path / "bad2.pt", folded, {**meta, "folded_batchnorm": "all"})
    with pytest.raises(FileFormatError, match="meta.folded_batchnorm = 'all' is invalid"):
        load_checkpoint(tmp_path / "bad2.pt")


def test_fold_bn_on_the_command_line_records_both_accuracies_and_refuses_a_network_without_batchnorm(
        tmp_path, capsys, mnist_test):
    import json

    from ittrna.cli import main
    from ittrna.training import accuracy

    net = build("mobilenet-tiny", (1, 28, 28), 10, seed=5).eval()
    _random_bn_statistics(net, 6)
    save_checkpoint(tmp_path / "r.pt", net, {"model": "mobilenet-tiny", "dataset": "mnist", "in_shape": [1, 28, 28],
                                              "num_classes": 10})
    code = main(["fold-bn", "--model", str(tmp_path / "r.pt"), "--out", str(tmp_path / "f.pt"), "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    folded, meta = load_checkpoint(tmp_path / "f.pt")
    assert code == 0 and out["unfolded"]["test_accuracy"] == accuracy(net, mnist_test)
    assert meta["test_accuracy"] == accuracy(folded, mnist_test) == out["test_accuracy"]
    assert abs(meta["test_accuracy"] - out["unfolded"]["test_accuracy"]) <= 2e-4  # a rounding flip at most
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    # no BatchNorm, the input as output, a tuned file: one line each, nothing written
    save_checkpoint(tmp_path / "m.pt", build("mlp", (1, 28, 28), 10), {"model": "mlp", "dataset": "mnist",
                                                                        "in_shape": [1, 28, 28], "num_classes": 10})
    for args, needle in ((["--model", str(tmp_path / "m.pt"), "--out", str(tmp_path / "x.pt")], "no BatchNorm"),
                         (["--model", str(tmp_path / "r.pt"), "--out", str(tmp_path / "r.pt")], "r.pt")):
        code = main(["fold-bn", *args])
        err = capsys.readouterr().err
        assert code != 0 and needle in err and err.count("\n") == 1 and not (tmp_path / "x.pt").exists()
