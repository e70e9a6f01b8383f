"""Bulyan(A) (El Mhamdi, Guerraoui, Rouault, ICML 2018, section 4) and the "Distributed Momentum"
paper's variant.

1. Selection: theta times, run A (same f) on the not-yet-selected vectors and move the submitted
   vector closest to A's output into S (krum/medoid: A's output itself). Inside the loop Krum scores
   over max(1, n' - f - 2) nearest remaining neighbours (n' remaining). The pairwise distances are
   computed once and reused (for multi_krum and brute the distance from x_k to the average of a
   set T is ``mean_t D_kt - const``, so the closest vector is ``argmin_k sum_t D_kt``); the
   geometric_median selector iterates on the centred rows. Ties: lowest index.
2. Per coordinate: average of the beta values of S closest to the coordinate median of S. On CPU
   without participation tracking (the plain ``bulyan`` function) and a finite selection, only the
   middle order statistics are computed (``_columns.median_window_mean``, or the same values by
   its opt-in compiled network, ``_compiled.median_window_mean``); columns with an exact
   distance tie between two different values are redone by the general path (lowest row index).
   Both paths work through column blocks of the selected rows (``_columns.run_blocks``), so the
   step's extra memory is the blocks' temporaries and the (d,) output, not a copy of S.

variant="bulyan": theta = n - 2f, beta = theta - 2f. variant="momentum" (El-Mhamdi et al. 2020):
theta = n - 2f - 2 selected with the selector, beta = n - 4f - 2. variant="momentum_code": the
same theta and beta as the authors' code computes them ("Bulyan over Multi-Krum",
LPD-EPFL/ByzantineMomentum ``aggregators/bulyan.py``): each input is scored once by the sum of its
plain Euclidean distances to its m = n - f - 2 nearest others, the inputs ranked by score (ties:
lowest index), and the i-th selected row is the *average* of the inputs ranked i .. m - 1 (the
code's Multi-Krum over the not-yet-pruned inputs, its scores never updated); then step 2 on those
theta rows around their lower middle value (torch's ``median``, as the code calls it; the same
as the median for odd theta, e.g. n = 51, f = 12). ``selector`` must be krum. All need n >= 4f + 3.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import _compiled as compiled
from ._checks import check_inputs, finite_rows, require
from ._columns import median_window_mean, nearest_mean, run_blocks, sorted_columns
from ._distances import checked_distances
from ._types import Aggregation
from .brute import check_subset_count, smallest_diameter_subset
from .coordinatewise import median_of
from .geometric_median import centred_rows, weiszfeld
from .krum import krum_order, krum_scores
from .medoid import medoid_index

SELECTORS = ("krum", "medoid", "brute", "geometric_median", "multi_krum")
VARIANTS = ("bulyan", "momentum", "momentum_code")
_OPTIONS = {
    "krum": set(),
    "medoid": set(),
    "brute": {"max_subsets"},
    "geometric_median": {"eps", "tol", "max_iter"},
    "multi_krum": {"m"},
}


def _closest_to_mean_of(sub: Tensor, usable: Tensor, members: Tensor) -> int:
    """Local index of the usable row closest to the average of rows ``members`` (via distances)."""
    total = torch.nan_to_num(sub[:, members].sum(dim=1), nan=float("inf"))
    return int(torch.argmin(total.masked_fill(~usable, float("inf"))))


class _Selector:
    """Runs selector A on a subset of the inputs, reusing one distance matrix."""

    def __init__(self, name: str, vectors: Tensor, f: int, options: dict) -> None:
        self.name, self.f, self.options = name, f, options
        if name == "geometric_median":
            self.usable = finite_rows("bulyan", vectors, f).to(vectors.device)
            self.rows, _ = centred_rows(vectors, self.usable)
            self.eps = options.get("eps", 1e-8)
            self.tol = options.get("tol", 1e-7)
            self.max_iter = options.get("max_iter", 1000)
        else:
            # The distances and the finiteness check in one pass (``checked_distances``).
            self.distances, usable = checked_distances("bulyan", vectors, f)
            self.usable = usable.to(vectors.device)

    def pick(self, remaining: Tensor) -> int:
        """Local index (into ``remaining``) of the vector selected this iteration."""
        usable = self.usable[remaining]
        count = remaining.numel()
        if self.name == "geometric_median":
            rows = self.rows[remaining]
            point, _ = weiszfeld(rows, usable, self.eps, self.tol, self.max_iter)
            gap = ((rows - point) ** 2).sum(dim=1).masked_fill(~usable, float("inf"))
            return int(torch.argmin(gap))
        sub = self.distances[remaining[:, None], remaining[None, :]]
        if self.name == "krum":
            return int(torch.argmin(krum_scores(sub, max(1, count - self.f - 2))))
        if self.name == "medoid":
            return medoid_index(sub, usable)
        if self.name == "multi_krum":
            m = min(self.options.get("m", count - self.f), count)
            return _closest_to_mean_of(sub, usable, krum_order(sub, self.f)[:m])
        size = count - self.f
        check_subset_count("bulyan(brute)", count, self.f, self.options.get("max_subsets", 100_000))
        members = smallest_diameter_subset(sub, size).to(sub.device)
        return _closest_to_mean_of(sub, usable, members)


def _fast_coordinate_step(vectors: Tensor, selected: Tensor, beta: int) -> Tensor:
    """Step 2 on CPU for finite selected rows: middle order statistics only (by the opt-in
    compiled network where it applies, ``_compiled``); exact ties redone."""
    source = vectors.detach().numpy()
    result = compiled.median_window_mean(vectors.detach(), selected, beta)
    if result is not None:
        value, tied = result[0].numpy(), np.flatnonzero(result[1].numpy())
    else:
        value, tied = median_window_mean(source, selected.tolist(), beta)
    if tied.size:
        sub = torch.from_numpy(source[np.ix_(selected.numpy(), tied)])  # only the tied columns
        center, _, ordered, order = median_of(sub, False)
        fixed, _ = nearest_mean(sub, ordered, order, center, beta)
        value[tied] = fixed.to(vectors.dtype).numpy()
    return torch.from_numpy(value)


def _bulyan_impl(
    vectors: Tensor,
    f: int,
    selector: str = "krum",
    variant: str = "bulyan",
    selector_options: dict[str, Any] | None = None,
    *,
    track: bool = True,
) -> Aggregation:
    n, _, f = check_inputs("bulyan", vectors, f)
    if selector not in SELECTORS:
        raise ValueError(f"bulyan: unknown selector {selector!r}; choose one of {SELECTORS}")
    if variant not in VARIANTS:
        raise ValueError(f"bulyan: unknown variant {variant!r}; choose one of {VARIANTS}")
    options = dict(selector_options or {})
    unknown = set(options) - _OPTIONS[selector]
    if unknown:
        raise ValueError(f"bulyan: selector {selector!r} takes no options {sorted(unknown)}")
    require("bulyan", n, f, n >= 4 * f + 3, "n >= 4f + 3")
    if variant == "bulyan":
        theta, beta = n - 2 * f, n - 4 * f
    else:
        theta, beta = n - 2 * f - 2, n - 4 * f - 2
    if variant == "momentum_code":
        if selector != "krum" or options:
            raise ValueError(
                "bulyan: variant 'momentum_code' fixes its selection (selector 'krum', no options)"
            )
        return _coded_bulyan(vectors, f, theta, beta, track)
    pick = _Selector(selector, vectors, f, options)
    usable = pick.usable
    remaining = torch.arange(n, device=vectors.device)
    chosen: list[int] = []
    for _ in range(theta):
        local = pick.pick(remaining)
        chosen.append(int(remaining[local]))
        remaining = torch.cat([remaining[:local], remaining[local + 1 :]])
    selected = torch.tensor(chosen, dtype=torch.int64)
    if (
        not track
        and vectors.device.type == "cpu"
        and vectors.dtype in (torch.float32, torch.float64)
        and theta > beta
        and bool(usable[selected].all())
    ):
        return Aggregation(_fast_coordinate_step(vectors, selected, beta), selected, None)
    index = selected.to(vectors.device)

    def step(cols: slice) -> tuple[Tensor, Tensor | None]:
        pool = vectors[:, cols].index_select(0, index)  # one column block of the selection
        center, _, ordered, order = median_of(pool, track)
        value, rows = nearest_mean(pool, ordered, order, center, beta)
        if rows is None:
            return value, None
        used = selected[rows.reshape(-1).cpu()]
        return value, torch.bincount(used, minlength=n).to(torch.float64)

    value, share = run_blocks(step, vectors.shape[1], vectors.device, (vectors, selected, beta))
    return Aggregation(value.to(vectors.device, vectors.dtype), selected, share)


def _coded_ranking(vectors: Tensor, f: int) -> Tensor:
    """The Momentum code's ranking: inputs by the sum of plain distances to their n - f - 2 nearest
    others (non-finite inputs last), stable; its first n - f - 2 entries."""
    n = vectors.shape[0]
    squared, _ = checked_distances("bulyan", vectors, f)
    keep = n - f - 2
    scores = krum_scores(squared.clamp_min(0.0).sqrt(), keep)
    return torch.argsort(scores.cpu(), stable=True)[:keep]


def _coded_bulyan(vectors: Tensor, f: int, theta: int, beta: int, track: bool) -> Aggregation:
    """variant="momentum_code": row i the mean of the ranked inputs i .. m - 1; then step 2."""
    n = vectors.shape[0]
    top = _coded_ranking(vectors, f)
    sizes = torch.arange(top.numel(), top.numel() - theta, -1, dtype=torch.float64)
    # weights[i, top[j]] = 1 / sizes[i] for j >= i: how each averaged row is made of the inputs
    weights = torch.zeros(theta, n, dtype=torch.float64)
    weights[:, top] = torch.triu(torch.ones(theta, top.numel(), dtype=torch.float64))
    weights /= sizes[:, None]
    index = top.to(vectors.device)
    divisor = sizes.to(vectors.device)[:, None]

    def step(cols: slice) -> tuple[Tensor, Tensor | None]:
        pool = vectors[:, cols].index_select(0, index).to(torch.float64)
        suffix = pool.flip(0).cumsum(0).flip(0)[:theta]  # row i: sum of ranked inputs i ..
        rows = (suffix / divisor).to(vectors.dtype)
        ordered, order = sorted_columns(rows, track)
        center = ordered[(theta - 1) // 2]  # torch's median, as the code calls it: the lower middle
        value, used = nearest_mean(rows, ordered, order, center, beta)
        if used is None:
            return value, None
        per_row = torch.bincount(used.reshape(-1).cpu(), minlength=theta).to(torch.float64)
        return value, per_row @ weights

    value, share = run_blocks(step, vectors.shape[1], vectors.device)
    return Aggregation(value.to(vectors.device, vectors.dtype), top, share)


def bulyan(
    vectors: Tensor,
    f: int,
    selector: str = "krum",
    variant: str = "bulyan",
    selector_options: dict[str, Any] | None = None,
) -> Tensor:
    """Bulyan(A): iterated selection of theta inputs with A, then per coordinate the average of the
    beta values closest to the median of the selection; needs n >= 4f + 3."""
    return _bulyan_impl(vectors, f, selector, variant, selector_options, track=False).vector
