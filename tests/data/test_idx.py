"""Full MNIST from its IDX files with numpy: formats, layouts, errors (tiny files written here)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from flwr_byz import data


def _idx_bytes(values: np.ndarray) -> bytes:
    magic = 0x0800 | values.ndim
    dims = b"".join(int(d).to_bytes(4, "big") for d in values.shape)
    return magic.to_bytes(4, "big") + dims + values.astype(np.uint8).tobytes()


def _write_mnist(folder: Path, gz: bool, train: int = 5, test: int = 3) -> dict[str, np.ndarray]:
    """Tiny MNIST-shaped IDX files in ``folder``: pixel (i, r, c) = (7 i + r + c) % 256."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for part, count in (("train", train), ("test", test)):
        i, r, c = np.meshgrid(np.arange(count), np.arange(28), np.arange(28), indexing="ij")
        arrays[f"{part}_images"] = ((7 * i + r + c + (100 if part == "test" else 0)) % 256).astype(
            np.uint8
        )
        arrays[f"{part}_labels"] = (np.arange(count) * 3 % 10).astype(np.uint8)
    for key, stem in data.MNIST_FILES.items():
        raw = _idx_bytes(arrays[key])
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_reads_raw_and_gz_in_both_layouts(tmp_path: Path, gz: bool, layout: str) -> None:
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    arrays = _write_mnist(folder, gz)
    split = data.load_dataset("mnist", root=tmp_path, seed=3)
    assert split.train_x.shape == (5, 1, 28, 28) and split.test_x.shape == (3, 1, 28, 28)
    assert split.num_classes == 10 and split.name == "mnist"
    # the test set is t10k, in file order; pixel (0, 0, 0) of test image 1 is (7 + 100) / 255
    assert split.test_y.tolist() == [0, 3, 6]
    assert split.test_x[1, 0, 0, 0].item() == pytest.approx((107 / 255 - 0.1307) / 0.3081, 1e-6)
    # the training set is shuffled by the seed, images and labels together
    order = torch.randperm(5, generator=torch.Generator().manual_seed(3))
    assert split.train_y.tolist() == arrays["train_labels"][order.numpy()].tolist()
    expected = (arrays["train_images"][order.numpy()] / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(split.train_x[:, 0].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_reading_idx_needs_no_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_torchvision() -> None:
        raise AssertionError("torchvision must not be imported when the IDX files are present")

    monkeypatch.setattr(data, "_import_torchvision_datasets", no_torchvision)
    _write_mnist(tmp_path, gz=True)
    assert data.load_dataset("mnist", root=tmp_path).train_y.shape == (5,)


def test_read_idx_hand_example(tmp_path: Path) -> None:
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 4, 5, 6]))
    assert data.read_idx(path, 1).tolist() == [4, 5, 6]


def test_corrupt_files_name_the_file(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    good = labels.read_bytes()
    labels.write_bytes(good[:-1])  # truncated
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: dimensions"):
        data.load_dataset("mnist", root=tmp_path)
    labels.write_bytes(b"\x00\x00\x08\x03" + good[4:])  # image magic in a label file
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: IDX magic number 0x0803"):
        data.load_dataset("mnist", root=tmp_path)
    labels.write_bytes(good)
    images = tmp_path / "t10k-images-idx3-ubyte"
    images.unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: cannot read"):
        data.load_dataset("mnist", root=tmp_path)


def test_mismatched_counts_are_an_error(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(2, np.uint8)))
    with pytest.raises(ValueError, match="3 images but .*t10k-labels-idx1-ubyte 2 labels"):
        data.load_dataset("mnist", root=tmp_path)


def test_missing_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_mnist(tmp_path, gz=True)
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte .*not found in"):
        data.find_mnist_files(tmp_path)

    def missing() -> None:
        raise ImportError("no torchvision here")

    monkeypatch.setattr(data, "_import_torchvision_datasets", missing)
    with pytest.raises(ImportError, match="train-images-idx3-ubyte.*no torchvision here"):
        data.load_dataset("mnist", root=tmp_path)


def test_shared_full_mnist_if_present() -> None:
    root = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"  # beside the repo
    if not (root / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("the full MNIST files are not on this machine")
    labels = data.read_idx(root / "t10k-labels-idx1-ubyte.gz", 1)
    assert labels.shape == (10000,) and np.bincount(labels)[:3].tolist() == [980, 1135, 1032]
