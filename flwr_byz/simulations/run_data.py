"""The data split and the initial model of a run, as every node and the server build them."""

from __future__ import annotations

from typing import Any

import torch

from flwr_byz import data, models
from flwr_byz.schema import RunConfig


def split_and_model(cfg: RunConfig) -> tuple[Any, torch.nn.Module]:
    """The run's data split and its model, initialised as every node's (seeded by the run)."""
    split = data.load_dataset(
        cfg.dataset, root=cfg.data_root or None, seed=cfg.seed, test_fraction=cfg.test_fraction
    )
    model = models.build(
        cfg.model,
        num_classes=split.num_classes,
        in_shape=tuple(split.train_x.shape[1:]),
        seed=cfg.seed,
        init=cfg.init,
    )
    return split, model
