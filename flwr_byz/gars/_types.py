"""The result type shared by all rules: the aggregate plus which inputs it used."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Aggregation:
    """Output of a rule and the share of it each input contributed.

    vector: ``(d,)`` the rule's output, dtype and device of the inputs.
    selected: int64 indices (on CPU) of the inputs the rule selected, in selection order
        (krum: 1, multi_krum: m, medoid: 1, brute: n-f, bulyan: theta); ``None`` otherwise.
    participation: ``(n,)`` float64 on CPU summing to 1: the share of the values averaged into
        the output that came from each input. Byzantine influence = ``participation[byz].sum()``.
        ``None`` where the rule was not asked to track it (``track=False``).
    """

    vector: Tensor
    selected: Tensor | None
    participation: Tensor | None
