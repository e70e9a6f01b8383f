"""One finiteness test for whole tensors, shared by the rules, the strategy and the attacks.

``torch.isfinite(t).all()`` makes several passes and a bool tensor of ``t``'s size (15 ms for
3.1M float32 values on one core); a sum is one streaming pass (0.5 ms) and is finite only when
every value is, since NaN and inf propagate. Only a non-finite sum (a bad value, or finite values
whose sum overflows) needs the exact test.
"""

from __future__ import annotations

from torch import Tensor


def all_finite(values: Tensor) -> bool:
    """Whether every value of ``values`` is finite (no NaN, no +-inf)."""
    return bool(values.sum().isfinite()) or bool(values.isfinite().all())
