"""A fast, exact-in-float64 stand-in for distance-only rules inside the l_p attack's search.

Krum, Multi-Krum and the medoid choose from pairwise distances only. With the honest rows
``h_i`` and ``f`` copies of ``a(gamma) = g_bar + gamma E``, every distance is known in closed
form once ``||h_i - h_j||^2``, ``c_i = ||h_i - g_bar||^2``, ``p_i = (h_i - g_bar).E`` and
``||E||^2`` are computed (one pass over the data): ``||h_i - a||^2 = c_i - 2 gamma p_i +
gamma^2 ||E||^2``. The search then costs O(n^2 log n) per step instead of a full rule call
(O(n^2 d)). Its answer is only a guess: ``lp_coordinate`` checks it against the real rule and
falls back to searching with the rule itself when they disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

SURROGATE_RULES = ("krum", "multi_krum", "medoid")


def distance_surrogate(
    rule_name: str | None, honest: Tensor, f: int, unit: Tensor, options: dict[str, Any]
) -> Callable[[float], bool] | None:
    """``chosen(gamma)`` for the rules in ``SURROGATE_RULES`` (None for any other rule/option)."""
    allowed_options = {"m"} if rule_name == "multi_krum" else set()
    if rule_name not in SURROGATE_RULES or not set(options) <= allowed_options:
        return None
    x = honest.detach().to(torch.float64)
    k = x.shape[0]
    n = k + f
    centred = x - x.mean(dim=0)
    gram = centred @ centred.T
    norms = gram.diagonal()
    honest_distances = (norms[:, None] + norms[None, :] - 2 * gram).clamp_min(0.0)
    honest_distances.fill_diagonal_(0.0)
    direction = unit.detach().to(torch.float64)
    projections = centred @ direction
    direction_norm = float(direction @ direction)
    m = (options.get("m") or n - f) if rule_name == "multi_krum" else 1

    def distances(gamma: float) -> Tensor:
        to_attack = (norms - 2 * gamma * projections + gamma * gamma * direction_norm).clamp_min(0)
        full = torch.zeros((n, n), dtype=torch.float64, device=x.device)
        full[:k, :k] = honest_distances
        full[:k, k:] = to_attack[:, None]
        full[k:, :k] = to_attack[None, :]
        return full

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
