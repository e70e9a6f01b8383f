"""Finite but huge values (they pass every finiteness screen): a Byzantine minority sending them
must neither win a rule's selection nor make its output non-finite or raise an unclear error.

In float64, squared norms overflow above ~1e154: the distances must then say inf (never NaN),
and the scale-free rules must give what they give on exactly rescaled rows (docs/ALGORITHMS.md,
"Values near the dtype's range").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flwr_byz import gars
from flwr_byz.gars._distances import pairwise_squared_distances

N, F, D = 11, 2, 33
# outputs that are honest rows, or per coordinate inside the honest values' range
_IN_HONEST_BOX = ("median", "trimmed_mean", "phocas", "meamed", "krum", "multi_krum", "medoid")
_IN_HONEST_BOX += ("brute", "bulyan", "nearest_median")
# outputs that are weighted means or points near the honest cloud, not per coordinate inside it;
# centered clipping moves by the clipping radius towards each attacker's direction
_NEAR_HONEST = ("geometric_median", "centered_clipping", "fltrust", "dnc")


def _honest(seed: int) -> torch.Tensor:
    return torch.randn(N, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _attacked(x: torch.Tensor, magnitude: float, kind: str) -> torch.Tensor:
    """``x`` with its first F rows replaced by finite values of size ``magnitude``."""
    y = x.clone()
    if kind == "same":  # the colluders send one vector
        y[:F] = magnitude
    elif kind == "opposite":  # two huge vectors far from each other
        y[:F] = magnitude
        y[0, ::2] = -magnitude
    else:  # a spread of huge values
        y[:F] = torch.linspace(-1.0, 1.0, D, dtype=torch.float64) * magnitude
    return y


def _options(name: str, x: torch.Tensor, dtype: torch.dtype) -> dict:
    return {"server_update": x[-1].to(dtype)} if name == "fltrust" else {}


@pytest.mark.parametrize("name", _IN_HONEST_BOX + _NEAR_HONEST)
@pytest.mark.parametrize(
    "dtype,magnitude",
    [(torch.float64, 1e160), (torch.float64, 1e300), (torch.float64, 1.5e308)]
    + [(torch.float32, 3e38)],
)
@pytest.mark.parametrize("kind", ["same", "opposite", "spread"])
@pytest.mark.parametrize("chain", [[], ["nnm"]])
def test_huge_finite_byzantine_rows_are_outvoted(name, dtype, magnitude, kind, chain):
    x = _honest(7)
    y = _attacked(x, magnitude, kind).to(dtype)
    assert bool(torch.isfinite(y).all())
    options = _options(name, x, dtype)
    if chain:
        out = gars.aggregate_chain(y, F, chain, name, **options).vector
    else:
        out = gars.aggregate(name, y, F, **options).vector
    out = out.double()
    assert bool(torch.isfinite(out).all()), (name, magnitude, kind)
    honest = x[F:].to(dtype).double()
    if name in _IN_HONEST_BOX:
        slack = 1e-6 * (1 + honest.abs().max())
        assert bool((out >= honest.min(0).values - slack).all()), (name, magnitude, kind)
        assert bool((out <= honest.max(0).values + slack).all()), (name, magnitude, kind)
    elif name == "centered_clipping" and not chain:  # clipping keeps the attackers' directions
        moderate = gars.aggregate(name, _attacked(x, 1e8, kind).to(dtype), F).vector.double()
        np.testing.assert_allclose(out.numpy(), moderate.numpy(), rtol=1e-4, atol=1e-4)
    elif name == "centered_clipping":  # each row moves the centre by at most tau / n
        bound = 2 * float(honest.norm(dim=1).max()) + 100.0 * F / N
        assert float(out.norm()) <= bound, (name, magnitude, kind)
    else:
        assert float(out.norm()) <= 2 * float(honest.norm(dim=1).max()), (name, magnitude, kind)


def test_distances_of_huge_rows_are_inf_or_exact_never_nan():
    x = _honest(3)
    x[0] = 1e200
    x[1] = 1e200  # the same huge vector: distance exactly 0
    x[2] = -1e200
    dist = pairwise_squared_distances(x)
    assert not bool(torch.isnan(dist).any())
    assert float(dist[0, 1]) == 0.0
    assert bool(torch.isinf(dist[0, 2:]).all()) and bool(torch.isinf(dist[2, 3:]).all())
    rows = x[3:].numpy()
    reference = ((rows[:, None, :] - rows[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(dist[3:, 3:].numpy(), reference, rtol=1e-9, atol=1e-12)


def test_medoid_with_huge_byzantine_rows_is_the_medoid_of_the_others():
    """Distances beyond float64's range count as infinitely far: every honest row has F of them,
    so the honest rows compete on their distances to each other."""
    x = _honest(5)
    y = _attacked(x, 1e300, "opposite")
    chosen = int(gars.aggregate("medoid", y, F).selected[0])
    assert chosen == F + int(gars.aggregate("medoid", x[F:], 0).selected[0])


_POWER = 2.0**600  # exact: rows times it have squares far beyond float64's range


def test_dnc_keeps_the_same_rows_on_exactly_rescaled_input():
    x = _honest(11)
    x[:F] += 4.0  # outliers DnC removes
    plain = gars.aggregate("dnc", x, F)
    scaled = gars.aggregate("dnc", x * _POWER, F)
    assert torch.equal(plain.selected, scaled.selected)
    assert torch.equal(scaled.vector, plain.vector * _POWER)


def test_dnc_reports_a_failed_eigen_decomposition_as_a_value_error(monkeypatch):
    def fail(_matrix):
        raise torch.linalg.LinAlgError("did not converge")

    monkeypatch.setattr(torch.linalg, "eigh", fail)
    with pytest.raises(ValueError, match="dnc: the eigen-decomposition"):
        gars.dnc(_honest(1), F)


def test_geometric_median_is_equivariant_to_an_exact_huge_scale():
    x = _honest(13)
    plain = gars.geometric_median(x, F)
    scaled = gars.geometric_median(x * _POWER, F)
    np.testing.assert_allclose((scaled / _POWER).numpy(), plain.numpy(), rtol=1e-9, atol=1e-12)


def test_fltrust_ignores_a_huge_scale_of_single_rows():
    """FLTrust uses each row only through its direction: rows times 2**600 (whose norms overflow)
    must give the aggregate of the unscaled rows."""
    x = _honest(17)
    g0 = x[-1].clone()
    y = x.clone()
    y[:3] *= _POWER
    np.testing.assert_allclose(
        gars.fltrust(y, 0, server_update=g0).numpy(),
        gars.fltrust(x, 0, server_update=g0).numpy(),
        rtol=1e-12,
        atol=1e-15,
    )


def _reference_median(values: np.ndarray) -> np.ndarray:
    """Mean of the two middle values per column, exact in float64 and rounded once (float64
    inputs: halves first, exact for values this large)."""
    ordered = np.sort(values.astype(np.float64), axis=0)
    n = ordered.shape[0]
    low, high = ordered[n // 2 - 1], ordered[n // 2]
    return low * 0.5 + high * 0.5


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [2, 4, 10, 26])
def test_even_median_of_values_near_the_dtype_maximum_does_not_overflow(dtype, n):
    rng = np.random.default_rng(n)
    top = torch.finfo(dtype).max
    values = torch.from_numpy(rng.uniform(0.55, 1.0, size=(n, 300)) * top).to(dtype)
    values[:, ::3] *= -1  # some columns of huge negative values
    expected = torch.from_numpy(_reference_median(values.double().numpy())).to(dtype)
    out = gars.median(values, 0)
    assert bool(torch.isfinite(out).all())
    assert torch.equal(out, expected)


# MeaMed's window search adds pairs of the huge float32 values (inf, harmlessly, for equal ones)
@pytest.mark.filterwarnings("ignore:overflow encountered in add:RuntimeWarning")
@pytest.mark.parametrize(
    "name,dtype",
    [("median", torch.float64), ("geometric_median", torch.float64)]
    + [(name, torch.float32) for name in ("median", "meamed", "geometric_median")],
)
def test_identical_rows_near_the_dtype_maximum_give_that_row(name, dtype):
    """(MeaMed's float64 accumulator holds float32 values at any magnitude; for float64 inputs
    it overflows above max / k, honest values no model has.)"""
    row = (torch.linspace(0.6, 0.95, 40, dtype=torch.float64) * torch.finfo(dtype).max).to(dtype)
    out = gars.get(name)(row.repeat(10, 1), 1)
    assert torch.equal(out, row)


@pytest.mark.parametrize("magnitude", [1e160, 1e300, 1.5e308])  # the last: norm beyond float64
def test_clip_brings_huge_rows_to_norm_c_in_their_direction(magnitude):
    x = _honest(19)
    y = _attacked(x, magnitude, "opposite")
    out = gars.clip(y, F, c=1.0)
    for row in range(F):
        direction = torch.sign(y[row])  # each huge row is +-magnitude in every coordinate
        expected = direction / np.sqrt(D)
        np.testing.assert_allclose(out[row].numpy(), expected.numpy(), rtol=1e-12)
    honest = x[F:]
    scale = torch.clamp(1.0 / honest.norm(dim=1), max=1.0)
    np.testing.assert_allclose(out[F:].numpy(), (honest * scale[:, None]).numpy(), rtol=1e-12)
    # clipping then averaging (a classic defence) bounds the huge rows' influence
    mean = gars.aggregate_chain(y, F, [("clip", {"c": 1.0})], "average").vector
    assert float(mean.norm()) <= 1.0 + 1e-12


@pytest.mark.parametrize("magnitude", [1e160, 1.5e308])
def test_arc_scales_huge_rows_to_the_largest_kept_norm(magnitude):
    x = _honest(23)
    y = _attacked(x, magnitude, "same")
    out = gars.arc(y, F)
    k = (2 * F * (N - F)) // N
    honest_norms = torch.sort(x[F:].norm(dim=1), descending=True).values
    target = float(honest_norms[k - F])  # the attackers take the first F of the k slots
    for row in range(F):
        np.testing.assert_allclose(float(out[row].norm()), target, rtol=1e-12)
        np.testing.assert_allclose(
            out[row].numpy(),
            (torch.ones(D, dtype=torch.float64) * target / np.sqrt(D)).numpy(),
            rtol=1e-12,
        )
