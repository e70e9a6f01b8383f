"""Geometric median by smoothed Weiszfeld iterations (as in Pillutla et al.'s RFA; the "GeoMed"
point of El Mhamdi et al., ICML 2018, not restricted to the inputs).

Computed in float64 on rows centred on their coordinate-wise median (so a shared large component
costs no precision). Iteration: ``z <- sum_i w_i x_i / sum_i w_i`` with
``w_i = 1 / max(eps, |x_i - z|)``, from the coordinate-wise median (the centre); an iterate on a
data point (within eps) takes Vardi and Zhang's step instead, so it is not trapped there; until
``|z_new - z| <= tol * mean_i |x_i - z_new|`` (a relative, translation-free
tolerance) or ``max_iter`` iterations. Rows with NaN/inf get weight 0 (at most f).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_inputs, finite_rows, require
from ._columns import middle_value, sorted_columns
from ._types import Aggregation


def centred_rows(vectors: Tensor, usable: Tensor) -> tuple[Tensor, Tensor]:
    """Float64 copy of ``vectors`` centred on the coordinate-wise median of the usable rows, and the
    centre. Unusable rows are zeroed (they must get weight 0)."""
    every = bool(usable.all())
    finite = vectors if every else vectors[usable]
    center = middle_value(sorted_columns(finite, False)[0]).to(vectors.device, torch.float64)
    rows = vectors.to(torch.float64) - center
    if not every:
        rows[~usable] = 0.0
    return rows, center


def weiszfeld(
    rows: Tensor, usable: Tensor, eps: float, tol: float, max_iter: int
) -> tuple[Tensor, Tensor]:
    """Smoothed Weiszfeld on float64 ``rows`` restricted to ``usable``; returns (point, weights).

    Weights are the final normalised Weiszfeld weights (0 for unusable rows).
    """
    active = rows if bool(usable.all()) else rows[usable]
    sq_norms = (active * active).sum(dim=1)

    def squared_distances(point: Tensor) -> Tensor:
        return (sq_norms - 2.0 * (active @ point) + point @ point).clamp_min(0.0)

    point = torch.zeros(rows.shape[1], dtype=torch.float64, device=rows.device)
    sq = squared_distances(point)
    weights = torch.full_like(sq, 1.0 / sq.numel())
    for _ in range(max_iter):
        distances = sq.sqrt()
        weights = 1.0 / distances.clamp_min(eps)
        weights = weights / weights.sum()
        new_point = weights @ active
        on_point = distances <= eps
        if bool(on_point.any()):
            new_point = _leave_data_point(active, point, distances, on_point)
        step = (new_point - point).norm()
        point = new_point
        sq = squared_distances(point)
        if step <= tol * sq.sqrt().mean():
            break
    full = torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
    full[usable] = weights
    return point, full


def _leave_data_point(active: Tensor, point: Tensor, distances: Tensor, on_point: Tensor) -> Tensor:
    """Vardi and Zhang's step (PNAS 2000) when the iterate sits on data points (within eps).

    Plain (smoothed) Weiszfeld is trapped there: the coinciding rows' weight ``1/eps`` pins the
    iterate, although the median lies elsewhere unless the other rows' pull ``r`` is at most their
    count ``eta``. The step ``(1 - eta/r)+ T + min(1, eta/r) point`` (``T`` the Weiszfeld point of
    the other rows) leaves exactly when it should, so the result does not depend on where the
    start (the coordinate-wise median, often a data point) happens to fall.
    """
    far = ~on_point
    if not bool(far.any()):
        return point
    inverse = 1.0 / distances[far]
    others = active[far]
    target = (inverse @ others) / inverse.sum()
    pull = (inverse @ (others - point)).norm()
    eta = float(on_point.sum())
    if pull <= eta:
        return point
    keep = eta / pull
    return (1.0 - keep) * target + keep * point


def _check_options(eps: float, tol: float, max_iter: int) -> None:
    if not eps > 0 or not tol >= 0:
        raise ValueError(f"geometric_median needs eps > 0 and tol >= 0, got eps={eps}, tol={tol}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"geometric_median needs max_iter >= 1, got {max_iter!r}")


def _geometric_median_impl(
    vectors: Tensor, f: int, eps: float = 1e-8, tol: float = 1e-7, max_iter: int = 1000
) -> Aggregation:
    n, _, f = check_inputs("geometric_median", vectors, f)
    require("geometric_median", n, f, n >= 2 * f + 1, "n >= 2f + 1")
    _check_options(eps, tol, max_iter)
    usable = finite_rows("geometric_median", vectors, f).to(vectors.device)
    rows, center = centred_rows(vectors, usable)
    point, weights = weiszfeld(rows, usable, eps, tol, max_iter)
    return Aggregation((point + center).to(vectors.dtype), None, weights.cpu())


def geometric_median(
    vectors: Tensor, f: int, eps: float = 1e-8, tol: float = 1e-7, max_iter: int = 1000
) -> Tensor:
    """Geometric median (smoothed Weiszfeld: smoothing eps, relative tolerance tol, cap max_iter);
    needs n >= 2f + 1."""
    return _geometric_median_impl(vectors, f, eps, tol, max_iter).vector
