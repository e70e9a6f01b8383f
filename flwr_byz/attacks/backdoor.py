"""ALIE's backdoor variant (Baruch et al. 2019, section 3.4 and Algorithm 4).

The colluders train, from ``mu``, towards a backdoor (a 5x5 top-left patch at maximal intensity
classified as ``BACKDOOR_TARGET``) with loss ``alpha * l_backdoor + (1 - alpha) * MSE(params, mu)``,
then clip the parameters coordinate-wise into ``[mu - z sigma, mu + z sigma]``. The paper uses
``z = alpha = 0.2``, cross entropy (here NLL on log-softmax outputs) for ``l_backdoor``, and
5 training steps per round. It acts on parameter vectors (``weights`` update mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from ._checks import honest_matrix, mean_and_std

BACKDOOR_TARGET = 0
TRIGGER_SIZE = 5


def alie_backdoor_clip(candidate: Tensor, honest: Tensor, z: float = 0.2) -> Tensor:
    """Project ``candidate`` (d,) into ``[mu - z sigma, mu + z sigma]`` coordinate-wise (Alg. 4).

    ``mu``/``sigma``: mean and sample std of the ``(k, d)`` ``honest`` vectors."""
    honest = honest_matrix(honest, "alie_backdoor")
    if candidate.shape != honest.shape[1:]:
        raise ValueError(
            f"alie_backdoor: candidate has shape {tuple(candidate.shape)}, expected "
            f"({honest.shape[1]},)"
        )
    if z < 0:
        raise ValueError(f"alie_backdoor: z must be >= 0, got {z}")
    mu, sigma = mean_and_std(honest)
    return torch.clamp(candidate.to(mu.dtype), mu - z * sigma, mu + z * sigma)


def add_backdoor_trigger(
    images: Tensor, value: float | Sequence[float] | Tensor | None = None, size: int = TRIGGER_SIZE
) -> Tensor:
    """Copy of ``images`` (N, C, H, W) with the ``size x size`` top-left patch set to ``value``.

    ``value``: the data set's maximal intensity after normalisation, a scalar or one per channel
    (see ``flwr_byz.data.max_intensity``); ``None`` takes each channel's maximum over ``images``.
    """
    if images.dim() != 4:
        raise ValueError(
            f"add_backdoor_trigger: images must be (N, C, H, W), got {tuple(images.shape)}"
        )
    if not 1 <= size <= min(images.shape[-2:]):
        raise ValueError(f"add_backdoor_trigger: size must be in [1, {min(images.shape[-2:])}]")
    channels = images.shape[1]
    if value is None:
        level = images.amax(dim=(0, 2, 3))
    else:
        level = torch.as_tensor(value, dtype=images.dtype, device=images.device).reshape(-1)
        if level.numel() not in (1, channels):
            raise ValueError(
                f"add_backdoor_trigger: value must be a scalar or one per channel ({channels}), "
                f"got {level.numel()} values"
            )
        level = level.expand(channels)
    triggered = images.clone()
    triggered[:, :, :size, :size] = level.reshape(1, channels, 1, 1)
    return triggered


def backdoor_loss(
    model: nn.Module,
    images: Tensor,
    mu: Tensor,
    alpha: float = 0.2,
    trigger_value: float | Sequence[float] | Tensor | None = None,
    target: int = BACKDOOR_TARGET,
) -> Tensor:
    """``alpha * NLL(model(trigger(images)), target) + (1 - alpha) * MSE(params, mu)``.

    ``model`` must output log-probabilities; ``mu`` is the flat ``(d,)`` mean parameter vector."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alie_backdoor: alpha must lie in [0, 1], got {alpha}")
    params = nn.utils.parameters_to_vector(model.parameters())
    if mu.shape != params.shape:
        raise ValueError(
            f"alie_backdoor: mu has shape {tuple(mu.shape)}, the model has {params.numel()} params"
        )
    triggered = add_backdoor_trigger(images, trigger_value)
    targets = torch.full((images.shape[0],), int(target), dtype=torch.int64, device=images.device)
    backdoor = functional.nll_loss(model(triggered), targets)
    closeness = functional.mse_loss(params, mu.to(params.dtype).detach())
    return alpha * backdoor + (1.0 - alpha) * closeness


def alie_backdoor_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    mu: Tensor,
    alpha: float = 0.2,
    trigger_value: float | Sequence[float] | Tensor | None = None,
) -> float:
    """One optimizer step on ``backdoor_loss``; returns the loss value."""
    optimizer.zero_grad()
    loss = backdoor_loss(model, images, mu, alpha=alpha, trigger_value=trigger_value)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def alie_backdoor(
    model: nn.Module,
    images: Tensor,
    honest: Tensor,
    z: float = 0.2,
    alpha: float = 0.2,
    steps: int = 5,
    learning_rate: float = 0.1,
    trigger_value: float | Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Algorithm 4: set ``model`` to ``mu``, take ``steps`` SGD steps on ``backdoor_loss`` with the
    attacker's ``images``, return the clipped ``(d,)`` parameter vector. ``honest`` holds the
    ``(k, d)`` parameter vectors the colluders know. ``model`` is modified in place."""
    honest = honest_matrix(honest, "alie_backdoor")
    mu, _ = mean_and_std(honest)
    nn.utils.vector_to_parameters(mu.to(next(model.parameters()).dtype), model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(int(steps)):
        alie_backdoor_train_step(model, optimizer, images, mu, alpha, trigger_value)
    trained = nn.utils.parameters_to_vector(model.parameters()).detach()
    return alie_backdoor_clip(trained, honest, z=z)
