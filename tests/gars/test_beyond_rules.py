"""centered_clipping, fltrust and dnc against slow float64 references, plus their properties."""

from __future__ import annotations

import math

import pytest
import torch

from flwr_byz import gars


def data(n: int = 9, d: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + 0.5


def ref_centered_clipping(v: torch.Tensor, tau: float, steps: int, center=None) -> torch.Tensor:
    x = v.double()
    n, d = x.shape
    c = torch.zeros(d, dtype=torch.float64) if center is None else center.double().clone()
    for _ in range(steps):
        total = torch.zeros(d, dtype=torch.float64)
        for i in range(n):
            diff = x[i] - c
            norm = math.sqrt(float((diff**2).sum()))
            total += diff * min(1.0, tau / norm if norm > 0 else math.inf)
        c = c + total / n
    return c


def ref_fltrust(v: torch.Tensor, g0: torch.Tensor) -> torch.Tensor:
    x, g = v.double(), g0.double()
    gn = math.sqrt(float((g**2).sum()))
    num = torch.zeros_like(g)
    den = 0.0
    for i in range(x.shape[0]):
        vn = math.sqrt(float((x[i] ** 2).sum()))
        ts = max(0.0, float(x[i] @ g) / (vn * gn))
        num += ts * x[i] * gn / vn
        den += ts
    return num / den


def ref_dnc(v: torch.Tensor, f: int, niters: int, b: int, seed: int) -> list[int]:
    x = v.double()
    n, d = x.shape
    gen = torch.Generator().manual_seed(seed)
    good = set(range(n))
    for _ in range(niters):
        cols = torch.randperm(d, generator=gen)[: min(b, d)].sort().values
        sub = x[:, cols]
        centred = sub - sub.mean(dim=0)
        top = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        scores = [float(centred[i] @ top) ** 2 for i in range(n)]
        kept = sorted(range(n), key=lambda i: (scores[i], i))[: n - f]
        good &= set(kept)
    return sorted(good)


@pytest.mark.parametrize(("tau", "steps"), [(100.0, 1), (1.0, 3), (0.3, 2)])
def test_centered_clipping_matches_reference(tau: float, steps: int) -> None:
    v = data()
    center = torch.full((6,), 0.2)
    out = gars.centered_clipping(v, 2, tau=tau, L=steps)
    torch.testing.assert_close(
        out.double(), ref_centered_clipping(v, tau, steps), rtol=1e-5, atol=1e-6
    )
    out_c = gars.centered_clipping(v, 2, tau=tau, L=steps, center=center)
    torch.testing.assert_close(
        out_c.double(), ref_centered_clipping(v, tau, steps, center), rtol=1e-5, atol=1e-6
    )


def test_centered_clipping_state_is_explicit_and_robust() -> None:
    v = data(n=10)
    first = gars.centered_clipping(v, 3, tau=1.0, L=1)
    second = gars.centered_clipping(v, 3, tau=1.0, L=1, center=first)
    torch.testing.assert_close(
        second, gars.centered_clipping(v, 3, tau=1.0, L=2), rtol=1e-5, atol=1e-6
    )
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gars.centered_clipping(v[perm], 3, tau=1.0), first)
    bad = v.clone()
    bad[:3] = 1e9
    moved = gars.centered_clipping(bad, 3, tau=1.0, L=1)
    honest = gars.centered_clipping(v[3:], 0, tau=1.0, L=1)  # f outliers move it at most 3/10
    assert float((moved - honest * 7 / 10).norm()) <= 3 / 10 + 1e-5
    nan = v.clone()
    nan[0, 0] = float("nan")
    nan[1] = float("inf")
    out = gars.aggregate("centered_clipping", nan, 2, tau=1.0)
    assert bool(torch.isfinite(out.vector).all())
    assert float(out.participation[:2].sum()) == 0.0
    assert math.isclose(float(out.participation.sum()), 1.0)
    with pytest.raises(ValueError, match="more than f=1"):
        gars.centered_clipping(nan, 1)
    with pytest.raises(ValueError, match="centered_clipping needs n >= 2f \\+ 1"):
        gars.centered_clipping(v, 5)
    with pytest.raises(ValueError, match="center must have 6"):
        gars.centered_clipping(v, 1, center=torch.zeros(5))


def test_fltrust_matches_reference_and_properties() -> None:
    v = data()
    g0 = torch.linspace(0.5, 1.5, 6)
    out = gars.fltrust(v, server_update=g0)
    torch.testing.assert_close(out.double(), ref_fltrust(v, g0), rtol=1e-5, atol=1e-6)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gars.fltrust(v[perm], server_update=g0), out)
    assert float(out.norm()) <= float(g0.norm()) * (1 + 1e-6)
    attacked = v.clone()
    attacked[:3] = -1e6 * g0  # opposite direction: trust 0
    attacked[3, 1] = float("nan")
    res = gars.aggregate("fltrust", attacked, 4, server_update=g0)
    assert float(res.participation[:4].sum()) == 0.0
    torch.testing.assert_close(
        res.vector.double(), ref_fltrust(attacked[4:], g0), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(gars.NoTrustError):
        gars.fltrust(-v.abs(), server_update=torch.ones(6))
    assert issubclass(gars.NoTrustError, ValueError)
    with pytest.raises(ValueError, match="server_update"):
        gars.fltrust(v)


@pytest.mark.parametrize(("f", "b", "seed"), [(1, 3, 0), (2, 4, 1), (3, 100, 2), (0, 2, 3)])
def test_dnc_matches_reference(f: int, b: int, seed: int) -> None:
    v = data(n=9, d=8, seed=seed)
    res = gars.aggregate("dnc", v, f, b=b, seed=seed)
    good = ref_dnc(v, f, 5, b, seed)
    if good:
        assert res.selected.tolist() == good
        torch.testing.assert_close(res.vector.double(), v.double()[good].mean(dim=0))
    torch.testing.assert_close(gars.dnc(v, f, b=b, seed=seed), res.vector)
    g = torch.Generator().manual_seed(seed)
    torch.testing.assert_close(gars.dnc(v, f, b=b, generator=g), res.vector)


def test_dnc_removes_outliers_and_nonfinite_rows() -> None:
    v = data(n=11, d=50)
    v[0] += 30.0
    v[1] -= 30.0
    v[2, 7] = float("nan")
    res = gars.aggregate("dnc", v, 3, b=20, seed=5)
    assert not set(res.selected.tolist()) & {0, 1, 2}
    assert bool(torch.isfinite(res.vector).all())
    assert math.isclose(float(res.participation.sum()), 1.0)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    # same kept set under a permutation when b = d (no coordinate sampling involved)
    full = gars.aggregate("dnc", v, 3, b=50, seed=0)
    permuted = gars.aggregate("dnc", v[perm], 3, b=50, seed=0)
    assert sorted(perm[permuted.selected].tolist()) == full.selected.tolist()
    with pytest.raises(ValueError, match="dnc needs n >= 2f \\+ 1"):
        gars.dnc(v, 6)


def test_registry_finds_beyond_rules_without_changing_names() -> None:
    assert len(gars.NAMES) == 11
    assert {"centered_clipping", "fltrust", "dnc"} <= set(gars.BEYOND_NAMES)
    assert not set(gars.NAMES) & set(gars.BEYOND_NAMES)
    assert gars.get("dnc").selects and not gars.get("fltrust").selects
    assert gars.get("centered_clipping").min_n(3) == 7
    assert gars.get("fltrust").max_f(4) == 3
    with pytest.raises(ValueError, match="centered_clipping"):
        gars.get("nope")


def test_dnc_empty_intersection_falls_back_to_the_most_often_kept() -> None:
    v = data(n=5, d=10, seed=4)
    x = v.double()
    gen = torch.Generator().manual_seed(9)
    counts = [0] * 5
    for _ in range(30):
        cols = torch.randperm(10, generator=gen)[:1].sort().values
        centred = x[:, cols] - x[:, cols].mean(dim=0)
        top = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        scores = [float(centred[i] @ top) ** 2 for i in range(5)]
        for i in sorted(range(5), key=lambda i: (scores[i], i))[:3]:
            counts[i] += 1
    expected = [i for i in range(5) if counts[i] == max(counts)]
    res = gars.aggregate("dnc", v, 2, niters=30, b=1, seed=9)
    assert res.selected.tolist() == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_beyond_kernels_run_on_cuda_like_on_cpu() -> None:
    v = data(n=11, d=300)
    v[0] = 1e6
    cuda = v.cuda()
    for steps in (["clip"], ["arc"], ["nnm"], [("bucketing", {"s": 2, "seed": 1})]):
        out = gars.chain(cuda, 2, steps)
        assert out.device.type == "cuda"
        torch.testing.assert_close(out.cpu(), gars.chain(v, 2, steps), rtol=1e-4, atol=1e-4)
    for name, options in (
        ("centered_clipping", {"tau": 1.0, "L": 3, "center": torch.ones(300)}),
        ("fltrust", {"server_update": torch.ones(300)}),
        ("dnc", {"b": 50, "seed": 2}),
    ):
        out = gars.aggregate(name, cuda, 2, **options)
        assert out.vector.device.type == "cuda"
        ref = gars.aggregate(name, v, 2, **options)
        torch.testing.assert_close(out.vector.cpu(), ref.vector, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.participation, ref.participation)
