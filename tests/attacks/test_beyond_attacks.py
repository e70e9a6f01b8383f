"""mimic, minmax, minsum, fang (both variants), alie_opt and ipm_opt against their definitions."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from flwr_byz import attacks, gars
from flwr_byz.attacks import defence_aware

# The package re-exports the functions under their modules' names: import the modules directly.
fang_mod = importlib.import_module("flwr_byz.attacks.fang")
minmax_mod = importlib.import_module("flwr_byz.attacks.minmax")


def honest(k: int = 8, d: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, generator=g) + torch.linspace(-1, 1, d)


def test_mimic_copies_the_row_with_largest_principal_projection() -> None:
    h = honest()
    x = h.double()
    centred = x - x.mean(dim=0)
    z = torch.linalg.svd(centred, full_matrices=False).Vh[0]  # top principal direction
    proj = [abs(float(centred[i] @ z)) for i in range(h.shape[0])]
    expected = max(range(h.shape[0]), key=lambda i: (proj[i], -i))
    assert attacks.mimic_index(h) == expected
    assert torch.equal(attacks.mimic(h, 10, 2), h[expected])
    vec, index = attacks.mimic_step(h, 10, 2, round_number=1)
    assert index == expected
    other = honest(seed=3)
    vec2, index2 = attacks.mimic_step(other, 10, 2, round_number=2, index=index)
    assert index2 == index and torch.equal(vec2, other[index])  # fixed after the warm-up
    _, index3 = attacks.mimic_step(other, 10, 2, round_number=2, index=index, warmup=2)
    assert index3 == attacks.mimic_index(other)


def closed_form_gamma(h: torch.Tensor, p: torch.Tensor, kind: str) -> float:
    """Largest gamma from the quadratics, by loops (the definition, solved exactly)."""
    x = h.double()
    k = x.shape[0]
    mu = x.mean(dim=0)
    dist = [[float(((x[i] - x[j]) ** 2).sum()) for j in range(k)] for i in range(k)]
    pp = float(p @ p)
    roots = []
    if kind == "minmax":
        bound = max(max(row) for row in dist)
        for i in range(k):
            a = mu - x[i]
            b, c = 2 * float(a @ p), float(a @ a) - bound
            roots.append((-b + math.sqrt(b * b - 4 * pp * c)) / (2 * pp))
        return min(roots)
    bound = max(sum(row) for row in dist)
    a_sum = sum(float((mu - x[i]) @ (mu - x[i])) for i in range(k))
    b = 2 * sum(float((mu - x[i]) @ p) for i in range(k))
    return (-b + math.sqrt(b * b - 4 * k * pp * (a_sum - bound))) / (2 * k * pp)


@pytest.mark.parametrize("direction", ["std", "unit", "sign"])
@pytest.mark.parametrize("kind", ["minmax", "minsum"])
def test_minmax_minsum_gamma_is_the_largest_feasible(kind: str, direction: str) -> None:
    h = honest(seed=1)
    x = h.double()
    mu = x.mean(dim=0)
    if direction == "std":
        p = -x.std(dim=0)
    elif direction == "unit":
        p = -mu / mu.norm()
    else:
        p = -torch.sign(mu)
    gamma_fn = attacks.minmax_gamma if kind == "minmax" else attacks.minsum_gamma
    fn = attacks.minmax if kind == "minmax" else attacks.minsum
    gamma = gamma_fn(h, 10, 2, direction=direction)
    expected = closed_form_gamma(h, p, kind)
    assert math.isclose(gamma, expected, rel_tol=2e-5)
    assert gamma <= expected * (1 + 1e-12)  # feasible end of the bracket
    torch.testing.assert_close(
        fn(h, 10, 2, direction=direction).double(), mu + gamma * p, rtol=1e-5, atol=1e-5
    )


def test_minmax_large_gamma_doubles_past_the_start_and_zero_spread() -> None:
    h = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    p = minmax_mod.perturbation(h, "sign")
    gamma = attacks.minmax_gamma(h, 5, 2, direction="sign")
    assert gamma > 10.0
    assert math.isclose(gamma, closed_form_gamma(h, p, "minmax"), rel_tol=2e-5)
    same = torch.ones(3, 4)
    assert torch.equal(attacks.minmax(same, 5, 2), torch.ones(4))
    with pytest.raises(ValueError, match="direction"):
        attacks.minmax(h, 5, 2, direction="up")


def test_fang_draws_each_coordinate_in_its_interval() -> None:
    h = honest(seed=2)
    h[:, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0])  # positive mean, w_min > 0
    h[:, 1] = -h[:, 0]  # negative mean, w_max < 0
    g = torch.Generator().manual_seed(0)
    out = attacks.fang(h, 10, 2, generator=g, num_vectors=50)
    assert out.shape == (50, 5)
    for j in range(5):
        col = h[:, j].double()
        w_max, w_min, s = float(col.max()), float(col.min()), float(col.mean())
        if s >= 0:
            low, high = (w_min / 2, w_min) if w_min > 0 else (2 * w_min, w_min)
        else:
            low, high = (w_max, 2 * w_max) if w_max > 0 else (w_max, w_max / 2)
        assert bool(((out[:, j] >= low - 1e-6) & (out[:, j] <= high + 1e-6)).all()), j
    assert not torch.equal(out[0], out[1])  # each colluder its own draw
    again = attacks.fang(h, 10, 2, generator=torch.Generator().manual_seed(0), num_vectors=50)
    assert torch.equal(out, again)
    assert attacks.fang(h, 10, 2).shape == (5,)


def test_fang_selection_is_the_largest_halving_that_krum_selects() -> None:
    h = honest(k=9, d=20, seed=4)
    n, f = 11, 2
    lam = fang_mod.fang_selection_lambda(h, n, f, gar="krum")
    upper = fang_mod.fang_upper_bound(h, n, f)
    halvings = math.log2(upper / lam)
    assert abs(halvings - round(halvings)) < 1e-9
    vec = attacks.fang_selection(h, n, f, gar="krum")
    torch.testing.assert_close(vec, -lam * torch.sign(h.mean(dim=0)))

    def selected(value: float) -> bool:
        x = -value * torch.sign(h.mean(dim=0))
        res = gars.aggregate("krum", torch.cat([h, x.expand(f, -1)]), f)
        return int(res.selected[0]) >= h.shape[0]

    assert selected(lam)
    if lam < upper:
        assert not selected(2 * lam)


def test_alie_opt_and_ipm_opt_maximise_the_damage() -> None:
    h = honest(k=8, d=6, seed=5)
    n, f = 10, 2
    # Against the plain average the damage grows linearly with z and eps: the top of the range.
    assert math.isclose(defence_aware.alie_opt_z(h, n, f, gar="average"), 10.0, abs_tol=1e-6)
    assert math.isclose(defence_aware.ipm_opt_eps(h, n, f, gar="average"), 10.0, abs_tol=1e-6)
    mu, sigma = h.mean(dim=0), h.std(dim=0)
    torch.testing.assert_close(attacks.alie_opt(h, n, f, gar="average"), mu - 10.0 * sigma)
    torch.testing.assert_close(attacks.ipm_opt(h, n, f, gar="average"), -10.0 * mu)
    # Against a chain: the chosen z is at least as damaging as every point of the grid.
    pre = [("bucketing", {"s": 2, "seed": 0}), "nnm"]
    z = defence_aware.alie_opt_z(h, n, f, gar="median", pre=pre)
    assert 0.0 <= z <= 10.0

    def damage(value: float) -> float:
        x = (mu - value * sigma).double()
        rows = torch.cat([h, x.float().expand(f, -1)])
        out = gars.median(gars.chain(rows, f, pre), f).double()
        return float((out - h.double().mean(dim=0)).norm())

    best = damage(z)
    for grid_z in torch.linspace(0, 10, 20).tolist():
        assert best >= damage(grid_z) - 1e-9
    eps = defence_aware.ipm_opt_eps(h, n, f, gar="krum", pre=["arc"])
    assert 0.0 <= eps <= 10.0


def test_search_1d_refines_an_interior_maximum() -> None:
    x, v = defence_aware.search_1d(lambda t: -((t - 3.3) ** 2), 0.0, 10.0, 20, 40)
    assert abs(x - 3.3) < 1e-5 and v <= 0.0


def test_registry_finds_beyond_attacks_without_changing_names() -> None:
    mine = {"mimic", "minmax", "minsum", "fang", "fang_selection", "alie_opt", "ipm_opt"}
    assert mine <= set(attacks.BEYOND_NAMES)
    assert not set(attacks.NAMES) & set(attacks.BEYOND_NAMES)
    assert mine <= attacks.BEYOND_OMNISCIENT
    for name in mine:
        assert attacks.get(name).needs == "omniscient"
    with pytest.raises(ValueError, match="alie_opt"):
        attacks.get("nope")
