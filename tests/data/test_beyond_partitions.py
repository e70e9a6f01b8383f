"""label_sorted and gamma_similarity partitions, and the cnn_mnist model."""

from __future__ import annotations

import pytest
import torch

from flwr_byz import data, models
from flwr_byz.layout import flatten_state


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def labels(count: int = 103, classes: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, classes, (count,), generator=torch.Generator().manual_seed(seed))


def test_label_sorted_gives_contiguous_label_shards_and_byzantine_everything() -> None:
    y = labels()
    parts = data.partition(y, 7, "label_sorted", seed=3, byzantine=[2, 5])
    honest = [0, 1, 3, 4, 6]
    assert torch.equal(parts[2], torch.arange(103)) and torch.equal(parts[5], torch.arange(103))
    union = torch.cat([parts[c] for c in honest]).sort().values
    assert torch.equal(union, torch.arange(103))  # the honest shards cover each index once
    sizes = [len(parts[c]) for c in honest]
    assert max(sizes) - min(sizes) <= 1
    previous_max = -1
    for c in honest:  # client order follows label order: shards are contiguous in label
        shard = y[parts[c]]
        assert int(shard.min()) >= previous_max
        previous_max = int(shard.max())
    assert same(parts, data.partition(y, 7, "label_sorted", seed=3, byzantine=[5, 2]))


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_gamma_similarity_mixes_an_iid_share(gamma: float) -> None:
    y = labels(count=1000)
    parts = data.partition(y, 5, "gamma_similarity", gamma=gamma, seed=1)
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(1000))
    classes = [len(torch.unique(y[p])) for p in parts]
    if gamma == 0.0:
        assert same(parts, data.partition(y, 5, "label_sorted", seed=1))
        assert max(classes) <= 4  # about 2 classes per client
    if gamma == 1.0:
        assert min(classes) == 10
    if gamma == 0.3:  # ~30% of each client's samples are i.i.d.: every class appears
        assert min(classes) == 10
        counts = torch.bincount(y[parts[0]], minlength=10)
        assert int(counts.max()) > 0.3 * len(parts[0])  # still dominated by its sorted classes
    assert same(parts, data.partition(y, 5, "gamma_similarity", gamma=gamma, seed=1))
    with pytest.raises(ValueError, match="gamma"):
        data.partition(y, 5, "gamma_similarity", gamma=1.5)


def test_label_sorted_errors() -> None:
    y = labels()
    with pytest.raises(ValueError, match="byzantine"):
        data.partition(y, 3, "label_sorted", byzantine=[3])
    with pytest.raises(ValueError, match="honest client"):
        data.partition(y, 2, "label_sorted", byzantine=[0, 1])


def test_cnn_mnist_shape_and_parameters() -> None:
    assert "cnn_mnist" in models.BEYOND_NAMES and "cnn_mnist" not in models.NAMES
    model = models.build("cnn_mnist", seed=0)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 2 and len(linears) == 2
    expected = (20 * 25 + 20) + (50 * 20 * 25 + 50) + (800 * 500 + 500) + (500 * 10 + 10)
    assert models.num_parameters(model) == expected == 431_080
    log_probs = model(torch.randn(3, 1, 28, 28))
    assert log_probs.shape == (3, 10)
    torch.testing.assert_close(log_probs.exp().sum(dim=1), torch.ones(3))
    assert torch.equal(
        flatten_state(model.state_dict()),
        flatten_state(models.build("cnn_mnist", seed=0).state_dict()),
    )
