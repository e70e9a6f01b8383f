"""Argument checks shared by every rule: f, the (n, d) input, (n, f) requirements, non-finite
policy.

Errors are ``ValueError`` (``TypeError`` for wrong types) naming the rule and what is wrong, e.g.
``krum needs n >= 2f + 3, got n=7, f=3``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import Tensor

# Set by a caller that has already checked every row of the input finite (the strategy screens
# each reply once while stacking): the rules then skip their own scan of the (n, d) input.
_ROWS_CHECKED: ContextVar[bool] = ContextVar("flwr_byz_rows_checked", default=False)


@contextlib.contextmanager
def rows_checked() -> Iterator[None]:
    """Within this block the rules take their inputs' rows as already checked finite (one
    finiteness check per round, the caller's); a thread's or task's own setting (contextvars)."""
    token = _ROWS_CHECKED.set(True)
    try:
        yield
    finally:
        _ROWS_CHECKED.reset(token)


def rows_known_finite() -> bool:
    """Whether the caller has declared the input's rows finite (:func:`rows_checked`)."""
    return _ROWS_CHECKED.get()


def check_f(rule: str, f: object) -> int:
    """Return ``f`` as an int after checking it is a non-negative integer."""
    if isinstance(f, bool) or not isinstance(f, int):
        raise TypeError(f"{rule}: f must be a non-negative int, got {f!r}")
    if f < 0:
        raise ValueError(f"{rule}: f must be >= 0, got f={f}")
    return f


def check_vectors(rule: str, vectors: object) -> tuple[int, int]:
    """Check ``vectors`` is a 2-D floating tensor with n >= 1 rows, d >= 1 columns -> (n, d)."""
    if not isinstance(vectors, Tensor):
        raise TypeError(f"{rule}: vectors must be a torch.Tensor, got {type(vectors).__name__}")
    if vectors.dim() != 2:
        raise ValueError(
            f"{rule}: vectors must be a 2-D (n, d) tensor, got shape {tuple(vectors.shape)}"
        )
    if not vectors.is_floating_point():
        raise ValueError(f"{rule}: vectors must be a floating tensor, got dtype {vectors.dtype}")
    n, d = vectors.shape
    if n < 1 or d < 1:
        raise ValueError(
            f"{rule}: vectors must have n >= 1 rows and d >= 1 columns, got ({n}, {d})"
        )
    return n, d


def require(rule: str, n: int, f: int, holds: bool, requirement: str) -> None:
    """Raise ``ValueError("{rule} needs {requirement}, got n=.., f=..")`` unless ``holds``."""
    if not holds:
        raise ValueError(f"{rule} needs {requirement}, got n={n}, f={f}")


def check_inputs(rule: str, vectors: object, f: object) -> tuple[int, int, int]:
    """Run the type/shape checks; return (n, d, f)."""
    f = check_f(rule, f)
    n, d = check_vectors(rule, vectors)
    return n, d, f


def finite_mask(vectors: Tensor) -> Tensor:
    """Bool ``(n,)`` mask of the rows with only finite values.

    Cheap: a row whose sum is finite has only finite values; only rows whose sum is not finite
    (NaN/inf, or an overflow of huge finite values) are inspected value by value.
    """
    if rows_known_finite():
        return torch.ones(vectors.shape[0], dtype=torch.bool, device=vectors.device)
    finite = torch.isfinite(vectors.sum(dim=1))
    if not bool(finite.all()):
        suspects = torch.nonzero(~finite, as_tuple=True)[0]
        finite[suspects] = torch.isfinite(vectors[suspects]).all(dim=1)
    return finite


def finite_rows(rule: str, vectors: Tensor, f: int) -> Tensor:
    """Bool ``(n,)`` mask of rows with only finite values; more than ``f`` bad rows -> ValueError.

    Distance-based rules put a row with any NaN/inf at infinite distance from all others.
    """
    finite = finite_mask(vectors)
    bad = int((~finite).sum())
    if bad > f:
        raise ValueError(
            f"{rule}: {bad} input vectors contain NaN or inf, more than f={f} it tolerates"
        )
    return finite


def extremes_as_inf(rule: str, values: Tensor, tolerance: int) -> Tensor:
    """Sort keys for coordinate-wise rules: NaN/inf become the most extreme values of their column.

    +inf and -inf keep their sign. A NaN has no sign: the NaNs of a column are sent alternately to
    -inf and +inf (first NaN in row order to -inf, second to +inf, ...), so they are trimmed evenly
    from both ends and the output stays near the middle of the finite values. Columns with more than
    ``tolerance`` non-finite values raise ValueError. Returns ``values`` itself when all finite.
    """
    if rows_known_finite() or bool(torch.isfinite(values.sum())):
        return values  # a finite total means every value is finite
    nonfinite = ~torch.isfinite(values)
    if not bool(nonfinite.any()):
        return values
    worst = int(nonfinite.sum(dim=0).max())
    if worst > tolerance:
        raise ValueError(
            f"{rule}: a coordinate has {worst} NaN or inf values, more than the {tolerance} "
            "it tolerates"
        )
    nan = torch.isnan(values)
    rank = torch.cumsum(nan.to(torch.int32), dim=0)  # 1 for the first NaN of a column, 2, ...
    inf = torch.tensor(float("inf"), dtype=values.dtype, device=values.device)
    signed = torch.where(rank % 2 == 1, -inf, inf)
    return torch.where(nan, signed, values)


def uniform_participation(n: int, indices: Tensor) -> Tensor:
    """``(n,)`` float64 CPU shares: uniform over ``indices`` (one share per occurrence)."""
    counts = torch.bincount(indices.detach().to("cpu", torch.int64), minlength=n)
    return counts.to(torch.float64) / counts.sum()
