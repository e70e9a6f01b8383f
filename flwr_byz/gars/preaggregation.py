"""Pre-aggregators (ALGORITHMS.md, "Beyond the seeds"): clip, arc, nnm, bucketing, and ``chain``.

A pre-aggregator maps the ``(n, d)`` submitted vectors to ``(m, d)`` vectors that a rule then
aggregates with the same declared f. Each ``_impl`` also returns a ``(m, n)`` float64 CPU
``mixing`` matrix (row r: the share of output row r that came from each input row), so that a
rule's ``participation`` over the m outputs maps back to the n inputs as ``participation @ mixing``.

Choices beyond ALGORITHMS.md:

- Rows with a NaN/inf are left unchanged by ``clip`` and ``arc`` (they have no direction to keep);
  ``arc`` ranks them above every finite norm, so they use up its k clipping slots first, and the
  rule after it handles them. ``nnm`` puts them at infinite distance (as distance rules do): a
  finite row never mixes them in while n - f finite rows exist. ``bucketing`` averages them into
  their bucket (a non-finite mean), which the rule then treats as one non-finite input.
- ``nnm`` always counts the row itself among its n - f nearest (distance ties: smallest index).
- ``arc``'s tie rule "smallest index clipped last": among equal norms the larger index ranks as
  larger, i.e. is clipped first.
- ``clip``'s threshold c has no default (it depends on the model and the update scale).
- Norms are computed in float64 (no overflow of float32 squares of huge Byzantine values); finite
  float64 rows whose squares overflow get their norm, and their clipping factor, from the row scaled
  exactly by a power of two, so they are clipped like any other row.
- ``bucketing`` takes a ``torch.Generator`` or an integer ``seed`` (default seed 0): the
  permutation is drawn on the CPU, so it is the same on every device for a given seed.
- ``aggregate_chain`` reports ``selected`` only when every step keeps rows one to one (clip, arc);
  after mixing steps (nnm, bucketing) a selected output is not one input, so ``selected`` is None.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._checks import check_inputs, finite_mask
from ._distances import pairwise_squared_distances
from ._scaling import downscales
from ._types import Aggregation


@dataclass(frozen=True)
class PreAggregation:
    """Output of a pre-aggregator: the new vectors and where each one came from.

    vectors: ``(m, d)``, dtype and device of the inputs.
    mixing: ``(m, n)`` float64 on CPU, rows sum to 1 (share of output row r from input i).
    one_to_one: True when output row i is input row i (possibly rescaled): m == n, mixing = I.
    """

    vectors: Tensor
    mixing: Tensor
    one_to_one: bool


_BLOCK_ELEMENTS = 1 << 18  # elements per column block (x n rows) of the float64 norms


class _Norms(NamedTuple):
    """Float64 row norms that stay exact for finite rows whose squares overflow float64."""

    value: Tensor  # the norms; inf for rows with NaN/inf, and where a norm exceeds float64
    scaled: Tensor  # the norms of the rows times ``scale`` (finite for every finite row)
    scale: Tensor  # 1, or for a finite row whose squares overflowed, a power of two (exact)
    finite: Tensor  # rows without NaN/inf

    def shrink(self, limit: Tensor | float) -> Tensor:
        """``limit / norm`` per row, from the scaled norm (``limit / ||scale V|| * scale``): the
        factor that brings a row to norm ``limit`` even where its norm exceeds float64."""
        # ``limit / norm`` as torch computes it for that type of ``limit`` (a float: the
        # reciprocal times it; a tensor: a division), times the scale (exact)
        return limit / self.scaled.clamp_min(1e-300) * self.scale


def _squared_norms(vectors: Tensor, scale: Tensor | None = None) -> Tensor:
    n, d = vectors.shape
    width = min(d, max(64, _BLOCK_ELEMENTS // n))
    squares = torch.zeros(n, dtype=torch.float64, device=vectors.device)
    for start in range(0, d, width):
        part = vectors[:, start : start + width]
        if scale is not None:
            part = part.to(torch.float64) * scale[:, None]
        squares += torch.linalg.vector_norm(part, dim=1, dtype=torch.float64).square()
    return squares


def _row_norm_parts(vectors: Tensor) -> _Norms:
    """The rows' :class:`_Norms`, column block by column block (float64 squares of each block,
    no ``(n, d)`` float64 copy); finite rows whose squares overflow (values above ~1e154 in
    float64) are recomputed scaled to at most 1 (``_scaling``)."""
    n, d = vectors.shape
    norms = _squared_norms(vectors).sqrt()
    ones = torch.ones_like(norms)
    over = ~torch.isfinite(norms)
    if not bool(over.any()):
        return _Norms(norms, norms, ones, torch.ones_like(over))
    width = min(d, max(64, _BLOCK_ELEMENTS // n))
    peaks = torch.zeros_like(norms)
    for start in range(0, d, width):  # NaN propagates through abs, amax and maximum
        part = vectors[:, start : start + width].abs().amax(dim=1).to(torch.float64)
        peaks = torch.maximum(peaks, part)
    finite = torch.isfinite(peaks)
    redo = over & finite
    if not bool(redo.any()):
        return _Norms(torch.where(finite, norms, math.inf), norms, ones, finite)
    scale = torch.where(redo, downscales(peaks, headroom=0), ones)
    scaled = torch.where(redo, _squared_norms(vectors, scale).sqrt(), norms)
    value = torch.where(finite, scaled / scale, math.inf)
    return _Norms(value, scaled, scale, finite)


def _row_norms(vectors: Tensor) -> Tensor:
    """``(n,)`` float64 Euclidean norms (inf for rows with NaN/inf, and beyond float64's range)."""
    return _row_norm_parts(vectors).value


def _identity(n: int) -> Tensor:
    return torch.eye(n, dtype=torch.float64)


def _scale_rows(vectors: Tensor, scale: Tensor) -> Tensor:
    """Multiply row i by ``scale[i]`` (float64) leaving rows with scale exactly 1 untouched
    (``x * 1.0`` is exactly ``x``, NaN/inf included, so one product does it)."""
    if bool((scale == 1.0).all()):
        return vectors.clone()
    factor = scale.to(vectors.dtype).to(vectors.device)
    return vectors * factor[:, None]


def _clip_impl(vectors: Tensor, f: int = 0, c: float | None = None) -> PreAggregation:
    n, _, f = check_inputs("clip", vectors, f)
    if c is None:
        raise ValueError("clip needs its threshold c (no default: it depends on the model)")
    try:
        c = float(c)
    except (TypeError, ValueError):
        raise ValueError(f"clip: c must be a positive finite number, got c={c!r}") from None
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"clip: c must be a positive finite number, got c={c!r}")
    norms = _row_norm_parts(vectors)
    clipped = norms.finite & (norms.value > c)
    scale = torch.where(clipped, norms.shrink(c), torch.ones_like(norms.value))
    return PreAggregation(_scale_rows(vectors, scale), _identity(n), True)


def clip(vectors: Tensor, f: int = 0, c: float | None = None) -> Tensor:
    """Static clipping ``V_i * min(1, c / ||V_i||)`` (f is accepted and ignored)."""
    return _clip_impl(vectors, f, c).vectors


def arc_k(n: int, f: int) -> int:
    """Number of vectors ARC clips: ``floor(2 f (n - f) / n)``."""
    return (2 * f * (n - f)) // n


def _arc_impl(vectors: Tensor, f: int) -> PreAggregation:
    n, _, f = check_inputs("arc", vectors, f)
    if f >= n:
        raise ValueError(f"arc needs n >= f + 1, got n={n}, f={f}")
    k = arc_k(n, f)
    scale = torch.ones(n, dtype=torch.float64)
    if k > 0:
        parts = _row_norm_parts(vectors)
        norms = parts.value.cpu()
        # Descending norm; among ties the larger index first (smallest index clipped last):
        # a stable descending sort of the reversed rows keeps larger indices first.
        order_rev = torch.sort(norms.flip(0), descending=True, stable=True).indices
        order = n - 1 - order_rev
        target = norms[order[k]]
        if math.isfinite(float(target)):
            clipped = order[:k]
            rows = clipped[parts.finite.cpu()[clipped]]
            shrink = parts.shrink(target.to(parts.scaled.device)).cpu()
            scale[rows] = torch.where(norms[rows] > target, shrink[rows], 1.0)
    return PreAggregation(_scale_rows(vectors, scale), _identity(n), True)


def arc(vectors: Tensor, f: int) -> Tensor:
    """Adaptive robust clipping: the floor(2f(n-f)/n) largest rows scaled to the next norm."""
    return _arc_impl(vectors, f).vectors


def _nnm_impl(vectors: Tensor, f: int) -> PreAggregation:
    n, _, f = check_inputs("nnm", vectors, f)
    if f >= n:
        raise ValueError(f"nnm needs n >= f + 1, got n={n}, f={f}")
    finite = finite_mask(vectors)
    dist = pairwise_squared_distances(vectors, finite).cpu().clone()
    dist.fill_diagonal_(-1.0)  # itself always among its nearest
    m = n - f
    nearest = torch.sort(dist, dim=1, stable=True).indices[:, :m]  # ties: smallest index
    mixing = torch.zeros(n, n, dtype=torch.float64)
    mixing.scatter_(1, nearest, 1.0 / m)
    finite_cpu = finite.cpu()
    clean_rows = (mixing[:, ~finite_cpu] == 0).all(dim=1) if not bool(finite_cpu.all()) else None
    if clean_rows is None:
        out = mixing.to(vectors.dtype).to(vectors.device) @ vectors
    else:
        zeroed = torch.where(finite[:, None], vectors, torch.zeros_like(vectors))
        out = mixing.to(vectors.dtype).to(vectors.device) @ zeroed
        dirty = torch.nonzero(~clean_rows, as_tuple=True)[0]
        idx = nearest[dirty].to(vectors.device)
        out[dirty.to(vectors.device)] = vectors[idx].mean(dim=1)  # non-finite, as it should be
    return PreAggregation(out, mixing, False)


def nnm(vectors: Tensor, f: int) -> Tensor:
    """Nearest neighbour mixing: each row -> the mean of its n - f nearest rows (itself too)."""
    return _nnm_impl(vectors, f).vectors


def _permutation(n: int, generator: torch.Generator | None, seed: int | None) -> Tensor:
    if generator is not None and seed is not None:
        raise ValueError("bucketing: pass a generator or a seed, not both")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    return torch.randperm(n, generator=generator, device=generator.device).cpu()


def bucketing_count(n: int, s: int) -> int:
    """Number of buckets (the rule's n after bucketing): ``ceil(n / s)``."""
    return -(-n // s)


def _bucketing_impl(
    vectors: Tensor,
    f: int = 0,
    s: int = 2,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> PreAggregation:
    n, _, f = check_inputs("bucketing", vectors, f)
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise ValueError(f"bucketing: s must be an int >= 1, got s={s!r}")
    perm = _permutation(n, generator, seed)
    m = bucketing_count(n, s)
    bucket_of = torch.empty(n, dtype=torch.int64)
    bucket_of[perm] = torch.arange(n) // s
    sizes = torch.bincount(bucket_of, minlength=m).to(torch.float64)
    mixing = torch.zeros(m, n, dtype=torch.float64)
    mixing[bucket_of, torch.arange(n)] = 1.0 / sizes[bucket_of]
    out = torch.zeros(m, vectors.shape[1], dtype=vectors.dtype, device=vectors.device)
    out.index_add_(0, bucket_of.to(vectors.device), vectors)
    out /= sizes.to(vectors.dtype).to(vectors.device)[:, None]
    return PreAggregation(out, mixing, False)


def bucketing(
    vectors: Tensor,
    f: int = 0,
    s: int = 2,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """Seeded random buckets of s rows (the last may be smaller) -> their ceil(n/s) means."""
    return _bucketing_impl(vectors, f, s, generator, seed).vectors


PRE_REGISTRY: dict[str, Callable[..., PreAggregation]] = {
    "clip": _clip_impl,
    "arc": _arc_impl,
    "nnm": _nnm_impl,
    "bucketing": _bucketing_impl,
}
PRE_NAMES: tuple[str, ...] = tuple(PRE_REGISTRY)

Step = str | tuple[str, Mapping[str, Any]] | Mapping[str, Any]


def _parse_step(step: Step) -> tuple[str, dict[str, Any]]:
    if isinstance(step, str):
        name, options = step, {}
    elif isinstance(step, tuple) and len(step) == 2:
        name, options = step[0], dict(step[1])
    elif isinstance(step, Mapping):
        options = dict(step)
        name = options.pop("name", None)
    else:
        raise TypeError(f"chain: a step is a name, (name, options) or {{'name': ..}}, got {step!r}")
    if name not in PRE_REGISTRY:
        raise ValueError(f"unknown pre-aggregator {name!r}; known: {', '.join(PRE_NAMES)}")
    return name, options


def normalize_steps(
    pre: Sequence[Step] | None,
) -> list[tuple[str, dict[str, Any]]]:
    """The pre-aggregation chain as ``[(name, options), ...]``, each step checked.

    A step is a name, ``(name, options)`` or ``{"name": name, **options}``. An unknown name, or
    options the step refuses (unknown keyword, bad value, ``clip`` without ``c``), raise a
    ``ValueError`` naming the step; the options are tried on a small dummy input.
    """
    if pre is None:
        return []
    if isinstance(pre, (str, Mapping)) or not isinstance(pre, Sequence):
        raise ValueError(f"pre must be a list of steps, got {pre!r}")
    steps: list[tuple[str, dict[str, Any]]] = []
    for index, step in enumerate(pre):
        try:
            name, options = _parse_step(step)
        except TypeError as err:
            raise ValueError(f"pre step {index}: {err}") from None
        impl = PRE_REGISTRY[name]
        try:
            inspect.signature(impl).bind(None, 0, **options)
        except TypeError as err:
            raise ValueError(
                f"pre step {index} ({name!r}): bad options {options!r}: {err}"
            ) from None
        try:  # the values (c > 0, s >= 1, ...) on a dummy input (a generator is left unused)
            dummy = {**options, "generator": None} if "generator" in options else options
            impl(torch.ones(3, 2, dtype=torch.float64), 0, **dummy)
        except (TypeError, ValueError) as err:
            raise ValueError(f"pre step {index} ({name!r}): {err}") from None
        steps.append((name, options))
    return steps


def chain_impl(vectors: Tensor, f: int, steps: Sequence[Step]) -> PreAggregation:
    """Apply the pre-aggregators ``steps`` in order with the same f; compose their mixings."""
    n, _, f = check_inputs("chain", vectors, f)
    mixing = _identity(n)
    one_to_one = True
    for step in steps:
        name, options = _parse_step(step)
        result = PRE_REGISTRY[name](vectors, f, **options)
        vectors = result.vectors
        mixing = result.mixing @ mixing
        one_to_one = one_to_one and result.one_to_one
    return PreAggregation(vectors, mixing, one_to_one)


def chain(vectors: Tensor, f: int, steps: Sequence[Step]) -> Tensor:
    """The vectors after the pre-aggregators ``steps`` (e.g. bucketing then nnm).

    A step is a name, ``(name, options)`` or ``{"name": name, **options}``.
    """
    return chain_impl(vectors, f, steps).vectors


def aggregate_chain(
    vectors: Tensor, f: int, steps: Sequence[Step], rule: Any, **options: Any
) -> Aggregation:
    """Pre-aggregate with ``steps``, then run ``rule`` (a name or a ``Rule``) with the same f.

    ``participation`` is mapped back to the n inputs through the composed mixing matrix.
    """
    from .registry import get  # lazy: registry imports the rules, this module is one of them

    rule = get(rule) if isinstance(rule, str) else rule
    pre = chain_impl(vectors, f, steps)
    result = rule.aggregate(pre.vectors, f, **options)
    participation = result.participation.to(torch.float64).cpu() @ pre.mixing
    total = participation.sum()
    if total > 0:
        participation = participation / total
    selected = result.selected if pre.one_to_one else None
    return Aggregation(result.vector, selected, participation)
