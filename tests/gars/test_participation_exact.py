"""Participation without index sorts (issue 10): the same numbers as the index-sort version.

``_old_*`` below are copies of the implementation before the change (window counting for median
and trimmed mean; ``np.argsort`` + window gather for Phocas, MeaMed and Bulyan's coordinate
step). Without ties the new counts must be the same bit for bit. With ties among *equal* values
at a window bound the old argsort version gave an arbitrary attribution (numpy's argsort is not
stable); the new one shares the bound's kept positions equally among its holders, the
definition median and trimmed mean already used: checked against a slow float64 reference.
Exact distance ties between two different values still go to the lowest row index.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flwr_byz import gars
from flwr_byz.gars import _columns

NEAREST = ("phocas", "meamed")
WINDOW = ("median", "trimmed_mean")


# ---------------------------------------------------------------- copies of the old code
def _old_window_counts(keys: torch.Tensor, ordered: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    n = keys.shape[0]
    counts = torch.zeros(n, dtype=torch.float64)
    window = ordered[lo:hi]
    low, high = window[0], window[-1]
    counts += ((keys > low) & (keys < high)).sum(dim=1, dtype=torch.float64)
    for value, boundary in ((low, None), (high, low)):
        at_value = keys == value
        kept = (window == value).sum(dim=0, dtype=torch.float64)
        if boundary is not None:
            kept = torch.where(high == boundary, torch.zeros_like(kept), kept)
        per_row = kept / at_value.sum(dim=0, dtype=torch.float64).clamp_min(1.0)
        counts += at_value.to(torch.float64) @ per_row
    return counts


def _old_nearest_rows(keys: torch.Tensor, twice: torch.Tensor, k: int) -> torch.Tensor:
    """Rows ``(k, d)`` of the old ``nearest_mean`` with an argsort ``order``."""
    n, d = keys.shape
    array = keys.numpy()
    order = np.argsort(array, axis=0)
    ordered = torch.from_numpy(np.take_along_axis(array, order, axis=0))
    order = torch.from_numpy(order)
    start = torch.zeros(d, dtype=torch.int64)
    for a in range(n - k):
        start += (ordered[a] + ordered[a + k]) < twice
    window = start[None, :] + torch.arange(k)[:, None]
    rows = torch.gather(order, 0, window)
    low, high = ordered[: n - k], ordered[k:]
    ambiguous = ((low + high == twice) & (low != high)).any(dim=0)
    for j in torch.nonzero(ambiguous, as_tuple=True)[0].tolist():
        distance = torch.nan_to_num((keys[:, j] - twice[j] / 2).abs(), nan=float("inf"))
        rows[:, j] = torch.sort(distance, stable=True).indices[:k]
    return rows


def _twice_center(name: str, keys: torch.Tensor, f: int) -> torch.Tensor:
    """2c as the kernels compare it: the rule's own centre (median or Trmean_f) doubled."""
    center = gars.median(keys, f) if name in ("meamed", "bulyan") else gars.trimmed_mean(keys, f)
    return center * 2


def _old_participation(name: str, x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    keys = x.clone()  # finite inputs here
    if name in WINDOW:
        lo, hi = ((n - 1) // 2, n // 2 + 1) if name == "median" else (f, n - f)
        counts = _old_window_counts(keys, torch.sort(keys, dim=0).values, lo, hi)
    elif name in NEAREST:
        rows = _old_nearest_rows(keys, _twice_center(name, keys, f), n - f)
        counts = torch.bincount(rows.reshape(-1), minlength=n).to(torch.float64)
    else:  # bulyan
        selected = gars.aggregate("bulyan", x, f).selected
        pool = keys[selected]
        rows = _old_nearest_rows(pool, _twice_center(name, pool, f), n - 4 * f)
        counts = torch.bincount(selected[rows.reshape(-1)], minlength=n).to(torch.float64)
    return counts / counts.sum()


# ---------------------------------------------------------------- slow float64 reference
def _reference(name: str, x: torch.Tensor, f: int) -> np.ndarray:
    """Per column: the window of sorted positions, its rows by value (bounds shared equally among
    equal values), or by row index where a distance tie between different values decides."""
    n = x.shape[0]
    rows = np.arange(n)
    if name == "bulyan":
        rows = gars.aggregate("bulyan", x, f).selected.numpy()
    pool = x.numpy()[rows].astype(np.float64)
    m = pool.shape[0]
    k = {"median": 2 - m % 2, "trimmed_mean": m - 2 * f, "bulyan": m - 2 * f}.get(name, m - f)
    twice = None
    if name in NEAREST or name == "bulyan":
        twice = _twice_center(name, x[rows], f).numpy().astype(np.float64)
    counts = np.zeros(n)
    for j in range(pool.shape[1]):
        column = pool[:, j]
        s = np.sort(column)
        if twice is None:
            start = (m - 1) // 2 if name == "median" else f
        else:
            pairs = s[: m - k] + s[k:]
            start = int(np.count_nonzero(pairs < twice[j]))
            if np.any((pairs == twice[j]) & (s[: m - k] != s[k:])):
                distance = np.abs(column - twice[j] / 2)
                for r in np.argsort(distance, kind="stable")[:k]:
                    counts[rows[r]] += 1
                continue
        window = s[start : start + k]
        for value in set(window.tolist()):
            holders = np.flatnonzero(column == value)
            counts[rows[holders]] += np.count_nonzero(window == value) / holders.size
    return counts / counts.sum()


def _tied(n: int, d: int, seed: int) -> torch.Tensor:
    """Small half-integers (equal values at the bounds, symmetric pairs around the centre),
    a third of the columns without ties."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=(n, d)).astype(np.float64) / 2
    x[:, : d // 3] += rng.normal(size=(n, d // 3))
    return torch.from_numpy(x)


@pytest.fixture(params=[(64, 1), (64, 2), (1 << 14, 0)], ids=["block64", "block64x2", "default"])
def blocking(request, monkeypatch):
    block, workers = request.param
    monkeypatch.setattr(_columns, "_COLUMN_BLOCK", block)
    monkeypatch.setattr(_columns, "_BLOCK", block)
    monkeypatch.setattr(_columns, "_WORKERS", workers)
    return block


RULES = (*WINDOW, *NEAREST, "bulyan")
SIZES = [(7, 1), (8, 1), (15, 3), (25, 5), (26, 5)]


def _f(name: str, n: int, f: int) -> int:
    return min(f, (n - 3) // 4) if name == "bulyan" else f


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,f", SIZES)
@pytest.mark.parametrize("name", RULES)
def test_untied_participation_is_the_old_one_bit_for_bit(blocking, name, n, f, dtype):
    f = _f(name, n, f)
    x = torch.from_numpy(np.random.default_rng(n + f).normal(size=(n, 300))).to(dtype)
    got = gars.aggregate(name, x, f)
    assert torch.equal(got.participation, _old_participation(name, x, f))
    assert torch.equal(got.vector, gars.get(name)(x, f))  # the plain function's output


@pytest.mark.parametrize("n,f", SIZES)
@pytest.mark.parametrize("name", WINDOW)
def test_tied_window_participation_is_the_old_one(blocking, name, n, f):
    x = _tied(n, 300, seed=n * 7 + f)
    got = gars.aggregate(name, x, f).participation
    torch.testing.assert_close(got, _old_participation(name, x, f), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,f", SIZES)
@pytest.mark.parametrize("name", RULES)
def test_tied_participation_matches_the_reference(blocking, name, n, f, dtype):
    f = _f(name, n, f)
    x = _tied(n, 300, seed=n * 3 + f).to(dtype)
    got = gars.aggregate(name, x, f)
    np.testing.assert_allclose(got.participation.numpy(), _reference(name, x, f), rtol=1e-12)
    assert torch.equal(got.vector, gars.get(name)(x, f))


@pytest.mark.parametrize("name", (*NEAREST, "bulyan"))
def test_distance_ties_between_different_values_go_to_the_lowest_rows(name):
    """Distinct values symmetric around the centre: old (stable redo) and new agree exactly."""
    n, f = 11, 2
    base = torch.tensor([0.0, -1.0, 1.0, -2.0, 2.0, -3.0, 3.0, -4.0, 4.0, -5.0, 5.0])
    x = torch.stack([base[torch.randperm(n, generator=torch.Generator().manual_seed(j))]
                     for j in range(40)], dim=1).to(torch.float64)  # fmt: skip
    got = gars.aggregate(name, x, f)
    assert torch.equal(got.participation, _old_participation(name, x, f))
    np.testing.assert_allclose(got.participation.numpy(), _reference(name, x, f), rtol=1e-12)


@pytest.mark.parametrize("name", RULES)
def test_nonfinite_inputs_keep_values_and_sum_to_one(name):
    n, f = 15, 3
    x = _tied(n, 200, seed=1)
    x[0, :50] = float("nan")
    x[1, 20:80] = float("inf")
    x[2, 60:120] = float("-inf")
    got = gars.aggregate(name, x, f)
    assert torch.equal(got.vector, gars.get(name)(x, f))
    assert got.participation.sum().item() == pytest.approx(1.0)
    if name != "bulyan":  # keys: NaN -> -inf / +inf alternately; the reference sees them so
        keys = _columns_keys(name, x, f)
        np.testing.assert_allclose(got.participation.numpy(), _reference(name, keys, f), rtol=1e-12)


def _columns_keys(name: str, x: torch.Tensor, f: int) -> torch.Tensor:
    from flwr_byz.gars._checks import extremes_as_inf

    return extremes_as_inf(name, x, f)


@pytest.mark.parametrize("name", ["median", "phocas"])
def test_torch_branch_matches_numpy_branch(monkeypatch, name):
    """``window_participation`` on accelerators (torch, exact shares everywhere)."""
    x = _tied(9, 200, seed=4).to(torch.float32)
    expected = gars.aggregate(name, x, 2).participation
    monkeypatch.setattr(_columns, "_NUMPY_DTYPES", ())
    got = gars.aggregate(name, x, 2).participation
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("n,f", [(15, 3), (26, 5)])
@pytest.mark.parametrize("name", RULES)
def test_identical_attackers_share_their_value_equally(blocking, name, n, f):
    """f attackers sending one vector (ALIE-like): their value is a window bound in most
    columns and its holders share it (the few-distinct-weights path of the corrections)."""
    rng = np.random.default_rng(n + f)
    x = rng.normal(size=(n, 300))
    x[n - f :] = x[: n - f].mean(axis=0) + 0.5 * x[: n - f].std(axis=0)
    x = torch.from_numpy(x)
    got = gars.aggregate(name, x, f)
    np.testing.assert_allclose(got.participation.numpy(), _reference(name, x, f), rtol=1e-12)
    assert torch.equal(got.vector, gars.get(name)(x, f))
