"""A fast, exact-in-float64 stand-in for distance-only rules inside the l_p attack's search.

Krum, Multi-Krum and the medoid choose from pairwise distances only. With the honest rows
``h_i`` and ``f`` copies of ``a(gamma) = g_bar + gamma E``, every distance is known in closed
form once ``||h_i - h_j||^2``, ``c_i = ||h_i - g_bar||^2``, ``p_i = (h_i - g_bar).E`` and
``||E||^2`` are computed (one pass over the data): ``||h_i - a||^2 = c_i - 2 gamma p_i +
gamma^2 ||E||^2``. The search then costs O(n^2 log n) per step instead of a full rule call
(O(n^2 d)). Its answer is only a guess: ``lp_coordinate`` checks it against the real rule and
falls back to searching with the rule itself when they disagree.

Bulyan (Krum selector, no selector options) selects from the same distances
(:func:`bulyan_selection`, numpy on the n x n matrix); its coordinate-wise step is then judged on
the theta selected rows alone (the attack copies participate in a coordinate when fewer than beta
selected honest values are strictly closer to the coordinate median than the attack value), as
one interval of attack values per coordinate, computed once per selection
(``_lp_bulyan.CoordinateStep``): a step costs O(theta n^2 + d), a new selection one sort of its
columns, instead of a rule call's O(n^2 d).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flwr_byz._finite import all_finite

from ._checks import column_slices
from ._lp_bulyan import CoordinateStep

SURROGATE_RULES = ("krum", "multi_krum", "medoid", "bulyan")
_OPTIONS = {"multi_krum": {"m"}, "bulyan": {"selector", "variant", "selector_options"}}


def distance_surrogate(
    rule_name: str | None,
    honest: Tensor,
    f: int,
    unit: Tensor,
    options: dict[str, Any],
    criterion: str = "auto",
) -> Callable[[float], bool] | None:
    """``chosen(gamma)`` for the rules in ``SURROGATE_RULES`` under ``criterion`` (see
    ``lp_coordinate.attackers_chosen``); None for any other rule, option or criterion."""
    if rule_name not in SURROGATE_RULES or not set(options) <= _OPTIONS.get(rule_name, set()):
        return None
    if rule_name == "bulyan":
        if options.get("selector", "krum") != "krum" or options.get("selector_options"):
            return None
        if options.get("variant", "bulyan") not in ("bulyan", "momentum"):
            return None
        if criterion not in ("participation", "selected"):
            return None
    elif criterion not in ("auto", "selected"):
        return None
    if not all_finite(honest):
        return None
    k = honest.shape[0]
    n = k + f
    direction = unit.detach().to(torch.float64)
    g_bar, gram, projections = _centred_products(honest.detach(), direction)
    norms = gram.diagonal()
    honest_distances = (norms[:, None] + norms[None, :] - 2 * gram).clamp_min(0.0)
    honest_distances.fill_diagonal_(0.0)
    direction_norm = float(direction @ direction)
    m = (options.get("m") or n - f) if rule_name == "multi_krum" else 1

    def distances(gamma: float) -> Tensor:
        to_attack = (norms - 2 * gamma * projections + gamma * gamma * direction_norm).clamp_min(0)
        full = torch.zeros((n, n), dtype=torch.float64, device=gram.device)
        full[:k, :k] = honest_distances
        full[:k, k:] = to_attack[:, None]
        full[k:, :k] = to_attack[None, :]
        return full

    if rule_name == "bulyan":
        return _bulyan_chosen(honest.detach(), g_bar, f, direction, distances, options, criterion)

    def chosen(gamma: float) -> bool:
        squared = distances(gamma)
        if rule_name == "medoid":
            return int(torch.argmin(squared.sqrt().sum(dim=1))) >= k
        others = squared.clone()
        others.fill_diagonal_(float("inf"))
        scores = torch.sort(others, dim=1).values[:, : max(1, n - f - 2)].sum(dim=1)
        order = torch.sort(scores, stable=True).indices
        return bool((order[:m] >= k).any())

    return chosen


def _centred_products(honest: Tensor, direction: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """float64 ``(g_bar, G, p)``: the rows' mean, the Gram matrix of the centred rows and their
    dot products with ``direction``, through column blocks converted to float64 one at a time
    (no ``(k, d)`` float64 copy)."""
    k, d = honest.shape
    g_bar = honest.mean(dim=0, dtype=torch.float64)
    gram = torch.zeros((k, k), dtype=torch.float64, device=honest.device)
    projections = torch.zeros(k, dtype=torch.float64, device=honest.device)
    for cols in column_slices(k, d, honest.device, itemsize=8):  # float64 blocks
        centred = honest[:, cols].to(torch.float64) - g_bar[cols]
        gram.addmm_(centred, centred.T)
        projections.addmv_(centred, direction[cols])
    return g_bar, gram, projections


def _bulyan_chosen(
    values: Tensor,
    g_bar: Tensor,
    f: int,
    direction: Tensor,
    distances: Callable[[float], Tensor],
    options: dict[str, Any],
    criterion: str,
) -> Callable[[float], bool]:
    """``chosen(gamma)`` of Bulyan(Krum) from the closed-form distances (see the module doc);
    ``values`` are the honest rows as given, ``g_bar`` their float64 mean."""
    k = values.shape[0]
    n = k + f
    if options.get("variant", "bulyan") == "bulyan":
        theta, beta = n - 2 * f, n - 4 * f
    else:
        theta, beta = n - 2 * f - 2, n - 4 * f - 2
    step = CoordinateStep(values, theta, beta)

    def chosen(gamma: float) -> bool:
        picked = bulyan_selection(distances(gamma).cpu().numpy(), f, theta)
        copies = sum(1 for i in picked if i >= k)
        if copies == 0 or criterion == "selected":
            return copies > 0
        honest_rows = tuple(sorted(i for i in picked if i < k))
        return step.keeps(honest_rows, copies, g_bar + gamma * direction)

    return chosen


def bulyan_selection(squared: np.ndarray, f: int, theta: int) -> list[int]:
    """Bulyan's iterated Krum selection of ``theta`` rows from an ``(n, n)`` squared-distance
    matrix: Krum over the rows not yet selected (score over its ``max(1, r - f - 2)`` nearest
    of the ``r`` remaining), lowest index among equal scores. numpy: on an n x n matrix its calls
    cost a fraction of torch's."""
    remaining = np.arange(squared.shape[0])
    picked: list[int] = []
    for _ in range(theta):
        sub = squared[np.ix_(remaining, remaining)]
        np.fill_diagonal(sub, np.inf)
        nearest = max(1, len(remaining) - f - 2)
        scores = np.sort(sub, axis=1)[:, :nearest].sum(axis=1)
        local = int(np.argmin(scores))  # the first of equal minima
        picked.append(int(remaining[local]))
        remaining = np.delete(remaining, local)
    return picked
