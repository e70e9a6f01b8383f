"""Each rule against the independent float64 reference of gars_reference.py on random (n, f, d)."""

from __future__ import annotations

import gars_reference as ref
import numpy as np
import pytest
import torch

from flwr_byz import gars


def _cases(min_n, count=12, seed=0, max_n=13, max_f=3):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        f = int(rng.integers(0, max_f + 1))
        lo = min_n(f)
        if lo > max_n:
            continue
        n = int(rng.integers(lo, max_n + 1))
        d = int(rng.integers(1, 7))
        x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10) + rng.normal(size=d) * 5
        cases.append((n, f, x))
    return cases


def _close(ours: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n,f,x", _cases(lambda f: 2 * f + 1, seed=1))
def test_median_matches_reference(n, f, x):
    _close(gars.median(torch.from_numpy(x), f), ref.median(x))


@pytest.mark.parametrize("n,f,x", _cases(lambda f: 2 * f + 1, seed=2))
def test_trimmed_mean_matches_reference(n, f, x):
    _close(gars.trimmed_mean(torch.from_numpy(x), f), ref.trimmed_mean(x, f))
    b = max(0, f - 1)
    _close(gars.trimmed_mean(torch.from_numpy(x), f, b=b), ref.trimmed_mean(x, b))


@pytest.mark.parametrize("n,f,x", _cases(lambda f: 2 * f + 1, seed=3))
def test_phocas_matches_reference(n, f, x):
    _close(gars.phocas(torch.from_numpy(x), f), ref.phocas(x, f))


@pytest.mark.parametrize("n,f,x", _cases(lambda f: 2 * f + 1, seed=4))
def test_meamed_matches_reference(n, f, x):
    _close(gars.meamed(torch.from_numpy(x), f), ref.meamed(x, f))


@pytest.mark.parametrize("n,f,x", _cases(lambda f: 2 * f + 3, seed=5))
def test_krum_matches_reference(n, f, x):
    agg = gars.aggregate("krum", torch.from_numpy(x), f)
    index = ref.krum_index(x, f)
    assert agg.selected.tolist() == [index]
    _close(agg.vector, x[index])


@pytest.mark.parametrize("n,f,x", _cases(lambda f: 2 * f + 3, seed=6))
def test_multi_krum_matches_reference(n, f, x):
    for m in (None, 1, n):
        agg = gars.aggregate("multi_krum", torch.from_numpy(x), f, m=m)
        picked = ref.multi_krum_indices(x, f, n - f if m is None else m)
        assert agg.selected.tolist() == picked
        _close(agg.vector, x[picked].mean(axis=0))


@pytest.mark.parametrize("n,f,x", _cases(lambda f: 2 * f + 1, seed=7))
def test_medoid_matches_reference(n, f, x):
    agg = gars.aggregate("medoid", torch.from_numpy(x), f)
    index = ref.medoid_index(x)
    assert agg.selected.tolist() == [index]
    _close(agg.vector, x[index])


@pytest.mark.parametrize("n,f,x", _cases(lambda f: 2 * f + 1, seed=8, max_n=10))
def test_brute_matches_reference(n, f, x):
    agg = gars.aggregate("brute", torch.from_numpy(x), f)
    picked = ref.brute_indices(x, f)
    assert agg.selected.tolist() == picked
    _close(agg.vector, x[picked].mean(axis=0))


@pytest.mark.parametrize("n,f,x", _cases(lambda f: 2 * f + 1, seed=9))
def test_geometric_median_matches_reference(n, f, x):
    ours = gars.geometric_median(torch.from_numpy(x), f, tol=1e-12, max_iter=100_000).numpy()
    expected = ref.weiszfeld(x)
    spread = np.linalg.norm(x - expected, axis=1).mean()

    def objective(z):
        return np.linalg.norm(x - z, axis=1).sum()

    # The minimum is attained (unique unless the points are collinear, e.g. d = 1 with even n).
    assert objective(ours) <= objective(expected) * (1 + 1e-9)
    if x.shape[1] >= 2:
        assert np.linalg.norm(ours - expected) <= 1e-5 * spread
    # Sanity: the reference is the minimiser (no random direction improves it).
    rng = np.random.default_rng(n * 100 + f)
    for _ in range(5):
        step = rng.normal(size=x.shape[1]) * 1e-3 * spread
        assert objective(expected) <= objective(expected + step) + 1e-12


@pytest.mark.parametrize("selector", ["krum", "medoid", "multi_krum", "brute", "geometric_median"])
@pytest.mark.parametrize("variant", ["bulyan", "momentum"])
def test_bulyan_matches_reference(selector, variant):
    max_n = 9 if selector == "brute" else 13
    for _n, f, x in _cases(lambda f: 4 * f + 3, count=6, seed=10, max_n=max_n, max_f=2):
        if selector == "geometric_median" and (f == 0 or x.shape[1] < 2):
            continue  # the geometric median of 2 points (or collinear ones) is not unique
        options = {"tol": 1e-12, "max_iter": 100_000} if selector == "geometric_median" else None
        agg = gars.aggregate(
            "bulyan",
            torch.from_numpy(x),
            f,
            selector=selector,
            variant=variant,
            selector_options=options,
        )
        expected, chosen = ref.bulyan(x, f, selector, variant)
        assert agg.selected.tolist() == chosen
        _close(agg.vector, expected)


def test_float32_inputs_match_float64_reference_closely():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(11, 50))
    x32 = torch.from_numpy(x).float()
    x = x32.double().numpy()
    for name, expected in [
        ("median", ref.median(x)),
        ("trimmed_mean", ref.trimmed_mean(x, 2)),
        ("phocas", ref.phocas(x, 2)),
        ("meamed", ref.meamed(x, 2)),
        ("krum", x[ref.krum_index(x, 2)]),
        ("bulyan", ref.bulyan(x, 2)[0]),
    ]:
        out = gars.get(name)(x32, 2)
        assert out.dtype == torch.float32
        np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-5, atol=1e-6)


def _float32_cancelling(n: int, d: int, seed: int) -> np.ndarray:
    """float32 values whose column sums nearly cancel (centred columns): a float32 accumulator
    loses most digits of such a mean, a float64 one none."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return (x - x.mean(axis=0, dtype=np.float64).astype(np.float32)).astype(np.float32)


@pytest.mark.parametrize("n,f", [(11, 1), (11, 2), (27, 1), (27, 6), (51, 12)])
def test_float32_means_are_rounded_once(n, f):
    """Every mean of float32 values is the float64 mean rounded to float32 (within one ulp):
    no float32 accumulator. The reference runs on the same float32 values in float64."""
    x32 = _float32_cancelling(n, 3000, seed=n * 10 + f)
    x = x32.astype(np.float64)
    for name, expected in [
        ("trimmed_mean", ref.trimmed_mean(x, f)),
        ("phocas", ref.phocas(x, f)),
        ("meamed", ref.meamed(x, f)),
        ("bulyan", ref.bulyan(x, f)[0]),
    ]:
        out = gars.get(name)(torch.from_numpy(x32), f).numpy()
        rounded = expected.astype(np.float32)
        ulps = np.abs(out.astype(np.float64) - rounded) / np.spacing(np.abs(rounded))
        assert ulps.max() <= 1, (name, float(ulps.max()))


# These average whole vectors in one BLAS product in the input's dtype (docs/ALGORITHMS.md,
# "Rounding"): float32 rounding, not bit for bit.
_BLAS_MEANS = ("average", "multi_krum", "brute")


@pytest.mark.parametrize("name", gars.NAMES)
@pytest.mark.parametrize("n", [7, 11, 27])
def test_identical_float32_inputs_give_that_input(name, n):
    """n copies of one float32 vector aggregate to that vector at every f: bit for bit, except
    the BLAS means, which stay within the recursive-summation bound of n units in the last
    place."""
    rule = gars.get(name)
    row = torch.from_numpy(np.random.default_rng(n).normal(size=500).astype(np.float32))
    x = row.repeat(n, 1)
    for f in sorted({0, 1, rule.max_f(n)} if name != "brute" else {0, 1}):
        if f > rule.max_f(n):
            continue
        out = rule(x, f)
        if name in _BLAS_MEANS:
            ulps = (out.double() - row.double()).abs() / np.spacing(row.abs().numpy())
            assert float(ulps.max()) <= n, (name, n, f, float(ulps.max()))
        else:
            assert torch.equal(out, row), (name, n, f)


_COORDINATE_MEANS = ("trimmed_mean", "phocas", "meamed", "bulyan", "nearest_median")


@pytest.mark.parametrize("name", _COORDINATE_MEANS)
@pytest.mark.parametrize("n", [7, 11, 27])
def test_identical_float64_inputs_stay_within_the_recursive_sum_bound(name, n):
    """Float64 inputs are added in float64 (docs/ALGORITHMS.md, "Rounding"): n copies of one
    vector average to it within n units in the last place, the bound of k sequential additions."""
    rule = gars.get(name)
    row = torch.from_numpy(np.random.default_rng(n + 1).normal(size=500))
    x = row.repeat(n, 1)
    for f in sorted({0, 1, rule.max_f(n)}):
        if f > rule.max_f(n):
            continue
        out = rule(x, f)
        ulps = (out - row).abs() / torch.from_numpy(np.spacing(row.abs().numpy()))
        assert float(ulps.max()) <= n, (name, n, f, float(ulps.max()))
