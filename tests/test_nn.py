import pytest
import torch
from torch import nn

from ittrna.chip import Chip
from ittrna.config import ChipConfig
from ittrna.models import build
from ittrna.nn import AnalogConv2d, AnalogLinear, deploy, evaluate, monte_carlo, undeploy
from ittrna.training import accuracy


def test_deploy_copies_and_undeploy_inverts():
    model = build("lenet5", seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.2}), 0)
    dep = deploy(model, chip)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # original untouched
    assert isinstance(dep[0], AnalogConv2d) and isinstance(dep[-1], AnalogLinear)
    plain = undeploy(dep)
    assert type(plain[0]) is nn.Conv2d and type(plain[-1]) is nn.Linear
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())
    baked = undeploy(dep, effective=True)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(baked(x), dep(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(baked(x), model(x), atol=1e-3)  # faults do change the outputs


def test_filter_fn_keeps_some_layers_digital():
    model = build("lenet5")
    chip = Chip.fabricate(model, ChipConfig(), 0, filter_fn=lambda m, name: isinstance(m, nn.Linear))
    assert set(chip.layers) == {"7", "9", "11"}
    dep = deploy(model, chip)
    assert type(dep[0]) is nn.Conv2d and isinstance(dep[7], AnalogLinear)


def test_deployed_layer_rereads_after_reprogramming():
    model = nn.Sequential(nn.Linear(8, 4))
    chip = Chip.fabricate(model, ChipConfig(), 0)
    dep = deploy(model, chip)
    x = torch.rand(2, 8)
    y0 = dep(x).detach()
    chip.program_weights("0", torch.zeros(4, 8), scale=1.0)
    assert torch.allclose(dep(x), model[0].bias.expand(2, 4))
    assert not torch.allclose(dep(x), y0)


def test_read_noise_redrawn_each_forward():
    model = build("mlp")
    x = torch.rand(4, 1, 28, 28)
    quiet = deploy(model, Chip.fabricate(model, ChipConfig(), 0))
    assert torch.equal(quiet(x), quiet(x))
    noisy = deploy(model, Chip.fabricate(model, ChipConfig().override({"variation.read_noise": 0.1}), 0))
    assert not torch.equal(noisy(x), noisy(x))


def test_programming_noise_fixed_until_rewritten():
    model = build("mlp")
    cfg = ChipConfig().override({"variation.program_noise": 0.2})
    chip = Chip.fabricate(model, cfg, 0)
    dep = deploy(model, chip)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        y = dep(x)
        assert torch.equal(y, dep(x))
        assert not torch.allclose(y, model(x), atol=1e-4)


def test_monte_carlo_is_deterministic_and_collapses_with_faults(trained_mlp, mnist_test):
    data = mnist_test.subset(2000)
    ideal = accuracy(trained_mlp, data)
    ok = monte_carlo(trained_mlp, ChipConfig(), [0, 1], data, progress=False)
    assert ok == pytest.approx([ideal, ideal], abs=1e-9)
    cfg = ChipConfig().override({"faults.rate": 0.3})
    a = monte_carlo(trained_mlp, cfg, [10, 11, 12], data, progress=False)
    assert a == monte_carlo(trained_mlp, cfg, [10, 11, 12], data, progress=False)
    assert len(set(a)) > 1  # different chips differ
    assert max(a) < ideal - 0.05  # 30 % stuck cells hurt a normally trained network
    one = evaluate(trained_mlp, Chip.fabricate(trained_mlp, cfg, 10), data)
    assert one == a[0]


def test_sigma_hurts_more_when_larger(trained_mlp, mnist_test):
    data = mnist_test.subset(2000)
    means = []
    for sigma in (0.0, 0.5, 1.5):
        accs = monte_carlo(trained_mlp, ChipConfig().override({"variation.sigma": sigma}), [0, 1, 2], data,
                           progress=False)
        means.append(sum(accs) / len(accs))
    assert means[0] > means[1] > means[2]


def test_adc_calibrated_once_outputs_do_not_depend_on_the_batch():
    """A 4-bit ADC is calibrated on calibration inputs and then fixed: an image's logits are the same alone
    and inside a batch of 256, and a saved chip keeps its calibration."""
    from ittrna.chip import Chip
    from ittrna.config import ChipConfig
    from ittrna.models import build
    from ittrna.nn import deploy

    model = build("lenet5", seed=3)
    g = torch.Generator().manual_seed(0)
    calib, x = torch.rand(64, 1, 28, 28, generator=g), torch.rand(256, 1, 28, 28, generator=g)
    chip = Chip.fabricate(model, ChipConfig().override({"mapping.adc_bits": 4, "mapping.dac_bits": 8,
                                                        "mapping.rows": 64}), 0)
    analog = deploy(model, chip, calibration=calib)
    fs = [layer.adc_fs.clone() for layer in chip]
    with torch.no_grad():
        alone, batch = analog(x[:1]), analog(x)[:1]
    assert torch.equal(alone, batch)
    assert all(torch.equal(a, layer.adc_fs) for a, layer in zip(fs, chip, strict=True))  # never re-ranged
    with torch.no_grad():  # a coarse ADC really quantises: outputs differ from the ideal periphery's
        assert not torch.allclose(batch, model(x[:1]), atol=1e-3)


def test_adc_calibration_is_saved_with_the_chip(tmp_path):
    from ittrna.chip import Chip
    from ittrna.config import ChipConfig
    from ittrna.models import build
    from ittrna.nn import deploy

    model = build("mlp", seed=1)
    chip = Chip.fabricate(model, ChipConfig().override({"mapping.adc_bits": 6}), 2)
    x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = deploy(model, chip, calibration=x[:16])(x)
    chip.save(tmp_path / "c.npz")
    back = Chip.load(tmp_path / "c.npz")
    assert all(torch.equal(a.adc_fs, b.adc_fs) for a, b in zip(chip, back, strict=True))
    with torch.no_grad():
        assert torch.equal(deploy(model, back, program=False)(x), out)


def test_ideal_chip_reads_each_layer_once_and_again_only_after_reprogramming(monkeypatch):
    """The chip keeps a deployed layer's read (Chip.read_weight): an ideal chip costs one read per layer for
    any number of forward passes and one F.linear per layer per pass; reprogramming a layer (or changing its
    layout) re-reads that layer only. With read noise every pass reads every layer afresh."""
    import torch.nn.functional as F

    from ittrna.chip import readout
    from ittrna.mapping import LayerLayout

    model = build("mlp", seed=1)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    reads: list[tuple[str, bool]] = []
    linears: list[int] = []
    real_read, real_linear = readout.effective_weight, F.linear

    def counted_read(chip, name, read_noise=False):
        reads.append((name, read_noise))
        return real_read(chip, name, read_noise=read_noise)

    monkeypatch.setattr(readout, "effective_weight", counted_read)
    monkeypatch.setattr(F, "linear", lambda *a, **k: linears.append(1) or real_linear(*a, **k))
    chip = Chip.fabricate(model, ChipConfig().override({"faults.rate": 0.1}), 0)
    net = deploy(model, chip)
    layers = list(chip.layers)
    with torch.no_grad():
        first = net(x)
        assert torch.equal(net(x), first)
    assert sorted(reads) == sorted((n, False) for n in layers) and len(linears) == 2 * len(layers)
    reads.clear()
    chip.program_weights(layers[0], model.get_submodule(layers[0]).weight * 0.5)
    with torch.no_grad():
        net(x)
    assert reads == [(layers[0], False)]
    reads.clear()
    chip.set_layout(layers[1], LayerLayout.identity(chip.layer(layers[1]).grid))
    with torch.no_grad():
        net(x)
    assert reads == [(layers[1], False)]

    noisy = Chip.fabricate(model, ChipConfig().override({"variation.read_noise": 0.05}), 0)
    net = deploy(model, noisy)
    reads.clear()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert sorted(reads) == sorted((n, True) for n in layers for _ in range(2)) and not torch.equal(a, b)
