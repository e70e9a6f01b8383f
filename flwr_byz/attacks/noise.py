"""Simple attacks: gaussian noise, the Phocas paper's omniscient attack, sign and label flips."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_n_f, honest_matrix


def _random_on(
    shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None, kind: str
) -> Tensor:
    """Draw ``randn``/``rand`` on the generator's device (reproducible), then move to ``like``'s."""
    device = generator.device if generator is not None else like.device
    draw = torch.randn if kind == "normal" else torch.rand
    values = draw(shape, generator=generator, device=device, dtype=like.dtype)
    return values.to(like.device)


def gaussian(
    honest: Tensor, n: int, f: int, std: float = 200.0, generator: torch.Generator | None = None
) -> Tensor:
    """I.i.d. ``N(0, std^2)`` per coordinate (Phocas paper, section 5.1.1); shape ``(d,)``.

    Only the shape, dtype and device of ``honest`` are used. Pass a seeded ``generator`` for
    reproducible draws (the draw happens on the generator's device, then moves to the input's).
    """
    honest = honest_matrix(honest, "gaussian")
    check_n_f(n, f, "gaussian")
    return float(std) * _random_on((honest.shape[1],), honest, generator, "normal")


def omniscient_negative(honest: Tensor, n: int, f: int, scale: float = 1e20) -> Tensor:
    """``-scale * sum(honest)`` (Phocas paper, section 5.1.2: the negative sum, scaled by 1e20)."""
    honest = honest_matrix(honest, "omniscient_negative")
    check_n_f(n, f, "omniscient_negative")
    return -float(scale) * honest.sum(dim=0)


def sign_flip(own: Tensor) -> Tensor:
    """``-g``, the negated own honest vector; ``own`` is ``(d,)`` or ``(1, d)``, result ``(d,)``."""
    if not isinstance(own, Tensor):
        raise TypeError(f"sign_flip: own vector must be a torch.Tensor, got {type(own).__name__}")
    if own.dim() == 2 and own.shape[0] == 1:
        own = own[0]
    if own.dim() != 1:
        raise ValueError(f"sign_flip: own vector must be (d,) or (1, d), got {tuple(own.shape)}")
    return -own


def label_flip(labels: Tensor, num_classes: int) -> Tensor:
    """Labels ``l -> C - 1 - l`` for honest training on flipped labels (a data poisoning attack)."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"label_flip: labels must be a torch.Tensor, got {type(labels).__name__}")
    if torch.is_floating_point(labels) or labels.dtype == torch.bool:
        raise TypeError(f"label_flip: labels must be an integer tensor, got {labels.dtype}")
    if num_classes < 1:
        raise ValueError(f"label_flip: num_classes must be >= 1, got {num_classes}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"label_flip: labels must lie in [0, {num_classes - 1}], got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return (num_classes - 1) - labels
