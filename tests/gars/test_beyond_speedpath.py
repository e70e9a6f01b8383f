"""The blocked / input-dtype paths of centered_clipping, fltrust, clip and arc against slow
float64 references: equal within float tolerance, blocked == unblocked, NaN behaviour unchanged."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from flwr_byz import gars
from flwr_byz.gars import preaggregation as pre

cc_module = importlib.import_module("flwr_byz.gars.centered_clipping")
fltrust_module = importlib.import_module("flwr_byz.gars.fltrust")


def data(n: int = 9, d: int = 700, seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.1 + 0.5
    return x.to(dtype)


def ref_cc(v: torch.Tensor, tau: float, steps: int, center=None) -> torch.Tensor:
    """Slow float64 centered clipping; rows with a NaN/inf get weight 0 (still counted in n)."""
    x = v.double()
    n, d = x.shape
    c = torch.zeros(d, dtype=torch.float64) if center is None else center.double().clone()
    for _ in range(steps):
        total = torch.zeros(d, dtype=torch.float64)
        for i in range(n):
            if not bool(torch.isfinite(x[i]).all()):
                continue
            diff = x[i] - c
            norm = math.sqrt(float((diff**2).sum()))
            total += diff * min(1.0, tau / norm if norm > 0 else math.inf)
        c = c + total / n
    return c


def ref_fltrust(v: torch.Tensor, g0: torch.Tensor) -> torch.Tensor:
    x, g = v.double(), g0.double()
    gn = math.sqrt(float((g**2).sum()))
    num, den = torch.zeros_like(g), 0.0
    for i in range(x.shape[0]):
        if not bool(torch.isfinite(x[i]).all()):
            continue
        vn = math.sqrt(float((x[i] ** 2).sum()))
        ts = max(0.0, float(x[i] @ g) / (vn * gn))
        num += ts * x[i] * gn / vn
        den += ts
    return num / den


@pytest.fixture(params=["blocked", "unblocked"])
def blocks(request, monkeypatch):
    size = 64 if request.param == "blocked" else 1 << 30  # 64 columns per block vs one block
    for module in (cc_module, fltrust_module, pre):
        monkeypatch.setattr(module, "_BLOCK_ELEMENTS", size)
    return request.param


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize(("tau", "steps"), [(100.0, 1), (1.0, 3), (0.2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_centered_clipping_paths_match_reference(blocks, monkeypatch, fast, tau, steps, dtype):
    monkeypatch.setattr(cc_module, "_FAST", fast)
    v = data(dtype=dtype)
    center = torch.full((700,), 0.3)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 0}
    for c in (None, center):
        out = gars.centered_clipping(v, 2, tau=tau, L=steps, center=c)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), ref_cc(v, tau, steps, c), **tol)


def test_centered_clipping_blocked_equals_unblocked_and_paths_agree(monkeypatch) -> None:
    v = data(n=11, d=1000, seed=3)
    outs = {}
    for size in (64, 1 << 30):
        for fast in (True, False):
            monkeypatch.setattr(cc_module, "_BLOCK_ELEMENTS", size)
            monkeypatch.setattr(cc_module, "_FAST", fast)
            res = gars.aggregate("centered_clipping", v, 3, tau=0.5, L=4)
            outs[size, fast] = res
    base = outs[1 << 30, False]
    for res in outs.values():
        torch.testing.assert_close(res.vector, base.vector, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(res.participation, base.participation, rtol=1e-9, atol=1e-12)


def test_centered_clipping_nonfinite_rows_and_huge_rows(blocks) -> None:
    v = data(n=10, d=300, seed=1)
    v[0, 5] = float("nan")
    v[1, 7] = float("inf")
    v[2] = 1e35  # weight ~1e-36: below 1e-30, the float64 path is taken
    for tau, steps in ((1.0, 1), (0.3, 3)):
        res = gars.aggregate("centered_clipping", v, 3, tau=tau, L=steps)
        assert bool(torch.isfinite(res.vector).all())
        assert float(res.participation[:2].sum()) == 0.0
        torch.testing.assert_close(res.vector.double(), ref_cc(v, tau, steps), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="more than f=1"):
        gars.centered_clipping(v, 1)


def test_centered_clipping_does_not_modify_center_or_input() -> None:
    v = data(dtype=torch.float64)
    center = torch.full((700,), 0.3, dtype=torch.float64)
    saved_v, saved_c = v.clone(), center.clone()
    gars.centered_clipping(v, 2, tau=0.5, L=3, center=center)
    assert torch.equal(v, saved_v) and torch.equal(center, saved_c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fltrust_blocked_matches_reference(blocks, dtype) -> None:
    v = data(dtype=dtype)
    g0 = torch.linspace(-0.5, 1.5, 700)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 0}
    torch.testing.assert_close(
        gars.fltrust(v, server_update=g0).double(), ref_fltrust(v, g0), **tol
    )
    v[3, 1] = float("nan")
    v[4] = -v[5]
    res = gars.aggregate("fltrust", v, 2, server_update=g0)
    assert float(res.participation[3]) == 0.0
    torch.testing.assert_close(res.vector.double(), ref_fltrust(v, g0), **tol)
    ts = fltrust_module.trust_scores(v, g0)
    assert float(ts[3]) == 0.0 and bool((ts >= 0).all())


def ref_norms(v: torch.Tensor) -> list[float]:
    return [math.sqrt(sum(float(x) ** 2 for x in row)) for row in v.double()]


def test_row_norms_blocked_match_reference_and_nonfinite(blocks) -> None:
    v = data(n=6, d=300, seed=2)
    v[1, 0] = float("nan")
    v[2, 3] = float("-inf")
    v[3] = 1e30  # float32 squares would overflow; float64 ones do not
    norms = pre._row_norms(v)
    expected = ref_norms(v)
    for i in (0, 3, 4, 5):
        assert math.isclose(float(norms[i]), expected[i], rel_tol=1e-12)
    assert float(norms[1]) == math.inf and float(norms[2]) == math.inf


def test_clip_arc_blocked_keep_nonfinite_rows_and_unit_rows_bitwise(blocks) -> None:
    v = data(n=9, d=300, seed=4) * torch.rand(9, 1, generator=torch.Generator().manual_seed(0))
    v[2, 0] = float("nan")
    v[5, 1] = float("inf")
    clipped = gars.clip(v, c=3.0)
    norms = ref_norms(v)
    for i in range(9):
        if i in (2, 5) or norms[i] <= 3.0:
            assert torch.equal(clipped[i].isnan(), v[i].isnan())
            assert torch.equal(torch.nan_to_num(clipped[i]), torch.nan_to_num(v[i]))
        else:
            torch.testing.assert_close(clipped[i].double(), v[i].double() * (3.0 / norms[i]))
    out = gars.arc(v, 3)
    assert torch.equal(out[[2, 5]].isnan(), v[[2, 5]].isnan())
    assert out.data_ptr() != v.data_ptr()
    finite = [i for i in range(9) if i not in (2, 5)]
    top = sorted(finite, key=lambda i: -norms[i])
    for i in top[2:]:  # k = 4: the two non-finite rows and the two largest finite ones
        assert torch.equal(out[i], v[i])
