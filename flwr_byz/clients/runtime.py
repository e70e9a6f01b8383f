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
    from flwr_byz.schema import ClientConfig


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
    name: str,
    root: str,
    seed: int,
    test_fraction: float,
    num: int,
    scheme: str,
    alpha: float,
    gamma: float = 0.5,
    byzantine: tuple[int, ...] = (),
) -> tuple[Tensor, ...]:
    from flwr_byz import data

    split = load_split(name, root, seed, test_fraction)
    parts = data.partition(
        split.train_y, num, scheme=scheme, alpha=alpha, seed=seed, gamma=gamma, byzantine=byzantine
    )
    return tuple(parts)


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
        cfg.similarity_gamma,
        # label_sorted / gamma_similarity: the attackers sample i.i.d. from the whole set
        tuple(cfg.byzantine_partition_ids),
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


def _owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    prefix, _, name = key.rpartition(".")
    return (model.get_submodule(prefix) if prefix else model), name


def _slots_valid(entries: list[tuple[nn.Module, str, Tensor, Tensor]]) -> bool:
    """Whether every cached tensor is still the one the model holds (no module traversal)."""
    for owner, name, held, view in entries:
        live = owner._parameters.get(name, owner._buffers.get(name))
        if live is not held or live.data_ptr() != view.data_ptr() or live.device != view.device:
            return False
    return True


def state_slots(model: nn.Module) -> tuple[list[str], list[Tensor], list[nn.Parameter | None]]:
    """The model's ``state_dict`` keys, tensors (live views of its parameters and buffers) and,
    per key, the parameter it holds (``None`` for a buffer).

    Cached on the model and checked on every call without traversing the modules: rebuilt when
    a parameter or buffer was replaced or moved (``.to(device)`` swaps ``param.data`` and the
    buffers). Replacing a whole submodule of a model already seen is not detected."""
    cached = model.__dict__.get("_flwr_byz_state_slots")
    if cached is not None and _slots_valid(cached[0]):
        return cached[1]
    state = model.state_dict()
    params = dict(model.named_parameters())
    entries = []
    for key, view in state.items():
        owner, name = _owner(model, key)
        held = owner._parameters.get(name, owner._buffers.get(name))
        if not isinstance(held, Tensor):  # extra state or an exotic module: no caching
            return list(state), list(state.values()), [params.get(k) for k in state]
        entries.append((owner, name, held, view))
    slots = (list(state), list(state.values()), [params.get(key) for key in state])
    model.__dict__["_flwr_byz_state_slots"] = (entries, slots)
    return slots


def _on_device(tensors: list[Tensor], device: torch.device) -> bool:
    return all(t.device == device for t in tensors)


def model_with_state(
    cfg: ClientConfig, state: dict[str, Tensor], device: torch.device
) -> nn.Module:
    """The run's model (one cached instance per process) loaded with ``state`` on ``device``.

    The state's keys must be the model's ``state_dict`` keys (the server builds the initial
    arrays from the same ``flwr_byz.models.build``). Loading copies each tensor into the model's
    own (like ``load_state_dict``, with its shape check) without rebuilding the ``state_dict``.

    A tensor decoded by ``flwr_byz.clients.records.record_to_state`` is not copied when the model
    already
    holds it: the last copy into that parameter came from the same (immutable) ``bytes``, and
    neither the parameter nor the decoded tensor changed since (their version counters, which
    every in-place torch operation bumps, are unchanged). Writes that bypass the counter
    (``param.data.add_()``, numpy views) are not detected: reload with fresh tensors after them."""
    split = dataset_for(cfg)
    model = _model(cfg.model, split.num_classes, tuple(split.train_x.shape[1:]))
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    expected, targets, _ = state_slots(model)
    if not _on_device(targets, device):
        model.to(device)
        expected, targets, _ = state_slots(model)
    if list(state) != expected:
        raise ValueError(
            f"received arrays have keys {list(state)[:6]}..., but model {cfg.model!r} has "
            f"{expected[:6]}...; the server and the clients must use the same model"
        )
    mismatched = [
        f"size mismatch for {key}: copying a param with shape {tuple(value.shape)}, the shape "
        f"in current model is {tuple(target.shape)}."
        for key, value, target in zip(expected, state.values(), targets, strict=True)
        if tuple(value.shape) != tuple(target.shape)
    ]
    if mismatched:
        raise RuntimeError(
            f"Error(s) in loading state_dict for {type(model).__name__}:\n\t"
            + "\n\t".join(mismatched)
        )
    loaded = model.__dict__.get(_LOADED_ATTR)
    if loaded is None or len(loaded) != len(targets):
        loaded = model.__dict__[_LOADED_ATTR] = [None] * len(targets)
    with torch.no_grad():
        for index, (value, target) in enumerate(zip(state.values(), targets, strict=True)):
            source = _source(value)
            held = loaded[index]
            if (
                source is not None
                and held is not None
                and held[0] is target
                and held[1] is source
                and held[2] == target._version  # bumped by any in-place change
            ):
                continue  # the model still holds exactly these values
            target.copy_(value)
            loaded[index] = None if source is None else (target, source, target._version)
    return model


_LOADED_ATTR = "_flwr_byz_loaded"
_SOURCE_ATTR = "_flwr_byz_source"  # set by flwr_byz.clients.records.record_to_state


def _source(value: Tensor) -> bytes | None:
    """The ``bytes`` ``value`` was decoded from, if it is still unchanged since (else None)."""
    tag = value.__dict__.get(_SOURCE_ATTR) if hasattr(value, "__dict__") else None
    if tag is None or tag[1] != value._version:  # changed in place since decoding
        return None
    return tag[0]


def client_device(name: str = "cpu") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other value is used as is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
