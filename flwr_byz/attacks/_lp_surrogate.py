"""A fast, exact-in-float64 stand-in for distance-only rules inside the l_p attack's search.

Krum, Multi-Krum and the medoid choose from pairwise distances only. With the honest rows
``h_i`` and ``f`` copies of ``a(gamma) = g_bar + gamma E``, every distance is known in closed
form once ``||h_i - h_j||^2``, ``c_i = ||h_i - g_bar||^2``, ``p_i = (h_i - g_bar).E`` and
``||E||^2`` are computed (one pass over the data): ``||h_i - a||^2 = c_i - 2 gamma p_i +
gamma^2 ||E||^2``. The search then costs O(n^2 log n) per step instead of a full rule call
(O(n^2 d)). Its answer is only a guess: ``lp_coordinate`` checks it against the real rule and
falls back to searching with the rule itself when they disagree.

Bulyan (Krum selector, no selector options) selects from the same distances; its coordinate-wise
step is then judged on the theta selected rows alone (the attack copies participate in a
coordinate when fewer than beta selected honest values are strictly closer to the coordinate
median than the attack value): O(theta^2 n^2 + theta d) per step instead of O(n^2 d).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

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
    if not bool(torch.isfinite(honest).all()):
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

    if rule_name == "bulyan":
        return _bulyan_chosen(x, f, direction, distances, options, criterion)

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


def _bulyan_chosen(
    x: Tensor,
    f: int,
    direction: Tensor,
    distances: Callable[[float], Tensor],
    options: dict[str, Any],
    criterion: str,
) -> Callable[[float], bool]:
    """``chosen(gamma)`` of Bulyan(Krum) from the closed-form distances (see the module doc)."""
    from flwr_byz.gars.krum import krum_scores  # lazy, as lp_coordinate resolves the rules

    k, d = x.shape
    n = k + f
    if options.get("variant", "bulyan") == "bulyan":
        theta, beta = n - 2 * f, n - 4 * f
    else:
        theta, beta = n - 2 * f - 2, n - 4 * f - 2
    g_bar = x.mean(dim=0)
    cache: dict[tuple[int, ...], Tensor] = {}

    def sorted_rows(honest_rows: tuple[int, ...]) -> Tensor:
        """``(d, h)``: each coordinate's selected honest values, sorted (cached per selection)."""
        if honest_rows not in cache:
            columns = x[list(honest_rows)].T.contiguous()
            if columns.device.type == "cpu":  # numpy sorts several times faster
                ordered = torch.from_numpy(np.sort(columns.numpy(), axis=1))
            else:
                ordered = columns.sort(dim=1).values
            cache.clear()  # the selection rarely changes between steps: keep the last one
            cache[honest_rows] = ordered
        return cache[honest_rows]

    def count_below(ordered: Tensor, values: Tensor, right: bool) -> Tensor:
        """Per coordinate, how many sorted values are < ``values`` (<= with ``right``)."""
        return torch.searchsorted(ordered, values[:, None], right=right)[:, 0]

    def chosen(gamma: float) -> bool:
        squared = distances(gamma)
        remaining = list(range(n))
        picked: list[int] = []
        for _ in range(theta):  # Bulyan's selection: Krum on the not yet selected, lowest index
            index = torch.tensor(remaining)
            sub = squared[index[:, None], index[None, :]]
            local = int(torch.argmin(krum_scores(sub, max(1, len(remaining) - f - 2))))
            picked.append(remaining.pop(local))
        copies = sum(1 for i in picked if i >= k)
        if copies == 0 or criterion == "selected":
            return copies > 0
        ordered = sorted_rows(tuple(sorted(i for i in picked if i < k)))
        last = ordered.shape[1] - 1
        attack = g_bar + gamma * direction
        below = count_below(ordered, attack, right=False)  # honest values sorted before copies

        def merged(t: int) -> Tensor:  # position t of the selection's sorted column values
            low, high = ordered[:, min(t, last)], ordered[:, min(max(t - copies, 0), last)]
            return torch.where(t < below, low, torch.where(t < below + copies, attack, high))

        middle = theta // 2
        center = merged(middle) if theta % 2 else 0.5 * (merged(middle - 1) + merged(middle))
        gap = (attack - center).abs()
        # honest values strictly closer to the median than the copies: in (center -+ gap)
        inside = count_below(ordered, center + gap, right=False)
        closer = inside - count_below(ordered, center - gap, right=True)
        return bool((closer < beta).any())

    return chosen
