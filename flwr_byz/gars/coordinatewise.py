"""Coordinate-wise rules: median, trimmed mean (Trmean_b), Phocas_b, MeaMed.

Trimmed mean and Phocas follow Xie, Koyejo, Gupta, "Phocas" (2018), Def. 7 and 8; MeaMed averages
the n-f values nearest to the median. Every rule works through column blocks (``_columns.
run_blocks``: on CPU up to 16k columns, fewer for Phocas and MeaMed at large n, so that a block's
sort table stays cache-resident), so its extra memory is the blocks' temporaries and the (d,)
output, not a sorted copy of the input. NaN/inf count as the most extreme values of their
coordinate (see ``_checks.extremes_as_inf``, applied per block): with at most f (b) of them per
coordinate the output is finite. Exact distance ties between different values go to the lowest
row index. The median and trimmed mean read only the window's sorted positions (and one on each side
with participation): on CPU, where the pruned sorting network has few comparators
(``_columns.network_order_statistics``: n up to ~39 for the median), it computes just those
positions instead of sorting the block (0.3x the time at n = 11, 0.55x at n = 25, 0.8x at n = 39,
``benchmarks/bench_network.py``); elsewhere the block's transposed copy is sorted and read at those
positions only (no transposing back). Phocas and MeaMed take the window of the n - b (n - f) nearest
values from the sorted block directly (``_columns.sorted_window_mean``). Participation (``track``)
is counted from each window's bounds in the block's values (``_columns.window_participation``), not
from an index sort: the tracked output is the plain function's, bit for bit. With
``FLWR_BYZ_COMPILED_NETWORKS=1`` the untracked median, trimmed mean, Phocas, MeaMed and nearest
median of finite CPU rows run their networks compiled (``_compiled``: the same values, 0.13-0.27x
the time, a compile per n, dtype and d).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import _compiled as compiled
from ._checks import check_inputs, extremes_as_inf, require, rows_known_finite
from ._columns import (
    block_order_statistics,
    block_width,
    column_blocks,
    fixed_window_participation,
    mean_of_total,
    mean_over_rows,
    middle_of,
    middle_positions,
    middle_value,
    nearest_by_row_index,
    row_total,
    run_blocks,
    sorted_block,
    sorted_columns,
    sorted_window_mean,
    window_participation,
)
from ._types import Aggregation

_Step = Callable[[slice], tuple[Tensor, Tensor | None]]


def _b_or_f(rule: str, b: int | None, f: int) -> int:
    if b is None:
        return f
    if isinstance(b, bool) or not isinstance(b, int) or b < 0:
        raise ValueError(f"{rule}: b must be None or a non-negative int, got {b!r}")
    return b


def _all_finite(vectors: Tensor) -> bool:
    """Whether every value is finite: declared by the caller, or one sum over the input."""
    return rows_known_finite() or bool(torch.isfinite(vectors.sum()))


def _block_keys(
    rule: str, vectors: Tensor, tolerance: int, finite: bool
) -> Callable[[slice], Tensor]:
    """The sort keys of a column block (``extremes_as_inf`` per block), after checking the whole
    input once for columns with more than ``tolerance`` NaN/inf (same error as unblocked).
    ``finite``: the caller's ``_all_finite(vectors)``."""
    if finite:
        return lambda cols: vectors[:, cols]
    worst, column = 0, 0
    for cols in column_blocks(vectors.shape[1], vectors.device):
        count = (~torch.isfinite(vectors[:, cols])).sum(dim=0)
        top = int(count.max())
        if top > worst:
            worst, column = top, cols.start + int(torch.argmax(count))
    if worst > tolerance:
        extremes_as_inf(rule, vectors[:, column : column + 1], tolerance)  # raises
    return lambda cols: extremes_as_inf(rule, vectors[:, cols], tolerance)


def _run(vectors: Tensor, step: _Step, sorts: bool = False) -> Aggregation:
    """``run_blocks`` over blocks of all n rows; ``sorts``: the step sorts each whole block and
    works on the sorted copy, so the blocks are sized for that table to stay in cache."""
    width = block_width(vectors.shape[0], vectors.dtype) if sorts else None
    value, share = run_blocks(step, vectors.shape[1], vectors.device, width=width)
    return Aggregation(value.to(vectors.device, vectors.dtype), None, share)


def _row_counts(n: int, rows: Tensor) -> Tensor:
    return torch.bincount(rows.reshape(-1).to(torch.int64), minlength=n).to(torch.float64)


def median_of(keys: Tensor, track: bool) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """Coordinate-wise median of sort keys (mean of the two middle values for even n), unblocked.

    Returns (median (d,), rows used (1 or 2, d) or None, sorted keys, their order or None).
    """
    ordered, order = sorted_columns(keys, track)
    middle = middle_positions(keys.shape[0])
    rows = order[middle] if order is not None else None
    return middle_value(ordered), rows, ordered, order


def _window_rule(
    vectors: Tensor, keys: Callable[[slice], Tensor], lo: int, hi: int, track: bool
) -> Aggregation:
    """Median (positions lo..hi-1 the middle ones) or trimmed mean: mean of sorted positions."""
    n = vectors.shape[0]
    middle = middle_positions(n)
    is_median = (lo, hi) == (middle.start, middle.stop)
    # the positions read: the window, and with participation the one on each side of it
    read = frozenset(range(max(0, lo - 1), min(n, hi + 1)) if track else range(lo, hi))

    def step(cols: slice) -> tuple[Tensor, Tensor | None]:
        block = keys(cols)
        stats = block_order_statistics(block, read)
        if stats is not None:  # only the positions read (CPU)
            if is_median:
                value = middle_of(stats.__getitem__, n)
            else:
                value = mean_over_rows(torch.stack([stats[p] for p in range(lo, hi)]))
            numpy_stats = {p: t.numpy() for p, t in stats.items()}
            counts = (
                fixed_window_participation(block, numpy_stats.__getitem__, lo, hi - lo)
                if track
                else None
            )
            return value, counts
        ordered = sorted_block(block)
        value = middle_value(ordered) if is_median else mean_over_rows(ordered[lo:hi])
        counts = window_participation(block, ordered, lo, hi - lo) if track else None
        return value, counts

    return _run(vectors, step)


def _nearest_rule(
    vectors: Tensor,
    keys: Callable[[slice], Tensor],
    b: int,
    k: int,
    around_median: bool,
    track: bool,
) -> Aggregation:
    """Mean of the k values nearest to the median (MeaMed) or to Trmean_b (Phocas)."""
    n = vectors.shape[0]

    def center_of(ordered: Tensor) -> tuple[Tensor, Tensor | None]:
        """The centre, and for Phocas its rows' float64 total: the window's kept positions
        ``[n - k, k)`` are Trmean_b's ``[b, n - b)`` (k = n - b), summed once for both."""
        if around_median:
            return middle_value(ordered), None
        total = row_total(ordered[b : n - b])
        return mean_of_total(total, n - 2 * b, ordered.dtype), total

    def step(cols: slice) -> tuple[Tensor, Tensor | None]:
        block = keys(cols)
        ordered = sorted_block(block)
        center, kept = center_of(ordered)
        value, tied, *start = sorted_window_mean(
            ordered, center, k, with_start=track, kept_total=kept
        )
        nearest = _redo_tied(value, tied, block, center, k)
        if not track:
            return value, None
        # the window's rows from its bounds (no index sort); ties by row index from the redo
        counts = window_participation(block, ordered, start[0], k, skip=tied)
        if nearest is not None:
            counts += _row_counts(n, nearest.cpu())
        return value, counts

    return _run(vectors, step, sorts=True)


def _redo_tied(value: Tensor, tied: Tensor, block: Tensor, center: Tensor, k: int) -> Tensor | None:
    """The columns with an exact distance tie between two different values (``tied``), redone
    by row index (lowest first) into ``value``; the rows they used, or None when there is none."""
    if not bool(tied.any()):
        return None
    columns = torch.nonzero(tied, as_tuple=True)[0]
    sub = block[:, columns.to(block.device)].to(value.device, value.dtype)
    value[columns], nearest = nearest_by_row_index(sub, center[columns], k)
    return nearest


def _compiled_nearest(vectors: Tensor, b: int, k: int, around_median: bool) -> Tensor | None:
    """The k-nearest mean by the opt-in compiled network (``_compiled``), tied columns redone by
    row index as ``_nearest_rule`` does; None when it is off or does not apply."""
    result = compiled.nearest_window_mean(vectors, b, k, around_median)
    if result is None:
        return None
    value, tied, center = result
    _redo_tied(value, tied, vectors, center, k)
    return value


def nearest_aggregate(
    rule: str, vectors: Tensor, b: int, k: int, around_median: bool, track: bool
) -> Aggregation:
    """The mean of the k values nearest the median (MeaMed, the nearest median) or Trmean_b
    (Phocas), at most b NaN/inf per coordinate, by the opt-in compiled network where it
    applies."""
    finite = _all_finite(vectors)
    if finite and not track:
        value = _compiled_nearest(vectors, b, k, around_median)
        if value is not None:
            return Aggregation(value, None, None)
    keys = _block_keys(rule, vectors, b, finite)
    return _nearest_rule(vectors, keys, b, k, around_median, track)


def _median_impl(vectors: Tensor, f: int, *, track: bool = True) -> Aggregation:
    n, _, f = check_inputs("median", vectors, f)
    require("median", n, f, n >= 2 * f + 1, "n >= 2f + 1")
    finite = _all_finite(vectors)
    middle = middle_positions(n)
    if finite and not track:  # opt-in (FLWR_BYZ_COMPILED_NETWORKS=1): the compiled network
        stats = compiled.order_statistics(vectors, frozenset(range(middle.start, middle.stop)))
        if stats is not None:
            return Aggregation(middle_of(stats.__getitem__, n), None, None)
    keys = _block_keys("median", vectors, f, finite)
    return _window_rule(vectors, keys, middle.start, middle.stop, track)


def _trimmed_mean_impl(
    vectors: Tensor, f: int, b: int | None = None, *, track: bool = True
) -> Aggregation:
    n, _, f = check_inputs("trimmed_mean", vectors, f)
    b = _b_or_f("trimmed_mean", b, f)
    require("trimmed_mean", n, f, n >= 2 * b + 1, f"n >= 2b + 1 with b={b}")
    finite = _all_finite(vectors)
    if finite and not track:  # opt-in (FLWR_BYZ_COMPILED_NETWORKS=1): the compiled network
        value = compiled.window_mean(vectors, b, n - b)
        if value is not None:
            return Aggregation(value, None, None)
    keys = _block_keys("trimmed_mean", vectors, b, finite)
    return _window_rule(vectors, keys, b, n - b, track)


def _phocas_impl(
    vectors: Tensor, f: int, b: int | None = None, *, track: bool = True
) -> Aggregation:
    n, _, f = check_inputs("phocas", vectors, f)
    b = _b_or_f("phocas", b, f)
    require("phocas", n, f, n >= 2 * b + 1, f"n >= 2b + 1 with b={b}")
    return nearest_aggregate("phocas", vectors, b, n - b, False, track)


def _meamed_impl(vectors: Tensor, f: int, *, track: bool = True) -> Aggregation:
    n, _, f = check_inputs("meamed", vectors, f)
    require("meamed", n, f, n >= 2 * f + 1, "n >= 2f + 1")
    return nearest_aggregate("meamed", vectors, f, n - f, True, track)


def median(vectors: Tensor, f: int) -> Tensor:
    """Coordinate-wise median (mean of the two middle values for even n); needs n >= 2f + 1."""
    return _median_impl(vectors, f, track=False).vector


def trimmed_mean(vectors: Tensor, f: int, b: int | None = None) -> Tensor:
    """Trmean_b (Phocas paper, Def. 7): drop the b smallest and b largest per coordinate, average
    the n - 2b left. b defaults to f; needs n >= 2b + 1."""
    return _trimmed_mean_impl(vectors, f, b, track=False).vector


def phocas(vectors: Tensor, f: int, b: int | None = None) -> Tensor:
    """Phocas_b (Phocas paper, Def. 8): per coordinate, average of the n - b values nearest to
    Trmean_b. b defaults to f; needs n >= 2b + 1."""
    return _phocas_impl(vectors, f, b, track=False).vector


def meamed(vectors: Tensor, f: int) -> Tensor:
    """Mean around median: per coordinate, average of the n - f values nearest to the median;
    needs n >= 2f + 1."""
    return _meamed_impl(vectors, f, track=False).vector
