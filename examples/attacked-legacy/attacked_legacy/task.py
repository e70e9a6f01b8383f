"""Model, data and train/test loops (synthetic data, so it runs anywhere in seconds)."""

from __future__ import annotations

import torch
from torch import nn

NUM_FEATURES = 20
NUM_CLASSES = 4
TRAIN_PER_PARTITION = 256
TEST_SIZE = 512
_DATA_SEED = 1234


class Net(nn.Module):
    """A small MLP (20 -> 32 -> 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(NUM_FEATURES, 32), nn.ReLU(), nn.Linear(32, NUM_CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _class_means() -> torch.Tensor:
    """Fixed, well separated class centres shared by every partition and the test set."""
    generator = torch.Generator().manual_seed(_DATA_SEED)
    return 3.0 * torch.randn(NUM_CLASSES, NUM_FEATURES, generator=generator)


def _sample(num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (num,), generator=generator)
    features = _class_means()[labels] + torch.randn(num, NUM_FEATURES, generator=generator)
    return features, labels


def load_data(partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training data of one partition (i.i.d. draws, seeded by the partition id)."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id must be in [0, {num_partitions}), got {partition_id}")
    return _sample(TRAIN_PER_PARTITION, seed=_DATA_SEED + 1 + partition_id)


def load_test_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out test set used by the server."""
    return _sample(TEST_SIZE, seed=_DATA_SEED)


def train(net: Net, data: tuple[torch.Tensor, torch.Tensor], epochs: int, lr: float) -> float:
    """Local SGD epochs (mini-batches of 32); returns the mean training loss."""
    features, labels = data
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    net.train()
    losses = []
    for _ in range(epochs):
        for start in range(0, len(labels), 32):
            optimizer.zero_grad()
            loss = criterion(net(features[start : start + 32]), labels[start : start + 32])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return sum(losses) / len(losses)


@torch.no_grad()
def test(net: Net, data: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    """Loss and accuracy of `net` on `data`."""
    features, labels = data
    net.eval()
    logits = net(features)
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(dim=1) == labels).double().mean().item()
    return loss, accuracy
