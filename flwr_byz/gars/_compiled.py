"""Opt-in compiled sorting networks for the coordinate-wise rules on CPU: the median, the trimmed
mean, Phocas, MeaMed and Bulyan's second step.

``torch.compile`` (inductor's C++ backend) fuses the pruned Batcher network of
``_networks.positions_plan`` into one loop over the columns: each column's n values stay in
registers and the input is read once. The comparators are the same ``min``/``max`` as the numpy
network, so the values are the same bit for bit (the float64 sums too: the same additions in the
same order; Phocas's and MeaMed's window selection is ``_columns.sorted_window_mean``'s, and their
tied columns are redone by row index outside the kernel). Measured (1 thread, d = 1e6, float32,
``benchmarks/bench_compiled.py``): 0.13-0.27x the numpy path's time at n = 25 and 51. The first
call for each (n, dtype, d) compiles for 2-30 s (less from inductor's on-disk cache), so the path is
off unless the environment sets ``FLWR_BYZ_COMPILED_NETWORKS=1``: it pays in long runs at a fixed
n and d. It needs a C++ compiler; if compiling fails, a warning is logged once and the numpy path
is used from then on.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from logging import WARNING
from typing import Any

import torch
from torch import Tensor

from ._networks import positions_plan, window_plan

ENV_VAR = "FLWR_BYZ_COMPILED_NETWORKS"
_FUSION_SIZE = 4096  # inductor fuses up to this many nodes (default 64 splits the n = 51 network)
_RECOMPILES = 64  # distinct networks per kernel kind in one process (dynamo's default: 8)
_LOCK = threading.Lock()
_BROKEN: list[str] = []  # the first compile error: the path stays off for the process


def enabled() -> bool:
    """Whether the environment asks for compiled networks (and no compile has failed)."""
    return os.environ.get(ENV_VAR, "") == "1" and not _BROKEN


def _sorted_wires(rows: Tensor, plan: tuple[tuple[int, int, int], ...]) -> list[Tensor]:
    """The network's wires after ``plan`` (position p's values at index p where computed)."""
    wires = list(rows.unbind(0))
    for i, j, kind in plan:
        low, high = wires[i], wires[j]
        if kind != 2:
            wires[i] = torch.minimum(low, high)
        if kind != 1:
            wires[j] = torch.maximum(low, high)
    return wires


def _position_total(wires: list[Tensor], positions: range) -> Tensor:
    """The float64 sum of the wires at ``positions``, added in position order (as
    ``_columns.row_total`` and ``mean_over_rows``); zeros where ``positions`` is empty."""
    if not positions:
        return torch.zeros_like(wires[0], dtype=torch.float64)
    total = wires[positions[0]].to(torch.float64)
    for p in positions[1:]:
        total = total + wires[p].to(torch.float64)
    return total


def _moved_window(
    wires: list[Tensor], total: Tensor, twice: Tensor, starts: range, k: int
) -> tuple[Tensor, Tensor]:
    """``_columns.sorted_window_mean``'s and ``median_window_mean``'s window search: candidate a
    moves the k-window past it where ``s[a] + s[a + k] < 2c``, adding ``s[a + k]``, else ``s[a]``,
    to the kept ``total`` in candidate order; and the columns of an exact distance tie between two
    different values (``s[a] + s[a + k] == 2c``, to be redone by row index)."""
    tied = torch.zeros_like(twice, dtype=torch.bool)
    for a in starts:
        low, high = wires[a], wires[a + k]
        pair = low + high
        total = total + torch.where(pair < twice, high, low).to(torch.float64)
        tied = tied | ((pair == twice) & (low != high))
    return total, tied


@functools.lru_cache(maxsize=16)
def _network(n: int, positions: tuple[int, ...]) -> Callable[[Tensor], tuple[Tensor, ...]]:
    plan = positions_plan(n, frozenset(positions))

    def network(rows: Tensor) -> tuple[Tensor, ...]:
        wires = _sorted_wires(rows, plan)
        return tuple(wires[p] for p in positions)

    return torch.compile(network, dynamic=False, fullgraph=True)


@functools.lru_cache(maxsize=16)
def _window_network(n: int, lo: int, hi: int) -> Callable[[Tensor], Tensor]:
    plan = positions_plan(n, frozenset(range(lo, hi)))

    def network(rows: Tensor) -> Tensor:
        wires = _sorted_wires(rows, plan)
        # ``_columns.mean_over_rows``: added in position order into float64, divided once
        return (_position_total(wires, range(lo, hi)) / (hi - lo)).to(rows.dtype)

    return torch.compile(network, dynamic=False, fullgraph=True)


@functools.lru_cache(maxsize=16)
def _nearest_network(
    n: int, b: int, k: int, around_median: bool
) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]:
    plan = positions_plan(n, frozenset(range(n)))

    def network(rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        wires = _sorted_wires(rows, plan)
        if around_median:  # ``_columns.middle_of``, its overflow fallback included
            if n % 2:
                center = wires[n // 2]
            else:
                low, high = wires[n // 2 - 1], wires[n // 2]
                middle = (low + high) * 0.5
                center = torch.where(torch.isinf(middle), low * 0.5 + high * 0.5, middle)
            total = _position_total(wires, range(n - k, k))
        else:  # Phocas: Trmean_b's rows are the window's kept positions [b, n - b)
            total = _position_total(wires, range(b, n - b))
            center = (total / (n - 2 * b)).to(rows.dtype)
        # ``_columns.sorted_window_mean``: the kept total, then the picked candidates in order
        total, tied = _moved_window(wires, total, center * 2, range(n - k), k)
        return (total / k).to(rows.dtype), tied, center

    return torch.compile(network, dynamic=False, fullgraph=True)


@functools.lru_cache(maxsize=16)
def _median_window_network(m: int, k: int) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    plan, first, last_start = window_plan(m, k)

    def network(vectors: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        # the selected rows are read in the kernel's loop (indirect loads), not copied first
        wires = _sorted_wires(vectors.index_select(0, rows), plan)
        twice = wires[(m - 1) // 2] + wires[m // 2]
        # ``_columns.median_window_mean``: the positions in every window, then the candidates
        total = _position_total(wires, range(last_start, first + k))
        total, tied = _moved_window(wires, total, twice, range(first, last_start), k)
        return (total / k).to(vectors.dtype), tied

    return torch.compile(network, dynamic=False, fullgraph=True)


def _applies(rows: Tensor) -> bool:
    return (
        enabled()
        and rows.device.type == "cpu"
        and rows.dtype in _DTYPES
        and rows.shape[0] >= 2
        and rows.shape[1] > 0
    )


def _call(kernel: Callable[[], Any]) -> Any:
    """``kernel()`` with inductor's fusion limit raised; None (and the path off, one warning)
    if compiling fails."""
    import torch._dynamo.config as dynamo_config  # heavy: only when asked for
    import torch._inductor.config as inductor_config

    try:
        with (
            _LOCK,
            inductor_config.patch(max_fusion_size=_FUSION_SIZE),
            # every (n, positions) network shares one code object: each is a recompile of it
            dynamo_config.patch(recompile_limit=_RECOMPILES),
        ):
            return kernel()
    except Exception as err:  # no compiler, an inductor error: fall back, say so once
        from flwr.common.logger import log  # the rules import no Flower (flwr_byz.schema)

        _BROKEN.append(f"{type(err).__name__}: {err}")
        log(WARNING, "%s=1 but compiling the network failed, numpy path used: %s", ENV_VAR, err)
        return None


def order_statistics(rows: Tensor, positions: frozenset[int]) -> dict[int, Tensor] | None:
    """The sorted ``positions`` of every column of the finite ``(n, d)`` CPU float32/float64
    ``rows`` (position -> ``(d,)``), or None where the compiled path is off or does not apply."""
    if not _applies(rows):
        return None
    ordered = tuple(sorted(positions))
    values = _call(lambda: _network(rows.shape[0], ordered)(rows.contiguous()))
    return None if values is None else dict(zip(ordered, values, strict=True))


def window_mean(rows: Tensor, lo: int, hi: int) -> Tensor | None:
    """Per column of the finite ``(n, d)`` CPU float32/float64 ``rows``, the mean of its sorted
    positions ``[lo, hi)`` as ``_columns.mean_over_rows`` computes it (the trimmed mean), or None
    where the compiled path is off or does not apply."""
    if not _applies(rows) or not 0 <= lo < hi <= rows.shape[0]:
        return None
    value: Tensor | None = _call(lambda: _window_network(rows.shape[0], lo, hi)(rows.contiguous()))
    return value


def nearest_window_mean(
    rows: Tensor, b: int, k: int, around_median: bool
) -> tuple[Tensor, Tensor, Tensor] | None:
    """Per column of the finite ``(n, d)`` CPU float32/float64 ``rows``, the mean of the k values
    nearest to the median (MeaMed) or to Trmean_b (Phocas), as ``_columns.sorted_window_mean``
    computes it, with the columns of an exact distance tie between different values (to be redone
    by row index) and the centres; None where the compiled path is off or does not apply."""
    n = rows.shape[0]
    if not _applies(rows) or not (n - k < k <= n and 0 <= 2 * b < n):
        return None
    # b plays no part around the median: one kernel for MeaMed and the nearest median at a k
    kernel = _nearest_network(n, 0 if around_median else b, k, around_median)
    result: tuple[Tensor, Tensor, Tensor] | None = _call(lambda: kernel(rows.contiguous()))
    return result


def median_window_mean(vectors: Tensor, rows: Tensor, k: int) -> tuple[Tensor, Tensor] | None:
    """Per column of the finite ``vectors[rows]`` (CPU float32/float64, m = len(rows) > k >= 1),
    the mean of the k values nearest to the column median, as ``_columns.median_window_mean``
    computes it (Bulyan's second step), with the columns of an exact distance tie between two
    different values (to be redone by row index); None where the compiled path is off or does
    not apply. ``rows`` (int64 indices) is an input of the kernel: a new selection does not
    compile again."""
    m = rows.numel()
    if not _applies(vectors) or not 1 <= k < m or rows.dtype != torch.int64:
        return None
    kernel = _median_window_network(m, k)
    index = rows.to(vectors.device)
    result: tuple[Tensor, Tensor] | None = _call(lambda: kernel(vectors.contiguous(), index))
    return result


_DTYPES = (torch.float32, torch.float64)
