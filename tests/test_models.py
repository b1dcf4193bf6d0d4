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
    assert set(MODELS) == {"mlp", "mlp-deep", "lenet5", "vgg-small", "resnet20", "mobilenet-tiny"}
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


def test_distillation_pulls_a_model_towards_its_teacher():
    """fit's distillation term: a student trained only on its teacher's logits (distill = 1) moves towards the
    teacher's outputs, and the labels do not matter to it."""
    import torch
    from torch import nn

    from ittrna.data import Split
    from ittrna.errors import InputError
    from ittrna.training import fit

    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, 4, 4, generator=g)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    nn.init.zeros_(student[1].weight)
    labels = Split(x, torch.randint(0, 3, (256,), generator=g))
    other = Split(x, torch.randint(0, 3, (256,), generator=g))

    def gap(m):  # in probabilities: distillation matches softmax outputs (logits only up to a per-image shift)
        with torch.no_grad():
            return float((m(x).softmax(1) - teacher(x).softmax(1)).abs().mean())

    before = gap(student)
    a = __import__("copy").deepcopy(student)
    fit(student, labels, epochs=20, lr=0.05, batch_size=32, seed=1, teacher=teacher, distill=1.0, progress=False)
    fit(a, other, epochs=20, lr=0.05, batch_size=32, seed=1, teacher=teacher, distill=1.0, progress=False)
    assert gap(student) < 0.5 * before
    assert all(torch.equal(p, q) for p, q in zip(student.parameters(), a.parameters(), strict=True))
    with pytest.raises(InputError, match="distill"):
        fit(student, labels, epochs=1, distill=1.5, teacher=teacher, progress=False)
    with pytest.raises(InputError, match="teacher"):
        fit(student, labels, epochs=1, distill=0.5, progress=False)
