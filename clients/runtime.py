"""Per-process caches: the data set and partitions (per process), one model per thread.

A simulation runs many clients in few processes; loading MNIST or building the model for every
message would dominate a round, so each process does it once.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from flwr_byz.data import DataSplit

    from .config import ClientConfig


@functools.lru_cache(maxsize=4)
def load_split(name: str, root: str, seed: int, test_fraction: float) -> DataSplit:
    """``flwr_byz.data.load_dataset``, once per process and arguments."""
    from flwr_byz import data

    return data.load_dataset(name, root=root or None, seed=seed, test_fraction=test_fraction)


def dataset_for(cfg: ClientConfig) -> DataSplit:
    """The run's data set (cached)."""
    return load_split(cfg.dataset, cfg.data_root, cfg.seed, cfg.test_fraction)


@functools.lru_cache(maxsize=8)
def _partitions(
    name: str, root: str, seed: int, test_fraction: float, num: int, scheme: str, alpha: float
) -> tuple[Tensor, ...]:
    from flwr_byz import data

    split = load_split(name, root, seed, test_fraction)
    return tuple(data.partition(split.train_y, num, scheme=scheme, alpha=alpha, seed=seed))


def shard_indices(cfg: ClientConfig) -> Tensor:
    """Training indices of this client's partition (cached per process)."""
    parts = _partitions(
        cfg.dataset,
        cfg.data_root,
        cfg.seed,
        cfg.test_fraction,
        cfg.num_partitions,
        cfg.partitioning,
        cfg.dirichlet_alpha,
    )
    return parts[cfg.partition_id]


_THREAD_MODELS = threading.local()


def _model(name: str, num_classes: int, in_shape: tuple[int, ...]) -> nn.Module:
    """One model instance per thread and architecture (threads must not share parameters)."""
    from flwr_byz import models

    cache = _THREAD_MODELS.__dict__.setdefault("models", {})
    key = (name, num_classes, in_shape)
    if key not in cache:
        cache[key] = models.build(name, num_classes=num_classes, in_shape=in_shape)
    return cache[key]


def model_with_state(
    cfg: ClientConfig, state: dict[str, Tensor], device: torch.device
) -> nn.Module:
    """The run's model (one cached instance per process) loaded with ``state`` on ``device``.

    The state's keys must be the model's ``state_dict`` keys (the server builds the initial
    arrays from the same ``flwr_byz.models.build``)."""
    split = dataset_for(cfg)
    model = _model(cfg.model, split.num_classes, tuple(split.train_x.shape[1:]))
    expected = list(model.state_dict())
    if list(state) != expected:
        raise ValueError(
            f"received arrays have keys {list(state)[:6]}..., but model {cfg.model!r} has "
            f"{expected[:6]}...; the server and the clients must use the same model"
        )
    model.load_state_dict(state)
    return model.to(device)


def client_device(name: str = "cpu") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other value is used as is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
