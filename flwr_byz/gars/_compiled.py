"""Opt-in compiled sorting networks for the coordinate-wise median on CPU.

``torch.compile`` (inductor's C++ backend) fuses the pruned Batcher network of
``_columns.positions_plan`` into one loop over the columns: each column's n values stay in
registers and the input is read once. The comparators are the same ``min``/``max`` as the numpy
network, so the values are the same bit for bit. Measured (1 thread, d = 1e6, float32,
``benchmarks/bench_compiled.py``): the median of n = 25 rows in ~11 ms against ~75 ms, of n = 51
in ~34 ms against ~150-190 ms. The first call for each (n, dtype, d) compiles for 15-25 s (~5 s
from inductor's on-disk cache), so the path is off unless the environment sets
``FLWR_BYZ_COMPILED_NETWORKS=1``: it pays in long runs at a fixed n and d. It needs a C++
compiler; if compiling fails, a warning is logged once and the numpy path is used from then on.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from logging import WARNING

import torch
from flwr.common.logger import log
from torch import Tensor

from ._columns import positions_plan

ENV_VAR = "FLWR_BYZ_COMPILED_NETWORKS"
_FUSION_SIZE = 4096  # inductor fuses up to this many nodes (default 64 splits the n = 51 network)
_LOCK = threading.Lock()
_BROKEN: list[str] = []  # the first compile error: the path stays off for the process


def enabled() -> bool:
    """Whether the environment asks for compiled networks (and no compile has failed)."""
    return os.environ.get(ENV_VAR, "") == "1" and not _BROKEN


@functools.lru_cache(maxsize=16)
def _network(n: int, positions: tuple[int, ...]) -> Callable[[Tensor], tuple[Tensor, ...]]:
    plan = positions_plan(n, frozenset(positions))

    def network(rows: Tensor) -> tuple[Tensor, ...]:
        wires = list(rows.unbind(0))
        for i, j, kind in plan:
            low, high = wires[i], wires[j]
            if kind != 2:
                wires[i] = torch.minimum(low, high)
            if kind != 1:
                wires[j] = torch.maximum(low, high)
        return tuple(wires[p] for p in positions)

    return torch.compile(network, dynamic=False, fullgraph=True)


def order_statistics(rows: Tensor, positions: frozenset[int]) -> dict[int, Tensor] | None:
    """The sorted ``positions`` of every column of the finite ``(n, d)`` CPU float32/float64
    ``rows`` (position -> ``(d,)``), or None where the compiled path is off or does not apply."""
    if not enabled() or rows.device.type != "cpu" or rows.dtype not in _DTYPES:
        return None
    if rows.shape[1] == 0 or rows.shape[0] < 2:
        return None
    ordered = tuple(sorted(positions))
    import torch._inductor.config as inductor_config  # heavy: only when asked for

    try:
        with _LOCK, inductor_config.patch(max_fusion_size=_FUSION_SIZE):
            values = _network(rows.shape[0], ordered)(rows.contiguous())
    except Exception as err:  # no compiler, an inductor error: fall back, say so once
        _BROKEN.append(f"{type(err).__name__}: {err}")
        log(WARNING, "%s=1 but compiling the network failed, numpy path used: %s", ENV_VAR, err)
        return None
    return dict(zip(ordered, values, strict=True))


_DTYPES = (torch.float32, torch.float64)
