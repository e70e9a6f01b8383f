"""A Little Is Enough (Baruch, Baruch, Goldberg, NeurIPS 2019): ``mu - z * sigma``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_n_f, honest_matrix, mean_and_std


def z_max(n: int, f: int) -> float:
    """The ALIE paper's z_max (Alg. 3, lines 1-2).

    s = floor(n/2 + 1) - f supporters are needed; z_max = Phi^-1((n - f - s) / (n - f)).
    Example from the paper: n=50, f=24 gives s=2 and z_max = Phi^-1(24/26) = 1.43.
    Raises ``ValueError`` when the ratio is outside (0, 1) (f already a majority, or n < 3).
    """
    check_n_f(n, f, "alie")
    supporters = math.floor(n / 2 + 1) - f
    ratio = (n - f - supporters) / (n - f)
    if not 0.0 < ratio < 1.0:
        raise ValueError(
            f"alie: z_max undefined for n={n}, f={f}: s = floor(n/2 + 1) - f = {supporters} "
            f"gives (n - f - s)/(n - f) = {ratio:.4g}, which must lie strictly between 0 and 1 "
            "(pass an explicit z instead)"
        )
    return float(torch.special.ndtri(torch.tensor(ratio, dtype=torch.float64)))


SIGMAS = ("sample", "population")


def alie(honest: Tensor, n: int, f: int, z: float | None = None, sigma: str = "sample") -> Tensor:
    """ALIE vector ``mu - z * sigma`` from the honest vectors the attacker knows, shape ``(d,)``.

    ``honest`` is ``(k, d)``: all honest vectors (omniscient) or only the colluders' own
    (non-omniscient; the client's ``omniscient`` option chooses). ``sigma="sample"`` (default)
    is the Bessel-corrected std (divisor k - 1, see ``_checks.mean_and_std``; 0 for k = 1),
    ``"population"`` the std with divisor k (``np.std``'s default). ``z`` defaults to
    ``z_max(n, f)``; the Momentum paper uses a fixed ``z = 1.5``.
    """
    honest = honest_matrix(honest, "alie")
    check_n_f(n, f, "alie")
    if sigma not in SIGMAS:
        raise ValueError(f"alie: sigma must be one of {SIGMAS}, got {sigma!r}")
    factor = z_max(n, f) if z is None else float(z)
    mu, spread = mean_and_std(honest, correction=0 if sigma == "population" else 1)
    return mu - factor * spread
