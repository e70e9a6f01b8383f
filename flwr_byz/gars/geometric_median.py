"""Geometric median by smoothed Weiszfeld iterations (as in Pillutla et al.'s RFA; the "GeoMed"
point of El Mhamdi et al., ICML 2018, not restricted to the inputs).

Computed in float64 on rows centred on their coordinate-wise median (so a shared large component
costs no precision). Iteration: ``z <- sum_i w_i x_i / sum_i w_i`` with
``w_i = 1 / max(eps, |x_i - z|)``, from the coordinate-wise median (the centre); an iterate on a
data point (within eps) takes Vardi and Zhang's step instead, so it is not trapped there; until
``|z_new - z| <= tol * mean_i |x_i - z_new|`` (a relative, translation-free
tolerance) or ``max_iter`` iterations. Rows with NaN/inf get weight 0 (at most f). Finite values
so large that the Gram below overflows (above ~1e154) are handled on the centred rows scaled by a
power of two (``_scaling``, exact; the iteration is scale-free, eps is scaled with them).

The rule iterates on the coefficients of the iterate over the centred rows: every iterate is
``z = sum_i a_i (x_i - c)`` (the start, the centre ``c``, is ``a = 0``), so with the float64 Gram
matrix ``G`` of the centred rows (one pass over the input in column blocks, the float32 rows
converted block by block) ``|x_i - c - z|^2 = G_ii - 2 (G a)_i + a'Ga`` (the expression the
explicit version evaluates with dot products) and ``|z_new - z|^2 = (a_new - a)' G (a_new - a)``:
an iteration costs O(n^2) instead of two passes over the input, and the point is formed once at
the end. Peak extra memory: the column blocks' temporaries and a few (d,) vectors, not a float64
copy of the rows. ``centred_rows`` / ``weiszfeld`` (explicit float64 rows) remain for Bulyan's
geometric-median selector.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ._checks import check_inputs, finite_rows, require
from ._columns import middle_value, sorted_columns
from ._scaling import downscale
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


_BLOCK_ELEMENTS = 1 << 18  # float64 elements of one centred column block (2 MiB: stays in cache)


def _column_blocks(n: int, d: int) -> range:
    return range(0, d, max(1024, _BLOCK_ELEMENTS // max(n, 1)))


def _median_center(vectors: Tensor, index: Tensor | None) -> Tensor:
    """Float64 coordinate-wise median of the rows ``index`` (None: all), column block by block
    (the same values as ``middle_value(sorted_columns(rows))`` of the whole selection)."""
    n, d = vectors.shape
    center = torch.empty(d, dtype=torch.float64, device=vectors.device)
    rows = n if index is None else index.numel()
    width = _column_blocks(rows, d).step
    for start in range(0, d, width):
        part = vectors[:, start : start + width]
        if index is not None:
            part = part.index_select(0, index)
        center[start : start + part.shape[1]] = middle_value(sorted_columns(part, False)[0])
    return center


def _centred_blocks(vectors: Tensor, index: Tensor | None, center: Tensor) -> Iterator[Tensor]:
    """The float64 column blocks of the rows ``index`` (None: all) centred on ``center``."""
    rows = vectors.shape[0] if index is None else index.numel()
    blocks = _column_blocks(rows, vectors.shape[1])
    for start in blocks:
        part = vectors[:, start : start + blocks.step]
        if index is not None:
            part = part.index_select(0, index)
        yield part.to(torch.float64) - center[start : start + part.shape[1]]


def _centred_gram(
    vectors: Tensor, index: Tensor | None, center: Tensor, scale: float = 1.0
) -> Tensor:
    """Float64 Gram matrix of the rows ``index`` (None: all) centred on ``center`` and multiplied
    by ``scale`` (a power of two: exact), in blocks."""
    rows = vectors.shape[0] if index is None else index.numel()
    gram = torch.zeros(rows, rows, dtype=torch.float64, device=vectors.device)
    for block in _centred_blocks(vectors, index, center):
        if scale != 1.0:
            block = block * scale
        gram += block @ block.T
    return gram


def _finite_gram(vectors: Tensor, index: Tensor | None, center: Tensor) -> tuple[Tensor, float]:
    """The centred Gram matrix and its scale: 1, or, when values so large that their squares
    overflow made it non-finite, the power of two (``_scaling.downscale``) it was redone with."""
    gram = _centred_gram(vectors, index, center)
    if bool(torch.isfinite(gram).all()):
        return gram, 1.0
    peak = max(float(block.abs().max()) for block in _centred_blocks(vectors, index, center))
    scale = downscale(peak)
    return _centred_gram(vectors, index, center, scale), scale


def _point(vectors: Tensor, index: Tensor | None, center: Tensor, coefficients: Tensor) -> Tensor:
    """``center + sum_i a_i (x_i - center)`` over the rows ``index``, in the input dtype."""
    d = vectors.shape[1]
    rows = vectors.shape[0] if index is None else index.numel()
    out = torch.empty(d, dtype=vectors.dtype, device=vectors.device)
    for start in _column_blocks(rows, d):
        part = vectors[:, start : start + _column_blocks(rows, d).step]
        if index is not None:
            part = part.index_select(0, index)
        piece = center[start : start + part.shape[1]]
        out[start : start + part.shape[1]] = coefficients @ (part.to(torch.float64) - piece) + piece
    return out


def weiszfeld_coefficients(
    gram: Tensor, eps: float, tol: float, max_iter: int, objective: float | None = None
) -> tuple[Tensor, Tensor, int]:
    """Smoothed Weiszfeld (with Vardi and Zhang's step) on coefficients over rows whose float64
    Gram matrix is ``gram``, from the rows' origin (the centre, coefficients 0).

    Returns (coefficients, final normalised weights, iterations run). ``objective``: also stop as
    soon as ``sum_i |x_i - z|`` is at most this value (for comparing with a fixed-iteration
    method; None, the default, leaves the stopping rule unchanged).
    """
    diagonal = torch.diagonal(gram)
    m = gram.shape[0]

    def squared_distances(coefficients: Tensor, pulled: Tensor) -> Tensor:
        return (diagonal - 2.0 * pulled + coefficients @ pulled).clamp_min(0.0)

    coefficients = torch.zeros(m, dtype=torch.float64, device=gram.device)
    pulled = torch.zeros_like(coefficients)  # gram @ coefficients
    sq = squared_distances(coefficients, pulled)
    weights = torch.full_like(sq, 1.0 / m)
    done = 0
    if objective is not None and float(sq.sqrt().sum()) <= objective:
        return coefficients, weights, done
    while done < max_iter:
        done += 1
        distances = sq.sqrt()
        weights = 1.0 / distances.clamp_min(eps)
        weights = weights / weights.sum()
        new = weights
        on_point = distances <= eps
        if bool(on_point.any()):
            new = _leave_data_point_coefficients(gram, coefficients, pulled, distances, on_point)
        change = new - coefficients
        step = float((change @ (gram @ change)).clamp_min(0.0).sqrt())
        coefficients = new
        pulled = gram @ coefficients
        sq = squared_distances(coefficients, pulled)
        total = sq.sqrt()
        if step <= tol * float(total.mean()):
            break
        if objective is not None and float(total.sum()) <= objective:
            break
    return coefficients, weights, done


def _leave_data_point_coefficients(
    gram: Tensor, coefficients: Tensor, pulled: Tensor, distances: Tensor, on_point: Tensor
) -> Tensor:
    """``_leave_data_point`` on coefficients: the same step, the vectors written over the rows."""
    far = ~on_point
    if not bool(far.any()):
        return coefficients
    inverse = torch.where(far, 1.0 / distances, torch.zeros_like(distances))
    total = inverse.sum()
    target = inverse / total
    pull_coefficients = inverse - total * coefficients  # sum_far inverse_i (x_i - z)
    pull = float((pull_coefficients @ (gram @ pull_coefficients)).clamp_min(0.0).sqrt())
    eta = float(on_point.sum())
    if pull <= eta:
        return coefficients
    keep = eta / pull
    return (1.0 - keep) * target + keep * coefficients


def _geometric_median_impl(
    vectors: Tensor,
    f: int,
    eps: float = 1e-8,
    tol: float = 1e-7,
    max_iter: int = 1000,
    objective: float | None = None,
) -> Aggregation:
    n, _, f = check_inputs("geometric_median", vectors, f)
    require("geometric_median", n, f, n >= 2 * f + 1, "n >= 2f + 1")
    _check_options(eps, tol, max_iter)
    usable = finite_rows("geometric_median", vectors, f).to(vectors.device)
    index = None if bool(usable.all()) else torch.nonzero(usable, as_tuple=True)[0]
    center = _median_center(vectors, index)
    gram, scale = _finite_gram(vectors, index, center)
    # the iteration is scale-free but for the smoothing eps and the objective (distance units)
    scaled_objective = None if objective is None else objective * scale
    coefficients, weights, _ = weiszfeld_coefficients(
        gram, eps * scale, tol, max_iter, scaled_objective
    )
    full = torch.zeros(n, dtype=torch.float64, device=vectors.device)
    full[usable] = weights
    return Aggregation(_point(vectors, index, center, coefficients), None, full.cpu())


def geometric_median(
    vectors: Tensor, f: int, eps: float = 1e-8, tol: float = 1e-7, max_iter: int = 1000
) -> Tensor:
    """Geometric median (smoothed Weiszfeld: smoothing eps, relative tolerance tol, cap max_iter);
    needs n >= 2f + 1."""
    return _geometric_median_impl(vectors, f, eps, tol, max_iter).vector
