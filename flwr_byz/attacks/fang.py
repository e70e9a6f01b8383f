"""Fang et al.'s local model poisoning (USENIX Security 2020), ALGORITHMS.md "Beyond the seeds".

``fang`` (against coordinate-wise rules, e.g. trimmed mean / median): per coordinate j with
``s_j = sign(g_bar_j)`` and the honest extremes ``w_max_j``, ``w_min_j``:
s_j > 0: uniform in [w_min / b, w_min] (w_min > 0) or [b w_min, w_min] (otherwise);
s_j < 0: uniform in [w_max, b w_max] (w_max > 0) or [w_max, w_max / b] (otherwise); b = 2.
Each colluder draws its own vector (``num_vectors`` rows from one generator).

``fang_selection`` (against selection rules, e.g. Krum): every colluder submits
``-lambda sign(g_bar)``, lambda the largest value the deployed rule still selects, halving from
an upper bound.

Choices beyond ALGORITHMS.md: a coordinate with s_j = 0 is treated as s_j > 0. The upper bound
is the paper's (Fang et al. Eq. 6 with the update taken relative to the current model, w_re = 0):
``min_i sum_{l in the n-f-2 nearest honest to i} ||V_l - V_i|| / ((n - 2f - 1) sqrt d)
+ max_i ||V_i|| / sqrt d``; halving stops below ``threshold`` (1e-5, the paper's), and the last
lambda tried is used. "Selects" is ``lp_coordinate.attackers_chosen`` (the selection, or a
positive participation for rules that do not select).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._checks import check_n_f, honest_matrix
from .lp_coordinate import _resolve_gar, attackers_chosen


def fang(
    honest: Tensor,
    n: int,
    f: int,
    b: float = 2.0,
    generator: torch.Generator | None = None,
    num_vectors: int | None = None,
) -> Tensor:
    """Fang's attack on coordinate-wise rules: ``(d,)``, or ``(num_vectors, d)`` distinct draws."""
    honest = honest_matrix(honest, "fang")
    check_n_f(n, f, "fang")
    b = float(b)
    if not (math.isfinite(b) and b > 1.0):
        raise ValueError(f"fang: b must be a finite number > 1, got {b}")
    g_bar = honest.mean(dim=0)
    w_max = honest.max(dim=0).values
    w_min = honest.min(dim=0).values
    up = g_bar >= 0  # s_j > 0 (and s_j = 0): push below the honest minimum
    low = torch.where(up, torch.where(w_min > 0, w_min / b, b * w_min), w_max)
    high = torch.where(up, w_min, torch.where(w_max > 0, b * w_max, w_max / b))
    rows = 1 if num_vectors is None else int(num_vectors)
    u = torch.rand(
        (rows, honest.shape[1]),
        generator=generator,
        dtype=torch.float64,
        device=generator.device if generator is not None else "cpu",
    ).to(device=honest.device)
    out = (low.to(torch.float64) + u * (high - low).to(torch.float64)).to(honest.dtype)
    return out[0] if num_vectors is None else out


def fang_upper_bound(honest: Tensor, n: int, f: int) -> float:
    """Fang et al.'s upper bound on lambda (Eq. 6 with w_re = 0), float64."""
    rows = honest.to(torch.float64)
    k, d = rows.shape
    dist = torch.cdist(rows, rows)
    neighbours = max(1, min(k - 1, n - f - 2))
    nearest = torch.sort(dist, dim=1).values[:, 1 : neighbours + 1].sum(dim=1)
    spread = float(nearest.min()) / (max(1, n - 2 * f - 1) * math.sqrt(d))
    return spread + float(torch.linalg.vector_norm(rows, dim=1).max()) / math.sqrt(d)


def fang_selection_lambda(
    honest: Tensor,
    n: int,
    f: int,
    gar: Any = "krum",
    gar_options: dict[str, Any] | None = None,
    upper: float | None = None,
    threshold: float = 1e-5,
) -> float:
    """The lambda ``fang_selection`` uses: halved from ``upper`` until the rule selects it."""
    honest = honest_matrix(honest, "fang_selection")
    check_n_f(n, f, "fang_selection")
    rule = _resolve_gar(gar)
    options = dict(gar_options or {})
    direction = -torch.sign(honest.mean(dim=0))
    lam = fang_upper_bound(honest, n, f) if upper is None else float(upper)
    k = honest.shape[0]
    while True:
        x = (lam * direction).to(honest.dtype)
        vectors = torch.cat([honest, x.expand(f, -1)], dim=0)
        if attackers_chosen(rule.aggregate(vectors, f, **options), k) or lam < threshold:
            return lam
        lam /= 2.0


def fang_selection(
    honest: Tensor,
    n: int,
    f: int,
    gar: Any = "krum",
    gar_options: dict[str, Any] | None = None,
    upper: float | None = None,
    threshold: float = 1e-5,
) -> Tensor:
    """Fang's attack on selection rules: ``-lambda sign(g_bar)``, shape ``(d,)``."""
    lam = fang_selection_lambda(honest, n, f, gar, gar_options, upper, threshold)
    honest = honest_matrix(honest, "fang_selection")
    return (-lam * torch.sign(honest.mean(dim=0))).to(honest.dtype)
