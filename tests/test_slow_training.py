"""Full training runs against the accuracy targets of the foundation issue (`make test-slow`)."""

import json

import pytest

from ittrna.cli import main


@pytest.mark.slow
@pytest.mark.parametrize(("model", "dataset", "epochs", "target"), [
    ("mlp", "mnist", 5, 0.975),
    ("lenet5", "mnist", 5, 0.985),
    ("lenet5", "fashion-mnist", 10, 0.88),
])
def test_reference_accuracy(tmp_path, capsys, mnist_test, model, dataset, epochs, target):
    out = tmp_path / "m.pt"
    code = main(["train", "--model", model, "--dataset", dataset, "--epochs", str(epochs), "--seed", "0",
                 "--out", str(out), "--json", "--quiet"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    print(f"{model}/{dataset}: {result}")
    assert result["test_accuracy"] >= target
