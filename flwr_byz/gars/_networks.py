"""Batcher's merge-exchange sorting network, pruned to the sorted positions a rule reads, run
with numpy ``minimum``/``maximum`` over whole rows of cache-sized column blocks.

A comparator whose min or max output is dead costs one ufunc instead of two. Each position
computed is the exact order statistic, so the values are those of a sort. The coordinate-wise
rules use it for a block's middle positions (``_columns.network_order_statistics``), Bulyan's
coordinate step for the window around the median (``window_plan``, ``_columns.
median_window_mean``), the l_p attack against Bulyan for its bounds (``order_statistics``), and
the opt-in compiled kernels (``_compiled``) for the same comparators.
"""

from __future__ import annotations

import functools

import numpy as np


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


_Plan = tuple[tuple[int, int, int], ...]


@functools.lru_cache(maxsize=64)
def positions_plan(m: int, live: frozenset[int]) -> _Plan:
    """The comparators ``(i, j, kind)`` of Batcher's network for m wires that the sorted
    positions ``live`` depend on, in order; kind 0: both outputs used, 1: only the min (into i),
    2: only the max (into j). Each position computed is the exact order statistic."""
    needed = set(live)
    plan = []
    for i, j in reversed(_merge_exchange(m)):
        if i in needed or j in needed:
            plan.append((i, j, 0 if i in needed and j in needed else (1 if i in needed else 2)))
            needed.update((i, j))
    return tuple(reversed(plan))


def run_plan(sources: list[np.ndarray], plan: _Plan) -> tuple[list[np.ndarray], np.ndarray]:
    """Apply ``plan`` to the equal-length 1-D ``sources`` (numpy ``minimum``/``maximum`` over
    whole rows); returns the wires (position p's values at index p) and a spare buffer. The
    sources are only read: a wire gets its own buffer when a comparator first writes it (the
    comparator's output, not a copy of its input), so untouched wires stay the sources' views."""
    wires = list(sources)
    owned = [False] * len(wires)
    width, dtype = sources[0].shape[0], sources[0].dtype

    def buffer_for(index: int) -> np.ndarray:
        if owned[index]:
            return wires[index]
        owned[index] = True
        return np.empty(width, dtype=dtype)

    spare = np.empty(width, dtype=dtype)
    for i, j, kind in plan:
        low, high = wires[i], wires[j]
        if kind == 0:
            np.minimum(low, high, out=spare)
            wires[j] = np.maximum(low, high, out=buffer_for(j))
            was_owned, owned[i] = owned[i], True
            wires[i], spare = spare, (low if was_owned else np.empty(width, dtype=dtype))
        elif kind == 1:
            wires[i] = np.minimum(low, high, out=buffer_for(i))
        else:
            wires[j] = np.maximum(low, high, out=buffer_for(j))
    return wires, spare


def order_statistics(
    rows: list[np.ndarray], positions: frozenset[int], block: int = 16384
) -> dict[int, np.ndarray]:
    """Per column of the m equal-length 1-D ``rows`` (finite values, one dtype), the sorted
    ``positions`` (0: the smallest): position -> ``(d,)`` array. The pruned network runs over
    column blocks (cache-resident) instead of sorting every column: the same values as a sort."""
    ordered = sorted(positions)
    table = network_table(rows, ordered, block)
    return {p: table[i] for i, p in enumerate(ordered)}


def network_table(rows: list[np.ndarray], positions: list[int], block: int) -> np.ndarray:
    """``(len(positions), d)``: row i holds sorted position ``positions[i]`` of every column."""
    d = rows[0].shape[0]
    plan = positions_plan(len(rows), frozenset(positions))
    table = np.empty((len(positions), d), dtype=rows[0].dtype)
    for lo in range(0, d, block):
        hi = min(d, lo + block)
        wires, _ = run_plan([row[lo:hi] for row in rows], plan)
        for i, p in enumerate(positions):
            table[i, lo:hi] = wires[p]
    return table


def window_plan(m: int, k: int, margin: int = 0) -> tuple[_Plan, int, int]:
    """Comparators computing sorted positions ``[first, last_start + k)`` of m values (and
    ``margin`` more on each side), and (first, last_start), the range of the possible window
    starts for the k values nearest the median. The outputs at the positions computed are the
    same values with or without the margin (each is the exact order statistic)."""
    mid_lo, mid_hi = (m - 1) // 2, m // 2
    first, last_start = max(0, mid_lo - k + 1), min(mid_hi, m - k)
    live = frozenset(range(max(0, first - margin), min(m, last_start + k + margin)))
    return positions_plan(m, live), first, last_start
