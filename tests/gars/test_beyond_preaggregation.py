"""Pre-aggregators clip, arc, nnm, bucketing and chain against slow float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from flwr_byz import gars
from flwr_byz.gars import preaggregation as pre


def ref_clip(v: torch.Tensor, c: float) -> torch.Tensor:
    out = v.double().clone()
    for i in range(v.shape[0]):
        norm = math.sqrt(sum(float(x) ** 2 for x in out[i]))
        if norm > c:
            out[i] = out[i] * (c / norm)
    return out


def ref_arc(v: torch.Tensor, f: int) -> torch.Tensor:
    n = v.shape[0]
    out = v.double().clone()
    norms = [math.sqrt(sum(float(x) ** 2 for x in out[i])) for i in range(n)]
    k = math.floor(2 * f * (n - f) / n)
    order = sorted(range(n), key=lambda i: (-norms[i], -i))  # ties: smallest index clipped last
    if k == 0:
        return out
    target = norms[order[k]]
    for i in order[:k]:
        if norms[i] > target:
            out[i] = out[i] * (target / norms[i])
    return out


def ref_nnm(v: torch.Tensor, f: int) -> torch.Tensor:
    n = v.shape[0]
    x = v.double()
    out = torch.empty_like(x)
    for i in range(n):
        dist = [float(((x[i] - x[j]) ** 2).sum()) if j != i else -1.0 for j in range(n)]
        nearest = sorted(range(n), key=lambda j: (dist[j], j))[: n - f]
        out[i] = sum(x[j] for j in nearest) / (n - f)
    return out


def ref_bucketing(v: torch.Tensor, s: int, seed: int) -> torch.Tensor:
    perm = torch.randperm(v.shape[0], generator=torch.Generator().manual_seed(seed)).tolist()
    means = []
    for start in range(0, len(perm), s):
        bucket = perm[start : start + s]
        means.append(sum(v[i].double() for i in bucket) / len(bucket))
    return torch.stack(means)


def data(n: int = 9, d: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g).mul(4)


@pytest.mark.parametrize("seed", range(3))
def test_clip_and_arc_match_reference(seed: int) -> None:
    v = data(seed=seed)
    torch.testing.assert_close(gars.clip(v, c=1.5).double(), ref_clip(v, 1.5))
    for f in range(0, 4):
        torch.testing.assert_close(gars.arc(v, f).double(), ref_arc(v, f))


def test_arc_ties_clip_the_larger_index_first() -> None:
    v = torch.tensor([[3.0, 0.0], [0.0, 3.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # n=5, f=1: k = floor(8/5) = 1: of the two vectors of norm 3 the one at index 1 is clipped.
    out = gars.arc(v, 1)
    assert pre.arc_k(5, 1) == 1
    torch.testing.assert_close(out, ref_arc(v, 1).float())
    torch.testing.assert_close(out[1], torch.tensor([0.0, 3.0]))
    torch.testing.assert_close(out[0], torch.tensor([3.0, 0.0]))
    v6 = torch.cat([v, torch.tensor([[0.0, 3.0]])])  # n=6, f=2: k=2 of three norm-3 rows
    out6 = gars.arc(v6, 2)
    torch.testing.assert_close(out6, ref_arc(v6, 2).float())
    torch.testing.assert_close(out6[0], v6[0])  # the smallest index is clipped last


def test_clip_arc_leave_nonfinite_rows_and_bound_the_rest() -> None:
    v = data()
    v[2, 0] = float("nan")
    v[5, 1] = float("inf")
    clipped = gars.clip(v, c=1.0)
    finite = torch.isfinite(v).all(dim=1)
    assert torch.equal(torch.isnan(clipped), torch.isnan(v))
    assert bool((clipped[finite].norm(dim=1) <= 1.0 + 1e-6).all())
    out = gars.arc(v, 3)  # k = floor(2*3*6/9) = 4: two non-finite rows + two largest finite
    norms = v[finite].double().norm(dim=1).sort(descending=True).values
    assert bool((out[finite].double().norm(dim=1) <= norms[2] + 1e-6).all())
    with pytest.raises(ValueError, match="clip: c"):
        gars.clip(v, c=-1.0)
    with pytest.raises(ValueError, match="clip needs its threshold c"):
        gars.chain(v, 0, ["clip"])


@pytest.mark.parametrize("f", [0, 1, 3])
def test_nnm_matches_reference_and_is_permutation_equivariant(f: int) -> None:
    v = data(seed=f)
    out = gars.nnm(v, f)
    torch.testing.assert_close(out.double(), ref_nnm(v, f), rtol=1e-5, atol=1e-6)
    perm = torch.randperm(v.shape[0], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(gars.nnm(v[perm], f), out[perm], rtol=1e-5, atol=1e-6)
    mixing = pre._nnm_impl(v, f).mixing
    torch.testing.assert_close(mixing.sum(dim=1), torch.ones(v.shape[0], dtype=torch.float64))


def test_nnm_honest_rows_never_mix_extreme_or_nonfinite_rows() -> None:
    v = data(n=10)
    v[0] = 1e6
    v[1, 3] = float("nan")
    v[2] = -1e6
    out = gars.nnm(v, 3)
    honest = out[3:]
    assert bool(torch.isfinite(honest).all())
    assert float(honest.abs().max()) < 10.0
    assert bool(torch.isnan(out[1]).any())  # its own neighbourhood includes itself


@pytest.mark.parametrize(("n", "s"), [(9, 2), (10, 3), (5, 5), (4, 1)])
def test_bucketing_matches_reference_and_is_deterministic(n: int, s: int) -> None:
    v = data(n=n)
    out = gars.bucketing(v, s=s, seed=7)
    assert out.shape == (pre.bucketing_count(n, s), v.shape[1])
    torch.testing.assert_close(out.double(), ref_bucketing(v, s, 7), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gars.bucketing(v, s=s, seed=7), out)
    g = torch.Generator().manual_seed(7)
    torch.testing.assert_close(gars.bucketing(v, s=s, generator=g), out)
    if 1 < s < n:
        assert not torch.equal(gars.bucketing(v, s=s, seed=8), out) or n <= 3
    mixing = pre._bucketing_impl(v, 0, s, seed=7).mixing
    torch.testing.assert_close(mixing.sum(dim=1), torch.ones(out.shape[0], dtype=torch.float64))
    assert torch.equal((mixing > 0).sum(dim=0), torch.ones(n, dtype=torch.int64))  # one bucket each


def test_chain_composes_steps_and_maps_participation_back() -> None:
    v = data(n=10)
    steps: list = [("clip", {"c": 2.0}), {"name": "bucketing", "s": 2, "seed": 3}, "nnm"]
    expected = gars.nnm(gars.bucketing(gars.clip(v, c=2.0), s=2, seed=3), 1)
    torch.testing.assert_close(gars.chain(v, 1, steps), expected)
    result = gars.aggregate_chain(v, 1, steps, "median")
    torch.testing.assert_close(result.vector, gars.median(expected, 1))
    assert result.selected is None
    assert math.isclose(float(result.participation.sum()), 1.0)
    avg = gars.aggregate_chain(v, 0, [("bucketing", {"s": 2, "seed": 0})], "average")
    torch.testing.assert_close(avg.participation, torch.full((10,), 0.1, dtype=torch.float64))
    torch.testing.assert_close(avg.vector, v.mean(dim=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown pre-aggregator"):
        gars.chain(v, 1, ["nope"])


def test_chain_keeps_selection_for_one_to_one_steps_and_never_selects_nan() -> None:
    v = data(n=9)
    v[4, 2] = float("nan")
    v[0] = 1e8
    result = gars.aggregate_chain(v, 2, ["arc"], "krum")
    assert result.selected is not None
    assert int(result.selected[0]) not in (0, 4)
    assert float(result.participation[[0, 4]].sum()) == 0.0
    torch.testing.assert_close(result.vector, gars.arc(v, 2)[int(result.selected[0])])
