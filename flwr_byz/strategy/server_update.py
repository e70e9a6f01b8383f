"""The server's update step: turn the robust aggregate into the next global model.

Both update modes reduce to one SGD step on a *pseudo-gradient* ``g``:

- ``gradient`` mode: replies are gradients (or worker momenta, Momentum paper eq. 6):
  ``g = aggregate``;
- ``weights`` mode: replies are trained weights, the rule aggregates the deltas ``reply - global``:
  ``g = -aggregate``; with the defaults (learning rate 1, no momentum, no decay) the step is
  ``theta + aggregate``.

The step, in this order (PyTorch ``torch.optim.SGD`` convention, dampening 0, no Nesterov):

1. clip: ``g <- g * min(1, clip_norm / ||g||)`` (the aggregate's l2 norm);
2. weight decay enters *before* momentum: ``d = g + weight_decay * theta``;
3. server momentum (same recurrence as the workers' momentum, ALGORITHMS.md):
   ``G_t = mu G_{t-1} + d`` (``G_0 = d``), ``d <- G_t``;
4. ``theta <- theta - eta_t d`` with ``eta_t = eta_0 r / (t + r)`` (Bulyan paper's schedule,
   ``t = server_round - 1``) when ``lr_schedule_r`` is set, else ``eta_0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flwr_byz.schema import UPDATE_MODES

__all__ = ["UPDATE_MODES", "ServerOptimizer", "ServerUpdateConfig"]


@dataclass(frozen=True)
class ServerUpdateConfig:
    """Options of the server step (see the module docstring)."""

    update_mode: str = "weights"  # what a Flower app's clients send; the simulations send gradients
    learning_rate: float | None = None
    lr_schedule_r: float | None = None
    server_momentum: float = 0.0
    weight_decay: float = 0.0
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        if self.update_mode not in UPDATE_MODES:
            raise ValueError(f"update_mode must be one of {UPDATE_MODES}, got {self.update_mode!r}")
        if self.update_mode == "gradient" and self.learning_rate is None:
            raise ValueError("update_mode='gradient' needs a learning_rate (eta_0 > 0)")
        if self.learning_rate is not None and not (
            math.isfinite(self.learning_rate) and self.learning_rate > 0
        ):
            raise ValueError(f"learning_rate must be finite and > 0, got {self.learning_rate}")
        if self.lr_schedule_r is not None and not (
            math.isfinite(self.lr_schedule_r) and self.lr_schedule_r > 0
        ):
            raise ValueError(f"lr_schedule_r must be finite and > 0, got {self.lr_schedule_r}")
        if not 0.0 <= self.server_momentum < 1.0:
            raise ValueError(f"server_momentum must be in [0, 1), got {self.server_momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0.0):
            raise ValueError(f"weight_decay must be finite and >= 0, got {self.weight_decay}")
        if self.clip_norm is not None and not (
            math.isfinite(self.clip_norm) and self.clip_norm > 0
        ):
            raise ValueError(f"clip_norm must be finite and > 0, got {self.clip_norm}")

    def learning_rate_at(self, server_round: int) -> float:
        """``eta_t`` of round ``server_round`` (1-based): ``eta_0 r / (t + r)``, t = round - 1."""
        eta0 = 1.0 if self.learning_rate is None else float(self.learning_rate)
        if self.lr_schedule_r is None:
            return eta0
        t = max(0, server_round - 1)
        return eta0 * self.lr_schedule_r / (t + self.lr_schedule_r)


class ServerOptimizer:
    """Holds the server momentum buffer and applies :class:`ServerUpdateConfig`'s step."""

    def __init__(self, config: ServerUpdateConfig) -> None:
        self.config = config
        self.momentum_buffer: Tensor | None = None

    def reset(self) -> None:
        """Forget the momentum buffer (e.g. when the model layout changes)."""
        self.momentum_buffer = None

    def step(self, theta: Tensor, aggregate: Tensor, server_round: int) -> Tensor:
        """Return the next flat model from the flat model ``theta`` and the rule's ``aggregate``."""
        cfg = self.config
        if theta.shape != aggregate.shape:
            raise ValueError(
                f"model and aggregate differ in shape: {tuple(theta.shape)} vs "
                f"{tuple(aggregate.shape)}"
            )
        eta = cfg.learning_rate_at(server_round)
        if not (cfg.clip_norm is not None or cfg.weight_decay or cfg.server_momentum):
            # theta - eta g in one new tensor; weights mode (g = -aggregate) as theta + eta
            # aggregate: IEEE products and sums are exact under sign flips and commutation, so
            # these are the same values as the general path's
            step = aggregate * eta
            if cfg.update_mode == "gradient":
                return torch.sub(theta, step, out=step)
            return step.add_(theta)
        grad = aggregate if cfg.update_mode == "gradient" else -aggregate
        if cfg.clip_norm is not None:
            norm = float(torch.linalg.vector_norm(grad.to(torch.float64)))
            if norm > cfg.clip_norm:
                grad = grad * (cfg.clip_norm / norm)
        if cfg.weight_decay:
            grad = grad + cfg.weight_decay * theta
        if cfg.server_momentum:
            if self.momentum_buffer is None or self.momentum_buffer.shape != grad.shape:
                self.momentum_buffer = grad.clone()
            else:
                self.momentum_buffer = cfg.server_momentum * self.momentum_buffer + grad
            grad = self.momentum_buffer
        return theta - eta * grad
