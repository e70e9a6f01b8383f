"""Defence-aware ALIE and IPM (ByzFL's optimised variants), ALGORITHMS.md "Beyond the seeds".

The attacker knows the deployed chain R (pre-aggregators, then the rule) and picks z (ALIE) or
eps (IPM) in [0, 10] maximising ``||R(honest + f copies) - g_bar||`` by a 1-D search against R
itself: a grid of 20 values, then golden-section refinement around the best grid value.

Choices beyond ALGORITHMS.md: the grid is ``linspace(0, 10, 20)`` (both ends included); the
golden-section search runs on the bracket formed by the best grid value's neighbours, for
``refine`` (30) iterations, and the best value ever evaluated wins (ties: the first evaluated).
A value for which R refuses the round (ValueError) or returns a non-finite aggregate scores
-inf: the server would keep its model, which is not the attacker's goal. The honest vectors come
first, the f copies last, as R sees them. Pass stochastic steps (bucketing, dnc) a fixed seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ._checks import check_n_f, honest_matrix, mean_and_std

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def chain_damage(
    honest: Tensor,
    candidate: Tensor,
    f: int,
    gar: Any,
    gar_options: dict[str, Any] | None = None,
    pre: Sequence[Any] = (),
) -> float:
    """``||R(honest + f copies of candidate) - g_bar||`` (-inf when R refuses or overflows)."""
    from flwr_byz import gars  # here, not at the top: flwr_byz.gars need not load with attacks

    vectors = torch.cat([honest, candidate.to(honest.dtype).expand(f, -1)], dim=0)
    try:
        out = gars.aggregate_chain(vectors, f, list(pre), gar, **dict(gar_options or {})).vector
    except ValueError:
        return -math.inf
    value = float(
        torch.linalg.vector_norm(out.to(torch.float64) - honest.to(torch.float64).mean(0))
    )
    return value if math.isfinite(value) else -math.inf


def search_1d(
    objective: Callable[[float], float],
    low: float = 0.0,
    high: float = 10.0,
    grid: int = 20,
    refine: int = 30,
) -> tuple[float, float]:
    """Maximise ``objective`` on [low, high]: grid, then golden section; -> (argmax, max)."""
    best_x, best_v = low, -math.inf
    values = []
    points = torch.linspace(low, high, grid, dtype=torch.float64).tolist()
    for x in points:
        v = objective(x)
        values.append(v)
        if v > best_v:
            best_x, best_v = x, v
    i = values.index(best_v) if best_v > -math.inf else 0
    a = points[max(i - 1, 0)]
    b = points[min(i + 1, len(points) - 1)]
    c = b - _GOLDEN * (b - a)
    d = a + _GOLDEN * (b - a)
    vc, vd = objective(c), objective(d)
    for x, v in ((c, vc), (d, vd)):
        if v > best_v:
            best_x, best_v = x, v
    for _ in range(refine):
        if vc >= vd:
            b, d, vd = d, c, vc
            c = b - _GOLDEN * (b - a)
            vc = objective(c)
            x, v = c, vc
        else:
            a, c, vc = c, d, vd
            d = a + _GOLDEN * (b - a)
            vd = objective(d)
            x, v = d, vd
        if v > best_v:
            best_x, best_v = x, v
    return best_x, best_v


def alie_opt_z(
    honest: Tensor,
    n: int,
    f: int,
    gar: Any = "average",
    gar_options: dict[str, Any] | None = None,
    pre: Sequence[Any] = (),
    low: float = 0.0,
    high: float = 10.0,
    grid: int = 20,
    refine: int = 30,
) -> float:
    """The z of ``alie_opt``: the best for the attacker against the chain."""
    honest = honest_matrix(honest, "alie_opt")
    check_n_f(n, f, "alie_opt")
    mu, sigma = mean_and_std(honest)
    z, _ = search_1d(
        lambda z: chain_damage(honest, mu - z * sigma, f, gar, gar_options, pre),
        low,
        high,
        grid,
        refine,
    )
    return z


def alie_opt(
    honest: Tensor,
    n: int,
    f: int,
    gar: Any = "average",
    gar_options: dict[str, Any] | None = None,
    pre: Sequence[Any] = (),
    low: float = 0.0,
    high: float = 10.0,
    grid: int = 20,
    refine: int = 30,
) -> Tensor:
    """ALIE ``mu - z sigma`` with z optimised against the deployed chain; ``(d,)``."""
    z = alie_opt_z(honest, n, f, gar, gar_options, pre, low, high, grid, refine)
    mu, sigma = mean_and_std(honest_matrix(honest, "alie_opt"))
    return mu - z * sigma


def ipm_opt_eps(
    honest: Tensor,
    n: int,
    f: int,
    gar: Any = "average",
    gar_options: dict[str, Any] | None = None,
    pre: Sequence[Any] = (),
    low: float = 0.0,
    high: float = 10.0,
    grid: int = 20,
    refine: int = 30,
) -> float:
    """The eps of ``ipm_opt``: the best for the attacker against the chain."""
    honest = honest_matrix(honest, "ipm_opt")
    check_n_f(n, f, "ipm_opt")
    g_bar = honest.mean(dim=0)
    eps, _ = search_1d(
        lambda e: chain_damage(honest, -e * g_bar, f, gar, gar_options, pre),
        low,
        high,
        grid,
        refine,
    )
    return eps


def ipm_opt(
    honest: Tensor,
    n: int,
    f: int,
    gar: Any = "average",
    gar_options: dict[str, Any] | None = None,
    pre: Sequence[Any] = (),
    low: float = 0.0,
    high: float = 10.0,
    grid: int = 20,
    refine: int = 30,
) -> Tensor:
    """IPM ``-eps g_bar`` with eps optimised against the deployed chain; ``(d,)``."""
    eps = ipm_opt_eps(honest, n, f, gar, gar_options, pre, low, high, grid, refine)
    return -eps * honest_matrix(honest, "ipm_opt").mean(dim=0)
