"""Per-coordinate sorting and selection helpers shared by the coordinate-wise rules and Bulyan.

The rules run them on column blocks (``run_blocks``; ``sorted_block`` sorts a block through its
contiguous transposed copy), so their extra memory stays a small fraction of the input.
Every coordinate is sorted along the row axis of the ``(n, d)`` input, so that the later steps work
on whole contiguous rows of length d. On CPU the sort is numpy's (SIMD; measured several times
faster than ``torch.sort`` along the row axis on 2 cores); elsewhere ``torch.sort``. Order among
*equal* values is not specified; results never depend on it (equal values give equal averages),
only the attribution of participation among identical values does.

The k values nearest to a centre c form a window of the sorted column: its start is the number of
positions a with ``c - s[a] > s[a + k] - c``, i.e. ``s[a] + s[a + k] < 2c``. Columns where that
comparison is an exact tie between two different values (c - delta and c + delta) are recomputed
with a stable sort of the distances, so such ties go to the lowest row index as everywhere else.

``median_window_mean`` (Bulyan's coordinate step on CPU) needs only the middle order statistics
of each column: the window start lies in ``[mid_lo - k + 1, mid_hi]``. It runs the sorting
network of ``_networks`` pruned backwards to the positions used, instead of sorting every column:
measured ~3x faster than the full sort plus window search (1 thread, theta = 15 and 27, d = 1e6).
The median's and trimmed mean's blocks take the same network where that is faster than the sort
(``network_order_statistics``).

Participation without index sorts (``window_participation``; Bulyan: ``median_window_mean(...,
track=True)``): a window of sorted positions ``[start, start + k)`` keeps, per column, the rows
whose value lies in ``[L, U]`` (its bounds), each once, except where a bound value also lies
outside the window (exact ties); there the rows holding it share its kept positions equally
(the definition of ``window_counts``), and exact distance ties between different values go to
the lowest row index. Per block that costs two comparisons and two popcounts per value (one for
a single-position window), plus the bound corrections where ties are; measured 1.1-1.5x the
plain kernel where the argsort version was 3-7x (benchmarks/README.md, ``bench_round.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from flwr_byz._finite import all_finite

from ._checks import rows_known_finite
from ._networks import network_table, order_statistics, positions_plan, run_plan, window_plan

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
    values, indices = torch.sort(work, dim=0)
    return values, (indices if with_indices else None)


def mean_over_rows(table: Tensor) -> Tensor:
    """Column means of a ``(k, d)`` table: the rows added one after the other into a float64
    accumulator, then divided by k. The order of the additions is the same for every column and
    every block width, so a column's mean does not depend on how the columns were blocked (a
    BLAS vector-matrix product, or a reduction kernel, changes its order with the width); a
    strided reduction over the short row axis would also be several times slower on CPU."""
    if table.shape[0] == 1:
        return table[0].clone()
    return mean_of_total(row_total(table), table.shape[0], table.dtype)


def row_total(table: Tensor) -> Tensor:
    """The float64 ``(d,)`` sum of the ``(k, d)`` table's rows, added one after the other (the
    accumulator of ``mean_over_rows``; a new tensor, free to be added to in place)."""
    total = table[0].to(torch.float64)  # a copy: float32 rows are widened
    if total.data_ptr() == table.data_ptr():
        total = total.clone()
    for row in table[1:]:
        total.add_(row)
    return total


def mean_of_total(total: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    """``mean_over_rows``'s last step: the float64 total of k rows divided by k, in ``dtype``."""
    return (total / k).to(dtype)


def middle_value(ordered: Tensor) -> Tensor:
    """Median of each sorted column: the middle value, or the mean of the two middle ones."""
    return middle_of(ordered.__getitem__, ordered.shape[0])


def middle_of(position: Callable[[int], Tensor], n: int) -> Tensor:
    """:func:`middle_value` from ``position(p)``, the values at sorted position p of n.

    The mean of two middle values is ``(a + b) * 0.5``; where that sum overflows (both near the
    dtype's largest finite value) it is ``a * 0.5 + b * 0.5`` instead, which cannot overflow and
    is exact there (halving such values loses no bits). Elsewhere the bits are unchanged."""
    if n % 2:
        return position(n // 2).clone()
    low, high = position(n // 2 - 1), position(n // 2)
    middle = (low + high) * 0.5
    if middle.is_floating_point() and bool(torch.isinf(middle).any()):
        halves = low * 0.5 + high * 0.5  # inf only where a middle value is itself infinite
        middle = torch.where(torch.isinf(middle), halves, middle)
    return middle


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
        values[columns], nearest = nearest_by_row_index(sub, center[columns], k)
        if rows is not None:
            rows[:, columns] = nearest.to(rows.dtype)
    return values, rows


def nearest_by_row_index(sub: Tensor, center: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Mean of the k values of each column of ``sub`` nearest to ``center``, distance ties to the
    lowest row index (a stable sort of the distances; NaN distances are farthest), and the rows."""
    distance = torch.nan_to_num((sub - center).abs(), nan=float("inf"))
    nearest = torch.sort(distance, dim=0, stable=True).indices[:k]
    return torch.gather(sub, 0, nearest).mean(dim=0), nearest


def sorted_window_mean(
    ordered: Tensor,
    center: Tensor,
    k: int,
    with_start: bool = False,
    kept_total: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """Per sorted column of ``ordered`` ``(n, B)``, the mean of the k values nearest to ``center``
    (Phocas, MeaMed, nearest-median), without index arrays; and the bool ``(B,)`` columns with an
    exact distance tie between two different values (to be redone by row index); with
    ``with_start`` also the ``(B,)`` int64 window starts (for ``window_participation``).

    Same window as ``nearest_mean``: start = #{a < n - k : s[a] + s[a + k] < 2c}. When ``n - k < k``
    the window is the always-kept positions ``[n - k, k)`` plus, per candidate a < n - k,
    ``s[a + k]`` if the window moved past a, else ``s[a]``. The mean is ``mean_over_rows`` of
    those rows in that order; ``kept_total``, when given, is ``row_total`` of the kept positions
    already computed by the caller (Phocas: they are Trmean_b's rows), added to in place. When
    ``2k < n`` no position is kept for sure: the window ``[start, start + k)`` is gathered.
    """
    n, width = ordered.shape
    twice = center.to(ordered.dtype) * 2
    if kept_total is None and n - k < k:
        kept_total = row_total(ordered[n - k : k])
    numpy_path = ordered.device.type == "cpu" and ordered.dtype in _NUMPY_DTYPES
    if not numpy_path or n == k or 2 * k < n:
        low, high = ordered[: n - k], ordered[k:]
        pair = low + high
        moved = pair < twice  # a prefix of each column: the pair sums grow with a
        if 2 * k < n:  # no position kept for sure: gather the window from its start
            rows = moved.sum(dim=0) + torch.arange(k, device=ordered.device).unsqueeze(1)
            value = mean_over_rows(torch.gather(ordered, 0, rows))
        else:
            value = _window_value(kept_total, torch.where(moved, high, low), k, ordered.dtype)
        tied = ((pair == twice) & (low != high)).any(dim=0)
        if with_start:
            return value, tied, moved.sum(dim=0)
        return value, tied
    sort, two = ordered.numpy(), twice.numpy()  # in place over preallocated buffers
    low_a, high_a = sort[: n - k], sort[k:]
    pair_a = np.add(low_a, high_a)
    mask = np.less(pair_a, two)
    picked_a = np.empty((n - k, width), dtype=sort.dtype)
    _where_bits(mask, high_a, low_a, out=picked_a)
    value = _window_value(kept_total, torch.from_numpy(picked_a), k, ordered.dtype)
    start = _count_true(mask) if with_start else None
    np.equal(pair_a, two, out=mask)
    tied_a = np.zeros(width, dtype=bool)
    if mask.any():  # rare: an exact tie between two (possibly equal) values
        columns = np.flatnonzero(mask.any(axis=0))
        tied_a[columns] = (mask[:, columns] & (low_a[:, columns] != high_a[:, columns])).any(axis=0)
    if start is not None:
        return value, torch.from_numpy(tied_a), start
    return value, torch.from_numpy(tied_a)


def _window_value(kept_total: Tensor | None, picked: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    """The window's mean as ``mean_over_rows`` of the kept rows then the ``picked`` candidates:
    the candidates added in order onto ``kept_total`` (in place), or, when no position is kept
    (2k = n), the mean of the candidates alone."""
    if kept_total is None:
        return mean_over_rows(picked)
    for row in picked:
        kept_total.add_(row)
    return mean_of_total(kept_total, k, dtype)


_SAME_WIDTH_INTS = {2: np.int16, 4: np.int32, 8: np.int64}


def _where_bits(mask: np.ndarray, new: np.ndarray, old: np.ndarray, out: np.ndarray) -> None:
    """``out = new`` where ``mask`` else ``old``, bit for bit, as a branch-free integer select
    (``old ^ ((old ^ new) * mask)`` on integer views): 4-6x faster than a copy followed by
    ``np.copyto(where=)`` on the random masks of a sorted block, and ~0.8x the time of the
    ``& -mask`` form (one pass and one temporary fewer)."""
    ints = _SAME_WIDTH_INTS[out.dtype.itemsize]
    flip = np.bitwise_xor(old.view(ints), new.view(ints))
    np.multiply(flip, mask, out=flip)  # kept where mask, zero elsewhere
    np.bitwise_xor(old.view(ints), flip, out=out.view(ints))


def _count_true(mask: np.ndarray) -> Tensor:
    """``(B,)`` int64 count of True per column of a bool ``(r, B)`` (bytes summed as uint8/16)."""
    wide = np.uint8 if mask.shape[0] < 255 else np.uint16
    return torch.from_numpy(mask.view(np.uint8).sum(axis=0, dtype=wide).astype(np.int64))


def window_participation(
    keys: Tensor, ordered: Tensor, start: int | Tensor, k: int, skip: Tensor | None = None
) -> Tensor:
    """Kept-value counts ``(n,)`` float64 CPU of the window of sorted positions
    ``[start, start + k)`` of every column (``start`` an int or ``(B,)`` per column), from the
    values alone: no index sort.

    keys: the ``(n, B)`` block; ordered: its sorted columns. Same definition as ``window_counts``:
    a row whose key lies strictly inside the window's value range ``[L, U]`` counts once; the rows
    equal to a bound share that value's positions in the window equally. Columns in ``skip``
    (bool ``(B,)``: e.g. the distance ties the caller attributes by row index) are left out.
    Per column only the bounds are read from the sorted block; where neither bound value also
    lies outside the window (no shared bound: every row in ``[L, U]`` counts exactly 1), a row's
    count is ``#(key >= L) - #(key > U)`` over its contiguous row (two comparisons and two
    popcounts per value); the other columns get the exact shares (``_bound_corrections``).
    """
    n, width = keys.shape
    if keys.device.type != "cpu" or ordered.dtype not in _NUMPY_DTYPES:
        return _window_participation_torch(keys, ordered, start, k, skip)
    work = keys if keys.dtype in _NUMPY_DTYPES else keys.float()
    x, s = work.detach().numpy(), ordered.numpy()
    if isinstance(start, int):
        first: np.ndarray | int = start
        low, high, shared = _fixed_window_bounds(s.__getitem__, n, width, start, k)
    else:
        first = start.numpy().astype(np.intp, copy=False)
        low, high, shared = _bounds_of(s, first, k)
    if skip is not None and bool(skip.any()):
        drop = skip.numpy()
        low, high = low.copy(), high.copy()
        low[drop] = np.nan  # no comparison with NaN is true: these columns count 0
        high[drop] = np.nan
        shared = shared & ~drop
    return torch.from_numpy(_window_rows(x, low, high, first, k, shared))


def _fixed_window_bounds(
    position: Callable[[int], np.ndarray], n: int, width: int, start: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(L, U, shared)`` of the window of sorted positions ``[start, start + k)`` of every
    column, from ``position(p)`` (the ``(B,)`` values at sorted position p; the positions
    ``start - 1`` and ``start + k`` are read where they exist): shared where a bound value also
    lies outside the window."""
    low, high = position(start), position(start + k - 1)
    shared = np.zeros(width, dtype=bool)
    if start > 0:
        np.equal(position(start - 1), low, out=shared)
    if start + k < n:
        shared |= position(start + k) == high
    return low, high, shared


def fixed_window_participation(
    keys: Tensor, position: Callable[[int], np.ndarray], start: int, k: int
) -> Tensor:
    """``window_participation(keys, ordered, start, k)`` (CPU, numpy dtypes, one ``start``) from
    the sorted positions ``start - 1 .. start + k`` alone (``position(p)``), e.g. those of
    :func:`network_order_statistics`: the same counts."""
    n, width = keys.shape
    low, high, shared = _fixed_window_bounds(position, n, width, start, k)
    return torch.from_numpy(_window_rows(keys.detach().numpy(), low, high, start, k, shared))


def _window_rows(
    x: np.ndarray | list[np.ndarray],
    low: np.ndarray,
    high: np.ndarray,
    start: np.ndarray | int,
    k: int,
    shared: np.ndarray,
) -> np.ndarray:
    """Kept-value counts ``(r,)`` float64 of the rows of ``x`` (``(r, B)`` or r rows ``(B,)``)
    for windows with bounds ``low``/``high`` (NaN: column left out) starting at sorted positions
    ``start`` (one int for all columns, or per column): ``#(low <= x <= high)`` per row, plus
    for the ``shared`` columns (a bound value also outside the window) the corrections of the
    rows at a bound (``_bound_corrections``)."""
    width = low.shape[0]
    share_count = int(np.count_nonzero(shared))
    if isinstance(start, int):
        start = np.full(width, start, dtype=np.intp) if share_count else np.zeros(0, np.intp)
    if 16 * share_count > width:  # many ties (e.g. identical attacker rows): the whole block
        block = np.stack(x) if isinstance(x, list) else x
        return _counts_with_corrections(block, low, high, start, k, shared)
    counts = _fast_counts(x, low, high, k == 1)
    if share_count:
        columns = np.flatnonzero(shared)
        sub = np.stack([row[columns] for row in x]) if isinstance(x, list) else x[:, columns]
        counts += _bound_corrections(sub, start[columns], low[columns], high[columns], k)
    return counts


def _row_popcounts(mask: np.ndarray) -> np.ndarray:
    """``(r,)`` float64 count of True per row of a bool ``(r, m)`` (contiguous rows)."""
    return np.array([np.count_nonzero(row) for row in mask], dtype=np.float64)


def _counts_with_corrections(
    x: np.ndarray, low: np.ndarray, high: np.ndarray, start: np.ndarray, k: int, shared: np.ndarray
) -> np.ndarray:
    """``_fast_counts`` + ``_bound_corrections`` over the whole block (most columns shared, e.g.
    identical attacker rows), reusing the comparison masks: ``#(x < L) = r - #(x >= L)``,
    ``#(x < U) = r - #(x > U) - #(x == U)``; the weights are 0 outside ``shared``."""
    r = x.shape[0]
    end = start + k
    if k == 1:  # low is high; the window keeps its single position
        at = x == low
        extra = np.where(shared, 1.0 / np.maximum(_column_count(at), 1) - 1.0, 0.0)
        return _row_popcounts(at) + _weighted_rows(at, extra)
    ge, gt = x >= low, x > high
    counts = _row_popcounts(ge) - _row_popcounts(gt)
    at_low, at_high = x == low, x == high
    holders_low, holders_high = _column_count(at_low), _column_count(at_high)
    kept_low = np.minimum(r - _column_count(ge) + holders_low, end) - start
    kept_high = end - np.maximum(r - _column_count(gt) - holders_high, start)
    extra_low = np.where(shared, kept_low / np.maximum(holders_low, 1) - 1.0, 0.0)
    extra_high = kept_high / np.maximum(holders_high, 1) - 1.0
    extra_high = np.where(shared & (low != high), extra_high, 0.0)
    return counts + _weighted_rows(at_low, extra_low) + _weighted_rows(at_high, extra_high)


def _bound_corrections(
    x: np.ndarray, start: np.ndarray, low: np.ndarray, high: np.ndarray, k: int
) -> np.ndarray:
    """Per row of ``x`` ``(r, m)``, what its values at a window bound add beyond the 1 that
    ``_fast_counts`` gave them: ``kept / holders - 1`` of that bound's value. The positions
    holding the low value are ``[#(x < L), #(x <= L))``, the window ``[start, start + k)``
    keeps ``min(#(x <= L), start + k) - start`` of them; at the high end it keeps
    ``start + k - max(#(x < U), start)``; L == U: k, counted once (the low end). Equal values
    have no natural owner: their holders share the kept positions equally."""
    end = start + k
    at_low = x == low
    holders_low = _column_count(at_low)
    kept_low = np.minimum(_column_count(x < low) + holders_low, end) - start
    out = _weighted_rows(at_low, kept_low / np.maximum(holders_low, 1) - 1.0)
    if k > 1:  # (k = 1: the low bound is the high bound)
        at_high = x == high
        kept_high = end - np.maximum(_column_count(x < high), start)
        extra = kept_high / np.maximum(_column_count(at_high), 1) - 1.0
        out += _weighted_rows(at_high, np.where(low == high, 0.0, extra))
    return out


def _weighted_rows(at: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """``at @ extra`` for a bool ``(r, m)`` and float64 ``(m,)``. The weights take few distinct
    values when the ties come from identical inputs (e.g. f attackers sending one vector): then
    per value ``v`` the rows' popcounts over its columns, times v; else a float64 product."""
    r, width = at.shape
    out = np.zeros(r, dtype=np.float64)
    used = np.flatnonzero(extra)
    if not used.size:
        return out
    weights = extra[used]
    values = weights[:1] if bool((weights == weights[0]).all()) else np.unique(weights)
    if values.size > 4:
        product = torch.from_numpy(at[:, used]).to(torch.float64) @ torch.from_numpy(weights)
        return product.numpy()
    for value in values.tolist():
        if values.size == 1 and 2 * used.size > width:
            part = at & (extra == value)
        else:
            part = at[:, used[weights == value]]
        out += value * _row_popcounts(part)
    return out


def _column_count(mask: np.ndarray) -> np.ndarray:
    """``(m,)`` count of True per column of a bool ``(r, m)`` (uint8, uint16 from 255 rows: the
    callers only add counts of disjoint sets and subtract them from r, never below 0)."""
    wide = np.uint8 if mask.shape[0] < 255 else np.uint16
    return mask.view(np.uint8).sum(axis=0, dtype=wide)


def _bounds_of(s: np.ndarray, start: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Per column of the sorted ``s``, the window bounds ``s[start]``, ``s[start + k - 1]`` and
    whether a bound value also lies outside the window (``s[start - 1]`` or ``s[start + k]``)."""
    n, width = s.shape
    flat = s.reshape(-1)
    column = np.arange(width, dtype=np.intp)
    at = start * width + column
    low, high = flat[at], flat[at + (k - 1) * width]
    shared = (start > 0) & (flat[np.maximum(at - width, column)] == low)
    shared |= (start + k < n) & (flat[np.minimum(at + k * width, (n - 1) * width + column)] == high)
    return low, high, shared


def _select_bits(target: np.ndarray, new: np.ndarray, mask: np.ndarray, tmp: np.ndarray) -> None:
    """``target = new`` where ``mask`` is all ones, bit for bit (integer views of the floats): a
    branch-free select, ~10x faster than ``np.copyto(where=)`` on random masks."""
    np.bitwise_xor(target, new, out=tmp)
    np.bitwise_and(tmp, mask, out=tmp)
    np.bitwise_xor(target, tmp, out=target)


def _fast_counts(
    x: np.ndarray | list[np.ndarray], low: np.ndarray, high: np.ndarray, single: bool
) -> np.ndarray:
    """Per row of ``x`` ``(r, B)`` (or a list of r rows), ``#(low <= x <= high)``
    (``#(x == low)`` if ``single``)."""
    r = len(x)
    out = np.empty(r, dtype=np.float64)
    if isinstance(x, list):
        buffer = np.empty(low.shape, dtype=bool)
        for i, row in enumerate(x):
            if single:
                out[i] = np.count_nonzero(np.equal(row, low, out=buffer))
            else:
                at_least = np.count_nonzero(np.greater_equal(row, low, out=buffer))
                out[i] = at_least - np.count_nonzero(np.greater(row, high, out=buffer))
        return out
    ge = np.empty(x.shape, dtype=bool)
    if single:
        np.equal(x, low, out=ge)
        for i in range(r):
            out[i] = np.count_nonzero(ge[i])
        return out
    gt = np.empty(x.shape, dtype=bool)
    np.greater_equal(x, low, out=ge)
    np.greater(x, high, out=gt)
    for i in range(r):
        out[i] = np.count_nonzero(ge[i]) - np.count_nonzero(gt[i])
    return out


def _window_participation_torch(
    keys: Tensor, ordered: Tensor, start: int | Tensor, k: int, skip: Tensor | None
) -> Tensor:
    """``window_participation`` on other devices: the exact shares of every column, in torch."""
    n, width = ordered.shape
    if isinstance(start, int):
        first = torch.full((width,), start, dtype=torch.int64, device=ordered.device)
    else:
        first = start.to(ordered.device, torch.int64)
    x = keys.to(ordered.dtype)
    if skip is not None:
        keep = ~skip.to(ordered.device)
        x, ordered, first = x[:, keep], ordered[:, keep], first[keep]
    low = torch.gather(ordered, 0, first[None, :])[0]
    high = torch.gather(ordered, 0, (first + k - 1)[None, :])[0]
    end = first + k
    at_low, at_high = x == low, x == high
    holders_low = at_low.sum(dim=0, dtype=torch.float64).clamp_min(1.0)
    holders_high = at_high.sum(dim=0, dtype=torch.float64).clamp_min(1.0)
    kept_low = torch.minimum((x <= low).sum(dim=0), end) - first
    kept_high = end - torch.maximum((x < high).sum(dim=0), first)
    w_low = kept_low.to(torch.float64) / holders_low
    w_high = torch.where(low == high, 0.0, kept_high.to(torch.float64) / holders_high)
    inside = ((x > low) & (x < high)).sum(dim=1, dtype=torch.float64)
    counts = inside + at_low.to(torch.float64) @ w_low + at_high.to(torch.float64) @ w_high
    return counts.to("cpu")


def sorted_block(block: Tensor) -> Tensor:
    """``block`` ``(n, B)`` sorted along the rows, as a new contiguous tensor (float32 for dtypes
    numpy lacks). On CPU numpy sorts the contiguous rows of the transposed copy (measured ~1.3x
    faster than its strided sort along axis 0, and cache-resident for B ~ 1e4)."""
    work = block if block.dtype in _NUMPY_DTYPES else block.float()
    if work.device.type != "cpu":
        return torch.sort(work, dim=0).values
    n, width = work.shape
    if _network_pays(work, frozenset(range(n))):  # small n: the whole network, no transposes
        rows = list(work.detach().numpy())
        return torch.from_numpy(network_table(rows, list(range(n)), max(width, 1)))
    table = work.detach().numpy().T.copy()  # always a copy (the input may be a (n, 1) column)
    table.sort(axis=1)
    return torch.from_numpy(_transposed(table))


def _transposed(table: np.ndarray, rows: int = 256) -> np.ndarray:
    """A C-contiguous copy of ``table.T``, written ``rows`` rows of ``table`` at a time: the
    tiles stay in cache, ~0.6x the time of one strided copy for a (16384, 51) float32 table."""
    width, n = table.shape
    out = np.empty((n, width), dtype=table.dtype)
    for start in range(0, width, rows):
        out[:, start : start + rows] = table[start : start + rows].T
    return out


def block_order_statistics(block: Tensor, positions: frozenset[int]) -> dict[int, Tensor] | None:
    """The sorted ``positions`` of the columns of the ``(n, B)`` block, position -> ``(B,)``
    tensor, on CPU for numpy dtypes (None elsewhere): by the pruned network where it pays, else
    read from the sorted transposed copy (``sorted_block`` without transposing all n rows back)."""
    stats = network_order_statistics(block, positions)
    if stats is not None or block.device.type != "cpu" or block.dtype not in _NUMPY_DTYPES:
        return stats
    table = block.detach().numpy().T.copy()  # (B, n): each column's values in one row
    table.sort(axis=1)
    return {p: torch.from_numpy(np.ascontiguousarray(table[:, p])) for p in positions}


_COLUMN_BLOCK = 16384  # columns per block of the coordinate-wise rules (a multiple of 64)
# A block's sort table (``sorted_block``: B columns of ``rows`` values) is kept under this many
# bytes, inside a 2 MB L2: at n = 51 float32 the 16384-column table (3.3 MB) made Phocas and
# MeaMed 1.07-2.5x slower than the 8576 columns this gives (bimodal timings; paired runs,
# benchmarks/README.md).
_SORT_TABLE_BYTES = 1_750_000
_DEVICE_BLOCK = 1 << 22  # on accelerators: fewer, larger blocks (launch overhead)


def block_width(rows: int, dtype: torch.dtype) -> int:
    """Columns per CPU block for a step that sorts whole ``(rows, B)`` blocks: ``_COLUMN_BLOCK``,
    fewer (a multiple of 64, at least 64) where the sort table (``sorted_block``'s dtype) would
    overflow ``_SORT_TABLE_BYTES``."""
    itemsize = dtype.itemsize if dtype in _NUMPY_DTYPES else torch.float32.itemsize
    fitting = _SORT_TABLE_BYTES // (max(rows, 1) * itemsize) // 64 * 64
    return max(64, min(_COLUMN_BLOCK, fitting))


def column_blocks(d: int, device: torch.device, width: int | None = None) -> list[slice]:
    """Column slices of at most ``width`` (default ``_COLUMN_BLOCK``) columns on CPU, or
    ``_DEVICE_BLOCK`` columns elsewhere."""
    size = (width or _COLUMN_BLOCK) if device.type == "cpu" else _DEVICE_BLOCK
    return [slice(lo, min(d, lo + size)) for lo in range(0, d, size)]


def map_blocks(fn: Callable, blocks: list[slice], workers: int | None = None) -> list:
    """``[fn(cols) for cols in blocks]``, on up to ``torch.get_num_threads()`` threads."""
    count = min(workers or _WORKERS or torch.get_num_threads(), len(blocks))
    if count <= 1:
        return [fn(cols) for cols in blocks]
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(fn, blocks))


def window_shares(keys: Tensor, ordered: Tensor, lo: int, hi: int, chunk: int = 1 << 16) -> Tensor:
    """Participation ``(n,)`` float64 CPU of the sorted positions ``lo .. hi-1`` of every column
    (``window_counts`` normalised)."""
    counts = window_counts(keys, ordered, lo, hi, chunk).to("cpu")
    return counts / counts.sum()


def window_counts(keys: Tensor, ordered: Tensor, lo: int, hi: int, chunk: int = 1 << 16) -> Tensor:
    """Kept-value counts ``(n,)`` float64 (keys' device) of the sorted positions ``lo .. hi-1`` of
    every column, from the values alone (no index sort, which costs several times the value sort).

    A row whose key lies strictly inside the window's value range counts once in that column; the
    rows equal to a boundary value share that value's positions in the window equally (equal
    values have no natural owner). Without ties this is exactly the count of kept values per row.
    """
    n, d = keys.shape
    counts = torch.zeros(n, dtype=torch.float64, device=keys.device)
    for start in range(0, d, chunk):
        cols = slice(start, min(start + chunk, d))
        block, window = keys[:, cols], ordered[lo:hi, cols]
        low, high = window[0], window[-1]
        counts += ((block > low) & (block < high)).sum(dim=1, dtype=torch.float64)
        for value, boundary in ((low, None), (high, low)):
            at_value = block == value
            kept = (window == value).sum(dim=0, dtype=torch.float64)
            if boundary is not None:  # the high end, unless it is the low end again
                kept = torch.where(high == boundary, torch.zeros_like(kept), kept)
            per_row = kept / at_value.sum(dim=0, dtype=torch.float64).clamp_min(1.0)
            counts += at_value.to(torch.float64) @ per_row
    return counts


def shares(n: int, rows: Tensor) -> Tensor:
    """Participation ``(n,)`` float64 CPU from the row indices averaged (equal count per column)."""
    counts = torch.bincount(rows.reshape(-1).to(torch.int64), minlength=n).to("cpu")
    return counts.to(torch.float64) / counts.sum()


# The pruned network replaces a block's sort where it has at most this many comparators per
# value of a column: measured (1 thread, float32, 16384-column blocks) against sorted_block it
# takes 0.12-0.57x the time at 2-6 comparators per value (n = 7..31, any positions; the median
# up to n = 39), ~1x at 6.6 (the median at n = 51), more above.
NETWORK_COMPARATORS_PER_VALUE = 6


def _network_pays(block: Tensor, positions: frozenset[int]) -> bool:
    """Whether the pruned network computes ``positions`` of the ``(n, B)`` block faster than its
    sort: CPU, a numpy dtype, at most ``NETWORK_COMPARATORS_PER_VALUE`` comparators per value."""
    n, width = block.shape
    if block.device.type != "cpu" or block.dtype not in _NUMPY_DTYPES or width == 0:
        return False
    return len(positions_plan(n, positions)) <= NETWORK_COMPARATORS_PER_VALUE * n


def network_order_statistics(block: Tensor, positions: frozenset[int]) -> dict[int, Tensor] | None:
    """The sorted ``positions`` of the columns of the ``(n, B)`` block (position -> ``(B,)``
    tensor) by the pruned sorting network, where that pays (``_network_pays``); None elsewhere.
    The same values as ``sorted_block(block)[p]``."""
    if not _network_pays(block, positions):
        return None
    stats = order_statistics(list(block.detach().numpy()), positions, block=block.shape[1])
    return {p: torch.from_numpy(values) for p, values in stats.items()}


_BLOCK = 32768  # columns per block: the block's rows stay in the 2 MiB L2 cache (theta <= ~15)
_WORKERS = 0  # column-block threads; 0: torch.get_num_threads()


def median_window_mean(
    source: np.ndarray, rows: list[int], k: int, track: bool = False
) -> tuple[np.ndarray, ...]:
    """Per column of ``source[rows]`` (finite values, m = len(rows) > k >= 1), the mean of the k
    values nearest to the column median; returns it and the columns with an exact distance tie
    between two different values (to be decided by row index by the caller).

    The window start is ``first + #{a in [first, last_start) : s[a] + s[a + k] < 2c}`` (the pair
    sums grow with a; below ``first`` they are <= 2c with equality only among values equal to c,
    from ``last_start`` on >= 2c), the same comparison as ``nearest_mean``. Window sum: for each
    candidate a, s[a + k] if the window moved past a, else s[a]; plus the always-kept positions,
    in a float64 accumulator divided by k and rounded once to the input's dtype (as
    ``mean_over_rows``, which Bulyan's general path uses: the same values bit for bit in the 21
    cases compared, n = 7 to 51).

    ``track``: also the kept-value counts ``(m,)`` float64 per entry of ``rows``, as
    ``window_participation`` counts them (tied columns left out, for the caller), from the window
    bounds (followed through the candidates like the window sum) and the values next to them
    (one more sorted position each side); the output values are the same bit for bit.
    """
    m = len(rows)
    d = source.shape[1]
    plan, first, last_start = window_plan(m, k, 1 if track else 0)
    mid_lo, mid_hi = (m - 1) // 2, m // 2
    out = np.empty(d, dtype=source.dtype)
    ties: list[np.ndarray] = []
    counts = np.zeros(m, dtype=np.float64)
    lock = threading.Lock()
    nan = source.dtype.type(np.nan)
    ints = np.int64 if source.dtype == np.float64 else np.int32
    past_end = np.full(min(d, _BLOCK), nan) if track else None  # read only

    def block(lo: int) -> None:
        hi = min(d, lo + _BLOCK)
        wires, spare = run_plan([source[r, lo:hi] for r in rows], plan)
        twice = wires[mid_lo] + wires[mid_hi]
        kept = range(last_start, first + k)  # in every window (may be empty for even m)
        # a float64 accumulator, as mean_over_rows (a float32 one put the mean of k equal values
        # an ulp away from them)
        total = wires[kept[0]].astype(np.float64) if kept else np.zeros(hi - lo)
        for p in kept[1:]:
            total += wires[p]
        tie = None
        if track:  # the window bounds and their outer neighbours, followed like the sum
            width = hi - lo
            assert past_end is not None  # allocated above when track
            gone = past_end[:width]  # past the last sorted position
            # (low, high, below, above) = s[start], s[start + k - 1], s[start - 1], s[start + k]
            bounds = [
                wires[p].copy() if 0 <= p < m else gone.copy()
                for p in (first, first + k - 1, first - 1, first + k)
            ]
            start = np.full(width, first, dtype=np.intp)
            bits, scratch = np.empty(width, dtype=ints), np.empty(width, dtype=ints)
        for a in range(first, last_start):
            left, right = wires[a], wires[a + k]
            np.add(left, right, out=spare)
            moved = spare < twice
            total += np.where(moved, right, left)
            equal = (spare == twice) & (left != right)
            tie = equal if tie is None else tie | equal
            if track:  # where the window moved past a: the bounds move one position up
                start += moved
                np.negative(moved, dtype=ints, out=bits)  # all ones where moved
                step = (wires[a + 1], right, left, wires[a + k + 1] if a + k + 1 < m else gone)
                for bound, new in zip(bounds, step, strict=True):
                    _select_bits(bound.view(ints), new.view(ints), bits, scratch)
        total /= k
        out[lo:hi] = total  # rounded to the input's dtype, as mean_of_total
        if tie is not None and tie.any():
            ties.append(np.flatnonzero(tie) + lo)
        if track:
            low, high, below, above = bounds
            shared = (below == low) | (above == high)
            if tie is not None and tie.any():
                low[tie] = nan  # redone by row index by the caller
                high[tie] = nan
                shared &= ~tie
            x = [source[r, lo:hi] for r in rows]  # the selected rows of this block (views)
            part = _window_rows(x, low, high, start, k, shared)
            with lock:
                np.add(counts, part, out=counts)

    starts = range(0, d, _BLOCK)
    workers = min(_WORKERS or torch.get_num_threads(), len(starts))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(block, starts))
    else:
        for lo in starts:
            block(lo)
    tied = np.sort(np.concatenate(ties)) if ties else np.empty(0, dtype=np.int64)
    return (out, tied, counts) if track else (out, tied)


def run_blocks(
    step: Callable[[slice], tuple[Tensor, Tensor | None]],
    d: int,
    device: torch.device,
    middle_window: tuple[Tensor, Tensor, int] | None = None,
    width: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Run ``step(cols) -> (value (B,), counts (n,) or None)`` over the column blocks of a
    ``(n, d)`` input; returns the ``(d,)`` values and the participation (normalised counts,
    float64 CPU) or None. Extra memory: the blocks' temporaries and the ``(d,)`` output.

    ``middle_window = (vectors, selected, k)`` (Bulyan's coordinate step with participation):
    where ``median_window_tracked`` applies (CPU, float32/64, finite selected rows, more rows
    than k) it replaces ``step``: the plain function's values, counts from the window bounds.
    ``width``: columns per CPU block (``column_blocks``; ``block_width`` for steps that sort).
    """
    if middle_window is not None:
        done = median_window_tracked(*middle_window)
        if done is not None:
            return done
    blocks = column_blocks(d, device, width)
    first, counts = step(blocks[0])
    # Written in place: (d,)-sized results kept per block would fragment the heap (measured: the
    # peak grew by ~0.4x the input at d = 1e7 as freed block buffers could not be reused).
    # The counts are summed in place too (a lock: blocks may run on threads).
    value = torch.empty(d, dtype=first.dtype, device=first.device)
    value[blocks[0]] = first
    total = counts.to("cpu", torch.float64).clone() if counts is not None else None
    lock = threading.Lock()

    def run(cols: slice) -> None:
        part, part_counts = step(cols)
        value[cols] = part
        if total is not None and part_counts is not None:
            part_counts = part_counts.to("cpu", torch.float64)
            with lock:
                total.add_(part_counts)

    map_blocks(run, blocks[1:], None if device.type == "cpu" else 1)
    if total is None:
        return value, None
    return value, total / total.sum()


def median_window_tracked(
    vectors: Tensor, selected: Tensor, k: int
) -> tuple[Tensor, Tensor] | None:
    """Bulyan's coordinate step with participation, without index sorts: per column of the
    selected rows the mean of the k values nearest their median (``median_window_mean``, the same
    values bit for bit as the plain ``bulyan``) and the participation ``(n,)`` float64 of the
    inputs (counted from the window bounds; exact distance ties between different values go to
    the lowest row index, as in ``nearest_mean``). None where it does not apply: not on CPU, not
    float32/64, ``len(selected) <= k``, or a non-finite value in the selected rows."""
    n = vectors.shape[0]
    rows = selected.tolist()
    if (
        vectors.device.type != "cpu"
        or vectors.dtype not in (torch.float32, torch.float64)
        or len(rows) <= k
        or not all(_row_finite(vectors[r]) for r in rows)
    ):
        return None
    source = vectors.detach().numpy()
    value, tied, counts = median_window_mean(source, rows, k, track=True)
    if tied.size:  # as the plain function: the general path on the tied columns only
        sub = torch.from_numpy(source[np.ix_(np.asarray(rows), tied)])
        ordered, order = sorted_columns(sub, True)
        fixed, used = nearest_mean(sub, ordered, order, middle_value(ordered), k)
        assert used is not None  # order was given
        value[tied] = fixed.to(vectors.dtype).numpy()
        counts += np.bincount(used.reshape(-1).numpy(), minlength=len(rows))
    total = torch.zeros(n, dtype=torch.float64)
    total[selected] = torch.from_numpy(counts)
    return torch.from_numpy(value), total / total.sum()


def _row_finite(row: Tensor) -> bool:
    """Whether a ``(d,)`` row is all finite: its sum first (NaN/inf propagate), then exactly."""
    return rows_known_finite() or all_finite(row)
