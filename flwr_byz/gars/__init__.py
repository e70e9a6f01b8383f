"""Byzantine-resilient gradient aggregation rules (GARs) as pure torch kernels.

Every rule is ``rule(vectors: Tensor (n, d), f: int, **options) -> Tensor (d,)`` (dtype and device
of the input); ``aggregate(name, vectors, f, **options)`` also reports the inputs used.
Definitions: ``ALGORITHMS.md`` (El Mhamdi et al. 2018; Xie et al. 2018; El-Mhamdi et al. 2020).
Never imports flwr.
"""

from ._checks import rows_checked
from ._distances import pairwise_squared_distances
from ._types import Aggregation
from .average import average
from .brute import brute
from .bulyan import bulyan
from .centered_clipping import centered_clipping
from .coordinatewise import meamed, median, phocas, trimmed_mean
from .dnc import dnc
from .fltrust import NoTrustError, fltrust
from .geometric_median import geometric_median
from .krum import krum, multi_krum
from .medoid import medoid
from .preaggregation import (
    PRE_NAMES,
    PreAggregation,
    aggregate_chain,
    arc,
    bucketing,
    chain,
    clip,
    nnm,
)
from .registry import BEYOND_NAMES, NAMES, Rule, aggregate, get

__all__ = [
    "rows_checked",
    "BEYOND_NAMES",
    "NAMES",
    "PRE_NAMES",
    "NoTrustError",
    "PreAggregation",
    "aggregate_chain",
    "arc",
    "bucketing",
    "centered_clipping",
    "chain",
    "clip",
    "dnc",
    "fltrust",
    "nnm",
    "Aggregation",
    "Rule",
    "aggregate",
    "average",
    "brute",
    "bulyan",
    "geometric_median",
    "get",
    "krum",
    "meamed",
    "median",
    "medoid",
    "multi_krum",
    "pairwise_squared_distances",
    "phocas",
    "trimmed_mean",
]
