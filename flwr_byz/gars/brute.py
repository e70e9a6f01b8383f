"""Brute (El Mhamdi et al., ICML 2018): among all C(n, n - f) subsets of n - f inputs, the one with
the smallest diameter (largest pairwise distance); output its average.

Vectorised over subsets: the subsets are enumerated as an index tensor (in
``itertools.combinations`` order, so ties go to the lexicographically first subset) and their
diameters are taken as batched maxima over the pair-distance matrix, a chunk of subsets at a time.
Refuses more than ``max_subsets``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor

from ._checks import check_inputs, require, uniform_participation
from ._distances import checked_distances
from ._types import Aggregation
from .krum import mean_of_rows

_CHUNK_ENTRIES = 1 << 22  # subsets x size x size entries per chunk


def check_subset_count(rule: str, n: int, f: int, max_subsets: int) -> int:
    """Number of subsets C(n, n - f); ValueError naming the count when above ``max_subsets``."""
    count = math.comb(n, n - f)
    if count > max_subsets:
        raise ValueError(
            f"{rule}: C({n}, {n - f}) = {count} subsets of n - f inputs exceed "
            f"max_subsets={max_subsets}; raise max_subsets or use a smaller n or f"
        )
    return count


def smallest_diameter_subset(distances: Tensor, size: int) -> Tensor:
    """Indices (ascending, CPU int64) of the ``size``-subset of rows with the smallest diameter."""
    n = distances.shape[0]
    count = math.comb(n, size)
    flat = np.fromiter(
        itertools.chain.from_iterable(itertools.combinations(range(n), size)),
        dtype=np.int64,
        count=count * size,
    )
    subsets = torch.from_numpy(flat).view(count, size).to(distances.device)
    removed = n - size
    if (removed + 1) * n < size * size:
        diameters = _diameters_by_row_maxima(distances, subsets, removed)
    else:
        chunk = max(1, _CHUNK_ENTRIES // max(size * size, 1))
        diameters = torch.empty(count, dtype=torch.float64, device=distances.device)
        for start in range(0, count, chunk):
            part = subsets[start : start + chunk]
            block = distances[part[:, :, None], part[:, None, :]]
            diameters[start : start + chunk] = block.flatten(1).amax(dim=1)
    best = int(torch.argmin(diameters))
    return subsets[best].cpu()


def _diameters_by_row_maxima(distances: Tensor, subsets: Tensor, removed: int) -> Tensor:
    """Diameter of each subset (rows of ``subsets``) of the rows, when few rows are left out.

    The diameter is the largest, over the members i, of i's largest distance to a member. With
    ``removed`` rows left out, that row maximum is the first member among i's ``removed + 1``
    largest distances (at most ``removed`` of them can be outsiders, and every distance past them
    is no larger): ``(removed + 1) n`` lookups per subset instead of ``size^2``, the same float64
    values, hence the same diameters exactly.
    """
    count, n = subsets.shape[0], distances.shape[0]
    top_values, top_index = torch.topk(distances, removed + 1, dim=1)  # descending per row
    chunk = max(1, _CHUNK_ENTRIES // max(n * (removed + 1), 1))
    diameters = torch.empty(count, dtype=torch.float64, device=distances.device)
    for start in range(0, count, chunk):
        part = subsets[start : start + chunk]
        member = torch.zeros(part.shape[0], n, dtype=torch.bool, device=distances.device)
        member.scatter_(1, part, True)
        inside = member[:, top_index]  # (chunk, n, removed + 1): is i's k-th farthest a member
        first = inside.to(torch.uint8).argmax(dim=2, keepdim=True)  # first member, descending
        row_max = top_values.expand(part.shape[0], -1, -1).gather(2, first).squeeze(2)
        diameters[start : start + chunk] = row_max.masked_fill(~member, -math.inf).amax(dim=1)
    return diameters


def _brute_impl(vectors: Tensor, f: int, max_subsets: int = 100_000) -> Aggregation:
    n, _, f = check_inputs("brute", vectors, f)
    require("brute", n, f, n >= 2 * f + 1, "n >= 2f + 1")
    check_subset_count("brute", n, f, max_subsets)
    distances, finite = checked_distances("brute", vectors, f)
    chosen = smallest_diameter_subset(distances, n - f)
    vector = mean_of_rows(vectors, chosen, bool(finite.all()))
    return Aggregation(vector, chosen, uniform_participation(n, chosen))


def brute(vectors: Tensor, f: int, max_subsets: int = 100_000) -> Tensor:
    """Brute: average of the n - f inputs of smallest diameter; needs n >= 2f + 1 and
    C(n, n - f) <= max_subsets."""
    return _brute_impl(vectors, f, max_subsets).vector
