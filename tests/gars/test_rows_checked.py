"""One finiteness check per round: under ``gars.rows_checked()`` the rules do not scan their input
for NaN/inf again (the strategy did while stacking), and give the same aggregates; the direct API
keeps its own checks."""

from __future__ import annotations

import pytest
import torch

from flwr_byz import gars

# the coordinate-wise rules scan the whole input for NaN/inf (one sum over (n, d)); the distance
# rules fold the check into their Gram product, so there is no pass of theirs to skip
RULES = ("median", "trimmed_mean", "phocas", "meamed")


def _inputs() -> torch.Tensor:
    return torch.randn(15, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _full_sums(name: str, vectors: torch.Tensor, checked: bool) -> tuple[int, gars.Aggregation]:
    """How many sums over a whole ``(n, d)`` tensor the rule takes, and its result."""
    calls = [0]
    original = torch.Tensor.sum

    def counting(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if tuple(self.shape) == tuple(vectors.shape):
            calls[0] += 1
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "sum", counting)
        if checked:
            with gars.rows_checked():
                result = gars.aggregate(name, vectors, 2)
        else:
            result = gars.aggregate(name, vectors, 2)
    return calls[0], result


@pytest.mark.parametrize("name", RULES)
def test_the_rules_skip_their_scan_and_agree(name: str) -> None:
    vectors = _inputs()
    scans, plain = _full_sums(name, vectors, checked=False)
    assert scans == 1  # the scan that the strategy's own check makes redundant
    skipped, checked = _full_sums(name, vectors, checked=True)
    assert skipped == 0
    assert torch.equal(checked.vector, plain.vector)
    if plain.participation is not None:
        assert checked.participation is not None
        assert torch.equal(checked.participation, plain.participation)


@pytest.mark.parametrize("name", ("median", "krum"))
def test_outside_the_block_non_finite_rows_are_still_handled(name: str) -> None:
    vectors = _inputs()
    vectors[4, 7] = float("nan")
    vectors[9] = float("inf")
    result = gars.aggregate(name, vectors, 2).vector
    assert bool(torch.isfinite(result).all())  # the two bad rows were tolerated as before
    with gars.rows_checked():
        assert gars._checks.rows_known_finite()
    assert not gars._checks.rows_known_finite()  # the flag does not outlive its block
