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
of each column: the window start lies in ``[mid_lo - k + 1, mid_hi]``. It runs a comparator
network (Batcher's merge exchange, pruned backwards to the positions used; a comparator whose
min or max output is dead costs one ufunc instead of two) with numpy ``minimum``/``maximum`` over
whole rows of cache-sized column blocks, instead of sorting every column: measured ~3x faster
than the full sort plus window search (1 thread, theta = 15 and 27, d = 1e6).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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


def sorted_window_mean(ordered: Tensor, center: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per sorted column of ``ordered`` ``(n, B)``, the mean of the k values nearest to ``center``
    when ``2k > n`` (Phocas, MeaMed), without index arrays; and the bool ``(B,)`` columns with an
    exact distance tie between two different values (to be redone by row index).

    Same window as ``nearest_mean``: start = #{a < n - k : s[a] + s[a + k] < 2c}. As ``n - k < k``
    the window is the always-kept positions ``[n - k, k)`` plus, per candidate a < n - k,
    ``s[a + k]`` if the window moved past a, else ``s[a]``.
    """
    n, width = ordered.shape
    twice = center.to(ordered.dtype) * 2
    if ordered.device.type != "cpu" or ordered.dtype not in _NUMPY_DTYPES or n == k:
        low, high = ordered[: n - k], ordered[k:]
        pair = low + high
        table = torch.cat([ordered[n - k : k], torch.where(pair < twice, high, low)])
        tied = ((pair == twice) & (low != high)).any(dim=0)
        return mean_over_rows(table), tied
    sort, two = ordered.numpy(), twice.numpy()  # in place over preallocated buffers
    low, high = sort[: n - k], sort[k:]
    table = np.empty((k, width), dtype=sort.dtype)
    table[: 2 * k - n] = sort[n - k : k]
    picked = table[2 * k - n :]
    pair = np.add(low, high)
    mask = np.less(pair, two)
    np.copyto(picked, low)
    np.copyto(picked, high, where=mask)
    np.equal(pair, two, out=mask)
    tied = np.zeros(width, dtype=bool)
    if mask.any():  # rare: an exact tie between two (possibly equal) values
        columns = np.flatnonzero(mask.any(axis=0))
        tied[columns] = (mask[:, columns] & (low[:, columns] != high[:, columns])).any(axis=0)
    return mean_over_rows(torch.from_numpy(table)), torch.from_numpy(tied)


def sorted_block(block: Tensor) -> Tensor:
    """``block`` ``(n, B)`` sorted along the rows, as a new contiguous tensor (float32 for dtypes
    numpy lacks). On CPU numpy sorts the contiguous rows of the transposed copy (measured ~1.3x
    faster than its strided sort along axis 0, and cache-resident for B ~ 1e4)."""
    work = block if block.dtype in _NUMPY_DTYPES else block.float()
    if work.device.type != "cpu":
        return torch.sort(work, dim=0).values
    table = work.detach().numpy().T.copy()  # always a copy (the input may be a (n, 1) column)
    table.sort(axis=1)
    return torch.from_numpy(table).T.contiguous()


_COLUMN_BLOCK = 16384  # columns per block of the coordinate-wise rules (a multiple of 64)
_DEVICE_BLOCK = 1 << 22  # on accelerators: fewer, larger blocks (launch overhead)


def column_blocks(d: int, device: torch.device) -> list[slice]:
    """Column slices of at most ``_COLUMN_BLOCK`` (CPU) or ``_DEVICE_BLOCK`` columns."""
    size = _COLUMN_BLOCK if device.type == "cpu" else _DEVICE_BLOCK
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


def _merge_exchange(m: int) -> list[tuple[int, int]]:
    """Batcher's merge-exchange sorting network for m wires (Knuth, TAOCP 5.2.2, Algorithm M)."""
    pairs: list[tuple[int, int]] = []
    if m < 2:
        return pairs
    t = (m - 1).bit_length()
    p = 1 << (t - 1)
    while p > 0:
        q, r, gap = 1 << (t - 1), 0, p
        while True:
            pairs.extend((i, i + gap) for i in range(m - gap) if i & p == r)
            if q == p:
                break
            gap, q, r = q - p, q >> 1, p
        p >>= 1
    return pairs


@functools.lru_cache(maxsize=64)
def _window_plan(m: int, k: int) -> tuple[tuple[tuple[int, int, int], ...], int, int]:
    """Comparators (i, j, kind) computing sorted positions ``[first, last_start + k)`` of m values,
    kind 0: both outputs, 1: only the min (into i), 2: only the max (into j); and (first,
    last_start), the range of the possible window starts for the k values nearest the median."""
    mid_lo, mid_hi = (m - 1) // 2, m // 2
    first, last_start = max(0, mid_lo - k + 1), min(mid_hi, m - k)
    live = set(range(first, last_start + k))
    plan = []
    for i, j in reversed(_merge_exchange(m)):
        if i in live or j in live:
            plan.append((i, j, 0 if i in live and j in live else (1 if i in live else 2)))
            live.update((i, j))
    return tuple(reversed(plan)), first, last_start


_BLOCK = 32768  # columns per block: the block's rows stay in the 2 MiB L2 cache (theta <= ~15)
_WORKERS = 0  # column-block threads; 0: torch.get_num_threads()


def median_window_mean(
    source: np.ndarray, rows: list[int], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``source[rows]`` (finite values, m = len(rows) > k >= 1), the mean of the k
    values nearest to the column median; returns it and the columns with an exact distance tie
    between two different values (to be decided by row index by the caller).

    The window start is ``first + #{a in [first, last_start) : s[a] + s[a + k] < 2c}`` (the pair
    sums grow with a; below ``first`` they are <= 2c with equality only among values equal to c,
    from ``last_start`` on >= 2c), the same comparison as ``nearest_mean``. Window sum: for each
    candidate a, s[a + k] if the window moved past a, else s[a]; plus the always-kept positions.
    """
    m = len(rows)
    d = source.shape[1]
    plan, first, last_start = _window_plan(m, k)
    mid_lo, mid_hi = (m - 1) // 2, m // 2
    out = np.empty(d, dtype=source.dtype)
    ties: list[np.ndarray] = []
    scale = source.dtype.type(1.0 / k)

    def block(lo: int) -> None:
        hi = min(d, lo + _BLOCK)
        wires = [source[r, lo:hi].copy() for r in rows]
        spare = np.empty(hi - lo, dtype=source.dtype)
        for i, j, kind in plan:
            low, high = wires[i], wires[j]
            if kind == 0:
                np.minimum(low, high, out=spare)
                np.maximum(low, high, out=high)
                wires[i], spare = spare, low
            elif kind == 1:
                np.minimum(low, high, out=low)
            else:
                np.maximum(low, high, out=high)
        twice = wires[mid_lo] + wires[mid_hi]
        kept = range(last_start, first + k)  # in every window (may be empty for even m)
        total = wires[kept[0]].copy() if kept else np.zeros(hi - lo, dtype=source.dtype)
        for p in kept[1:]:
            total += wires[p]
        tie = None
        for a in range(first, last_start):
            left, right = wires[a], wires[a + k]
            np.add(left, right, out=spare)
            total += np.where(spare < twice, right, left)
            equal = (spare == twice) & (left != right)
            tie = equal if tie is None else tie | equal
        total *= scale
        out[lo:hi] = total
        if tie is not None and tie.any():
            ties.append(np.flatnonzero(tie) + lo)

    starts = range(0, d, _BLOCK)
    workers = min(_WORKERS or torch.get_num_threads(), len(starts))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(block, starts))
    else:
        for lo in starts:
            block(lo)
    tied = np.sort(np.concatenate(ties)) if ties else np.empty(0, dtype=np.int64)
    return out, tied


def run_blocks(
    step: Callable[[slice], tuple[Tensor, Tensor | None]], d: int, device: torch.device
) -> tuple[Tensor, Tensor | None]:
    """Run ``step(cols) -> (value (B,), counts (n,) or None)`` over the column blocks of a
    ``(n, d)`` input; returns the ``(d,)`` values and the participation (normalised counts,
    float64 CPU) or None. Extra memory: the blocks' temporaries and the ``(d,)`` output."""
    blocks = column_blocks(d, device)
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
