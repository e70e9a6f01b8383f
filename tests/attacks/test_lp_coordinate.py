"""The Bulyan paper's l_p / l_inf attack: the vector is chosen, a slightly larger one is not."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flwr_byz import attacks


class ReferenceKrum:
    """Float64 Krum written for the test: score over n - f - 2 nearest others, lowest index wins."""

    calls = 0

    def aggregate(self, vectors: torch.Tensor, f: int) -> SimpleNamespace:
        ReferenceKrum.calls += 1
        x = vectors.double().numpy()
        n = x.shape[0]
        distances = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
        scores = []
        for i in range(n):
            others = np.sort(np.delete(distances[i], i))
            scores.append(others[: n - f - 2].sum())
        best = int(np.argmin(scores))  # argmin returns the first minimum: smallest index
        participation = np.zeros(n)
        participation[best] = 1.0
        return SimpleNamespace(
            vector=vectors[best],
            selected=torch.tensor([best]),
            participation=torch.from_numpy(participation),
        )


class ThresholdRule:
    """A non-selection rule that drops any input farther than ``limit`` (sup norm) from the mean."""

    def __init__(self, limit: float) -> None:
        self.limit = limit

    def aggregate(self, vectors: torch.Tensor, f: int) -> SimpleNamespace:
        x = vectors.double()
        distance = (x - x[: x.shape[0] - f].mean(dim=0)).abs().amax(dim=1)
        keep = (distance <= self.limit).double()
        return SimpleNamespace(selected=None, participation=keep / keep.sum())


def _honest(k: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _chosen(rule, honest: torch.Tensor, vector: torch.Tensor, f: int) -> bool:
    stacked = torch.cat([honest, vector.expand(f, -1)])
    result = rule.aggregate(stacked, f)
    return bool((result.selected >= honest.shape[0]).any())


@pytest.mark.parametrize(("norm", "coordinate"), [("inf", 0), ("l2", 3), ("l1", 0)])
@pytest.mark.parametrize(("n", "f", "d"), [(7, 2, 10), (11, 4, 25)])
def test_returned_vector_is_selected_and_a_larger_gamma_is_not(norm, coordinate, n, f, d) -> None:
    honest = _honest(n - f, d, seed=n * d)
    rule = ReferenceKrum()
    vector, gamma = attacks.lp_coordinate(
        honest, n, f, gar=rule, norm=norm, coordinate=coordinate, return_gamma=True
    )
    direction = np.ones(d) if norm == "inf" else np.eye(d)[coordinate]
    expected = honest.numpy().mean(axis=0) + gamma * direction
    np.testing.assert_allclose(vector.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert gamma > 0
    assert _chosen(rule, honest, vector, f)
    bigger = torch.from_numpy(honest.numpy().mean(axis=0) + gamma * 1.01 * direction)
    assert not _chosen(rule, honest, bigger, f)


def test_search_is_deterministic_and_gamma_function_agrees() -> None:
    honest = _honest(5, 8, 0)
    first = attacks.lp_coordinate(honest, 7, 2, gar=ReferenceKrum(), return_gamma=True)
    again = attacks.lp_coordinate(honest, 7, 2, gar=ReferenceKrum(), return_gamma=True)
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    gamma = attacks.lp_coordinate_gamma(honest, 7, 2, gar=ReferenceKrum())
    assert gamma == first[1]


def test_non_selection_rule_uses_participation() -> None:
    honest = _honest(6, 4, 1)
    gamma = attacks.lp_coordinate_gamma(honest, 8, 2, gar=ThresholdRule(3.0), rtol=1e-6)
    assert gamma == pytest.approx(3.0, rel=1e-5)
    assert gamma <= 3.0


def test_rejected_at_zero_gives_zero_and_never_rejected_is_bounded() -> None:
    honest = _honest(4, 3, 2)
    assert attacks.lp_coordinate_gamma(honest, 6, 2, gar=ThresholdRule(-1.0)) == 0.0
    gamma = attacks.lp_coordinate_gamma(
        honest, 6, 2, gar=ThresholdRule(float("inf")), initial_gamma=1.0, max_doublings=5
    )
    assert gamma == 16.0  # the largest value tried: 1, 2, 4, 8, 16


def test_lp_coordinate_errors() -> None:
    honest = _honest(5, 3, 0)
    with pytest.raises(ValueError, match="n - f = 4 honest vectors, got 5"):
        attacks.lp_coordinate(honest, 6, 2, gar=ReferenceKrum())
    with pytest.raises(ValueError, match="at least one Byzantine"):
        attacks.lp_coordinate(honest, 5, 0, gar=ReferenceKrum())
    with pytest.raises(ValueError, match="norm must be one of"):
        attacks.lp_coordinate(honest, 7, 2, gar=ReferenceKrum(), norm="l7")
    with pytest.raises(ValueError, match="coordinate must be in"):
        attacks.lp_coordinate(honest, 7, 2, gar=ReferenceKrum(), norm="l2", coordinate=3)
    with pytest.raises(TypeError, match="aggregate"):
        attacks.lp_coordinate(honest, 7, 2, gar=object())


def _gars_registry():
    from flwr_byz import gars

    return gars


def _attackers_used(gar, stacked: torch.Tensor, f: int, rule: str) -> bool:
    result = gar.aggregate(stacked, f)
    honest_count = stacked.shape[0] - f
    # Bulyan's selection always takes identical colluders in; non-selection rules: participation.
    if rule == "bulyan" or result.selected is None:
        return bool(result.participation[honest_count:].sum() > 0)
    return bool((result.selected >= honest_count).any())


@pytest.mark.parametrize(
    ("rule", "n", "f"),
    [("krum", 9, 3), ("medoid", 9, 3), ("bulyan", 11, 2), ("trimmed_mean", 9, 3), ("median", 9, 3)],
)
def test_against_the_project_gars(rule: str, n: int, f: int) -> None:
    gars = _gars_registry()
    honest = _honest(n - f, 30, seed=7).float()
    vector, gamma = attacks.lp_coordinate(honest, n, f, gar=rule, return_gamma=True)
    assert gamma > 0
    gar = gars.get(rule)
    assert _attackers_used(gar, torch.cat([honest, vector.expand(f, -1)]), f, rule)
    bigger = honest.mean(dim=0) + 1.01 * gamma
    assert not _attackers_used(gar, torch.cat([honest, bigger.expand(f, -1)]), f, rule)


def test_bulyan_selection_criterion_is_unbounded() -> None:
    _gars_registry()
    honest = _honest(9, 30, seed=7).float()
    bounded = attacks.lp_coordinate_gamma(honest, 11, 2, gar="bulyan")
    unbounded = attacks.lp_coordinate_gamma(
        honest, 11, 2, gar="bulyan", criterion="selected", max_doublings=10
    )
    assert unbounded > bounded


@pytest.mark.parametrize(
    ("rule", "options"), [("krum", None), ("medoid", None), ("multi_krum", {"m": 3})]
)
@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_fast_path_agrees_with_the_plain_search(rule: str, options, norm: str) -> None:
    _gars_registry()
    honest = _honest(12, 40, seed=11).float()
    kwargs = dict(gar=rule, gar_options=options, norm=norm, coordinate=5, rtol=1e-3)
    fast = attacks.lp_coordinate_gamma(honest, 17, 5, **kwargs)
    plain = attacks.lp_coordinate_gamma(honest, 17, 5, fast=False, **kwargs)
    assert fast > 0 and abs(fast - plain) <= 2e-3 * plain


class MislabelledRule(ThresholdRule):
    """Claims to be krum, so the fast path guesses with Krum's model, but thresholds instead."""

    name = "krum"

    def aggregate(self, vectors: torch.Tensor, f: int) -> SimpleNamespace:
        result = super().aggregate(vectors, f)
        kept = torch.nonzero(result.participation > 0).flatten()
        return SimpleNamespace(selected=kept, participation=result.participation)


def test_fast_path_falls_back_when_the_rule_disagrees() -> None:
    honest = _honest(7, 6, 3)
    gamma = attacks.lp_coordinate_gamma(honest, 10, 3, gar=MislabelledRule(2.5), rtol=1e-6)
    assert gamma == pytest.approx(2.5, rel=1e-5)
