"""Registry, requirement and input errors, tie-breaking, dtype/device behaviour of flwr_byz.gars."""

from __future__ import annotations

import math

import gars_reference as ref
import numpy as np
import pytest
import torch

from flwr_byz import gars

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
        ],
    ),
]
# Requirements straight from the ALGORITHMS.md table: rule -> (min n for f, text in the error).
REQUIREMENTS = {
    "average": (lambda f: 1, None),
    "median": (lambda f: 2 * f + 1, "n >= 2f + 1"),
    "trimmed_mean": (lambda f: 2 * f + 1, "n >= 2b + 1"),
    "phocas": (lambda f: 2 * f + 1, "n >= 2b + 1"),
    "meamed": (lambda f: 2 * f + 1, "n >= 2f + 1"),
    "krum": (lambda f: 2 * f + 3, "n >= 2f + 3"),
    "multi_krum": (lambda f: 2 * f + 3, "n >= 2f + 3"),
    "medoid": (lambda f: 2 * f + 1, "n >= 2f + 1"),
    "geometric_median": (lambda f: 2 * f + 1, "n >= 2f + 1"),
    "brute": (lambda f: 2 * f + 1, "n >= 2f + 1"),
    "bulyan": (lambda f: 4 * f + 3, "n >= 4f + 3"),
}


def test_names_in_algorithms_order_and_registry():
    assert tuple(REQUIREMENTS) == gars.NAMES
    for name in gars.NAMES:
        rule = gars.get(name)
        assert rule.name == name and rule.fn is getattr(gars, name)
        assert rule.selects == (name in {"krum", "multi_krum", "medoid", "brute", "bulyan"})
    with pytest.raises(ValueError, match="unknown aggregation rule 'krumm'.*bulyan"):
        gars.get("krumm")


@pytest.mark.parametrize("name", list(REQUIREMENTS))
def test_min_n_max_f_and_requirement_errors(name):
    rule = gars.get(name)
    min_n, text = REQUIREMENTS[name]
    for f in range(5):
        assert rule.min_n(f) == min_n(f)
    for n in range(1, 25):
        f = rule.max_f(n)
        assert f == max((g for g in range(n) if min_n(g) <= n), default=-1)
    if text is None:
        return
    for f in (1, 2, 3):
        n = min_n(f) - 1
        x = torch.randn(n, 3)
        with pytest.raises(ValueError) as error:
            rule.fn(x, f)
        message = str(error.value)
        assert message.startswith(name) and text in message and f"n={n}, f={f}" in message


def test_bulyan_message_example_from_the_brief():
    with pytest.raises(ValueError, match=r"^bulyan needs n >= 4f \+ 3, got n=10, f=2$"):
        gars.bulyan(torch.randn(10, 4), 2)


@pytest.mark.parametrize("name", list(REQUIREMENTS))
def test_bad_arguments_are_refused_clearly(name):
    fn = gars.get(name).fn
    with pytest.raises(ValueError, match=f"{name}.*f must be >= 0"):
        fn(torch.randn(9, 3), -1)
    with pytest.raises(TypeError, match=f"{name}.*non-negative int"):
        fn(torch.randn(9, 3), 1.0)
    with pytest.raises(ValueError, match=f"{name}.*2-D"):
        fn(torch.randn(9), 0)
    with pytest.raises(ValueError, match=f"{name}.*floating"):
        fn(torch.ones(9, 3, dtype=torch.int64), 0)
    with pytest.raises(ValueError, match=f"{name}.*n >= 1 rows and d >= 1"):
        fn(torch.randn(9, 0), 0)
    with pytest.raises(TypeError, match=f"{name}.*torch.Tensor"):
        fn(np.zeros((9, 3)), 0)


@pytest.mark.parametrize("name", ["krum", "multi_krum", "medoid", "geometric_median", "brute"])
def test_distance_rules_refuse_more_than_f_nonfinite_rows(name):
    x = torch.randn(9, 4, dtype=torch.float64)
    x[0, 0], x[5, 3] = float("nan"), float("inf")
    assert torch.isfinite(gars.get(name).fn(x, 2)).all()
    with pytest.raises(ValueError, match=f"{name}: 2 input vectors contain NaN or inf.*f=1"):
        gars.get(name).fn(x, 1)


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "phocas", "meamed", "bulyan"])
def test_coordinatewise_rules_refuse_more_than_f_nonfinite_per_coordinate(name):
    x = torch.randn(11, 4, dtype=torch.float64)
    x[0, 1], x[4, 1] = float("nan"), -float("inf")
    with pytest.raises(ValueError, match=f"{name}.*(NaN or inf).*1"):
        gars.get(name).fn(x, 1)


def test_brute_refuses_too_many_subsets_naming_the_count():
    x = torch.randn(25, 3)
    with pytest.raises(ValueError, match=r"brute: C\(25, 13\) = 5200300 subsets.*max_subsets"):
        gars.brute(x, 12)
    assert gars.aggregate("brute", x[:12], 5, max_subsets=math.comb(12, 5)).selected.numel() == 7


def test_options_are_checked():
    x = torch.randn(11, 3)
    with pytest.raises(ValueError, match="multi_krum needs 1 <= m <= n"):
        gars.multi_krum(x, 2, m=12)
    with pytest.raises(ValueError, match="unknown selector 'foo'"):
        gars.bulyan(x, 2, selector="foo")
    with pytest.raises(ValueError, match="unknown variant"):
        gars.bulyan(x, 2, variant="bar")
    with pytest.raises(ValueError, match="takes no options"):
        gars.bulyan(x, 2, selector="krum", selector_options={"m": 3})
    with pytest.raises(ValueError, match="eps > 0"):
        gars.geometric_median(x, 2, eps=0.0)
    with pytest.raises(ValueError, match="trimmed_mean: b must be"):
        gars.trimmed_mean(x, 2, b=-1)


def test_ties_go_to_the_lowest_index():
    base = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0], [-5.0, 4.0]])
    # Rows 0 and 1 duplicated at the end: identical scores, the first copy wins.
    x = torch.cat([base, base[:2]])
    assert gars.aggregate("krum", x, 1).selected.tolist() == [
        ref.krum_index(x.numpy().astype(np.float64), 1)
    ]
    order = gars.aggregate("multi_krum", x, 1, m=6).selected.tolist()
    scores = ref.krum_scores(x.numpy().astype(np.float64), 1)
    assert order == sorted(range(7), key=lambda i: (scores[i], i))[:6]
    # Symmetric square: all medoid sums equal -> index 0; brute subsets tie -> first subset.
    square = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5]])
    perm = square[[3, 0, 2, 1]]
    assert gars.aggregate("medoid", perm, 1).selected.tolist() == [0]
    assert gars.aggregate("brute", perm, 1).selected.tolist() == [0, 1, 2]
    # Coordinate-wise: equally near values on both sides of the centre -> lowest rows kept.
    column = torch.tensor([[0.0], [-1.0], [1.0], [-1.0], [1.0]], dtype=torch.float64)
    assert float(gars.meamed(column, 2)) == pytest.approx(np.mean([0.0, -1.0, 1.0]))


def test_bulyan_variants_select_theta_and_momentum_variant_matches_reference():
    x = np.random.default_rng(8).normal(size=(15, 3))
    for variant, theta in (("bulyan", 15 - 6), ("momentum", 15 - 6 - 2)):
        agg = gars.aggregate("bulyan", torch.from_numpy(x), 3, variant=variant)
        assert agg.selected.numel() == theta == len(set(agg.selected.tolist()))
        expected, chosen = ref.bulyan(x, 3, "krum", variant)
        assert agg.selected.tolist() == chosen
        np.testing.assert_allclose(agg.vector.numpy(), expected, rtol=1e-12)


def test_coordinatewise_participation_counts_kept_values():
    x = np.random.default_rng(9).normal(size=(9, 30))
    share = gars.aggregate("trimmed_mean", torch.from_numpy(x), 2).participation.numpy()
    kept = np.zeros(9)
    for j in range(30):
        for i in np.argsort(x[:, j], kind="stable")[2:7]:
            kept[i] += 1
    np.testing.assert_allclose(share, kept / kept.sum(), rtol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(REQUIREMENTS))
def test_output_dtype_device_and_cpu_agreement(name, dtype, device):
    torch.manual_seed(0)
    x = (torch.randn(11, 40, dtype=torch.float64) * 3 + 1).to(dtype)
    expected = gars.aggregate(name, x, 2)
    got = gars.aggregate(name, x.to(device), 2)
    assert got.vector.dtype == dtype and got.vector.device.type == device
    assert got.vector.shape == (40,)
    assert got.participation.device.type == "cpu"
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got.vector.cpu(), expected.vector, rtol=tol, atol=tol)
    if expected.selected is not None:
        assert got.selected.tolist() == expected.selected.tolist()


@pytest.mark.parametrize(
    ("name", "n", "f"), [("median", 9, 3), ("median", 8, 2), ("trimmed_mean", 9, 2)]
)
def test_coordinatewise_participation_splits_tied_values_equally(name, n, f):
    """Equal values have no natural owner: the rows holding a value share its kept positions."""
    x = np.random.default_rng(3).integers(0, 4, size=(n, 50)).astype(np.float64)  # many ties
    share = gars.aggregate(name, torch.from_numpy(x), f).participation.numpy()
    lo, hi = (f, n - f) if name == "trimmed_mean" else ((n - 1) // 2, n // 2 + 1)
    kept = np.zeros(n)
    for column in x.T:
        window = np.sort(column)[lo:hi]
        for value in set(window.tolist()):
            holders = np.flatnonzero(column == value)
            kept[holders] += np.count_nonzero(window == value) / len(holders)
    np.testing.assert_allclose(share, kept / kept.sum(), rtol=1e-12)
