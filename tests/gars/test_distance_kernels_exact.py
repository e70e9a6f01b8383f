"""Issue 10 item 4 / item 3 code paths against slow float64 references written here.

- ``_distances``: the raw (uncentred) float32 Gram path, the padded centred chunks, the folded
  finiteness check (``checked_distances``), and the sample that picks raw vs centred;
- ``brute``: diameters from per-row maxima (few rows left out) vs the full subset blocks;
- ``geometric_median``: the coefficient (Gram) iteration vs the explicit float64 Weiszfeld that
  it replaces, the blocked median centre, the ``objective`` stop.
"""

from __future__ import annotations

import importlib
import itertools
import math

import gars_reference as ref
import numpy as np
import pytest
import torch

from flwr_byz import gars

D = importlib.import_module("flwr_byz.gars._distances")
B = importlib.import_module("flwr_byz.gars.brute")
G = importlib.import_module("flwr_byz.gars.geometric_median")
C = importlib.import_module("flwr_byz.gars._columns")


def exact_squared(x: torch.Tensor) -> np.ndarray:
    """Float64 ``sum (x_i - x_j)^2`` pair by pair (the definition), inf for non-finite rows."""
    rows = x.double().numpy()
    n = len(rows)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = 0.0 if i == j else ref.sq_dist(rows[i], rows[j])
    return out


def _cases(d: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(d)
    spread = torch.randn(9, d, generator=g)
    shared = 1e3 + 1e-3 * torch.randn(9, d, generator=g, dtype=torch.float64)
    colluding = torch.randn(9, d, generator=g)
    colluding[5:] = colluding[5]
    outlier = torch.randn(9, d, generator=g)
    outlier[2] = 1e20
    near = torch.randn(9, d, generator=g)
    near[1] = near[0] + 1e-4 * torch.randn(d, generator=g)
    return {
        "spread": spread,
        "shared": shared.float(),
        "colluding": colluding,
        "outlier": outlier,
        "near_pair": near,
        "gradient_like": 0.05 * torch.randn(d, generator=g) + 0.01 * spread,
    }


@pytest.mark.parametrize("d", [1, 8191, 8192, 20_000, 70_001])
@pytest.mark.parametrize("case", list(_cases(1)))
@pytest.mark.parametrize("raw", [True, False])
def test_float32_paths_match_exact_distances(case: str, d: int, raw: bool) -> None:
    """The documented bound: a reported distance is within a few float32 roundings of the norms
    of the rows whose Gram produced it (raw rows, or rows centred on the mean) -- and pairs where
    that is a visible share of the distance were recomputed, so relative error <= ~err/tau."""
    x = _cases(d)[case]
    got = D._finite_distances(x, raw=raw).numpy()
    want = exact_squared(x)
    rows = x.double() if raw else x.double() - x.double().mean(dim=0)
    norms = (rows * rows).sum(dim=1).numpy()
    eps = float(torch.finfo(torch.float32).eps)
    bound = 64 * eps * (norms[:, None] + norms[None, :])
    assert np.all(np.abs(got - want) <= np.minimum(bound, 1e-3 * want) + 1e-6 * want), case
    assert np.all(np.diag(got) == 0.0)
    if case == "colluding":
        assert np.all(got[5:, 5:] == 0.0)  # identical rows come out exactly 0
    if case in ("shared", "outlier", "near_pair"):  # the cases the refinement exists for
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("raw", [True, False])
def test_centred_chunks_cover_every_column(raw: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small chunks and batches: chunk edges, a partial last block, batches of blocks."""
    monkeypatch.setattr(D, "_FLOAT32_BLOCK", 64)
    monkeypatch.setattr(D, "_CHUNK_ELEMENTS", 64 * 3 * 7)
    monkeypatch.setattr(D, "_BATCH", 2)
    x = _cases(1000)["spread"][:7, :1000]
    center = x.mean(dim=0) if not raw else None
    got = D._gram(x, center, torch.float32)
    rows = x.double() - (0.0 if center is None else center.double())
    np.testing.assert_allclose(got.numpy(), (rows @ rows.T).numpy(), rtol=1e-5, atol=1e-4)


def test_raw_gram_of_a_strided_view() -> None:
    big = torch.randn(6, 3 * 20_000, generator=torch.Generator().manual_seed(3))
    column_major = torch.randn(20_000, 6, generator=torch.Generator().manual_seed(4)).T
    for view in (big[:, ::3], column_major, big[1:5, 7:]):
        got = D._gram(view, None, torch.float32)
        want = (view.double() @ view.double().T).numpy()
        norms = np.sqrt(np.diag(want))
        assert np.all(np.abs(got.numpy() - want) <= 1e-5 * norms[:, None] * norms[None, :])


def test_sample_picks_raw_only_when_it_resolves_as_many_pairs() -> None:
    cases = _cases(D._RAW_MIN_COLUMNS)
    assert D._raw_suffices(cases["spread"])
    assert D._raw_suffices(cases["gradient_like"])
    assert not D._raw_suffices(cases["shared"])  # shared component: centring needed
    assert not D._raw_suffices(cases["outlier"])  # 1e20 squares could overflow float32
    assert not D._raw_suffices(cases["spread"][:, : D._RAW_MIN_COLUMNS - 1])  # too few columns
    with_nan = cases["spread"].clone()
    with_nan[3, :: D._RAW_MIN_COLUMNS // D._SAMPLE_COLUMNS] = float("nan")
    assert not D._raw_suffices(with_nan)


@pytest.mark.parametrize("d", [10, D._RAW_MIN_COLUMNS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_checked_distances_is_finite_rows_plus_distances(d: int, dtype: torch.dtype) -> None:
    x = _cases(d)["spread"].to(dtype)
    x[1, d // 2] = float("nan")
    x[4, 0] = float("inf")
    dist, finite = D.checked_distances("krum", x, 2)
    assert finite.tolist() == [i not in (1, 4) for i in range(9)]
    want = exact_squared(x)
    np.testing.assert_allclose(dist.numpy(), want, rtol=1e-6)
    with pytest.raises(ValueError, match="krum: 2 input vectors contain NaN or inf"):
        D.checked_distances("krum", x, 1)
    clean = _cases(d)["spread"].to(dtype)
    dist, finite = D.checked_distances("krum", clean, 0)
    assert bool(finite.all())
    np.testing.assert_allclose(dist.numpy(), exact_squared(clean), rtol=1e-6)


def test_huge_finite_rows_are_not_taken_for_non_finite() -> None:
    x = _cases(D._RAW_MIN_COLUMNS)["spread"]
    x[0] = 3e19  # squares overflow float32: the raw diagonal is inf, the row is finite
    dist, finite = D.checked_distances("krum", x, 0)
    assert bool(finite.all())
    np.testing.assert_allclose(dist.numpy(), exact_squared(x), rtol=1e-6)


@pytest.mark.parametrize("case", ["spread", "gradient_like", "shared", "colluding", "near_pair"])
def test_rules_select_as_the_reference_on_the_raw_path(case: str) -> None:
    """d large enough for the sampled raw path: the selections of the float64 references."""
    x = _cases(D._RAW_MIN_COLUMNS + 7)[case]
    rows = x.double().numpy()
    n, f = 9, 2
    assert int(torch.nonzero((gars.krum(x, f) == x).all(dim=1))[0]) == ref.krum_index(rows, f)
    expected = ref.multi_krum_indices(rows, f, n - f)
    np.testing.assert_allclose(
        gars.multi_krum(x, f).double().numpy(), rows[expected].mean(axis=0), rtol=1e-5, atol=1e-6
    )
    # The medoid: the reference's row, or in "near_pair" its twin, whose total distance differs
    # by ~2e-8 relative, below the distances' documented accuracy (~1e-7): either may be picked
    # (which one depends on the CPU's float32 GEMM rounding), no row with a larger total.
    medoid = gars.medoid(x, f)
    chosen = [i for i in range(n) if torch.equal(medoid, x[i])]
    totals = ref.medoid_totals(rows)
    assert chosen and totals[chosen[0]] <= min(totals) * (1 + 1e-6)
    if case != "near_pair":
        assert chosen[0] == ref.medoid_index(rows)
    subset = ref.brute_indices(rows, 1)
    np.testing.assert_allclose(
        gars.brute(x, 1).double().numpy(), rows[subset].mean(axis=0), rtol=1e-5, atol=1e-6
    )


def _python_diameters(dist: torch.Tensor, size: int) -> list[float]:
    n = dist.shape[0]
    return [
        max((float(dist[i, j]) for i in s for j in s), default=0.0)
        for s in itertools.combinations(range(n), size)
    ]


def test_row_maxima_diameters_equal_the_subset_blocks() -> None:
    g = torch.Generator().manual_seed(0)
    used = 0
    for trial in range(250):
        n = int(torch.randint(3, 12, (1,), generator=g))
        f = int(torch.randint(0, (n - 1) // 2 + 1, (1,), generator=g))
        if trial % 3:
            x = torch.randn(n, 3, generator=g, dtype=torch.float64)
        else:  # many exact ties
            x = torch.randint(0, 3, (n, 2), generator=g).double()
        dist = torch.cdist(x, x) ** 2
        dist = (dist + dist.T) / 2
        dist.fill_diagonal_(0.0)
        if trial % 5 == 0:
            dist[0, 1:] = math.inf
            dist[1:, 0] = math.inf
        size = n - f
        subsets = torch.tensor(list(itertools.combinations(range(n), size)))
        want = _python_diameters(dist, size)
        got = B._diameters_by_row_maxima(dist, subsets, f)
        assert got.tolist() == want
        best = min(range(len(want)), key=lambda k: (want[k], k))
        assert B.smallest_diameter_subset(dist, size).tolist() == subsets[best].tolist()
        used += (f + 1) * n < size * size
    assert used > 100  # the row-maxima path was the one taken


def _explicit_geometric_median(x: torch.Tensor, f: int, **options: float) -> torch.Tensor:
    """The explicit float64 version the coefficient iteration replaced (kept for Bulyan)."""
    usable = torch.isfinite(x).all(dim=1)
    rows, center = G.centred_rows(x, usable)
    point, _ = G.weiszfeld(
        rows,
        usable,
        options.get("eps", 1e-8),
        options.get("tol", 1e-7),
        options.get("max_iter", 1000),
    )
    return (point + center).to(x.dtype)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coefficient_weiszfeld_matches_the_explicit_one(seed: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(seed)
    n, d = 5 + 2 * seed, 50 + 300 * seed
    x = (2.0 * torch.randn(d, generator=g) + torch.randn(n, d, generator=g)).to(dtype)
    if seed % 2:
        x[1] = x[0]  # the start (median) may sit on data points
        x[2] = x[0]
    if seed % 3 == 0:
        x[n - 1, 3] = float("nan")
    f = (n - 1) // 2
    got = gars.geometric_median(x, f, tol=1e-12, max_iter=10_000).double()
    want = _explicit_geometric_median(x, f, tol=1e-12, max_iter=10_000).double()
    scale = float(x[torch.isfinite(x).all(dim=1)].double().std(dim=0).max())
    atol = (1e-5 if dtype == torch.float32 else 1e-9) * max(scale, 1.0)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=atol, rtol=1e-6)
    result = G._geometric_median_impl(x, f, tol=1e-12, max_iter=10_000)
    finite = torch.isfinite(x).all(dim=1)
    assert float(result.participation[~finite].sum()) == 0.0
    assert abs(float(result.participation.sum()) - 1.0) < 1e-12


def test_blocked_median_centre_equals_the_whole_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(G, "_BLOCK_ELEMENTS", 1)  # 1024-column blocks
    g = torch.Generator().manual_seed(5)
    for n in (1, 2, 6, 7):
        x = torch.randn(n, 3000, generator=g)
        x[:, :50] = torch.randint(0, 3, (n, 50), generator=g).float()
        whole = C.middle_value(C.sorted_columns(x, False)[0]).double()
        assert torch.equal(G._median_center(x, None), whole)
        index = torch.arange(0, n, 2)
        part = C.middle_value(C.sorted_columns(x[index], False)[0]).double()
        assert torch.equal(G._median_center(x, index), part)


def test_objective_stop_and_default_unchanged() -> None:
    g = torch.Generator().manual_seed(9)
    x = 0.3 * torch.randn(4000, generator=g) + torch.randn(11, 4000, generator=g)
    rows = x.double()

    def objective(z: torch.Tensor) -> float:
        return float((rows - z.double()).norm(dim=1).sum())

    default = G._geometric_median_impl(x, 5)
    assert torch.equal(default.vector, gars.geometric_median(x, 5))
    converged = objective(default.vector)
    start = objective(G._median_center(x, None))
    goal = converged + 0.5 * (start - converged)
    early = G._geometric_median_impl(x, 5, objective=goal)
    assert objective(early.vector) <= goal * (1 + 1e-6)
    gram = G._centred_gram(x, None, G._median_center(x, None))
    early_steps = G.weiszfeld_coefficients(gram, 1e-8, 1e-7, 1000, goal)[2]
    assert 1 <= early_steps < G.weiszfeld_coefficients(gram, 1e-8, 1e-7, 1000)[2]
    assert G.weiszfeld_coefficients(gram, 1e-8, 1e-7, 1000, start * 2)[2] == 0


@pytest.mark.parametrize(
    "rows",
    [[3], [0, 1, 2], [1, 2, 5, 6], [0, 2, 4, 6, 8, 9], [6, 1, 2], [2, 2, 5], list(range(10))],
)
def test_mean_of_rows_matches_the_float64_average(
    rows: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    K = importlib.import_module("flwr_byz.gars.krum")
    monkeypatch.setattr(K, "_MEAN_BLOCK", 100)  # several column blocks
    x = torch.randn(10, 1234, generator=torch.Generator().manual_seed(len(rows)))
    want = x.double().numpy()[rows].mean(axis=0)  # duplicates count twice
    got = K.mean_of_rows(x, torch.tensor(rows), True)
    assert got.dtype == x.dtype
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-6, atol=1e-6)
    x[0, 5] = float("inf")  # a row left out may be non-finite on the gathering path
    if 0 not in rows:
        got = K.mean_of_rows(x, torch.tensor(rows), False)
        np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-6, atol=1e-6)
