"""The ALIE authors' "trimmed mean": per coordinate, the mean of the values nearest the median.

Baruch et al.'s code (``trimmed_mean`` of *A Little Is Enough*) takes, per coordinate, the
median (numpy's: the mean of the two middle values for even n), then the ``n - f - 1`` values
nearest to it (``sorted(values - med, key=abs)[:n - f - 1]``) and averages them. It is MeaMed
with ``n - f - 1`` instead of ``n - f`` values. Ties: Python's ``sorted`` is stable, so among
values at the same distance from the median (``med - a`` and ``med + a``) the lower row index
is taken first, which is the tie rule of our coordinate-wise kernels too; equal values are
interchangeable for the output (participation shares them by row order the same way). NaN/inf
count as the most extreme values of their coordinate (at most f of them per coordinate).
"""

from __future__ import annotations

from torch import Tensor

from ._checks import check_inputs, require
from ._types import Aggregation
from .coordinatewise import nearest_aggregate


def nearest_median_min_n(f: int, k: int | None = None, **_: object) -> int:
    """Smallest n accepted: n >= 2f + 1 (as MeaMed) and at least one value kept (n >= f + 2)."""
    return max(2 * f + 1, f + 2) if k is None else max(2 * f + 1, 1)


def _nearest_median_impl(
    vectors: Tensor, f: int, k: int | None = None, *, track: bool = True
) -> Aggregation:
    n, _, f = check_inputs("nearest_median", vectors, f)
    require("nearest_median", n, f, n >= nearest_median_min_n(f, k), "n >= 2f + 1 and n >= f + 2")
    k = n - f - 1 if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"nearest_median needs 1 <= k <= n, got k={k!r}, n={n}, f={f}")
    return nearest_aggregate("nearest_median", vectors, f, k, True, track)


def nearest_median(vectors: Tensor, f: int, k: int | None = None) -> Tensor:
    """Per coordinate, the mean of the ``k`` values nearest the median (default ``n - f - 1``,
    the ALIE code's trimmed mean); needs n >= 2f + 1."""
    return _nearest_median_impl(vectors, f, k, track=False).vector
