"""The l_p / l_inf coordinate attack of the Bulyan paper (El Mhamdi et al., ICML 2018, section 3).

All colluders submit ``B(gamma) = g_bar + gamma * E``; ``E`` is the unit vector on one coordinate
(finite norms, section 3.2) or all ones (infinite norm, section 3.3). The paper estimates the
largest ``gamma`` for which the GAR still selects ``B``; we find it by a deterministic search
against the GAR itself: doubling from a data-driven start, then bisection.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from ._checks import check_n_f, honest_matrix, mean_and_std
from ._lp_surrogate import distance_surrogate

FINITE_NORMS = ("l1", "l2")
INFINITE_NORMS = ("inf", "linf")


class _Aggregator(Protocol):
    def aggregate(self, vectors: Tensor, f: int, **options: Any) -> Any: ...


def _resolve_gar(gar: str | _Aggregator) -> _Aggregator:
    if isinstance(gar, str):
        from flwr_byz import gars  # here, not at the top: flwr_byz.gars need not load with attacks

        return gars.get(gar)
    if not hasattr(gar, "aggregate"):
        raise TypeError(
            "lp_coordinate: gar must be a rule name or an object with "
            f"aggregate(vectors, f, **options), got {type(gar).__name__}"
        )
    return gar


def direction(d: int, norm: str, coordinate: int, like: Tensor) -> Tensor:
    """The attack direction ``E``: all ones for the infinite norm, else the unit vector."""
    if norm in INFINITE_NORMS:
        return torch.ones(d, dtype=like.dtype, device=like.device)
    if norm not in FINITE_NORMS:
        raise ValueError(
            f"lp_coordinate: norm must be one of {INFINITE_NORMS + FINITE_NORMS}, got {norm!r}"
        )
    if int(coordinate) != coordinate or not -d <= coordinate < d:
        raise ValueError(f"lp_coordinate: coordinate must be in [0, {d - 1}], got {coordinate!r}")
    unit = torch.zeros(d, dtype=like.dtype, device=like.device)
    unit[int(coordinate)] = 1.0
    return unit


CRITERIA = ("auto", "selected", "participation")


def attackers_chosen(aggregation: Any, first_attacker: int, criterion: str = "auto") -> bool:
    """Whether the GAR's result used an attacker's vector (rows ``first_attacker`` and after).

    ``"selected"``: an attacker index is in ``aggregation.selected``. ``"participation"``: the
    attackers' total ``participation`` is positive. ``"auto"``: ``"selected"`` when the rule
    reports a selection, else ``"participation"``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"lp_coordinate: criterion must be one of {CRITERIA}, got {criterion!r}")
    selected = getattr(aggregation, "selected", None)
    if criterion == "selected" or (criterion == "auto" and selected is not None):
        if selected is None:
            raise ValueError("lp_coordinate: criterion 'selected' needs a rule that selects")
        return bool((selected >= first_attacker).any())
    return bool(aggregation.participation[first_attacker:].sum() > 0)


def _default_criterion(gar: str | _Aggregator) -> str:
    """Bulyan always ends up selecting identical colluders into its set (its last iterations
    score over a single neighbour), so what matters is whether its coordinate-wise step keeps
    them: judge it by participation. Every other rule: ``"auto"``."""
    name = gar if isinstance(gar, str) else getattr(gar, "name", None)
    return "participation" if name == "bulyan" else "auto"


def lp_coordinate_gamma(
    honest: Tensor,
    n: int,
    f: int,
    gar: str | _Aggregator = "krum",
    gar_options: dict[str, Any] | None = None,
    norm: str = "inf",
    coordinate: int = 0,
    initial_gamma: float | None = None,
    criterion: str | None = None,
    max_doublings: int = 40,
    max_bisections: int = 60,
    rtol: float = 1e-3,
    fast: bool = True,
) -> float:
    """The largest ``gamma`` (within ``rtol``) for which the GAR still chooses ``g_bar + gamma E``.

    The GAR runs on the ``n - f`` honest rows followed by ``f`` copies of the attack vector;
    "chooses" is judged by ``criterion`` (see ``attackers_chosen``; default ``"auto"``, and
    ``"participation"`` for Bulyan, whose selection always takes identical colluders in).
    Search: start at ``initial_gamma`` (default: the mean coordinate-wise std of the honest
    vectors, or ``max |g_bar|``, or 1), double while the vector is chosen (at most
    ``max_doublings`` times), then bisect between the last chosen and first rejected value until
    their gap is below ``rtol`` times the chosen one (at most ``max_bisections`` steps). Returns
    0.0 when even ``gamma = 0`` is rejected, and the largest value tried when no rejection is
    found (``average`` never rejects; nor do coordinate-wise rules against ``norm="l2"``, whose
    other coordinates stay at ``g_bar``). Deterministic for deterministic GARs.

    ``fast``: for krum, multi_krum, medoid and bulyan (Krum selector), search first on a
    closed-form float64 model of the distances to ``g_bar + gamma E`` (a quadratic in gamma from
    one Gram pass, ``_lp_surrogate``), then confirm with two calls of the real rule that the
    guess is chosen and ``guess * (1 + rtol)`` is not (Bulyan, whose model takes the rule's own
    search steps, and unbounded searches: only that the guess is chosen); on disagreement search
    with the rule.
    """
    honest = honest_matrix(honest, "lp_coordinate")
    check_n_f(n, f, "lp_coordinate")
    if f < 1:
        raise ValueError(f"lp_coordinate: needs at least one Byzantine vector, got f={f}")
    k, d = honest.shape
    if k != n - f:
        raise ValueError(
            f"lp_coordinate: omniscient attack needs the n - f = {n - f} honest vectors, got {k}"
        )
    if criterion is None:
        criterion = _default_criterion(gar)
    if criterion not in CRITERIA:
        raise ValueError(f"lp_coordinate: criterion must be one of {CRITERIA}, got {criterion!r}")
    rule = _resolve_gar(gar)
    options = dict(gar_options or {})
    g_bar = honest.mean(dim=0)
    unit = direction(d, norm, coordinate, honest)

    # the rule's input, the honest rows then f copies: written once, the copies at every call
    vectors = torch.empty((n, d), dtype=honest.dtype, device=honest.device)
    vectors[:k] = honest

    def chosen(gamma: float) -> bool:
        vectors[k] = g_bar + gamma * unit
        vectors[k + 1 :] = vectors[k]
        return attackers_chosen(rule.aggregate(vectors, f, **options), k, criterion)

    step = initial_gamma
    if step is None:
        step = float(mean_and_std(honest, correction=0)[1].mean()) if k > 1 else 0.0
        if not step > 0.0:
            step = float(g_bar.abs().max())
        if not (step > 0.0 and math.isfinite(step)):
            step = 1.0
    elif not step > 0.0:
        raise ValueError(f"lp_coordinate: initial_gamma must be > 0, got {initial_gamma}")
    search = functools.partial(
        _search, step=float(step), max_doublings=max_doublings, max_bisections=max_bisections
    )
    name = gar if isinstance(gar, str) else getattr(gar, "name", None)
    surrogate = distance_surrogate(name, honest, f, unit, options, criterion) if fast else None
    if surrogate is not None:
        # Bulyan: the same steps as the rule's search, so an agreeing surrogate gives its answer
        guess, bracketed = search(surrogate, rtol=rtol if name == "bulyan" else rtol / 4)
        if guess == 0.0 and not chosen(0.0):
            return 0.0
        # never rejected (e.g. coordinate-wise rules against l2): the rule's search would not be
        # either, so only the guess itself is confirmed; so is Bulyan's, whose model searches
        # with the rule's own steps (exact up to float rounding): one rule call, not two
        upper = bracketed and name != "bulyan"
        if guess > 0.0 and chosen(guess) and not (upper and chosen(guess * (1.0 + rtol))):
            return guess
    return search(chosen, rtol=rtol)[0]


def _search(
    chosen: Callable[[float], bool],
    step: float,
    max_doublings: int,
    max_bisections: int,
    rtol: float,
) -> tuple[float, bool]:
    """Largest gamma found chosen: doubling from ``step``, then bisection to ``rtol``; and
    whether a rejected gamma bounds it (False when every doubling was chosen)."""
    if not chosen(0.0):
        return 0.0, True
    low, high = 0.0, step
    for _ in range(max_doublings):
        if not chosen(high):
            break
        low, high = high, 2.0 * high
    else:
        return low, False
    for _ in range(max_bisections):
        if high - low <= rtol * low:
            break
        middle = 0.5 * (low + high)
        if chosen(middle):
            low = middle
        else:
            high = middle
    return low, True


def lp_coordinate(
    honest: Tensor,
    n: int,
    f: int,
    gar: str | _Aggregator = "krum",
    gar_options: dict[str, Any] | None = None,
    norm: str = "inf",
    coordinate: int = 0,
    return_gamma: bool = False,
    **search: Any,
) -> Tensor | tuple[Tensor, float]:
    """Bulyan paper's attack vector ``g_bar + gamma * E`` of shape ``(d,)``, submitted by all
    colluders; ``gamma`` from ``lp_coordinate_gamma`` (``search`` holds its tuning keywords).
    ``gar`` is a rule name of ``flwr_byz.gars`` or any object with ``aggregate(vectors, f)``.
    With ``return_gamma`` returns ``(vector, gamma)``."""
    honest = honest_matrix(honest, "lp_coordinate")
    gamma = lp_coordinate_gamma(
        honest, n, f, gar=gar, gar_options=gar_options, norm=norm, coordinate=coordinate, **search
    )
    vector = honest.mean(dim=0) + gamma * direction(honest.shape[1], norm, coordinate, honest)
    return (vector, gamma) if return_gamma else vector
