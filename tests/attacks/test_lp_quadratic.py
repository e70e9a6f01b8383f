"""The l_p attack's gamma search on Bulyan from the quadratic distance model (one Gram pass)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from flwr_byz import gars
from flwr_byz.attacks import lp_coordinate_gamma
from flwr_byz.attacks._lp_surrogate import distance_surrogate
from flwr_byz.attacks.lp_coordinate import attackers_chosen, direction


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
