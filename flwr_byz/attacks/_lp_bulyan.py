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

:class:`CoordinateStep` computes these bounds once per selection (on CPU only the sorted
positions they read, by a sorting network pruned to them, ``gars._networks.order_statistics``:
about half the time of gathering and sorting every column) and then decides a step with a few
passes over ``d`` values; columns whose attack value
lies within rounding of a bound are decided by :func:`kept` itself, so every decision is the
test's. A step that keeps a copy in one of the hint columns (those that kept it at the last
chosen step) is decided on those columns alone, without sorting the selection.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from flwr_byz.gars._networks import order_statistics

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


def _window(h: int, at: int, beta: int) -> range:
    """The sorted positions that hold every window of ``beta`` positions containing ``at - 1``
    or ``at`` (of ``h``): where the beta values nearest a median at ``at`` can lie."""
    return range(max(0, at - beta), min(at, h - beta) + beta)


def _median_and_reach(
    position: Callable[[int], Tensor], h: int, at: int, pair: bool, beta: int
) -> tuple[Tensor, Tensor]:
    """Per row, in float64: the median, position ``at`` or (``pair``) the midpoint of positions
    ``at - 1`` and ``at``, and the ``beta``-th smallest ``|s - median|``. The beta nearest values
    form a window of sorted positions holding ``at - 1`` or ``at`` (``_window``), so only those
    positions are read; ``position(p)``: the float64 ``(d,)`` values at sorted position p."""
    window = _window(h, at, beta)
    rows = [position(p) for p in window]
    here = at - window.start
    center = 0.5 * (rows[here - 1] + rows[here]) if pair else rows[here]
    # the farthest of a sorted window from the center is one of its ends: for sorted ends
    # lo <= hi, max(|c - lo|, |hi - c|) = max(c - lo, hi - c), exactly in floating point too
    # (rounding is monotone), so no absolute values
    reach = torch.maximum(center - rows[0], rows[beta - 1] - center)
    for i in range(1, len(rows) - beta + 1):  # the window of positions i .. i + beta - 1
        far = torch.maximum(center - rows[i], rows[i + beta - 1] - center)
        torch.minimum(reach, far, out=reach)
    return center, reach


def _positions_read(h: int, copies: int, theta: int, beta: int) -> frozenset[int]:
    """The sorted positions of the ``h`` honest values that :func:`bounds` reads."""
    m, pair = theta // 2, theta % 2 == 0
    read = {0, h - 1, *_window(h, m, beta)}
    if not (pair and m - copies - 1 < 0):
        read.update(_window(h, m - copies, beta))
    return frozenset(read)


def _bounds_at(
    position: Callable[[int], Tensor], h: int, copies: int, theta: int, beta: int
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`bounds` from ``position(p)`` (the float64 values at sorted position p)."""
    m, pair = theta // 2, theta % 2 == 0
    upper, reach = _median_and_reach(position, h, m, pair, beta)
    high = upper + reach
    if pair and m - copies - 1 < 0:  # no honest value below the middle: every lower a is kept
        low = torch.full_like(high, float("-inf"))
    else:
        lower, reach = _median_and_reach(position, h, m - copies, pair, beta)
        low = lower - reach
    # every value the test compares near a bound is within 4x the largest |s| of the column
    scale = torch.maximum(position(0).abs(), position(h - 1).abs())
    return low, high, 4 * _BAND * scale


def bounds(ordered: Tensor, copies: int, theta: int, beta: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(low, high, band)`` per row of ``ordered`` (sorted honest values of the selection, any
    float dtype), float64: the copies are kept iff ``low <= a <= high`` (module doc), up to
    rounding within ``band`` of either bound."""
    return _bounds_at(
        lambda p: ordered[:, p].to(torch.float64), ordered.shape[1], copies, theta, beta
    )


def bounds_of_rows(
    values: Tensor, rows: tuple[int, ...], copies: int, theta: int, beta: int
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`bounds` of the selection ``rows`` of ``values`` (``(k, d)``), the same values: on
    CPU float32/64 only the sorted positions read are computed, by a pruned sorting network
    over the rows (``order_statistics``), instead of gathering and sorting every column."""
    h = len(rows)
    if values.device.type != "cpu" or values.dtype not in (torch.float32, torch.float64):
        ordered = values[list(rows)].T.sort(dim=1).values
        return bounds(ordered, copies, theta, beta)
    source = values.detach().numpy()
    stats = order_statistics([source[r] for r in rows], _positions_read(h, copies, theta, beta))
    widened: dict[int, Tensor] = {}  # each position converted once (the windows may overlap)

    def position(p: int) -> Tensor:
        if p not in widened:
            widened[p] = torch.from_numpy(stats[p]).to(torch.float64)
        return widened[p]

    return _bounds_at(position, h, copies, theta, beta)


class CoordinateStep:
    """Bulyan's coordinate step on the honest rows ``values`` (``(k, d)``), for selections of
    ``theta`` rows of which ``copies`` are the attack's; see the module doc."""

    def __init__(self, values: Tensor, theta: int, beta: int) -> None:
        self.theta, self.beta = theta, beta
        self.values = values
        self.cache: dict[tuple[int, ...], tuple[Tensor, Tensor, Tensor]] = {}
        self.hint: Tensor | None = None

    def sorted_columns(self, rows: tuple[int, ...], columns: Tensor) -> Tensor:
        """``(len(columns), h)``: each of those coordinates' values of ``rows``, sorted, in the
        input's dtype (float32 sorts faster; the test converts what it reads)."""
        values = self.values
        if values.device.type == "cpu":  # numpy gathers and sorts several times faster
            picked = values.detach().numpy()[np.ix_(np.asarray(rows), columns.numpy())].T.copy()
            picked.sort(axis=1)
            return torch.from_numpy(picked)
        return values[list(rows)][:, columns].T.sort(dim=1).values

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
            self.cache[rows] = bounds_of_rows(self.values, rows, copies, self.theta, self.beta)
        return self.cache[rows]
