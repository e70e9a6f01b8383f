"""ALIE, IPM, gaussian, omniscient_negative, sign_flip and label_flip against their definitions."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flwr_byz import attacks


def _honest(k: int, d: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _reference_z_max(n: int, f: int) -> float:
    supporters = math.floor(n / 2 + 1) - f
    return NormalDist().inv_cdf((n - f - supporters) / (n - f))


def test_z_max_matches_the_alie_paper_example() -> None:
    # Paper, section 3.3: n=50, f=24 -> s=2, Phi^-1(24/26 = 0.923) = 1.43.
    assert math.floor(50 / 2 + 1) - 24 == 2
    assert round(attacks.z_max(50, 24), 2) == 1.43


@given(n=st.integers(3, 200), data=st.data())
@settings(max_examples=60, deadline=None)
def test_z_max_is_the_normal_quantile(n: int, data: st.DataObject) -> None:
    f = data.draw(st.integers(0, n - 1))
    supporters = math.floor(n / 2 + 1) - f
    ratio = (n - f - supporters) / (n - f)
    if 0 < ratio < 1:
        assert attacks.z_max(n, f) == pytest.approx(_reference_z_max(n, f), rel=1e-9, abs=1e-9)
    else:
        with pytest.raises(ValueError, match="z_max undefined"):
            attacks.z_max(n, f)


@given(k=st.integers(2, 12), d=st.integers(1, 30), seed=st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_alie_is_mean_minus_z_sample_std(k: int, d: int, seed: int) -> None:
    honest = _honest(k, d, seed)
    reference = honest.double().numpy()
    z = _reference_z_max(51, 24)
    expected = reference.mean(axis=0) - z * reference.std(axis=0, ddof=1)
    result = attacks.alie(honest, 51, 24)
    assert result.shape == (d,) and result.dtype == torch.float32
    np.testing.assert_allclose(result.double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_alie_fixed_z_and_single_vector() -> None:
    honest = _honest(6, 9, 1, torch.float64)
    expected = honest.numpy().mean(0) - 1.5 * honest.numpy().std(0, ddof=1)
    np.testing.assert_allclose(attacks.alie(honest, 25, 11, z=1.5).numpy(), expected, rtol=1e-12)
    one = honest[:1]
    np.testing.assert_array_equal(attacks.alie(one, 25, 11, z=1.5).numpy(), one[0].numpy())


def test_ipm_and_omniscient_negative() -> None:
    honest = _honest(7, 13, 2, torch.float64)
    mean, total = honest.numpy().mean(0), honest.numpy().sum(0)
    np.testing.assert_allclose(attacks.ipm(honest, 10, 3).numpy(), -0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(attacks.ipm(honest, 10, 3, eps=2.0).numpy(), -2 * mean, rtol=1e-12)
    np.testing.assert_allclose(
        attacks.omniscient_negative(honest, 10, 3).numpy(), -1e20 * total, rtol=1e-12
    )
    np.testing.assert_allclose(
        attacks.omniscient_negative(honest, 10, 3, scale=3.0).numpy(), -3.0 * total, rtol=1e-12
    )


def test_gaussian_statistics_and_determinism() -> None:
    honest = torch.zeros(3, 40_000)
    first = attacks.gaussian(honest, 10, 3, generator=torch.Generator().manual_seed(5))
    again = attacks.gaussian(honest, 10, 3, generator=torch.Generator().manual_seed(5))
    other = attacks.gaussian(honest, 10, 3, generator=torch.Generator().manual_seed(6))
    assert first.shape == (40_000,) and first.dtype == honest.dtype
    assert torch.equal(first, again) and not torch.equal(first, other)
    values = first.double().numpy()
    # mean ~ N(0, 200^2/d): 5 standard errors; sample std within 2% of 200.
    assert abs(values.mean()) < 5 * 200 / math.sqrt(values.size)
    assert values.std() == pytest.approx(200.0, rel=0.02)
    small = attacks.gaussian(honest, 10, 3, std=0.5, generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(small.numpy(), first.numpy() / 400, rtol=1e-6)


def test_sign_flip_and_label_flip() -> None:
    own = _honest(1, 11, 3)
    np.testing.assert_array_equal(attacks.sign_flip(own).numpy(), -own[0].numpy())
    np.testing.assert_array_equal(attacks.sign_flip(own[0]).numpy(), -own[0].numpy())
    labels = torch.arange(10).repeat(3)
    flipped = attacks.label_flip(labels, 10)
    np.testing.assert_array_equal(flipped.numpy(), 9 - labels.numpy())
    assert flipped.dtype == labels.dtype
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\]"):
        attacks.label_flip(labels, 5)
    with pytest.raises(TypeError, match="integer"):
        attacks.label_flip(labels.float(), 10)
    with pytest.raises(ValueError, match=r"\(d,\) or \(1, d\)"):
        attacks.sign_flip(_honest(2, 3, 0))


@pytest.mark.parametrize("name", ["alie", "ipm", "gaussian", "omniscient_negative"])
def test_vector_attacks_refuse_bad_inputs(name: str) -> None:
    function = attacks.get(name).fn
    with pytest.raises(ValueError, match=name):
        function(torch.zeros(2, 3, 4), 10, 3)
    with pytest.raises(ValueError, match="0 <= f < n"):
        function(torch.zeros(2, 3), 3, 3)
    with pytest.raises(TypeError, match="floating"):
        function(torch.zeros(2, 3, dtype=torch.int64), 10, 3)
    with pytest.raises(TypeError, match="torch.Tensor"):
        function([[0.0, 1.0]], 10, 3)
    if name != "gaussian":
        bad = torch.zeros(2, 3)
        bad[0, 1] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            function(bad, 10, 3)


def test_registry() -> None:
    assert attacks.NAMES == (
        "alie",
        "ipm",
        "lp_coordinate",
        "gaussian",
        "omniscient_negative",
        "sign_flip",
        "label_flip",
        "bit_flip",
        "gambler",
        "alie_backdoor",
    )
    assert {
        "alie",
        "ipm",
        "lp_coordinate",
        "omniscient_negative",
        "alie_backdoor",
    } == attacks.OMNISCIENT
    assert {"bit_flip", "gambler"} == attacks.CHANNEL
    assert attacks.get("ipm").fn is attacks.ipm
    assert attacks.get("sign_flip").needs == "own"
    assert attacks.get("alie").colluders_only_ok
    honest = _honest(4, 5, 0)
    assert torch.equal(attacks.get("ipm")(honest, 6, 2), attacks.ipm(honest, 6, 2))
    with pytest.raises(ValueError, match="unknown attack 'nope'.*alie, ipm"):
        attacks.get("nope")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_vector_attacks_stay_on_cuda() -> None:
    honest = _honest(5, 7, 0).cuda()
    for vector in (
        attacks.alie(honest, 10, 3),
        attacks.ipm(honest, 10, 3),
        attacks.gaussian(honest, 10, 3, generator=torch.Generator().manual_seed(0)),
        attacks.omniscient_negative(honest, 10, 3),
    ):
        assert vector.device == honest.device
