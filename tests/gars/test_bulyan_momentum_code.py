"""Bulyan ``variant="momentum_code"`` against a literal float64 transcription of the authors' loop.

The reference follows LPD-EPFL/ByzantineMomentum ``aggregators/bulyan.py`` (the paper's snapshot)
statement by statement: plain distances, scores over the m = n - f - 2 nearest others, a selection
loop that averages the m best-scored not-yet-pruned inputs and prunes the best one (its score
update never runs), then the coordinate-wise averaged median of the selected rows.
"""

from __future__ import annotations

import math

import pytest
import torch

from flwr_byz import gars


def authors_bulyan(gradients: list[torch.Tensor], f: int) -> torch.Tensor:
    """The authors' ``aggregate`` in float64, loops as written (without its dead pruning branch)."""
    n, d = len(gradients), gradients[0].shape[0]
    m_max = m = n - f - 2
    distances = [[(math.inf, None)] * n for _ in range(n)]
    for x in range(n):
        for y in range(x + 1, n):
            dist = float((gradients[x] - gradients[y]).norm())
            dist = dist if math.isfinite(dist) else math.inf
            distances[x][y] = (dist, y)
            distances[y][x] = (dist, x)
    scores: list[tuple[float, int | None]] = []
    for gid in range(n):
        nearest = sorted(distances[gid], key=lambda pair: pair[0])[:m]
        scores.append((sum(dist for dist, _ in nearest), gid))
    selected = torch.empty(n - 2 * f - 2, d, dtype=torch.float64)
    for i in range(selected.shape[0]):
        m = min(m, m_max - i)
        scores.sort(key=lambda pair: pair[0])
        selected[i] = sum(gradients[gid] for _, gid in scores[:m]) / m
        scores[0] = (math.inf, None)
    beta = selected.shape[0] - 2 * f
    median = selected.median(dim=0).values
    out = torch.empty(d, dtype=torch.float64)
    for j in range(d):
        column = selected[:, j]
        closest = sorted(range(column.numel()), key=lambda r: abs(float(column[r] - median[j])))
        out[j] = sum(float(column[r]) for r in closest[:beta]) / beta
    return out


@pytest.mark.parametrize(
    ("n", "f", "seed"), [(11, 2, 0), (15, 3, 1), (19, 4, 2), (7, 1, 3), (12, 2, 4), (16, 3, 6)]
)
def test_matches_the_authors_loop(n: int, f: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(n, 9, generator=generator, dtype=torch.float64)
    vectors[:f] += 5.0 * torch.randn(f, 9, generator=generator, dtype=torch.float64)
    # even n gives an even theta: torch's median is then the lower middle value, as the code has it
    got = gars.bulyan(vectors, f, variant="momentum_code")
    want = authors_bulyan(list(vectors), f)
    assert torch.allclose(got, want, atol=1e-12), (got, want)


def test_differs_from_the_paper_text_variant() -> None:
    generator = torch.Generator().manual_seed(5)
    vectors = torch.randn(15, 6, generator=generator, dtype=torch.float64)
    coded = gars.bulyan(vectors, 3, variant="momentum_code")
    text = gars.bulyan(vectors, 3, variant="momentum")
    assert not torch.allclose(coded, text)


def test_participation_sums_to_one_and_follows_the_ranking() -> None:
    generator = torch.Generator().manual_seed(7)
    vectors = torch.randn(11, 40, generator=generator, dtype=torch.float64)
    vectors[0] += 100.0  # far from everyone: ranked last, never averaged
    result = gars.aggregate("bulyan", vectors, 2, variant="momentum_code")
    assert result.participation is not None
    share = result.participation
    assert math.isclose(float(share.sum()), 1.0, rel_tol=1e-12)
    assert float(share[0]) == 0.0
    assert 0 not in result.selected.tolist()


def test_non_finite_inputs_are_ranked_last() -> None:
    generator = torch.Generator().manual_seed(9)
    clean = torch.randn(11, 5, generator=generator, dtype=torch.float64)
    dirty = clean.clone()
    dirty[3, 2] = float("nan")
    dirty[8] = float("inf")
    got = gars.bulyan(dirty, 2, variant="momentum_code")
    assert bool(torch.isfinite(got).all())


def test_refuses_a_selector() -> None:
    with pytest.raises(ValueError, match="momentum_code"):
        gars.bulyan(torch.zeros(11, 3), 2, selector="medoid", variant="momentum_code")
