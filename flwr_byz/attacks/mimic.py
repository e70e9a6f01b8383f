"""Mimic (Karimireddy, He, Jaggi, ICLR 2022), ALGORITHMS.md "Beyond the seeds".

The colluders copy one honest vector ``V_{i*}``. During a warm-up of W rounds (default 1),
``i* = argmax_i |<V_i - g_bar, z>|`` with z the top principal direction of the honest vectors;
after it i* stays fixed. The state (i*) is explicit: ``mimic_step`` takes and returns it.

Choice beyond ALGORITHMS.md: z is computed exactly, as the top eigenvector of the float64 Gram
matrix of the centred honest vectors (what power iteration converges to, without its tolerance):
``<V_i - g_bar, z> = sqrt(lambda) u_i``, so i* = argmax |u_i| (ties: smallest index).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_n_f, honest_matrix


def mimic_index(honest: Tensor) -> int:
    """The honest row with the largest |projection| on the top principal direction."""
    honest = honest_matrix(honest, "mimic")
    rows = honest.to(torch.float64)
    centred = rows - rows.mean(dim=0)
    gram = centred @ centred.T
    _, eigenvectors = torch.linalg.eigh((gram + gram.T) * 0.5)
    top = eigenvectors[:, -1].abs().cpu()
    return int(torch.nonzero(top == top.max(), as_tuple=True)[0][0])


def mimic(honest: Tensor, n: int, f: int, index: int | None = None) -> Tensor:
    """A copy of honest row ``index`` (default: ``mimic_index(honest)``), shape ``(d,)``."""
    honest = honest_matrix(honest, "mimic")
    check_n_f(n, f, "mimic")
    i = mimic_index(honest) if index is None else int(index)
    if not 0 <= i < honest.shape[0]:
        raise ValueError(f"mimic: index must be in [0, {honest.shape[0] - 1}], got {index}")
    return honest[i].clone()


def mimic_step(
    honest: Tensor,
    n: int,
    f: int,
    round_number: int,
    index: int | None = None,
    warmup: int = 1,
) -> tuple[Tensor, int]:
    """One round of mimic: ``(vector, i*)``; i* is re-chosen in rounds 1..warmup (or when None)."""
    if round_number <= warmup or index is None:
        index = mimic_index(honest)
    return mimic(honest, n, f, index), index
