import pytest
import torch

from ittrna.models import MODELS, build, load_checkpoint, save_checkpoint
from ittrna.training import train


@pytest.mark.parametrize(("name", "shape", "layers"), [
    ("mlp", (1, 28, 28), 3), ("mlp-deep", (1, 28, 28), 6), ("lenet5", (1, 28, 28), 5),
    ("lenet5", (3, 32, 32), 5), ("vgg-small", (3, 32, 32), 8),
])
def test_registry_shapes(name, shape, layers):
    model = build(name, shape, 10)
    out = model(torch.rand(2, *shape))
    assert out.shape == (2, 10)
    weighted = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert len(weighted) == layers


def test_registry_names_and_unknown():
    assert set(MODELS) == {"mlp", "mlp-deep", "lenet5", "vgg-small"}
    with pytest.raises(KeyError, match="accepted"):
        build("resnet")


def test_mlp_deep_widths():
    sizes = [(m.in_features, m.out_features) for m in build("mlp-deep").modules()
             if isinstance(m, torch.nn.Linear)]
    assert sizes == [(784, 256), (256, 256), (256, 256), (256, 256), (256, 128), (128, 10)]


def test_init_is_seeded():
    a, b, c = build("lenet5", seed=1), build("lenet5", seed=1), build("lenet5", seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a[0].weight, c[0].weight)


def test_checkpoint_roundtrip_and_rejection(tmp_path):
    model = build("lenet5", seed=4)
    meta = {"model": "lenet5", "dataset": "mnist", "in_shape": [1, 28, 28], "num_classes": 10, "seed": 4,
            "test_accuracy": 0.5}
    save_checkpoint(tmp_path / "m.pt", model, meta)
    back, meta2 = load_checkpoint(tmp_path / "m.pt")
    assert meta2 == meta
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), back.state_dict().values(),
                                                  strict=True))
    (tmp_path / "junk.pt").write_text("hello")
    with pytest.raises(ValueError, match="not an ittrna checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an ittrna checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_training_is_deterministic_and_learns(mnist_train):
    data = mnist_train.subset(3000)
    runs = []
    for _ in range(2):
        model = build("mlp", seed=5)
        train(model, data, epochs=1, seed=5, progress=False)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    other = build("mlp", seed=5)
    train(other, data, epochs=1, seed=6, progress=False)  # other shuffling seed -> other weights
    assert not torch.equal(other[1].weight, runs[0]["1.weight"])


def test_train_rejects_bad_hyper_parameters(mnist_train):
    with pytest.raises(ValueError, match="epochs"):
        train(build("mlp"), mnist_train.subset(10), epochs=-1)
    with pytest.raises(ValueError, match="lr"):
        train(build("mlp"), mnist_train.subset(10), epochs=1, lr=0)
