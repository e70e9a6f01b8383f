"""Byzantine-resilient Flower strategies (Message API; ``legacy`` for ``flwr.server.strategy``).

Each class runs one rule of :mod:`flwr_byz.gars` on the replies of a round, on one flat ``(n, d)``
tensor, after excluding (and reporting) unusable replies. See docs/strategies.md.
"""

from flwr_byz import gars
from flwr_byz.layout import ModelLayout
from flwr_byz.strategy.core import (
    RobustAggregator,
    RoundReport,
    Submission,
    TooFewRepliesError,
    normalize_pre,
    resolve_device,
    round_seed,
)
from flwr_byz.strategy.message_api import (
    RULE_STRATEGIES,
    Average,
    Brute,
    Bulyan,
    CenteredClipping,
    DnC,
    FLTrust,
    GeometricMedian,
    Krum,
    MeaMed,
    Median,
    Medoid,
    MultiKrum,
    Phocas,
    RobustStrategy,
    TrimmedMean,
)
from flwr_byz.strategy.server_update import UPDATE_MODES, ServerOptimizer, ServerUpdateConfig

#: Strategy class of each rule name of ``flwr_byz.gars.NAMES``.
STRATEGIES: dict[str, type[RobustStrategy]] = {
    name: cls for name, cls in RULE_STRATEGIES.items() if name in gars.NAMES
}

#: Strategy classes of the rules beyond the seeds (``flwr_byz.gars.BEYOND_NAMES``), kept out of
#: ``STRATEGIES`` (its size and content are relied on): FLTrust needs ``server_update_fn``.
BEYOND_STRATEGIES: dict[str, type[RobustStrategy]] = {
    name: cls for name, cls in RULE_STRATEGIES.items() if name in gars.BEYOND_NAMES
}

__all__ = [
    "BEYOND_STRATEGIES",
    "STRATEGIES",
    "UPDATE_MODES",
    "Average",
    "Brute",
    "Bulyan",
    "CenteredClipping",
    "DnC",
    "FLTrust",
    "GeometricMedian",
    "Krum",
    "MeaMed",
    "Median",
    "Medoid",
    "ModelLayout",
    "MultiKrum",
    "Phocas",
    "RobustAggregator",
    "RobustStrategy",
    "RoundReport",
    "ServerOptimizer",
    "ServerUpdateConfig",
    "Submission",
    "TooFewRepliesError",
    "TrimmedMean",
    "normalize_pre",
    "resolve_device",
    "round_seed",
]
