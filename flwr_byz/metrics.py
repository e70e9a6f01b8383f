"""Round diagnostics of the Momentum paper (El-Mhamdi et al. 2020), as pure torch functions.

- variance-norm ratio: ``mean_i ||g_i - g_bar||^2 / ||g_bar||^2`` over the honest submissions;
- Krum's robustness condition (eq. 3): ``2 kappa(n, f) variance < ||g_bar||^2``;
- Median's robustness condition (eq. 4): ``(n - f) variance < ||g_bar||^2``;
- Byzantine influence: the share of the aggregate that came from Byzantine inputs;
- the clients' own reported metrics, aggregated so that no client controls them
  (:func:`median_client_metrics`).

In a strategy's ``MetricRecord`` these diagnostics sit beside the clients' own metrics under one
prefix, :data:`PREFIX` (``"byz."``: ``byz.replies``, ``byz.kept-model``, ...); :func:`byz_key`,
:func:`add_prefix` and :func:`split_prefixed` add and strip it (docs/strategies.md, "Metrics").

"variance" is ``mean_i ||g_i - g_bar||^2`` (the same quantity as the ratio's numerator). All sums
are computed in float64 so that the conditions do not flip on rounding.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "PARTITION_ID_KEY",
    "PREFIX",
    "add_prefix",
    "byz_key",
    "byzantine_influence",
    "honest_statistics",
    "round_statistics",
    "kappa",
    "krum_condition",
    "median_client_metrics",
    "median_condition",
    "split_prefixed",
    "variance_norm_ratio",
]

#: The prefix of flwr-byz's own round diagnostics in a strategy's ``MetricRecord``
#: (``byz.replies``, ``byz.selected-nodes``, ...); the clients' own metrics keep their names.
PREFIX = "byz."

#: The metric a client may send to name its partition (Flower's node-config key), read by the
#: strategies for ``byz.selected-partitions`` / ``byz.excluded-partitions`` (never aggregated).
PARTITION_ID_KEY = "partition-id"

_V = TypeVar("_V")


def byz_key(name: str) -> str:
    """The ``MetricRecord`` key of diagnostic ``name``: ``byz_key("replies") == "byz.replies"``."""
    return PREFIX + name


def add_prefix(diagnostics: Mapping[str, _V]) -> dict[str, _V]:
    """The diagnostics with :data:`PREFIX` on every key, in the same order."""
    return {byz_key(key): value for key, value in diagnostics.items()}


def split_prefixed(metrics: Mapping[str, _V]) -> tuple[dict[str, _V], dict[str, _V]]:
    """``(diagnostics, others)`` of a strategy's metrics: the prefixed keys with the prefix
    stripped (``{"replies": 5, ...}``), and the other keys (the clients' metrics) unchanged."""
    ours: dict[str, _V] = {}
    others: dict[str, _V] = {}
    for key, value in metrics.items():
        if key.startswith(PREFIX):
            ours[key[len(PREFIX) :]] = value
        else:
            others[key] = value
    return ours, others


def _check_honest(honest: Tensor) -> None:
    if honest.dim() != 2 or honest.shape[0] < 1:
        raise ValueError(
            f"honest vectors must be a (k, d) tensor with k >= 1, got shape {tuple(honest.shape)}"
        )


def honest_statistics(honest: Tensor) -> tuple[float, float]:
    """Return ``(variance, squared_norm_of_mean)`` of the ``(k, d)`` honest vectors.

    variance = ``mean_i ||g_i - g_bar||^2``; squared_norm_of_mean = ``||g_bar||^2``. Computed in
    the input's dtype with torch's cascaded (pairwise) summation, centred first, so there is no
    cancellation and no float64 copy of the ``(k, d)`` tensor; the scalars come back as floats.
    """
    _check_honest(honest)
    mean = honest.mean(dim=0)
    if honest.device.type == "cpu" and honest.dtype in (torch.float32, torch.float64):
        # one row at a time through a reused (d,) buffer: no (k, d) temporaries, cache-resident;
        # each row's squared distance is a BLAS dot, summed in Python floats (float64)
        buffer = torch.empty_like(mean)
        total = 0.0
        for row in honest:
            centred = torch.sub(row, mean, out=buffer)
            total += float(torch.dot(centred, centred))
        return total / honest.shape[0], float(torch.dot(mean, mean))
    centred = honest - mean
    variance = torch.sum(centred * centred) / honest.shape[0]
    return float(variance), float(torch.dot(mean, mean))


def _ratio(variance: float, norm2: float) -> float:
    if norm2 == 0.0:
        return 0.0 if variance == 0.0 else math.inf
    return variance / norm2


def _krum_holds(variance: float, norm2: float, n: int, f: int) -> bool:
    k = kappa(n, f)
    return not math.isinf(k) and 2.0 * k * variance < norm2


def _median_holds(variance: float, norm2: float, n: int, f: int) -> bool:
    return (n - f) * variance < norm2


def round_statistics(honest: Tensor, n: int, f: int) -> dict[str, float]:
    """The variance-norm ratio and whether Krum's and Median's conditions held, from one pass.

    Keys: ``variance-norm-ratio``, ``krum-condition``, ``median-condition`` (1.0 / 0.0).
    """
    variance, norm2 = honest_statistics(honest)
    return {
        "variance-norm-ratio": _ratio(variance, norm2),
        "krum-condition": float(_krum_holds(variance, norm2, n, f)),
        "median-condition": float(_median_holds(variance, norm2, n, f)),
    }


def variance_norm_ratio(honest: Tensor) -> float:
    """``mean_i ||g_i - g_bar||^2 / ||g_bar||^2`` (Momentum paper); ``inf`` when ``g_bar = 0``
    and the variance is positive, ``0.0`` when both are zero."""
    return _ratio(*honest_statistics(honest))


def kappa(n: int, f: int) -> float:
    """Momentum paper eq. 3: ``kappa = n - f + (f (n-f-2) + f^2 (n-f-1)) / (n - 2f - 2)``.

    ``f = 0`` gives ``n``; for ``f > 0`` and ``n <= 2f + 2`` the bound does not exist: ``inf``.
    """
    if n < 1 or f < 0:
        raise ValueError(f"kappa needs n >= 1 and f >= 0, got n={n}, f={f}")
    if f == 0:
        return float(n)
    denominator = n - 2 * f - 2
    if denominator <= 0:
        return math.inf
    return n - f + (f * (n - f - 2) + f * f * (n - f - 1)) / denominator


def krum_condition(honest: Tensor, n: int, f: int) -> bool:
    """Whether ``2 kappa(n, f) variance < ||g_bar||^2`` held for these honest vectors (eq. 3)."""
    return _krum_holds(*honest_statistics(honest), n, f)


def median_condition(honest: Tensor, n: int, f: int) -> bool:
    """Whether ``(n - f) variance < ||g_bar||^2`` held for these honest vectors (eq. 4)."""
    return _median_holds(*honest_statistics(honest), n, f)


def byzantine_influence(participation: Tensor, byzantine: Tensor) -> float:
    """Summed participation of the Byzantine inputs: the share of the output that came from them.

    ``participation``: ``(n,)`` shares summing to 1 (``Aggregation.participation``);
    ``byzantine``: ``(n,)`` bool mask of the inputs that are Byzantine.
    """
    if participation.shape != byzantine.shape or participation.dim() != 1:
        raise ValueError(
            "participation and byzantine mask must both be (n,), got "
            f"{tuple(participation.shape)} and {tuple(byzantine.shape)}"
        )
    mask = byzantine.to(device=participation.device, dtype=torch.bool)
    return float(participation.to(torch.float64)[mask].sum())


def _finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite int/float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return number if math.isfinite(number) else None


#: a value of Flower's MetricRecord
MetricValue = int | float | list[int] | list[float]


def median_client_metrics(
    rows: Iterable[Mapping[str, Any]], exclude: Collection[str] = ()
) -> dict[str, MetricValue]:
    """Per key, the median of the clients' reported values, never weighted by their counts.

    Clients report metrics (accuracy, loss, ``num-examples``) about themselves; a weighted or
    plain mean lets one client set the result (1e12 examples and accuracy 0 -> 6e-11). The
    median is unweighted and moves only within the honest values while fewer than half the
    reporters lie. Non-numeric, boolean and non-finite values are dropped; lists are reduced
    coordinate-wise over the clients sending the most common length (all entries finite).
    Keys in ``exclude`` (e.g. the weighting key) are left out. Computed in float64.
    """
    scalars: dict[str, list[float]] = {}
    lists: dict[str, list[list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key in exclude:
                continue
            if isinstance(value, list | tuple):
                numbers = [_finite_number(v) for v in value]
                if numbers and all(v is not None for v in numbers):
                    lists.setdefault(key, []).append(numbers)  # type: ignore[arg-type]
                continue
            number = _finite_number(value)
            if number is not None:
                scalars.setdefault(key, []).append(number)
    out: dict[str, float | list[float]] = {
        key: float(np.median(np.asarray(values, dtype=np.float64)))
        for key, values in scalars.items()
    }
    for key, vectors in lists.items():
        if key in out:  # a key sent as a scalar by some and a list by others: keep the scalars
            continue
        length, _ = Counter(len(v) for v in vectors).most_common(1)[0]
        same = np.asarray([v for v in vectors if len(v) == length], dtype=np.float64)
        out[key] = [float(x) for x in np.median(same, axis=0)]
    return dict(sorted(out.items()))


def detection_rates(
    considered: Collection[int], kept: Collection[int], byzantine: Collection[int]
) -> dict[str, float]:
    """Detection by a rule or filter that leaves inputs out (ALGORITHMS.md, metrics).

    ``considered``: the inputs the rule saw; ``kept``: those it used (selected); ``byzantine``:
    the attackers' ids. ``detection-precision``: of the inputs left out, the share that were
    Byzantine (absent when none was left out); ``detection-recall``: of the Byzantine inputs
    considered, the share left out (absent when there was none)."""
    seen, byz = set(considered), set(byzantine)
    left = seen - set(kept)
    caught = len(left & byz)
    out: dict[str, float] = {}
    if left:
        out["detection-precision"] = caught / len(left)
    if seen & byz:
        out["detection-recall"] = caught / len(seen & byz)
    return out
