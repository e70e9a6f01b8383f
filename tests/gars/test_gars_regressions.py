"""Regression cases for the bugs of the anchors (Flower's built-in strategies and common readings):
float32 Gram distances, n-f-1 neighbours, weighted Multi-Krum, one-pass Bulyan, NaN in a median."""

from __future__ import annotations

import gars_reference as ref
import numpy as np
import pytest
import torch

from flwr_byz import gars
from flwr_byz.gars import pairwise_squared_distances


def _shared_component_round(seed: int, n: int = 7, f: int = 2, d: int = 1000) -> np.ndarray:
    """Model weights of norm 1e3 sharing one large component; honest ones differ by ~1e-3, the
    f Byzantine ones (last rows) by ~3e-3: truly worse, so Krum must not pick them."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=d)
    common *= 1e3 / np.linalg.norm(common)
    x = common + 1e-3 * rng.normal(size=(n, d))
    x[n - f :] = common + 3e-3 * rng.normal(size=(f, d))
    return x.astype(np.float32)


def _flower_gram_krum(x: np.ndarray, f: int) -> int:
    """Flower 1.41's Message-API Krum (flwr.serverapp.strategy.multikrum), called on the rows."""
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import multikrum

    distances = multikrum.compute_distances([ArrayRecord([row]) for row in x])
    k = max(1, len(x) - f - 2)
    scores = [np.sort(np.delete(distances[i], i))[:k].sum() for i in range(len(x))]
    return int(np.argmin(scores))


def test_float32_gram_krum_picks_byzantine_ours_matches_float64_reference():
    n, f = 7, 2
    fooled = 0
    for seed in range(12):
        x = _shared_component_round(seed, n, f)
        expected = ref.krum_index(x.astype(np.float64), f)
        assert expected < n - f  # the float64 reference picks an honest vector
        assert gars.aggregate("krum", torch.from_numpy(x), f).selected.tolist() == [expected]
        fooled += _flower_gram_krum(x, f) >= n - f
    assert fooled >= 1, "the construction no longer fools Flower's float32 Gram Krum"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pairwise_distances_accurate_with_large_common_component(dtype):
    x = torch.from_numpy(_shared_component_round(0)).to(dtype)
    x64 = x.double()
    exact = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    ours = pairwise_squared_distances(x)
    assert ours.dtype == torch.float64
    off = ~torch.eye(len(x), dtype=torch.bool)
    relative = ((ours - exact).abs()[off] / exact[off]).max()
    assert relative < 1e-6
    assert torch.equal(ours, ours.T) and bool((ours.diagonal() == 0).all())
    # The raw float32 Gram formula is off by orders of magnitude more on the same rows.
    x32 = x.float()
    sq = (x32 * x32).sum(1)
    naive = (sq[:, None] + sq[None, :] - 2 * x32 @ x32.T).double()
    assert ((naive - exact).abs()[off] / exact[off]).max() > 100 * relative


def test_pairwise_distances_with_huge_outlier_identical_rows_and_nonfinite_rows():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 64)) * 1e-3 + 5.0
    x[1] = x[2]  # identical rows: exactly 0 apart
    x[4] = 1e20  # dominates the mean: robust re-centring path
    x[6, 3] = np.nan
    ours = pairwise_squared_distances(torch.from_numpy(x).float())
    x64 = torch.from_numpy(x).float().double()
    exact = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    finite = [i for i in range(9) if i != 6]
    sub = ours[finite][:, finite]
    ref_sub = exact[finite][:, finite]
    assert float(sub[1, 2]) == 0.0
    mask = ref_sub > 0
    assert ((sub - ref_sub).abs()[mask] / ref_sub[mask]).max() < 1e-6
    assert bool(torch.isinf(ours[6, finite]).all()) and float(ours[6, 6]) == 0.0


def test_krum_uses_n_minus_f_minus_2_neighbours_not_n_minus_f_minus_1():
    found = 0
    for seed in range(200):
        x = np.random.default_rng(seed).normal(size=(7, 2))
        right, wrong = ref.krum_index(x, 1, 7 - 1 - 2), ref.krum_index(x, 1, 7 - 1 - 1)
        if right != wrong:
            found += 1
            assert gars.aggregate("krum", torch.from_numpy(x), 1).selected.tolist() == [right]
    assert found >= 3


def test_multi_krum_is_a_plain_average_never_weighted_by_example_counts():
    x = np.random.default_rng(5).normal(size=(9, 4))
    agg = gars.aggregate("multi_krum", torch.from_numpy(x), 2)
    picked = ref.multi_krum_indices(x, 2, 7)
    np.testing.assert_allclose(agg.vector.numpy(), x[picked].mean(axis=0), rtol=1e-12)
    counts = np.arange(1, 10, dtype=np.float64)[picked]  # what a FedAvg-style mean would weight
    weighted = (x[picked] * counts[:, None]).sum(0) / counts.sum()
    assert np.abs(agg.vector.numpy() - weighted).max() > 1e-3


def _one_pass_bulyan(x: np.ndarray, f: int) -> np.ndarray:
    """Flower 1.41's Bulyan: theta lowest Krum scores of ONE pass, then the coordinate step."""
    theta = len(x) - 2 * f
    picked = ref.multi_krum_indices(x, f, theta)
    pool = x[picked]
    return ref.nearest_mean(pool, ref.median(pool), theta - 2 * f)


def test_bulyan_iterates_its_selection_unlike_one_pass():
    differ = 0
    for seed in range(40):
        x = np.random.default_rng(seed).normal(size=(11, 3))
        expected, chosen = ref.bulyan(x, 2)
        agg = gars.aggregate("bulyan", torch.from_numpy(x), 2)
        assert agg.selected.tolist() == chosen
        np.testing.assert_allclose(agg.vector.numpy(), expected, rtol=1e-12, atol=1e-12)
        differ += np.abs(_one_pass_bulyan(x, 2) - expected).max() > 1e-9
    assert differ >= 3


def test_one_nan_client_poisons_a_plain_median_but_not_ours():
    x = np.random.default_rng(6).normal(size=(7, 5))
    x[3, 2] = np.nan
    assert np.isnan(
        np.median(x, axis=0)[2]
    )  # the plain median (and Flower's FedMedian) is poisoned
    assert torch.isnan(torch.from_numpy(x).median(dim=0).values[2])
    for f in (1, 2, 3):
        ours = gars.median(torch.from_numpy(x), f).numpy()
        np.testing.assert_allclose(ours, ref.median(x), rtol=1e-12)
        assert np.isfinite(ours).all()
    with pytest.raises(ValueError, match="median"):
        gars.median(torch.from_numpy(x), 0)


def test_nan_alternates_ends_so_median_stays_central():
    column = np.array([[1.0], [2.0], [3.0], [np.nan], [np.nan]])
    # First NaN -> -inf, second -> +inf: the median is the middle finite value.
    assert float(gars.median(torch.from_numpy(column), 2)) == 2.0


@pytest.mark.parametrize("case", ["colluders", "two_clusters", "outliers", "plain"])
def test_pairwise_distances_relative_accuracy_on_attack_shaped_rounds(case):
    generator = torch.Generator().manual_seed(4)
    n, d = 31, 20_000
    x = torch.randn(d, generator=generator) * 0.05 + 0.01 * torch.randn(n, d, generator=generator)
    if case == "colluders":
        x[16:] = x[0] + 0.5  # identical colluding vectors
    elif case == "two_clusters":
        x[10:18], x[18:24] = x[1], x[2] + 1e-4
    elif case == "outliers":
        x[24:] = 1e20
    x64 = x.double()
    exact = torch.stack([((x64 - x64[i]) ** 2).sum(dim=1) for i in range(n)])
    ours = pairwise_squared_distances(x)
    zero = exact == 0
    assert bool((ours[zero] == 0).all())
    assert float(((ours - exact).abs()[~zero] / exact[~zero]).max()) < 1e-6


def test_geometric_median_is_not_trapped_on_a_starting_data_point() -> None:
    """The coordinate-wise median (Weiszfeld's start) is row 2 here, but the geometric median is
    not: the other rows' unit pull at row 2 has norm 1.0126 > 1 (its subgradient condition), so the
    result must leave row 2 and beat it on the objective, at any scale (found by hypothesis)."""
    x = np.array(
        [
            [1.70526959, 2.89355229, -0.82914176],
            [-5.86184204, 3.27787738, -0.29703166],
            [-2.34524988, 1.78974631, -0.67247331],
            [1.46912539, -0.74692271, 0.16348445],
            [-3.26088479, -1.62506649, -4.55847422],
        ]
    )
    pull = sum((x[2] - x[i]) / np.linalg.norm(x[2] - x[i]) for i in (0, 1, 3, 4))
    assert np.linalg.norm(pull) > 1.0

    def objective(z: np.ndarray, rows: np.ndarray) -> float:
        return float(np.linalg.norm(rows - z, axis=1).sum())

    for scale in (1.0, 36.0):
        rows = x * scale
        z = gars.geometric_median(torch.from_numpy(rows), 0, tol=1e-12, max_iter=10_000).numpy()
        assert objective(z, rows) < objective(rows[2], rows) - 1e-6 * scale
        assert np.linalg.norm(z - rows[2]) > 1e-3 * scale
