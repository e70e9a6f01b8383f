"""Coordinate-wise rules: median, trimmed mean (Trmean_b), Phocas_b, MeaMed.

Trimmed mean and Phocas follow Xie, Koyejo, Gupta, "Phocas" (2018), Def. 7 and 8; MeaMed averages
the n-f values nearest to the median. Every rule works on all coordinates at once (one sort per
call, see ``_columns``). NaN/inf count as the most extreme values of their coordinate (see
``_checks.extremes_as_inf``): with at most f (b) of them per coordinate the output is finite.
Exact distance ties between different values go to the lowest row index.
"""

from __future__ import annotations

from torch import Tensor

from ._checks import check_inputs, extremes_as_inf, require
from ._columns import (
    mean_over_rows,
    middle_positions,
    middle_value,
    nearest_mean,
    shares,
    sorted_columns,
    window_shares,
)
from ._types import Aggregation


def _b_or_f(rule: str, b: int | None, f: int) -> int:
    if b is None:
        return f
    if isinstance(b, bool) or not isinstance(b, int) or b < 0:
        raise ValueError(f"{rule}: b must be None or a non-negative int, got {b!r}")
    return b


def _result(vectors: Tensor, value: Tensor, rows: Tensor | None) -> Aggregation:
    n = vectors.shape[0]
    share = shares(n, rows) if rows is not None else None
    return Aggregation(value.to(vectors.device, vectors.dtype), None, share)  # type: ignore[arg-type]


def median_of(keys: Tensor, track: bool) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """Coordinate-wise median of sort keys (mean of the two middle values for even n).

    Returns (median (d,), rows used (1 or 2, d) or None, sorted keys, their order or None).
    """
    ordered, order = sorted_columns(keys, track)
    middle = middle_positions(keys.shape[0])
    rows = order[middle] if order is not None else None
    return middle_value(ordered), rows, ordered, order


def _median_impl(vectors: Tensor, f: int, *, track: bool = True) -> Aggregation:
    n, _, f = check_inputs("median", vectors, f)
    require("median", n, f, n >= 2 * f + 1, "n >= 2f + 1")
    keys = extremes_as_inf("median", vectors, f)
    value, _, ordered, _ = median_of(keys, track=False)
    middle = middle_positions(n)
    share = window_shares(keys, ordered, middle.start, middle.stop) if track else None
    return Aggregation(value.to(vectors.device, vectors.dtype), None, share)  # type: ignore[arg-type]


def _trim(keys: Tensor, b: int, track: bool):
    n = keys.shape[0]
    ordered, order = sorted_columns(keys, track)
    rows = order[b : n - b] if order is not None else None
    return mean_over_rows(ordered[b : n - b]), rows, ordered, order


def _trimmed_mean_impl(
    vectors: Tensor, f: int, b: int | None = None, *, track: bool = True
) -> Aggregation:
    n, _, f = check_inputs("trimmed_mean", vectors, f)
    b = _b_or_f("trimmed_mean", b, f)
    require("trimmed_mean", n, f, n >= 2 * b + 1, f"n >= 2b + 1 with b={b}")
    keys = extremes_as_inf("trimmed_mean", vectors, b)
    value, _, ordered, _ = _trim(keys, b, track=False)
    share = window_shares(keys, ordered, b, n - b) if track else None
    return Aggregation(value.to(vectors.device, vectors.dtype), None, share)  # type: ignore[arg-type]


def _phocas_impl(
    vectors: Tensor, f: int, b: int | None = None, *, track: bool = True
) -> Aggregation:
    n, _, f = check_inputs("phocas", vectors, f)
    b = _b_or_f("phocas", b, f)
    require("phocas", n, f, n >= 2 * b + 1, f"n >= 2b + 1 with b={b}")
    keys = extremes_as_inf("phocas", vectors, b)
    trimmed, _, ordered, order = _trim(keys, b, track)
    value, rows = nearest_mean(keys, ordered, order, trimmed, n - b)
    return _result(vectors, value, rows)


def _meamed_impl(vectors: Tensor, f: int, *, track: bool = True) -> Aggregation:
    n, _, f = check_inputs("meamed", vectors, f)
    require("meamed", n, f, n >= 2 * f + 1, "n >= 2f + 1")
    keys = extremes_as_inf("meamed", vectors, f)
    med, _, ordered, order = median_of(keys, track)
    value, rows = nearest_mean(keys, ordered, order, med, n - f)
    return _result(vectors, value, rows)


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
