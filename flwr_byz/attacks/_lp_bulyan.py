"""Whether Bulyan's coordinate-wise step keeps the l_p attack's copies, for the attack's search.

Bulyan keeps, in each coordinate, the ``beta`` of its ``theta`` selected values nearest their
median. With the selection fixed (``h`` honest rows and ``c`` copies of the attack value ``a``,
``theta = h + c``), the copies are kept in a coordinate when fewer than ``beta`` selected honest
values are strictly closer to the median than ``a`` (:func:`kept`, the test itself). Over ``a``
that is one interval per coordinate: with ``s`` the sorted honest values, the median is ``a``
itself while ``a`` sits among the middle positions (kept), a fixed upper median ``c_hi`` above
them (kept while ``a - c_hi`` is at most ``delta_hi``, the beta-th smallest ``|s - c_hi|``) and a
fixed lower median ``c_lo`` below them (kept while ``c_lo - a <= delta_lo``). So

    kept  <=>  c_lo - delta_lo <= a <= c_hi + delta_hi.

:class:`CoordinateStep` computes these bounds once per selection (one sort of the selected
columns) and then decides a step with a few passes over ``d`` values; columns whose attack value
lies within rounding of a bound are decided by :func:`kept` itself, so every decision is the
test's. A step that keeps a copy in one of the hint columns (those that kept it at the last
chosen step) is decided on those columns alone, without sorting the selection.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

# Columns tried first at each step: some of those that kept the copies at the last chosen step.
HINT_COLUMNS = 1024
# Selections whose bounds are kept (3 float64 (d,) vectors each); the search revisits a few.
_CACHED_SELECTIONS = 8
# Half-width, relative to the values' magnitude, of the band around a bound in which a column is
# decided by the test itself (the bounds and the test round differently, by a few ulp).
_BAND = 1e-12


def count_below(ordered: Tensor, values: Tensor, right: bool) -> Tensor:
    """Per row, how many sorted values are < ``values`` (<= with ``right``)."""
    return torch.searchsorted(ordered, values[:, None], right=right)[:, 0]


def kept(ordered: Tensor, attack: Tensor, copies: int, theta: int, beta: int) -> Tensor:
    """Per row of ``ordered`` (a coordinate's sorted selected honest values), whether Bulyan's
    coordinate step keeps a copy of ``attack``: fewer than ``beta`` honest values strictly closer
    to the median of the ``theta`` values (the honest ones and ``copies`` copies)."""
    ordered = ordered.contiguous()  # searchsorted copies strided rows otherwise
    last = ordered.shape[1] - 1
    below = count_below(ordered, attack, right=False)  # honest values sorted before the copies

    def merged(t: int) -> Tensor:  # position t of the selection's sorted column values
        low, high = ordered[:, min(t, last)], ordered[:, min(max(t - copies, 0), last)]
        return torch.where(t < below, low, torch.where(t < below + copies, attack, high))

    middle = theta // 2
    center = merged(middle) if theta % 2 else 0.5 * (merged(middle - 1) + merged(middle))
    gap = (attack - center).abs()
    # honest values strictly closer to the median than the copies: in (center -+ gap)
    inside = count_below(ordered, center + gap, right=False)
    closer = inside - count_below(ordered, center - gap, right=True)
    return closer < beta


def median_and_reach(ordered: Tensor, at: int, pair: bool, beta: int) -> tuple[Tensor, Tensor]:
    """Per row, in float64: the median, ``ordered[:, at]`` or (``pair``) the midpoint of positions
    ``at - 1`` and ``at``, and the ``beta``-th smallest ``|s - median|``. The beta nearest values
    form a window of sorted positions holding ``at - 1`` or ``at``, so only those windows (and
    only those columns, in float64) are read."""
    h = ordered.shape[1]
    first, last = max(0, at - beta), min(at, h - beta)
    # positions first .. last + beta - 1 as contiguous float64 rows: fast row-wise passes
    window = ordered[:, first : last + beta].T.to(
        torch.float64, memory_format=torch.contiguous_format
    )
    here = at - first
    center = 0.5 * (window[here - 1] + window[here]) if pair else window[here]
    reach = torch.full_like(center, float("inf"))
    for i in range(last - first + 1):  # the window of positions i .. i + beta - 1
        far = torch.maximum((center - window[i]).abs(), (window[i + beta - 1] - center).abs())
        torch.minimum(reach, far, out=reach)
    return center, reach


def bounds(ordered: Tensor, copies: int, theta: int, beta: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(low, high, band)`` per row of ``ordered`` (sorted honest values of the selection, any
    float dtype), float64: the copies are kept iff ``low <= a <= high`` (module doc), up to
    rounding within ``band`` of either bound."""
    m, pair = theta // 2, theta % 2 == 0
    upper, reach = median_and_reach(ordered, m, pair, beta)
    high = upper + reach
    if pair and m - copies - 1 < 0:  # no honest value below the middle: every lower a is kept
        low = torch.full_like(high, float("-inf"))
    else:
        lower, reach = median_and_reach(ordered, m - copies, pair, beta)
        low = lower - reach
    # every value the test compares near a bound is within 4x the largest |s| of the column
    scale = torch.maximum(ordered[:, 0].abs(), ordered[:, -1].abs()).to(torch.float64)
    return low, high, 4 * _BAND * scale


class CoordinateStep:
    """Bulyan's coordinate step on the honest rows ``values`` (``(k, d)``), for selections of
    ``theta`` rows of which ``copies`` are the attack's; see the module doc."""

    def __init__(self, values: Tensor, theta: int, beta: int) -> None:
        self.theta, self.beta = theta, beta
        self.by_column = values.T.contiguous()  # (d, k): a selection's columns are one gather
        self.cache: dict[tuple[int, ...], tuple[Tensor, Tensor, Tensor]] = {}
        self.hint: Tensor | None = None

    def sorted_columns(self, rows: tuple[int, ...], columns: Tensor | None = None) -> Tensor:
        """``(d, h)`` (or ``(len(columns), h)``): each coordinate's values of ``rows``, sorted,
        in the input's dtype (float32 sorts faster; the test converts what it reads)."""
        table = self.by_column if columns is None else self.by_column[columns]
        if table.device.type == "cpu":  # numpy gathers and sorts several times faster
            picked = np.take(table.numpy(), np.asarray(rows), axis=1)  # C order, unlike [:, rows]
            picked.sort(axis=1)
            ordered = torch.from_numpy(picked)
        else:
            ordered = table[:, list(rows)].sort(dim=1).values
        return ordered

    def keeps(self, rows: tuple[int, ...], copies: int, attack: Tensor) -> bool:
        """Whether the step keeps a copy of ``attack`` (float64 ``(d,)``) in some coordinate,
        the selection being the honest ``rows`` and ``copies`` copies."""
        hint = self.hint
        if hint is not None and self._kept_in(rows, copies, attack, hint).any():
            return True
        low, high, band = self._bounds(rows, copies)
        sure = (attack >= low + band) & (attack <= high - band)
        if not bool(sure.any()):
            near = ((attack - low).abs() <= band) | ((attack - high).abs() <= band)
            columns = torch.nonzero(near).flatten()
            if columns.numel() == 0:
                return False
            sure = torch.zeros_like(near)
            sure[columns] = self._kept_in(rows, copies, attack, columns)
            if not bool(sure.any()):
                return False
        # next hint: the columns that keep the copies with the most room above this attack value
        # (the search tries larger values after a chosen one)
        room = torch.where(sure, high - attack, torch.full_like(high, -math.inf))
        self.hint = torch.topk(room, min(HINT_COLUMNS, int(sure.sum()))).indices
        return True

    def _kept_in(
        self, rows: tuple[int, ...], copies: int, attack: Tensor, columns: Tensor
    ) -> Tensor:
        ordered = self.sorted_columns(rows, columns).to(torch.float64)
        return kept(ordered, attack[columns], copies, self.theta, self.beta)

    def _bounds(self, rows: tuple[int, ...], copies: int) -> tuple[Tensor, Tensor, Tensor]:
        """The bounds of the selection ``rows`` (its copies: ``theta - len(rows)``), cached."""
        if rows not in self.cache:
            if len(self.cache) >= _CACHED_SELECTIONS:
                self.cache.pop(next(iter(self.cache)))
            self.cache[rows] = bounds(self.sorted_columns(rows), copies, self.theta, self.beta)
        return self.cache[rows]
