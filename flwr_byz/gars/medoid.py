"""Medoid ("GeoMed" of El Mhamdi et al., ICML 2018): the submitted vector minimising the sum of
Euclidean distances to all others. Ties: lowest index. Rows with NaN/inf are never chosen."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_inputs, require, uniform_participation
from ._distances import checked_distances
from ._types import Aggregation


def medoid_index(distances: Tensor, usable: Tensor) -> int:
    """Index minimising the sum of Euclidean distances (sqrt of squared ``distances``) to the
    ``usable`` rows, among the usable rows (the others: NaN/inf vectors, excluded).

    A squared distance beyond float64's range (inf: values above ~1e154) counts as infinitely
    far: the rows with the fewest such distances compete, on the sum of their others (otherwise
    every row near a huge Byzantine vector would score inf and the lowest index would win)."""
    root = torch.where(usable[None, :], distances.sqrt(), torch.zeros_like(distances))
    far = torch.isinf(root)
    if bool(far.any()):
        count = far.sum(dim=1).masked_fill(~usable, distances.shape[0] + 1)
        usable = usable & (count == count.min())
        root = root.masked_fill(far, 0.0)
    total = root.sum(dim=1).masked_fill(~usable, float("inf"))
    return int(torch.argmin(total))


def _medoid_impl(vectors: Tensor, f: int) -> Aggregation:
    n, _, f = check_inputs("medoid", vectors, f)
    require("medoid", n, f, n >= 2 * f + 1, "n >= 2f + 1")
    distances, usable = checked_distances("medoid", vectors, f)
    index = medoid_index(distances, usable.to(vectors.device))
    chosen = torch.tensor([index], dtype=torch.int64)
    return Aggregation(vectors[index].clone(), chosen, uniform_participation(n, chosen))


def medoid(vectors: Tensor, f: int) -> Tensor:
    """Medoid: the input with the least sum of distances to the others; needs n >= 2f + 1."""
    return _medoid_impl(vectors, f).vector
