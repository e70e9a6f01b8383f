"""Per-coordinate sorting and selection helpers shared by the coordinate-wise rules and Bulyan.

Every coordinate is sorted along the row axis of the ``(n, d)`` input, so that the later steps work
on whole contiguous rows of length d. On CPU the sort is numpy's (SIMD; measured several times
faster than ``torch.sort`` along the row axis on 2 cores); elsewhere ``torch.sort``. Order among
*equal* values is not specified; results never depend on it (equal values give equal averages),
only the attribution of participation among identical values does.

The k values nearest to a centre c form a window of the sorted column: its start is the number of
positions a with ``c - s[a] > s[a + k] - c``, i.e. ``s[a] + s[a + k] < 2c``. Columns where that
comparison is an exact tie between two different values (c - delta and c + delta) are recomputed
with a stable sort of the distances, so such ties go to the lowest row index as everywhere else.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64)


def sorted_columns(keys: Tensor, with_indices: bool) -> tuple[Tensor, Tensor | None]:
    """Sort the ``(n, d)`` keys along the rows: ``(n, d)`` values and, if asked, row indices."""
    work = keys if keys.dtype in _NUMPY_DTYPES else keys.float()
    if work.device.type == "cpu":
        array = work.detach().numpy()
        if with_indices:
            order = np.argsort(array, axis=0)
            return torch.from_numpy(np.take_along_axis(array, order, axis=0)), torch.from_numpy(
                order
            )
        return torch.from_numpy(np.sort(array, axis=0)), None
    values, order = torch.sort(work, dim=0)
    return values, (order if with_indices else None)


def mean_over_rows(table: Tensor) -> Tensor:
    """Column means of a ``(k, d)`` table, as a vector-matrix product (a strided reduction over
    the short row axis is several times slower on CPU)."""
    k = table.shape[0]
    if k == 1:
        return table[0].clone()
    weights = torch.full((k,), 1.0 / k, dtype=table.dtype, device=table.device)
    return weights @ table


def middle_value(ordered: Tensor) -> Tensor:
    """Median of each sorted column: the middle value, or the mean of the two middle ones."""
    n = ordered.shape[0]
    if n % 2:
        return ordered[n // 2].clone()
    return (ordered[n // 2 - 1] + ordered[n // 2]) * 0.5


def middle_positions(n: int) -> slice:
    """Positions of the median in a sorted column: the middle one, or the two middle ones."""
    return slice(n // 2, n // 2 + 1) if n % 2 else slice(n // 2 - 1, n // 2 + 1)


def nearest_mean(
    keys: Tensor, ordered: Tensor, order: Tensor | None, center: Tensor, k: int
) -> tuple[Tensor, Tensor | None]:
    """Per coordinate, the mean of the ``k`` values nearest to ``center``; ``(d,)`` and, when
    ``order`` is given, the ``(k, d)`` row indices used.

    keys: the original ``(n, d)``; ordered/order: ``sorted_columns(keys)``. Infinite keys are
    farthest; exact distance ties between different values go to the lowest row index.
    """
    n, d = ordered.shape
    center = center.to(ordered.dtype)
    twice = center * 2
    # start = #{a : c - s[a] > s[a + k] - c} = #{a : s[a] + s[a + k] < 2c}, one row position at a
    # time (n - k steps over whole rows: several times faster than a reduction over positions).
    start = torch.zeros(d, dtype=torch.int64, device=ordered.device)
    for a in range(n - k):
        start += (ordered[a] + ordered[a + k]) < twice
    # The pair sums grow with a, so an exact tie (sum == 2c) can only begin at a = start.
    touching = torch.zeros(d, dtype=torch.bool, device=ordered.device)
    if n > k:
        edge = start.clamp(max=n - k - 1)[None, :]
        bound = (torch.gather(ordered, 0, edge) + torch.gather(ordered, 0, edge + k))[0]
        touching = (start < n - k) & (bound == twice)
    window = start[None, :] + torch.arange(k, device=ordered.device)[:, None]
    values = mean_over_rows(torch.gather(ordered, 0, window))
    rows = torch.gather(order, 0, window) if order is not None else None
    if bool(touching.any()):
        # Exact ties between two *different* values at equal distance: decide by row index.
        flagged = torch.nonzero(touching, as_tuple=True)[0]
        part = ordered[:, flagged]
        low, high = part[: n - k], part[k:]
        tie = ((low + high == twice[flagged]) & (low != high)).any(dim=0)
        ambiguous = torch.zeros(d, dtype=torch.bool, device=ordered.device)
        ambiguous[flagged] = tie
    else:
        ambiguous = touching
    if bool(ambiguous.any()):
        columns = torch.nonzero(ambiguous, as_tuple=True)[0]
        sub = keys[:, columns.to(keys.device)].to(ordered.device, ordered.dtype)
        distance = torch.nan_to_num((sub - center[columns]).abs(), nan=float("inf"))
        nearest = torch.sort(distance, dim=0, stable=True).indices[:k]
        values[columns] = torch.gather(sub, 0, nearest).mean(dim=0)
        if rows is not None:
            rows[:, columns] = nearest.to(rows.dtype)
    return values, rows


def shares(n: int, rows: Tensor) -> Tensor:
    """Participation ``(n,)`` float64 CPU from the row indices averaged (equal count per column)."""
    counts = torch.bincount(rows.reshape(-1).to(torch.int64), minlength=n).to("cpu")
    return counts.to(torch.float64) / counts.sum()
