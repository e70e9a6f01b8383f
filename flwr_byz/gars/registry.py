"""Name -> rule registry: ``get(name)`` gives a ``Rule`` with its requirement and ``aggregate``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ._types import Aggregation
from .average import _average_impl, average
from .brute import _brute_impl, brute
from .bulyan import _bulyan_impl, bulyan
from .centered_clipping import _centered_clipping_impl, centered_clipping
from .coordinatewise import (
    _meamed_impl,
    _median_impl,
    _phocas_impl,
    _trimmed_mean_impl,
    meamed,
    median,
    phocas,
    trimmed_mean,
)
from .dnc import _dnc_impl, dnc
from .fltrust import _fltrust_impl, fltrust
from .geometric_median import _geometric_median_impl, geometric_median
from .krum import _krum_impl, _multi_krum_impl, krum, multi_krum
from .medoid import _medoid_impl, medoid
from .nearest_median import _nearest_median_impl, nearest_median, nearest_median_min_n


def _b_rule_min_n(f: int, b: int | None = None, **_: Any) -> int:
    return 2 * (f if b is None else b) + 1


@dataclass(frozen=True)
class Rule:
    """A registered aggregation rule: its function, whether it selects inputs, its requirement."""

    name: str
    fn: Callable[..., Tensor]
    selects: bool
    _min_n: Callable[..., int] = field(repr=False)
    _impl: Callable[..., Aggregation] = field(repr=False)

    @property
    def options(self) -> tuple[str, ...]:
        """The rule's keyword options, in order: the parameters of ``fn(vectors, f, **options)``
        after the first two (the signature is where each option and its default is written)."""
        params = list(inspect.signature(self.fn).parameters.values())[2:]
        kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return tuple(p.name for p in params if p.kind in kinds)

    def min_n(self, f: int, **options: Any) -> int:
        """Smallest n the rule accepts for this f (and options, e.g. trimmed_mean's b)."""
        return self._min_n(f, **options)

    def max_f(self, n: int, **options: Any) -> int:
        """Largest f in [0, n - 1] the rule accepts for this n, or -1 if none."""
        for f in range(n - 1, -1, -1):
            if self._min_n(f, **options) <= n:
                return f
        return -1

    def aggregate(self, vectors: Tensor, f: int, **options: Any) -> Aggregation:
        """Run the rule and report which inputs it used (see ``Aggregation``)."""
        return self._impl(vectors, f, **options)

    def __call__(self, vectors: Tensor, f: int, **options: Any) -> Tensor:
        return self.fn(vectors, f, **options)


def _const(k: int, a: int) -> Callable[..., int]:
    def min_n(f: int, **_: Any) -> int:
        return k * f + a

    return min_n


_RULES = (
    Rule("average", average, False, lambda f, **_: 1, _average_impl),
    Rule("median", median, False, _const(2, 1), _median_impl),
    Rule("trimmed_mean", trimmed_mean, False, _b_rule_min_n, _trimmed_mean_impl),
    Rule("phocas", phocas, False, _b_rule_min_n, _phocas_impl),
    Rule("meamed", meamed, False, _const(2, 1), _meamed_impl),
    Rule("krum", krum, True, _const(2, 3), _krum_impl),
    Rule("multi_krum", multi_krum, True, _const(2, 3), _multi_krum_impl),
    Rule("medoid", medoid, True, _const(2, 1), _medoid_impl),
    Rule("geometric_median", geometric_median, False, _const(2, 1), _geometric_median_impl),
    Rule("brute", brute, True, _const(2, 1), _brute_impl),
    Rule("bulyan", bulyan, True, _const(4, 3), _bulyan_impl),
)
REGISTRY: dict[str, Rule] = {rule.name: rule for rule in _RULES}
NAMES: tuple[str, ...] = tuple(REGISTRY)

# Rules beyond the seed papers (ALGORITHMS.md, "Beyond the seeds"): kept out of NAMES, whose
# order and size other code and tests rely on; ``get`` finds them too.
_BEYOND_RULES = (
    Rule("centered_clipping", centered_clipping, False, _const(2, 1), _centered_clipping_impl),
    Rule("fltrust", fltrust, False, lambda f, **_: 1, _fltrust_impl),
    Rule("dnc", dnc, True, _const(2, 1), _dnc_impl),
    # the ALIE authors' trimmed mean: mean of the n - f - 1 values nearest the median
    Rule("nearest_median", nearest_median, False, nearest_median_min_n, _nearest_median_impl),
)
BEYOND_REGISTRY: dict[str, Rule] = {rule.name: rule for rule in _BEYOND_RULES}
BEYOND_NAMES: tuple[str, ...] = tuple(BEYOND_REGISTRY)


def get(name: str) -> Rule:
    """The rule called ``name``; unknown names raise ValueError listing the known ones."""
    try:
        return REGISTRY[name] if name in REGISTRY else BEYOND_REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(NAMES + BEYOND_NAMES)
        raise ValueError(f"unknown aggregation rule {name!r}; known rules: {known}") from None


def aggregate(name: str, vectors: Tensor, f: int, **options: Any) -> Aggregation:
    """Run rule ``name`` on ``vectors`` with ``f`` and its options; result + inputs used."""
    return get(name).aggregate(vectors, f, **options)
