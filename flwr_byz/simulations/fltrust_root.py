"""FLTrust's server side in simulations: the root data set and the server's update ``g_0``.

FLTrust (Cao et al., NDSS 2021) gives the server a small clean root data set (100 examples in
the paper, drawn uniformly from the training data) on which it computes, each round, the same
update as an honest client: here one mini-batch gradient at the global model in gradient mode,
``local-epochs`` of SGD (``local-lr``) from it in weights mode (the reply is the delta). The root
examples are drawn once per run from the training split by the run's seed (``root-size``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flwr_byz import data
from flwr_byz.clients.honest import flat_gradient
from flwr_byz.schema import RunConfig
from flwr_byz.simulations.run_data import split_and_model  # the evaluator's data and model

ROOT_KEY = "fltrust-root"  # the generator key of the root set and of its mini-batches


def root_indices(num_train: int, size: int, seed: int) -> Tensor:
    """``size`` distinct training indices drawn uniformly for ``seed`` (the root data set)."""
    if not 1 <= size <= num_train:
        raise ValueError(f"root-size must be in [1, {num_train}] (the training split), got {size}")
    digest = hashlib.sha256(f"{seed}|{ROOT_KEY}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randperm(num_train, generator=generator)[:size]


def _unflatten(vector: Tensor, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for key, array in like.items():
        size = int(np.prod(array.shape))
        out[key] = vector[offset : offset + size].reshape(array.shape).numpy().copy()
        offset += size
    if offset != vector.numel():
        raise ValueError(f"server update has {vector.numel()} values, the model {offset}")
    return out


def make_root_update(cfg: RunConfig) -> Any:
    """``server_update_fn(global_arrays, server_round)`` for :class:`flwr_byz.strategy.FLTrust`."""

    split, model = split_and_model(cfg)
    root = root_indices(int(split.train_y.numel()), cfg.root_size, cfg.seed)

    def server_update(global_arrays: Mapping[str, np.ndarray], server_round: int) -> dict:
        state = {key: torch.from_numpy(np.array(value)) for key, value in global_arrays.items()}
        model.load_state_dict(state)
        if cfg.update_mode == "gradient":
            size = min(cfg.batch_size, root.numel())
            picks = data.sample_batch(root, size, cfg.seed, ROOT_KEY, server_round)
            vector, _ = flat_gradient(
                model, split.train_x[picks], split.train_y[picks], cfg.weight_decay, cfg.clip_grad
            )
            return _unflatten(vector.detach(), global_arrays)
        return _local_sgd_delta(model, split.train_x[root], split.train_y[root], global_arrays)

    def _local_sgd_delta(
        net: torch.nn.Module, images: Tensor, labels: Tensor, start: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        optimizer = torch.optim.SGD(
            net.parameters(), lr=cfg.local_lr, weight_decay=cfg.weight_decay
        )
        net.train()
        for _ in range(cfg.local_epochs):
            for batch in torch.split(torch.arange(labels.numel()), cfg.batch_size):
                optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.nll_loss(net(images[batch]), labels[batch])
                loss.backward()
                optimizer.step()
        after = net.state_dict()
        return {key: after[key].detach().numpy() - np.asarray(start[key]) for key in start}

    return server_update
