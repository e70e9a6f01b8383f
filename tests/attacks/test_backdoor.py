"""ALIE backdoor pieces: the clip, the trigger, the loss and a training step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from flwr_byz import attacks


@given(k=st.integers(2, 8), d=st.integers(1, 20), z=st.floats(0, 3), seed=st.integers(0, 999))
@settings(max_examples=40, deadline=None)
def test_clip_projects_into_the_band(k: int, d: int, z: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    honest = torch.randn(k, d, generator=generator, dtype=torch.float64)
    candidate = 3 * torch.randn(d, generator=generator, dtype=torch.float64)
    reference = honest.numpy()
    low = reference.mean(0) - z * reference.std(0, ddof=1)
    high = reference.mean(0) + z * reference.std(0, ddof=1)
    expected = np.minimum(np.maximum(candidate.numpy(), low), high)
    np.testing.assert_allclose(attacks.alie_backdoor_clip(candidate, honest, z).numpy(), expected)


def test_clip_errors() -> None:
    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        attacks.alie_backdoor_clip(torch.zeros(4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="z must be >= 0"):
        attacks.alie_backdoor_clip(torch.zeros(3), torch.zeros(2, 3), z=-1)


def test_trigger_sets_the_top_left_patch_only() -> None:
    images = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    triggered = attacks.add_backdoor_trigger(images, value=(1.0, 2.0, 3.0))
    expected = images.clone().numpy()
    for channel, level in enumerate((1.0, 2.0, 3.0)):
        expected[:, channel, :5, :5] = level
    np.testing.assert_array_equal(triggered.numpy(), expected)
    assert not torch.equal(images, triggered), "input must not be modified"
    automatic = attacks.add_backdoor_trigger(images)
    maxima = images.numpy().max(axis=(0, 2, 3))
    np.testing.assert_array_equal(automatic[0, :, 2, 3].numpy(), maxima)
    with pytest.raises(ValueError, match="one per channel"):
        attacks.add_backdoor_trigger(images, value=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        attacks.add_backdoor_trigger(images[0])


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 3), nn.LogSoftmax(dim=1))


def test_backdoor_loss_is_the_weighted_sum() -> None:
    model = _tiny_model()
    images = torch.randn(6, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    mu = params + 0.5
    loss = attacks.backdoor_loss(model, images, mu, alpha=0.3, trigger_value=2.0)
    triggered = images.clone()
    triggered[:, :, :5, :5] = 2.0
    with torch.no_grad():
        log_probs = model(triggered).double()
    expected = 0.3 * float(-log_probs[:, attacks.BACKDOOR_TARGET].mean()) + 0.7 * 0.25
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_training_step_and_alie_backdoor_vector() -> None:
    model = _tiny_model()
    images = torch.randn(32, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    dimension = sum(p.numel() for p in model.parameters())
    honest = 0.1 * torch.randn(5, dimension, generator=torch.Generator().manual_seed(3))
    mu = honest.mean(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = [
        attacks.alie_backdoor_train_step(model, optimizer, images, mu, 0.5) for _ in range(20)
    ]
    assert losses[-1] < losses[0]
    vector = attacks.alie_backdoor(model, images, honest, z=0.2, alpha=0.2, steps=5)
    sigma = honest.std(0)
    assert vector.shape == (dimension,)
    assert bool(((vector - mu).abs() <= 0.2 * sigma + 1e-6).all())
    assert not torch.allclose(vector, mu), "training must move the vector away from mu"
