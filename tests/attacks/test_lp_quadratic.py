"""The l_p attack's gamma search on Bulyan from the quadratic distance model (one Gram pass)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from flwr_byz import gars
from flwr_byz.attacks import lp_coordinate_gamma
from flwr_byz.attacks._lp_bulyan import CoordinateStep, bounds, bounds_of_rows, kept
from flwr_byz.attacks._lp_surrogate import bulyan_selection, distance_surrogate
from flwr_byz.attacks.lp_coordinate import attackers_chosen, direction
from flwr_byz.gars.krum import krum_scores


class CountingBulyan:
    """Bulyan, counting its calls."""

    name = "bulyan"

    def __init__(self) -> None:
        self.calls = 0

    def aggregate(self, vectors: torch.Tensor, f: int, **options: Any) -> Any:
        self.calls += 1
        return gars.get("bulyan").aggregate(vectors, f, **options)


def _honest(seed: int, k: int, d: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, generator=generator, dtype=torch.float64)


CASES = [
    (seed, f, extra, d, norm, options)
    for seed in range(4)
    for f, extra, d in ((1, 0, 6), (2, 1, 20), (3, 2, 40))
    for norm in ("inf", "l2")
    for options in ({}, {"variant": "momentum"})
]


@pytest.mark.parametrize(("seed", "f", "extra", "d", "norm", "options"), CASES)
def test_quadratic_search_equals_the_search_with_the_rule(seed, f, extra, d, norm, options):
    n = 4 * f + 3 + extra
    honest = _honest(seed, n - f, d)
    search = {"gar_options": options, "norm": norm}
    old = lp_coordinate_gamma(honest, n, f, gar="bulyan", fast=False, **search)
    counting = CountingBulyan()
    new = lp_coordinate_gamma(honest, n, f, gar=counting, **search)
    assert new == old
    assert counting.calls <= 1  # the confirmation only, never once per search step


@pytest.mark.parametrize("seed", range(3))
def test_quadratic_decisions_agree_with_bulyan(seed: int) -> None:
    n, f, d = 13, 2, 30
    honest = _honest(seed, n - f, d)
    unit = direction(d, "inf", 0, honest)
    chosen = distance_surrogate("bulyan", honest, f, unit, {}, "participation")
    assert chosen is not None
    rule = gars.get("bulyan")
    for gamma in torch.linspace(0.0, 3.0, 31).tolist():
        attack = honest.mean(dim=0) + gamma * unit
        vectors = torch.cat([honest, attack.expand(f, d)])
        expected = attackers_chosen(rule.aggregate(vectors, f), n - f, "participation")
        assert chosen(gamma) == expected, gamma


def test_other_selectors_and_options_keep_the_rule_search() -> None:
    honest, unit = _honest(0, 9, 5), torch.ones(5, dtype=torch.float64)
    for options in ({"selector": "medoid"}, {"selector_options": {"m": 3}}, {"other": 1}):
        assert distance_surrogate("bulyan", honest, 2, unit, options, "participation") is None
    assert distance_surrogate("bulyan", honest, 2, unit, {}, "auto") is None
    assert distance_surrogate("krum", honest, 2, unit, {}, "participation") is None


# --- Bulyan's coordinate step as one interval per coordinate (``_lp_bulyan``) ---------------


def _kept_slow(column: list[float], attack: float, copies: int, theta: int, beta: int) -> bool:
    """Float64 reference of the coordinate step on one column: the median of the theta values,
    then whether fewer than beta honest values are strictly closer to it than the copies."""
    values = sorted(column + [attack] * copies)
    middle = theta // 2
    median = values[middle] if theta % 2 else 0.5 * (values[middle - 1] + values[middle])
    gap = abs(attack - median)
    return sum(1 for s in column if abs(s - median) < gap) < beta


SHAPES = [(theta, f_copies, beta) for theta, beta in ((9, 1), (11, 3), (12, 4), (27, 3), (26, 2))
          for f_copies in (1, 2, 3)]  # fmt: skip


@pytest.mark.parametrize(("theta", "copies", "beta"), SHAPES)
def test_bounds_give_the_coordinate_step_of_the_slow_reference(theta, copies, beta):
    h = theta - copies
    generator = torch.Generator().manual_seed(theta * 10 + copies)
    ordered = torch.randn(200, h, generator=generator, dtype=torch.float64).sort(dim=1).values
    low, high, band = bounds(ordered, copies, theta, beta)
    assert bool((low <= high).all())
    checked = 0
    for a in torch.linspace(-4.0, 4.0, 161, dtype=torch.float64):
        attack = torch.full((200,), float(a), dtype=torch.float64)
        test = kept(ordered, attack, copies, theta, beta)
        for j in range(0, 200, 7):
            expected = _kept_slow(ordered[j].tolist(), float(a), copies, theta, beta)
            assert bool(test[j]) == expected, (j, float(a))
            if abs(float(a) - float(low[j])) > band[j] and abs(float(a) - float(high[j])) > band[j]:
                assert (float(low[j]) <= float(a) <= float(high[j])) == expected, (j, float(a))
                checked += 1
    assert checked > 1000


@pytest.mark.parametrize(("theta", "copies", "beta"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bounds_of_rows_are_the_bounds_of_the_sorted_selection(theta, copies, beta, dtype):
    """The sorting network's bounds (only the positions read) equal those of a full sort."""
    generator = torch.Generator().manual_seed(theta + 100 * copies)
    k, d = theta + 4, 5000
    values = torch.randn(k, d, generator=generator).to(dtype)
    values[:, :1000] = values[:, :1000].round()  # exact ties
    rows = tuple(sorted(torch.randperm(k, generator=generator)[: theta - copies].tolist()))
    ordered = values[list(rows)].T.sort(dim=1).values
    for got, expected in zip(
        bounds_of_rows(values, rows, copies, theta, beta),
        bounds(ordered, copies, theta, beta),
        strict=True,
    ):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("seed", range(6))
def test_coordinate_step_decides_as_the_test_on_every_column(seed):
    """``CoordinateStep.keeps`` (hints, cached bounds, the band redone exactly) against ``kept``
    on all columns, on rows with many exact ties (small integers) and on continuous rows."""
    generator = torch.Generator().manual_seed(seed)
    k, d, theta, beta = 14, 300, 11, 3
    if seed % 2:
        values = torch.randint(-3, 4, (k, d), generator=generator).to(torch.float32)
    else:
        values = torch.randn(k, d, generator=generator)
    step = CoordinateStep(values, theta, beta)
    for trial in range(60):
        copies = 1 + trial % 3
        rows = tuple(sorted(torch.randperm(k, generator=generator)[: theta - copies].tolist()))
        shift = float(torch.rand(1, generator=generator)) * 6.0 - 1.0
        attack = values.to(torch.float64).mean(dim=0) + shift
        if trial % 5 == 0:
            attack = attack.round()  # attack values equal to honest ones: ties at the bounds
        ordered = values[list(rows)].T.to(torch.float64).sort(dim=1).values
        expected = bool(kept(ordered, attack, copies, theta, beta).any())
        assert step.keeps(rows, copies, attack) == expected, trial


@pytest.mark.parametrize(("n", "f", "ties"), [(19, 4, False), (51, 12, False), (51, 12, True),
                                              (13, 2, True), (7, 1, False)])  # fmt: skip
def test_bulyan_selection_is_the_iterated_krum_of_the_rule(n, f, ties):
    """Against Krum re-run on the remaining submatrix; ``ties``: integer points, many equal
    distances and scores (the lowest index wins), and identical points (distance 0)."""
    generator = torch.Generator().manual_seed(n + f)
    points = torch.randn(n, 7, generator=generator, dtype=torch.float64)
    if ties:
        points = points.round()
        points[-f:] = points[-1]  # the attack's identical copies
    squared = torch.cdist(points, points).square()
    if ties:
        squared = squared.round()  # exact integer distances
    remaining, expected = list(range(n)), []
    for _ in range(n - 2 * f):
        index = torch.tensor(remaining)
        sub = squared[index[:, None], index[None, :]]
        scores = krum_scores(sub, max(1, len(remaining) - f - 2))
        expected.append(remaining.pop(int(torch.argmin(scores))))
    assert bulyan_selection(squared.numpy(), f, n - 2 * f) == expected
