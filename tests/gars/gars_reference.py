"""Independent, obvious float64 reference implementations of the rules (loops, sorted lists).

Written straight from ALGORITHMS.md, sharing no code with flwr_byz.gars, for the tests to compare
to. Inputs are numpy float64 arrays (n, d); NaN handling follows the documented policy: per
coordinate the NaNs, in row order, go alternately to -inf and +inf.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def column_keys(column: np.ndarray) -> list[float]:
    """Sort keys of one coordinate: NaNs alternately -inf, +inf (first NaN in row order: -inf)."""
    keys, nans = [], 0
    for value in column:
        if math.isnan(value):
            nans += 1
            keys.append(-math.inf if nans % 2 == 1 else math.inf)
        else:
            keys.append(float(value))
    return keys


def median(x: np.ndarray) -> np.ndarray:
    n, d = x.shape
    out = np.empty(d)
    for j in range(d):
        s = sorted(column_keys(x[:, j]))
        out[j] = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    return out


def trimmed_mean(x: np.ndarray, b: int) -> np.ndarray:
    n, d = x.shape
    return np.array([np.mean(sorted(column_keys(x[:, j]))[b : n - b]) for j in range(d)])


def nearest_mean(x: np.ndarray, center: np.ndarray, k: int) -> np.ndarray:
    """Per coordinate, mean of the k values nearest to center (ties: lowest row index)."""
    n, d = x.shape
    out = np.empty(d)
    for j in range(d):
        keys = column_keys(x[:, j])
        order = sorted(range(n), key=lambda i: (abs(keys[i] - center[j]), i))
        out[j] = np.mean([keys[i] for i in order[:k]])
    return out


def phocas(x: np.ndarray, b: int) -> np.ndarray:
    return nearest_mean(x, trimmed_mean(x, b), x.shape[0] - b)


def meamed(x: np.ndarray, f: int) -> np.ndarray:
    return nearest_mean(x, median(x), x.shape[0] - f)


def sq_dist(u: np.ndarray, v: np.ndarray) -> float:
    if not (np.isfinite(u).all() and np.isfinite(v).all()):
        return math.inf
    return float(np.sum((u - v) ** 2))


def krum_scores(x: np.ndarray, f: int, neighbours: int | None = None) -> list[float]:
    n = len(x)
    k = n - f - 2 if neighbours is None else neighbours
    scores = []
    for i in range(n):
        dists = sorted(sq_dist(x[i], x[j]) for j in range(n) if j != i)
        scores.append(sum(dists[:k]))
    return scores


def argmin_first(values: list[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v < values[best]:
            best = i
    return best


def krum_index(x: np.ndarray, f: int, neighbours: int | None = None) -> int:
    return argmin_first(krum_scores(x, f, neighbours))


def multi_krum_indices(x: np.ndarray, f: int, m: int) -> list[int]:
    scores = krum_scores(x, f)
    return sorted(range(len(x)), key=lambda i: (scores[i], i))[:m]


def medoid_totals(x: np.ndarray) -> list[float]:
    """Each row's sum of Euclidean distances to the finite rows (inf for a non-finite row)."""
    n = len(x)
    finite = [bool(np.isfinite(x[i]).all()) for i in range(n)]
    return [
        sum(math.sqrt(sq_dist(x[i], x[j])) for j in range(n) if finite[j])
        if finite[i]
        else math.inf
        for i in range(n)
    ]


def medoid_index(x: np.ndarray) -> int:
    return argmin_first(medoid_totals(x))


def brute_indices(x: np.ndarray, f: int) -> list[int]:
    n = len(x)
    best, best_diameter = None, math.inf
    for subset in itertools.combinations(range(n), n - f):
        diameter = max(
            (sq_dist(x[i], x[j]) for i, j in itertools.combinations(subset, 2)), default=0
        )
        if best is None or diameter < best_diameter:
            best, best_diameter = list(subset), diameter
    return best


def weiszfeld(x: np.ndarray, iterations: int = 20000, eps: float = 1e-12) -> np.ndarray:
    rows = x[np.isfinite(x).all(axis=1)]
    z = rows.mean(axis=0)
    for _ in range(iterations):
        w = 1.0 / np.maximum(np.linalg.norm(rows - z, axis=1), eps)
        z_new = (w[:, None] * rows).sum(axis=0) / w.sum()
        if np.linalg.norm(z_new - z) <= 1e-15 * (1 + np.linalg.norm(z)):
            return z_new
        z = z_new
    return z


def closest_index(x: np.ndarray, point: np.ndarray, candidates: list[int]) -> int:
    """Candidate nearest to point; distances equal up to rounding (1e-9 relative) tie -> lowest
    index (e.g. both ends of a pair are exactly equidistant from its midpoint)."""
    dists = {i: sq_dist(x[i], point) for i in candidates}
    best = min(dists.values())
    return min(i for i in candidates if dists[i] <= best * (1 + 1e-9) + 1e-300)


def bulyan(
    x: np.ndarray, f: int, selector: str = "krum", variant: str = "bulyan"
) -> tuple[np.ndarray, list[int]]:
    """Bulyan(A) with iterated selection; returns (output, selected indices in order)."""
    n = len(x)
    theta = n - 2 * f if variant == "bulyan" else n - 2 * f - 2
    beta = theta - 2 * f if variant == "bulyan" else n - 4 * f - 2
    remaining, chosen = list(range(n)), []
    for _ in range(theta):
        sub = x[remaining]
        r = len(remaining)
        if selector == "krum":
            local = krum_index(sub, f, max(1, r - f - 2))
        elif selector == "medoid":
            local = medoid_index(sub)
        elif selector == "multi_krum":
            picked = multi_krum_indices(sub, f, r - f)
            local = closest_index(sub, sub[picked].mean(axis=0), list(range(r)))
        elif selector == "brute":
            picked = brute_indices(sub, f)
            local = closest_index(sub, sub[picked].mean(axis=0), list(range(r)))
        elif selector == "geometric_median":
            local = closest_index(sub, weiszfeld(sub), list(range(r)))
        else:
            raise AssertionError(selector)
        chosen.append(remaining.pop(local))
    pool = x[chosen]
    return nearest_mean(pool, median(pool), beta), chosen
