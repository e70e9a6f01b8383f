"""The opt-in compiled median network (``FLWR_BYZ_COMPILED_NETWORKS=1``): the same values as the
numpy path bit for bit, off by default, and a failed compile falls back to the numpy path."""

from __future__ import annotations

import pytest
import torch

from flwr_byz import gars
from flwr_byz.gars import _columns, _compiled


@pytest.fixture
def compiled_on(monkeypatch):
    monkeypatch.setenv(_compiled.ENV_VAR, "1")
    monkeypatch.setattr(_compiled, "_BROKEN", [])
    yield


def _rows(n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(n, 700, generator=torch.Generator().manual_seed(n), dtype=dtype)


def test_off_by_default(monkeypatch):
    monkeypatch.delenv(_compiled.ENV_VAR, raising=False)
    assert _compiled.order_statistics(_rows(5, torch.float32), frozenset([2])) is None


@pytest.mark.parametrize("n", [6, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_median_is_the_numpy_median_bit_for_bit(compiled_on, monkeypatch, n, dtype):
    x = _rows(n, dtype)
    x[:, :50] = x[0, :50]  # equal values in some columns
    middle = frozenset({n // 2, (n - 1) // 2})
    stats = _compiled.order_statistics(x, middle)
    if stats is None:
        pytest.skip(f"no compiled network here: {_compiled._BROKEN}")
    expected_order = torch.sort(x, dim=0).values
    for position, values in stats.items():
        assert torch.equal(values, expected_order[position])
    out = gars.median(x, 1)
    monkeypatch.setenv(_compiled.ENV_VAR, "0")
    assert torch.equal(out, gars.median(x, 1))


def test_non_finite_inputs_take_the_numpy_path(compiled_on, monkeypatch):
    x = _rows(7, torch.float32)
    x[0, 3] = float("nan")
    calls = []
    original = _compiled.order_statistics
    _compiled.order_statistics = lambda *a: calls.append(a) or original(*a)
    try:
        out = gars.median(x, 1)
    finally:
        _compiled.order_statistics = original
    assert calls == []
    monkeypatch.setenv(_compiled.ENV_VAR, "0")
    assert torch.equal(out, gars.median(x, 1))


def test_a_failed_compile_falls_back_to_the_numpy_path(compiled_on, monkeypatch):
    def broken(n, positions):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(_compiled, "_network", broken)
    x = _rows(7, torch.float32)
    out = gars.median(x, 1)
    assert _compiled._BROKEN and "no C++ compiler" in _compiled._BROKEN[0]
    assert not _compiled.enabled()
    assert torch.equal(out, torch.sort(x, dim=0).values[3])


@pytest.mark.parametrize("n,b", [(7, 2), (8, 0), (8, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_trimmed_mean_is_the_numpy_one_bit_for_bit(compiled_on, monkeypatch, n, b, dtype):
    x = _rows(n, dtype) * 1e3 + 1e6  # a shared large component: the float64 sums must agree
    x[:, :50] = x[0, :50]
    value = _compiled.window_mean(x, b, n - b)
    if value is None:
        pytest.skip(f"no compiled network here: {_compiled._BROKEN}")
    out = gars.trimmed_mean(x, max(b, 0), b=b)
    monkeypatch.setenv(_compiled.ENV_VAR, "0")
    expected = gars.trimmed_mean(x, max(b, 0), b=b)
    assert torch.equal(value, expected) and torch.equal(out, expected)
    reference = torch.sort(x.double(), dim=0).values[b : n - b].mean(dim=0)
    assert torch.allclose(out.double(), reference, rtol=1e-6 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("name", ["phocas", "meamed", "nearest_median"])
@pytest.mark.parametrize("n,f", [(7, 2), (8, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_nearest_rules_are_the_numpy_ones_bit_for_bit(
    compiled_on, monkeypatch, name, n, f, dtype
):
    """Phocas, MeaMed and the nearest median (k = n - f - 1, here with f - 1 so that k > n / 2)
    on rows with exact distance ties (small integers: the tied columns are redone by row index
    outside the kernel), equal-valued columns and a shared large component."""
    if name == "nearest_median":
        f -= 1
    k = n - f - (name == "nearest_median")
    g = torch.Generator().manual_seed(n * 10 + f)
    ties = torch.randint(-2, 3, (n, 300), generator=g).to(torch.float64)
    shared = torch.randn(n, 300, generator=g, dtype=torch.float64) * 1e-3 + 1e4
    x = torch.cat([ties, shared], dim=1).to(dtype)
    x[:, :40] = x[0, :40]
    result = _compiled.nearest_window_mean(x, f, k, name != "phocas")
    if result is None:
        pytest.skip(f"no compiled network here: {_compiled._BROKEN}")
    assert bool(result[1][:300].any())  # the integer columns have exact ties to redo
    hits = _compiled._nearest_network.cache_info().hits
    out = gars.get(name)(x, f)
    assert _compiled._nearest_network.cache_info().hits > hits  # the rule took the kernel
    monkeypatch.setenv(_compiled.ENV_VAR, "0")
    assert torch.equal(out, gars.get(name)(x, f))


@pytest.mark.parametrize("n,f", [(7, 1), (12, 2)])  # odd and even theta, empty kept range
@pytest.mark.parametrize("variant", ["bulyan", "momentum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_bulyan_step_is_the_numpy_one_bit_for_bit(
    compiled_on, monkeypatch, n, f, variant, dtype
):
    """Bulyan's second step on its selected rows (read by index in the kernel): the same values
    as the numpy path, on rows with exact distance ties (redone by row index outside the kernel),
    equal-valued columns and a shared large component; a second selection does not recompile."""
    g = torch.Generator().manual_seed(n * 10 + f)
    ties = torch.randint(-2, 3, (n, 300), generator=g).to(torch.float64)
    shared = torch.randn(n, 300, generator=g, dtype=torch.float64) * 1e-3 + 1e4
    x = torch.cat([ties, shared], dim=1).to(dtype)
    x[:, :40] = x[0, :40]
    theta = n - 2 * f - (2 if variant == "momentum" else 0)
    beta = theta - 2 * f
    rows = torch.randperm(n, generator=g)[:theta]
    result = _compiled.median_window_mean(x, rows, beta)
    if result is None:
        pytest.skip(f"no compiled network here: {_compiled._BROKEN}")
    reference, tied = _columns.median_window_mean(x.numpy(), rows.tolist(), beta)
    assert torch.equal(torch.nonzero(result[1]).flatten(), torch.from_numpy(tied))
    untied = torch.ones(x.shape[1], dtype=torch.bool)
    untied[result[1]] = False
    assert torch.equal(result[0][untied], torch.from_numpy(reference)[untied])
    before = _compiled._median_window_network.cache_info()
    out = gars.bulyan(x, f, variant=variant)  # its own selection: the same kernel
    after = _compiled._median_window_network.cache_info()
    assert after.misses == before.misses and after.hits > before.hits
    monkeypatch.setenv(_compiled.ENV_VAR, "0")
    assert torch.equal(out, gars.bulyan(x, f, variant=variant))
    assert variant != "bulyan" or bool(result[1][:300].any())  # exact ties to redo


def test_meamed_and_the_nearest_median_share_one_kernel_at_a_k(compiled_on):
    """Around the median the trim b plays no part: MeaMed at f and the nearest median at f - 1
    keep the same k = n - f values, so the second takes the first's compiled kernel."""
    n, f = 9, 3
    x = _rows(n, torch.float32)
    if _compiled.nearest_window_mean(x, f, n - f, True) is None:
        pytest.skip(f"no compiled network here: {_compiled._BROKEN}")
    misses = _compiled._nearest_network.cache_info().misses
    gars.meamed(x, f)
    gars.get("nearest_median").fn(x, f - 1)
    assert _compiled._nearest_network.cache_info().misses == misses
