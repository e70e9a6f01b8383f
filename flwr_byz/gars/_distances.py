"""One stable pairwise squared-distance function shared by all distance-based rules.

Why: the textbook ``|x|^2 + |y|^2 - 2 x.y`` (Flower's Multi-Krum/Bulyan) on raw float32 model
weights loses every digit when the vectors share a large common component (weights of norm 1e3
differing by 1e-3): the terms are ~1e6 and float32 keeps ~7 digits. We measured (2 CPU cores, n=51,
d=1e6) a direct float64 ``(x - y)^2`` over all pairs at seconds, a centred float64 Gram at ~0.5 s
and a centred float32 Gram at ~0.1 s, so the method is:

1. Centre the finite rows on their coordinate-wise mean (cheap). Differences of nearby floats are
   exact (Sterbenz), so centring removes the common component without error. Exception: float32
   rows of >= 65536 columns whose common component is small enough that the raw rows' Gram
   resolves the same pairs -- judged on a 4096-column float64 sample (``_raw_suffices``) -- skip
   the centring (no centred copy; measured n = 51, d = 1e6, 1 thread: ~1.0x the bare ``x @ x.T``
   against ~1.5-1.9x centred); steps 3-4 then apply to the raw Gram unchanged.
2. Gram matrix of the (centred) rows: float32 products over blocks of 8192 columns accumulated in
   float64 (float64 products for float64 input), then ``D = s_i + s_j - 2 G_ij``, ``s = diag(G)``.
   The float32 blocks go through batched ``torch.bmm`` calls on strided ``(blocks, n, 8192)``
   views (of the input, or of one reused centred chunk buffer whose rows are padded: a
   power-of-two row stride thrashes the cache): on the shared 2-core machine each parallel region
   stalls for milliseconds when other jobs hold a core (Krum at n=25, d=1e5, 2 threads, one core
   busy: 0.33 s with a product per block, 0.05-0.1 s batched; 6-9 ms with 1 thread).
3. Pairs "at risk" -- ``D_ij <= tau (s_i + s_j)`` (tau = 1e-2 for float32, 1e-8 for float64),
   where the Gram's rounding could be a visible share of ``D_ij`` -- are recomputed: a float64 Gram
   of the rows involved centred on one of them (identical rows come out exactly 0), and pairs still
   at risk after that exactly as ``sum (x_i - x_j)^2`` in float64. Every reported distance then has
   a relative error <= ~err(Gram)/tau whatever the inputs (measured <= 1e-7 on shared-component,
   colluding-duplicate and 1e20-outlier rounds, n = 51, d = 1e5).
4. If most rows are at risk (an outlier dominates the mean, e.g. a Byzantine vector at 1e20) or
   the float32 Gram overflows, steps 1-2 are redone in float64 around the coordinate-wise median
   (inside the honest range while fewer than half the rows are outliers), then step 3.

Rows with any NaN/inf are at +inf distance from every other row (0 to themselves).
``checked_distances`` folds the rules' finiteness check into this computation: a finite raw Gram
diagonal, or a finite column mean, proves every value finite.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import finite_mask, finite_rows
from ._columns import middle_value, sorted_columns

_TAU = {torch.float32: 1e-2, torch.float64: 1e-8}
_BLOCK_ELEMENTS = 1 << 22  # elements per column block (x n rows): bounds temporary memory
_FLOAT32_BLOCK = 8192  # float32 products accumulate in float64 every this many columns
_CHUNK_ELEMENTS = 1 << 20  # float32 elements per centred chunk (measured best of 2^20..2^23)
_PAD = 16  # float32 padding of the centred chunk's rows: a power-of-two row stride thrashes cache
_BATCH = 256  # float32 blocks per batched product: bounds the (batch, n, n) partial products
_SAMPLE_COLUMNS = 4096  # columns of the sample that decides raw vs centred Gram
_SAMPLE_RUN = 128  # ... taken as evenly spaced runs of this many adjacent columns (whole lines)
_RAW_MIN_COLUMNS = 8 * _FLOAT32_BLOCK  # below this the centred Gram is cheap enough: no sample
_RAW_MARGIN = 2.0  # a sampled pair within _RAW_MARGIN * tau counts as at risk (sample error: ~1%)
_RAW_MAX_ABS = 1e15  # larger sampled values could overflow float32 squares: centre instead


def _blocks_product(gram: Tensor, source: Tensor, width: int) -> None:
    """``gram += source[:, :width] @ source[:, :width].T`` in float32 blocks of
    ``_FLOAT32_BLOCK`` columns summed in float64, the full blocks as strided views of ``source``
    through batched products (no copy; rows with unit column stride)."""
    n = source.shape[0]
    row_stride = source.stride(0)
    full = width // _FLOAT32_BLOCK
    for first in range(0, full, _BATCH):
        count = min(_BATCH, full - first)
        pieces = source.as_strided(
            (count, n, _FLOAT32_BLOCK),
            (_FLOAT32_BLOCK, row_stride, 1),
            source.storage_offset() + first * _FLOAT32_BLOCK,
        )
        gram += torch.bmm(pieces, pieces.transpose(1, 2)).sum(dim=0, dtype=torch.float64)
    if width > full * _FLOAT32_BLOCK:
        tail = source[:, full * _FLOAT32_BLOCK : width]
        gram += (tail @ tail.T).to(torch.float64)


def _gram(rows: Tensor, center: Tensor | None, compute: torch.dtype) -> Tensor:
    """Float64 Gram matrix of ``rows - center`` (``center=None``: of the raw float32 rows),
    column block by column block."""
    n, d = rows.shape
    gram = torch.zeros(n, n, dtype=torch.float64, device=rows.device)
    if compute == torch.float32:
        # The float32 blocks go through batched products (far fewer parallel regions, each of
        # which stalls when the cores are oversubscribed), the same float32 sums per block.
        if center is None and rows.stride(1) == 1:
            _blocks_product(gram, rows, d)
            return gram
        if center is None:  # columns not adjacent in memory: through the chunk buffer, uncentred
            center = torch.zeros(d, dtype=compute, device=rows.device)
        chunk = max(
            _FLOAT32_BLOCK, (_CHUNK_ELEMENTS // max(n, 1)) // _FLOAT32_BLOCK * _FLOAT32_BLOCK
        )
        chunk = min(chunk, -(-d // _FLOAT32_BLOCK) * _FLOAT32_BLOCK)
        buffer = torch.empty(n, chunk + _PAD, dtype=compute, device=rows.device)
        for start in range(0, d, chunk):
            part = rows[:, start : start + chunk]
            width = part.shape[1]
            torch.sub(part.to(compute), center[start : start + width], out=buffer[:, :width])
            _blocks_product(gram, buffer, width)
        return gram
    block = max(1024, _BLOCK_ELEMENTS // max(n, 1))
    if center is None:
        center = torch.zeros(d, dtype=compute, device=rows.device)
    for start in range(0, d, block):
        part = rows[:, start : start + block].to(compute) - center[start : start + block]
        gram += (part @ part.T).to(torch.float64)
    return gram


def _raw_suffices(rows: Tensor) -> bool:
    """Whether a float32 Gram of the raw (uncentred) rows is expected to resolve as many pairs as
    the centred one, judged in float64 on a sample of ``_SAMPLE_COLUMNS`` columns (evenly spaced
    runs of ``_SAMPLE_RUN`` adjacent ones: a strided sample would load a cache line per value).

    Only decides which Gram is computed first: the at-risk test on the full Gram still decides
    which pairs are recomputed, and a raw Gram with most rows at risk is redone centred.
    """
    d = rows.shape[1]
    if d < _RAW_MIN_COLUMNS:
        return False
    runs = _SAMPLE_COLUMNS // _SAMPLE_RUN
    starts = torch.arange(runs, device=rows.device) * ((d - _SAMPLE_RUN) // (runs - 1))
    columns = (starts[:, None] + torch.arange(_SAMPLE_RUN, device=rows.device)).reshape(-1)
    sample = rows.index_select(1, columns).to(torch.float64)
    if not float(sample.abs().max()) <= _RAW_MAX_ABS:  # also False for NaN/inf
        return False
    raw_sq = (sample * sample).sum(dim=1)
    centred = sample - sample.mean(dim=0)
    dist, centred_sq = _from_gram(centred @ centred.T)
    limit = _RAW_MARGIN * _TAU[torch.float32]
    risky_raw = dist <= limit * (raw_sq[:, None] + raw_sq[None, :])
    risky_centred = dist <= limit * (centred_sq[:, None] + centred_sq[None, :])
    return not bool((risky_raw & ~risky_centred).any())


def _from_gram(gram: Tensor) -> tuple[Tensor, Tensor]:
    # Exactly symmetric (BLAS need not give a symmetric product): D_ij == D_ji keeps the structural
    # ties of Krum (mutual nearest neighbours have equal scores) resolved to the lowest index.
    gram = (gram + gram.T) * 0.5
    sq = torch.diagonal(gram).clone()
    dist = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min_(0.0)
    dist.fill_diagonal_(0.0)
    return dist, sq


def _direct(rows: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """Exact float64 ``sum (rows[first] - rows[second])^2`` for index pairs, in column blocks."""
    pairs = first.numel()
    d = rows.shape[1]
    block = max(1024, _BLOCK_ELEMENTS // max(pairs, 1))
    total = torch.zeros(pairs, dtype=torch.float64, device=rows.device)
    for start in range(0, d, block):
        cols = rows[:, start : start + block].to(torch.float64)
        diff = cols[first] - cols[second]
        total += (diff * diff).sum(dim=1)
    return total


def _refine(rows: Tensor, dist: Tensor, first: Tensor, second: Tensor) -> None:
    """Recompute the at-risk pairs in ``dist`` (in place).

    First a float64 Gram of the rows involved, centred on one of them: a cluster of near-identical
    rows (e.g. colluders sending one vector) then has tiny centred values, identical rows exactly 0.
    Pairs still at risk after that are summed directly, ``sum (x_i - x_j)^2`` in float64.
    """
    involved = torch.unique(torch.cat([first, second]))
    sub = rows.index_select(0, involved)
    local_dist, local_sq = _from_gram(_gram(sub, sub[0].to(torch.float64), torch.float64))
    position = torch.full((rows.shape[0],), -1, dtype=torch.int64, device=rows.device)
    position[involved] = torch.arange(involved.numel(), device=rows.device)
    i, j = position[first], position[second]
    value = local_dist[i, j]
    both_at_centre = (local_sq[i] == 0) & (local_sq[j] == 0)  # exactly equal rows: exactly 0
    still = (value <= _TAU[torch.float64] * (local_sq[i] + local_sq[j])) & ~both_at_centre
    # a local Gram that overflowed (values near 1e154 or more) gives inf - inf = NaN: such pairs
    # are summed directly too (inf only where the distance itself is beyond float64's range)
    still |= ~torch.isfinite(value)
    if bool(still.any()):
        value[still] = _direct(rows, first[still], second[still])
    dist[first, second] = value
    dist[second, first] = value


def _at_risk(dist: Tensor, sq: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    order = torch.arange(dist.shape[0], device=dist.device)
    risky = (dist <= tau * (sq[:, None] + sq[None, :])) | ~torch.isfinite(dist)
    risky &= order[:, None] < order[None, :]
    first, second = torch.nonzero(risky, as_tuple=True)
    return first, second


def _finish(rows: Tensor, gram: Tensor, tau: float) -> Tensor | None:
    """Distances from a Gram matrix with its at-risk pairs recomputed; None if the Gram is not
    finite or most rows are at risk (the caller then centres differently)."""
    if not bool(torch.isfinite(gram).all()):
        return None
    dist, sq = _from_gram(gram)
    first, second = _at_risk(dist, sq, tau)
    if 2 * torch.unique(torch.cat([first, second])).numel() > rows.shape[0]:
        return None
    if first.numel():
        _refine(rows, dist, first, second)
    return dist


def _finite_distances(
    rows: Tensor, center: Tensor | None = None, raw: bool | None = None
) -> Tensor:
    """``(m, m)`` distances between the rows of ``rows`` (all finite, m >= 2).

    Float32 rows whose sample says so (``_raw_suffices``; ``raw`` overrides) first get the Gram of
    the raw rows: no centred copy, the same at-risk test. Otherwise (or if that Gram has most rows
    at risk) the Gram of the rows centred on ``center`` (default: the coordinate-wise mean), then,
    if still most rows are at risk, around the coordinate-wise median in float64.
    """
    m = rows.shape[0]
    device = rows.device
    compute = torch.float64 if rows.dtype == torch.float64 else torch.float32
    tau = _TAU[compute]
    if compute == torch.float32 and center is None:
        if raw is None:
            raw = _raw_suffices(rows)
        if raw:
            dist = _finish(rows, _gram(rows, None, compute), tau)
            if dist is not None:
                return dist
    if center is None:
        # Column mean as a matrix product: a strided mean over rows is several times slower on CPU.
        center = (torch.ones(1, m, dtype=rows.dtype, device=device) @ rows)[0].to(compute) / m
    dist = _finish(rows, _gram(rows, center, compute), tau)
    if dist is None:
        # Most rows at risk: an outlier dominates the mean (or overflowed float32). Centre on
        # the coordinate-wise median instead (inside the honest range), in float64.
        center = middle_value(sorted_columns(rows, False)[0]).to(device, torch.float64)
        dist, sq = _from_gram(_gram(rows, center, torch.float64))
        first, second = _at_risk(dist, sq, _TAU[torch.float64])
        if first.numel():
            _refine(rows, dist, first, second)
    return dist


def pairwise_squared_distances(vectors: Tensor, finite: Tensor | None = None) -> Tensor:
    """``(n, n)`` float64 squared Euclidean distances between the rows of ``vectors`` (same device).

    Accurate relative to each distance (see module docstring); non-finite rows at +inf.
    ``finite``: the rows' finiteness mask when the caller already has it.
    """
    n = vectors.shape[0]
    device = vectors.device
    finite = finite_mask(vectors) if finite is None else finite.to(device)
    index = torch.nonzero(finite, as_tuple=True)[0]
    out = torch.full((n, n), float("inf"), dtype=torch.float64, device=device)
    out.fill_diagonal_(0.0)
    m = index.numel()
    if m <= 1:
        return out
    rows = vectors if m == n else vectors[index]
    dist = _finite_distances(rows)
    if m == n:
        return dist
    out[index[:, None], index[None, :]] = dist
    return out


def checked_distances(rule: str, vectors: Tensor, f: int) -> tuple[Tensor, Tensor]:
    """``(finite_rows(rule, vectors, f), pairwise_squared_distances(vectors, finite))`` with the
    finiteness check folded into the distance computation when every row is finite.

    A finite float64 sum of squares per row (the raw Gram's diagonal) or a finite column mean
    (the centring) proves every value finite, so the separate pass over the input is skipped;
    otherwise the rows are checked as ``finite_rows`` does (same errors) and the distances
    computed on the finite ones.
    """
    n = vectors.shape[0]
    every = torch.ones(n, dtype=torch.bool, device=vectors.device)
    compute = torch.float64 if vectors.dtype == torch.float64 else torch.float32
    if n >= 2:
        if compute == torch.float32 and vectors.dtype == torch.float32 and _raw_suffices(vectors):
            gram = _gram(vectors, None, compute)
            if bool(torch.isfinite(torch.diagonal(gram)).all()):
                dist = _finish(vectors, gram, _TAU[compute])
                return (dist if dist is not None else _finite_distances(vectors, raw=False)), every
        else:
            ones = torch.ones(1, n, dtype=vectors.dtype, device=vectors.device)
            center = (ones @ vectors)[0].to(compute) / n
            if bool(torch.isfinite(center).all()):
                return _finite_distances(vectors, center), every
    finite = finite_rows(rule, vectors, f)
    return pairwise_squared_distances(vectors, finite), finite
