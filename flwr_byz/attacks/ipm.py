"""Inner product manipulation (Xie, Koyejo, Gupta, "Fall of Empires", UAI 2019)."""

from __future__ import annotations

from torch import Tensor

from ._checks import check_n_f, honest_matrix


def ipm(honest: Tensor, n: int, f: int, eps: float = 0.1) -> Tensor:
    """``-eps * g_bar``, the negated, scaled mean of the honest vectors; shape ``(d,)``.

    The Momentum paper writes the same vector as ``(1 - eps') g_bar`` with ``eps' = 1 + eps``.
    """
    honest = honest_matrix(honest, "ipm")
    check_n_f(n, f, "ipm")
    return -float(eps) * honest.mean(dim=0)
