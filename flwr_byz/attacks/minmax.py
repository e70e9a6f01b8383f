"""Min-max and min-sum (Shejwalkar, Houmansadr, NDSS 2021), ALGORITHMS.md "Beyond the seeds".

Submitted vector ``g_bar + gamma * p``; p = -sigma ("std", default), -g_bar/||g_bar|| ("unit")
or -sign(g_bar) ("sign"); gamma the largest value with
max_i ||x - V_i|| <= max_{i,j} ||V_i - V_j|| (minmax) or
sum_i ||x - V_i||^2 <= max_i sum_j ||V_i - V_j||^2 (minsum).

Choices beyond ALGORITHMS.md: sigma is the sample standard deviation (as ``alie``). Both
constraints are convex in gamma and hold at gamma = 0, so the feasible gammas >= 0 form an
interval [0, gamma*]. The search starts at gamma = 10, doubles while that is still feasible
(the paper's update cannot exceed 2 gamma_init; we want the largest value), then bisects until the
bracket is within a relative 1e-5 and returns its feasible end. The distances are evaluated as
float64 quadratics in gamma, ``||a_i||^2 + 2 gamma <a_i, p> + gamma^2 ||p||^2`` with
``a_i = g_bar - V_i``. A zero direction (one honest vector, or all equal) returns g_bar.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import check_n_f, honest_matrix, mean_and_std

DIRECTIONS = ("std", "unit", "sign")


def perturbation(honest: Tensor, direction: str = "std") -> Tensor:
    """The perturbation p (float64) of the min-max / min-sum attacks."""
    mu, sigma = mean_and_std(honest.to(torch.float64))
    if direction == "std":
        return -sigma
    if direction == "unit":
        norm = torch.linalg.vector_norm(mu)
        return -mu / norm if float(norm) > 0 else torch.zeros_like(mu)
    if direction == "sign":
        return -torch.sign(mu)
    raise ValueError(f"minmax/minsum: direction must be one of {DIRECTIONS}, got {direction!r}")


def largest_feasible(
    feasible: Callable[[float], bool], start: float = 10.0, rtol: float = 1e-5
) -> float:
    """Largest gamma >= 0 with ``feasible(gamma)`` for a feasible interval [0, gamma*]."""
    lo, hi = 0.0, float(start)
    while feasible(hi):
        lo, hi = hi, 2.0 * hi
        if hi > 1e300:
            return lo
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if feasible(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _search(
    name: str,
    honest: Tensor,
    n: int,
    f: int,
    direction: str,
    gamma_init: float,
    rtol: float,
) -> tuple[Tensor, float]:
    honest = honest_matrix(honest, name)
    check_n_f(n, f, name)
    rows = honest.to(torch.float64)
    mu = rows.mean(dim=0)
    p = perturbation(rows, direction)
    pp = float(p @ p)
    if pp == 0.0:
        return mu.to(honest.dtype), 0.0
    a = mu - rows  # (k, d): x - V_i = a_i + gamma p
    aa = (a * a).sum(dim=1)
    ap = a @ p
    centred = rows - mu
    gram = centred @ centred.T
    sq = torch.diagonal(gram)
    dist = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min(0.0)
    if name == "minmax":
        bound = float(dist.max())

        def feasible(gamma: float) -> bool:
            return float((aa + 2.0 * gamma * ap + gamma * gamma * pp).max()) <= bound
    else:
        bound = float(dist.sum(dim=1).max())
        k = rows.shape[0]

        def feasible(gamma: float) -> bool:
            total = aa.sum() + 2.0 * gamma * ap.sum() + k * gamma * gamma * pp
            return float(total) <= bound

    gamma = largest_feasible(feasible, gamma_init, rtol)
    return (mu + gamma * p).to(honest.dtype), gamma


def minmax_gamma(
    honest: Tensor,
    n: int,
    f: int,
    direction: str = "std",
    gamma_init: float = 10.0,
    rtol: float = 1e-5,
) -> float:
    """The gamma that ``minmax`` uses."""
    return _search("minmax", honest, n, f, direction, gamma_init, rtol)[1]


def minmax(
    honest: Tensor,
    n: int,
    f: int,
    direction: str = "std",
    gamma_init: float = 10.0,
    rtol: float = 1e-5,
) -> Tensor:
    """``g_bar + gamma p`` no farther from any honest vector than the honest diameter; ``(d,)``."""
    return _search("minmax", honest, n, f, direction, gamma_init, rtol)[0]


def minsum_gamma(
    honest: Tensor,
    n: int,
    f: int,
    direction: str = "std",
    gamma_init: float = 10.0,
    rtol: float = 1e-5,
) -> float:
    """The gamma that ``minsum`` uses."""
    return _search("minsum", honest, n, f, direction, gamma_init, rtol)[1]


def minsum(
    honest: Tensor,
    n: int,
    f: int,
    direction: str = "std",
    gamma_init: float = 10.0,
    rtol: float = 1e-5,
) -> Tensor:
    """``g_bar + gamma p`` whose squared-distance sum stays within the honest maximum; ``(d,)``."""
    return _search("minsum", honest, n, f, direction, gamma_init, rtol)[0]
