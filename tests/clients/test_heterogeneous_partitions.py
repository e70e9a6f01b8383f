"""Heterogeneous partitions from the run config: honest shards by label, attackers i.i.d."""

from __future__ import annotations

import torch

from flwr_byz.clients.runtime import dataset_for, shard_indices
from flwr_byz.schema import ClientConfig


def _cfg(partition: int, scheme: str, **extra: object) -> ClientConfig:
    run = {
        "partitioning": scheme,
        "num-byzantine": 1,
        "attack": "alie",
        "byzantine-partitions": "3",
        "seed": 2,
        **extra,
    }
    return ClientConfig.from_configs(run, {"partition-id": partition, "num-partitions": 4})


def test_label_sorted_gives_honest_workers_contiguous_labels_and_the_attacker_everything() -> None:
    labels = dataset_for(_cfg(0, "label_sorted")).train_y
    honest = [shard_indices(_cfg(p, "label_sorted")) for p in range(3)]
    assert sum(part.numel() for part in honest) == labels.numel()  # the honest cover the set
    assert torch.cat(honest).unique().numel() == labels.numel()
    maxima = [int(labels[part].max()) for part in honest]
    minima = [int(labels[part].min()) for part in honest]
    assert maxima[0] <= minima[1] and maxima[1] <= minima[2]  # sorted by label, in client order
    attacker = shard_indices(_cfg(3, "label_sorted"))
    assert attacker.numel() == labels.numel()  # the attacker samples i.i.d. from all of it


def test_gamma_similarity_mixes_an_iid_share() -> None:
    labels = dataset_for(_cfg(0, "gamma_similarity")).train_y
    part = shard_indices(_cfg(0, "gamma_similarity", **{"similarity-gamma": 0.6}))
    sorted_only = shard_indices(_cfg(0, "label_sorted"))
    assert labels[part].unique().numel() > labels[sorted_only].unique().numel()
