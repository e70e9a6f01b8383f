"""Krum and Multi-Krum (Blanchard et al. 2017, as defined in El Mhamdi et al., ICML 2018).

score(i) = sum of the squared distances from V_i to its n - f - 2 nearest other vectors (n - f - 2,
not Flower's legacy n - f - 1 reading). Krum outputs the lowest-scoring vector, Multi-Krum the plain
(never example-weighted) average of the m lowest-scoring ones. Ties go to the lowest index
(stable sort).
Distances come from the stable ``pairwise_squared_distances``; rows with NaN/inf score +inf.

Options (defaults are the papers' definition above) to reproduce the authors' code:

- ``distance="squared"`` (default) or ``"plain"``: score with Euclidean distances ``||V_i - V_j||``
  instead of their squares, as both the ALIE code (``np.linalg.norm``) and the Momentum code
  (``.norm()``) do.
- ``neighbours``: how many nearest *other* vectors a score sums over (the vector itself is never
  counted); default ``n - f - 2``. The ALIE code sums over ``n - f`` others
  (``sorted(distances[user].values())[:n - f]``, its distance table holds no self-distance), the
  Momentum code over ``n - f - 1`` others (``grad_dists[:n - f - 1]``, self excluded too); both
  with ``distance="plain"``. Must lie in ``[1, n - 1]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_inputs, require, uniform_participation
from ._distances import checked_distances, pairwise_squared_distances
from ._types import Aggregation

DISTANCES = ("squared", "plain")


def krum_scores(distances: Tensor, neighbours: int) -> Tensor:
    """Krum score of each row of a squared-distance matrix over its ``neighbours`` nearest."""
    others = distances.clone()
    others.fill_diagonal_(float("inf"))
    nearest = torch.sort(others, dim=1).values[:, :neighbours]
    return nearest.sum(dim=1)


def krum_order(distances: Tensor, f: int, neighbours: int | None = None) -> Tensor:
    """Row indices sorted by Krum score over ``neighbours`` (default max(1, n - f - 2)) nearest,
    lowest index first among equal scores."""
    n = distances.shape[0]
    count = max(1, n - f - 2) if neighbours is None else neighbours
    scores = krum_scores(distances, count)
    return torch.sort(scores, stable=True).indices


def _options(rule: str, n: int, f: int, distance: str, neighbours: int | None) -> int | None:
    """Validate ``distance`` and ``neighbours``; the neighbour count to use (None = default)."""
    if distance not in DISTANCES:
        raise ValueError(f"{rule}: distance must be one of {DISTANCES}, got {distance!r}")
    if neighbours is None:
        return None
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or not 1 <= neighbours < n:
        raise ValueError(
            f"{rule} needs 1 <= neighbours <= n - 1, got neighbours={neighbours!r}, n={n}, f={f}"
        )
    return neighbours


def _rooted(squared: Tensor, distance: str) -> Tensor:
    return squared.clamp_min(0.0).sqrt() if distance == "plain" else squared


def krum_distances(vectors: Tensor, finite: Tensor, distance: str = "squared") -> Tensor:
    """Pairwise squared distances, or their square roots for ``distance="plain"`` (float64)."""
    return _rooted(pairwise_squared_distances(vectors, finite), distance)


_MEAN_BLOCK = 1 << 14  # columns per block of the chosen rows' average (the block stays in cache)
_MAX_RUNS = 4  # more runs of consecutive chosen rows: one product over all rows (measured faster)


def _runs(rows: list[int]) -> list[tuple[int, int]]:
    """Maximal ranges ``[a, b)`` of consecutive values in sorted distinct ``rows``."""
    runs: list[tuple[int, int]] = []
    for row in rows:
        if runs and runs[-1][1] == row:
            runs[-1] = (runs[-1][0], row + 1)
        else:
            runs.append((row, row + 1))
    return runs


def mean_of_rows(vectors: Tensor, rows: Tensor, all_finite: bool = False) -> Tensor:
    """Plain average of the given rows, in the input dtype.

    With all rows finite and distinct: one vector-matrix product over all rows (weight 1/m on the
    chosen ones, 0 elsewhere, no copy), or, when the chosen rows form at most ``_MAX_RUNS`` runs
    of consecutive rows, products over those runs only, column block by column block (the rows
    left out are not read); otherwise the rows are gathered first (0 * inf would be NaN).
    """
    rows = rows.to(vectors.device)
    m = rows.numel()
    chosen = sorted(rows.tolist())
    runs = _runs(chosen) if all_finite and len(set(chosen)) == m else []
    if len(runs) > _MAX_RUNS:  # many short runs: one product over all rows, 0 for those left out
        weights = torch.zeros(vectors.shape[0], dtype=vectors.dtype, device=vectors.device)
        weights[rows] = 1.0 / m
        return weights @ vectors
    if runs:
        weights = torch.full((m,), 1.0 / m, dtype=vectors.dtype, device=vectors.device)
        if len(runs) == 1:
            return weights @ vectors[runs[0][0] : runs[0][1]]
        d = vectors.shape[1]
        out = torch.empty(d, dtype=vectors.dtype, device=vectors.device)
        for start in range(0, d, _MEAN_BLOCK):
            cols = slice(start, start + _MEAN_BLOCK)
            acc = out[cols]
            (a, b), rest = runs[0], runs[1:]
            torch.mv(vectors[a:b, cols].T, weights[: b - a], out=acc)
            for a, b in rest:
                acc.addmv_(vectors[a:b, cols].T, weights[: b - a])
        return out
    picked = vectors.index_select(0, rows)
    if all_finite:
        return torch.full((m,), 1.0 / m, dtype=vectors.dtype, device=vectors.device) @ picked
    return (picked.sum(dim=0, dtype=torch.float64) / m).to(vectors.dtype)


def _krum_check(rule: str, vectors: Tensor, f: int) -> tuple[int, int]:
    n, _, f = check_inputs(rule, vectors, f)
    require(rule, n, f, n >= 2 * f + 3, "n >= 2f + 3")
    return n, f


def _krum_impl(
    vectors: Tensor, f: int, distance: str = "squared", neighbours: int | None = None
) -> Aggregation:
    n, f = _krum_check("krum", vectors, f)
    count = _options("krum", n, f, distance, neighbours)
    squared, _ = checked_distances("krum", vectors, f)
    order = krum_order(_rooted(squared, distance), f, count)
    chosen = order[:1].cpu()
    return Aggregation(vectors[int(chosen[0])].clone(), chosen, uniform_participation(n, chosen))


def _multi_krum_impl(
    vectors: Tensor,
    f: int,
    m: int | None = None,
    distance: str = "squared",
    neighbours: int | None = None,
) -> Aggregation:
    n, f = _krum_check("multi_krum", vectors, f)
    m = n - f if m is None else m
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n:
        raise ValueError(f"multi_krum needs 1 <= m <= n, got m={m!r}, n={n}, f={f}")
    count = _options("multi_krum", n, f, distance, neighbours)
    squared, finite = checked_distances("multi_krum", vectors, f)
    order = krum_order(_rooted(squared, distance), f, count)
    chosen = order[:m].cpu()
    vector = mean_of_rows(vectors, chosen, bool(finite.all()))
    return Aggregation(vector, chosen, uniform_participation(n, chosen))


def krum(
    vectors: Tensor, f: int, distance: str = "squared", neighbours: int | None = None
) -> Tensor:
    """Krum: the submitted vector with the lowest score over n - f - 2 neighbours; n >= 2f + 3.

    ``distance`` ("squared" | "plain") and ``neighbours``: see the module docstring.
    """
    return _krum_impl(vectors, f, distance, neighbours).vector


def multi_krum(
    vectors: Tensor,
    f: int,
    m: int | None = None,
    distance: str = "squared",
    neighbours: int | None = None,
) -> Tensor:
    """Multi-Krum: plain average of the m lowest-scoring vectors (default m = n - f);
    needs n >= 2f + 3. ``distance`` and ``neighbours``: see the module docstring."""
    return _multi_krum_impl(vectors, f, m, distance, neighbours).vector
