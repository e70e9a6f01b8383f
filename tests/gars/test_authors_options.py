"""The authors' protocol as options: Krum's distance and neighbour count, the ALIE code's
trimmed mean (``nearest_median``), each against a small hand computation."""

from __future__ import annotations

import pytest
import torch

from flwr_byz import gars
from flwr_byz.gars.krum import krum, krum_distances, krum_scores, multi_krum
from flwr_byz.gars.nearest_median import nearest_median

# Five 1-D vectors, n = 5, f = 1. Distances |x_i - x_j|:
#   0: 1, 6, 9, 13    1: 1, 5, 8, 12    6: 6, 5, 3, 7    9: 9, 8, 3, 4    13: 13, 12, 7, 4
POINTS = torch.tensor([[0.0], [1.0], [6.0], [9.0], [13.0]], dtype=torch.float64)


def _scores(distance: str, neighbours: int) -> list[float]:
    finite = torch.ones(5, dtype=torch.bool)
    return krum_scores(krum_distances(POINTS, finite, distance), neighbours).tolist()


def test_default_is_squared_over_n_minus_f_minus_2() -> None:
    # 2 nearest others, squared: 1+36, 1+25, 9+25, 9+16, 16+49 -> index 3 (value 9)
    assert _scores("squared", 2) == pytest.approx([37, 26, 34, 25, 65])
    assert krum(POINTS, 1).item() == 9.0
    assert krum(POINTS, 1, distance="squared", neighbours=2).item() == 9.0
    assert gars.aggregate("krum", POINTS, 1).selected.tolist() == [3]


def test_plain_distance_changes_the_choice() -> None:
    # 2 nearest others, plain: 1+6, 1+5, 3+5, 3+4, 4+7 -> index 1 (value 1)
    assert _scores("plain", 2) == pytest.approx([7, 6, 8, 7, 11])
    assert krum(POINTS, 1, distance="plain").item() == 1.0


def test_alie_code_sums_over_n_minus_f_others() -> None:
    # ALIE code: plain, n - f = 4 others: 29, 26, 21, 24, 36 -> index 2 (value 6)
    assert _scores("plain", 4) == pytest.approx([29, 26, 21, 24, 36])
    assert krum(POINTS, 1, distance="plain", neighbours=4).item() == 6.0
    # Multi-Krum, m = 2: the two lowest scores (6 and 9) averaged
    assert multi_krum(POINTS, 1, m=2, distance="plain", neighbours=4).item() == 7.5
    agg = gars.aggregate("multi_krum", POINTS, 1, m=2, distance="plain", neighbours=4)
    assert agg.selected.tolist() == [2, 3]


def test_momentum_code_sums_over_n_minus_f_minus_1_others_ties_to_lowest_index() -> None:
    # Momentum code: plain, n - f - 1 = 3 others: 16, 14, 14, 15, 23 -> tie, lowest index 1
    assert _scores("plain", 3) == pytest.approx([16, 14, 14, 15, 23])
    assert krum(POINTS, 1, distance="plain", neighbours=3).item() == 1.0
    assert gars.aggregate("krum", POINTS, 1, distance="plain", neighbours=3).selected.tolist() == [
        1
    ]


def test_krum_option_errors() -> None:
    with pytest.raises(ValueError, match="distance must be one of"):
        krum(POINTS, 1, distance="manhattan")
    for bad in (0, 5, True, 2.0):
        with pytest.raises(ValueError, match="1 <= neighbours <= n - 1"):
            krum(POINTS, 1, neighbours=bad)
    with pytest.raises(ValueError, match="neighbours"):
        multi_krum(POINTS, 1, neighbours=5)


def test_nearest_median_hand_examples() -> None:
    # n = 5, f = 1 -> k = n - f - 1 = 3; median 6, distances 6, 5, 0, 3, 7 -> 6, 9, 1
    assert nearest_median(POINTS, 1).item() == pytest.approx(16 / 3)
    assert gars.get("meamed")(POINTS, 1).item() == pytest.approx(4.0)  # n - f = 4 values
    assert nearest_median(POINTS, 1, k=4).item() == pytest.approx(4.0)
    # even n = 4 (f = 1, k = 2): median (2 + 4) / 2 = 3, distances 3, 1, 7, 1 -> 2 and 4
    even = torch.tensor([[0.0], [2.0], [10.0], [4.0]])
    assert nearest_median(even, 1).item() == pytest.approx(3.0)


def test_nearest_median_ties_go_to_the_lower_row() -> None:
    # median 3; distances 2, 2, 0, 4, 0: rows 2, 4, then row 0 (value 1) before row 1 (value 5)
    tied = torch.tensor([[1.0], [5.0], [3.0], [7.0], [3.0]], dtype=torch.float64)
    assert nearest_median(tied, 1).item() == pytest.approx(7 / 3)
    agg = gars.aggregate("nearest_median", tied, 1)
    assert agg.participation.tolist() == pytest.approx([1 / 3, 0, 1 / 3, 0, 1 / 3])
    swapped = tied[[1, 0, 2, 3, 4]]  # now 5 holds the lower row
    assert nearest_median(swapped, 1).item() == pytest.approx(11 / 3)


def test_nearest_median_columns_and_non_finite() -> None:
    # two columns at once, the second with +inf (most extreme): median 9 -> 9, 6, 13
    x = torch.tensor([[0.0, float("inf")], [1.0, 1.0], [6.0, 6.0], [9.0, 9.0], [13.0, 13.0]])
    out = nearest_median(x, 1)
    assert out.tolist() == pytest.approx([16 / 3, 28 / 3])
    assert gars.aggregate("nearest_median", x, 1).vector.tolist() == pytest.approx(out.tolist())


def test_nearest_median_requirements() -> None:
    rule = gars.get("nearest_median")
    assert rule.min_n(1) == 3 and rule.min_n(0) == 2 and rule.max_f(51) == 25
    with pytest.raises(ValueError, match="nearest_median"):
        nearest_median(POINTS[:2], 1)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        nearest_median(POINTS, 1, k=6)


def _nearest_median_reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """Per column, the mean of the k values nearest the median, ties to the lower row."""
    out = []
    for column in x.to(torch.float64).T.tolist():
        ordered = sorted(column)
        n = len(ordered)
        mid = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
        rows = sorted(range(n), key=lambda i: (abs(column[i] - mid), i))[:k]
        out.append(sum(column[i] for i in rows) / k)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("n", [4, 7, 10])
def test_nearest_median_every_k_including_below_half(n: int) -> None:
    # k < n / 2 keeps no position for sure (the window is gathered from its start)
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, 300, generator=gen, dtype=torch.float64)
    x[:, :40] = torch.randint(0, 4, (n, 40), generator=gen).double()  # ties
    for k in range(1, n + 1):
        expected = _nearest_median_reference(x, k)
        assert torch.allclose(nearest_median(x, 1, k=k), expected, rtol=1e-12, atol=1e-12), k
        agg = gars.aggregate("nearest_median", x, 1, k=k)
        assert torch.allclose(agg.vector, expected, rtol=1e-12, atol=1e-12), k
        assert agg.participation.sum().item() == pytest.approx(1.0)
        if n % 2 == 0 and k == 1:
            continue  # the two middle values tie exactly; a float32 midpoint may break the tie
        narrow = nearest_median(x[:, 40:].float(), 1, k=k)  # continuous columns: no near-ties
        assert torch.allclose(narrow.double(), expected[40:], rtol=1e-5, atol=1e-5), k
