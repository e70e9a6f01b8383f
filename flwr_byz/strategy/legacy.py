"""The same robust strategies for Flower's legacy API (``flwr.server.strategy.FedAvg``).

``configure_fit`` remembers the global parameters of the round (``aggregate_fit`` does not receive
them); ``aggregate_fit`` runs the same Flower-free :class:`~flwr_byz.strategy.core.RobustAggregator`
as the Message-API classes. Parameters have no names: array ``i`` is keyed ``str(i)``. Node ids come
from ``ClientProxy.node_id`` (or ``int(cid)``). ``selected-nodes`` is a list of ints, as in the
Message API, although legacy metrics are nominally scalars.
"""

from __future__ import annotations

from collections.abc import Collection
from logging import INFO
from typing import Any

import numpy as np
import torch
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from flwr_byz.strategy.core import RobustAggregator, RoundReport, Submission
from flwr_byz.strategy.server_update import ServerUpdateConfig

__all__ = [
    "Average",
    "Brute",
    "Bulyan",
    "GeometricMedian",
    "Krum",
    "MeaMed",
    "Median",
    "Medoid",
    "MultiKrum",
    "Phocas",
    "RobustFedAvg",
    "TrimmedMean",
]


def _keyed(ndarrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {str(i): array for i, array in enumerate(ndarrays)}


def _node_id(proxy: ClientProxy) -> int:
    node_id = getattr(proxy, "node_id", None)
    if isinstance(node_id, int):
        return node_id
    try:
        return int(proxy.cid)
    except (TypeError, ValueError):
        return -1


def _decode(parameters: Parameters) -> tuple[dict[str, np.ndarray] | None, str | None]:
    try:
        return _keyed(parameters_to_ndarrays(parameters)), None
    except Exception as err:  # noqa: BLE001 - any decoding failure excludes the reply
        return None, f"parameters cannot be decoded: {type(err).__name__}: {err}"


class RobustFedAvg(FedAvg):
    """Legacy FedAvg with a robust rule in place of the weighted average.

    Same keywords as :class:`flwr_byz.strategy.RobustStrategy`; ``**fedavg_kwargs`` are the legacy
    FedAvg's (``fraction_fit``, ``min_fit_clients``, ``initial_parameters``, ...).
    """

    rule_name: str = ""

    def __init__(
        self,
        rule: str | None = None,
        *,
        num_byzantine: int = 0,
        rule_options: dict[str, Any] | None = None,
        device: str | torch.device = "auto",
        update_mode: str = "weights",
        learning_rate: float | None = None,
        lr_schedule_r: float | None = None,
        server_momentum: float = 0.0,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
        on_too_few: str = "keep",
        honest_node_ids: Collection[int] | None = None,
        **fedavg_kwargs: Any,
    ) -> None:
        super().__init__(**fedavg_kwargs)
        rule = rule or self.rule_name
        if not rule:
            raise ValueError("RobustFedAvg needs a rule name (one of flwr_byz.gars.NAMES)")
        self.aggregator = RobustAggregator(
            rule,
            num_byzantine,
            rule_options=rule_options,
            device=device,
            update=ServerUpdateConfig(
                update_mode=update_mode,
                learning_rate=learning_rate,
                lr_schedule_r=lr_schedule_r,
                server_momentum=server_momentum,
                weight_decay=weight_decay,
                clip_norm=clip_norm,
            ),
            on_too_few=on_too_few,
            honest_node_ids=honest_node_ids,
        )
        self._global_parameters: Parameters | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rule={self.aggregator.rule.name}, f={self.num_byzantine})"

    @property
    def num_byzantine(self) -> int:
        """Declared ``f``."""
        return self.aggregator.num_byzantine

    @property
    def honest_node_ids(self) -> frozenset[int] | None:
        """Node ids known to be honest (None: honest-only metrics off)."""
        return self.aggregator.honest_node_ids

    @honest_node_ids.setter
    def honest_node_ids(self, node_ids: Collection[int] | None) -> None:
        self.aggregator.honest_node_ids = node_ids

    @property
    def last_round_report(self) -> RoundReport | None:
        """The last round's report."""
        return self.aggregator.last_round_report

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Remember the round's global parameters, then sample like FedAvg."""
        decoded, problem = _decode(parameters)
        if decoded is None:
            raise ValueError(f"the global parameters cannot be decoded: {problem}")
        self.aggregator.set_global(decoded)
        self._global_parameters = parameters
        instructions = super().configure_fit(server_round, parameters, client_manager)
        if self.aggregator.update.update_mode == "gradient":
            rate = self.aggregator.learning_rate_at(server_round)
            for _, fit_ins in instructions:
                fit_ins.config["learning-rate"] = rate
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Check, aggregate robustly and step; failures are counted as excluded replies."""
        submissions: list[Submission] = []
        for proxy, fit_res in results:
            node_id = _node_id(proxy)
            metrics = dict(fit_res.metrics or {})
            if fit_res.status.code != Code.OK:
                problem = f"status {fit_res.status.code.name}: {fit_res.status.message}"
                submissions.append(Submission(node_id, None, problem, metrics))
                continue
            arrays, problem = _decode(fit_res.parameters)
            submissions.append(Submission(node_id, arrays, problem, metrics))
        for failure in failures:
            if isinstance(failure, BaseException):
                problem = f"failure: {type(failure).__name__}: {failure}"
                submissions.append(Submission(-1, None, problem))
            else:
                proxy, fit_res = failure
                problem = f"failure: status {fit_res.status.code.name}: {fit_res.status.message}"
                submissions.append(Submission(_node_id(proxy), None, problem))
        new_arrays, report = self.aggregator.aggregate(server_round, submissions)
        if report.kept_model and self._global_parameters is not None:
            parameters = self._global_parameters
        else:
            parameters = ndarrays_to_parameters(list(new_arrays.values()))
        log(INFO, "aggregate_fit round %d: %s", server_round, report.metrics)
        return parameters, dict(report.metrics)


class Average(RobustFedAvg):
    """Unweighted mean (not robust; the reference)."""

    rule_name = "average"


class Median(RobustFedAvg):
    """Coordinate-wise median."""

    rule_name = "median"


class TrimmedMean(RobustFedAvg):
    """Coordinate-wise trimmed mean Trmean_b (Phocas paper, Def. 7)."""

    rule_name = "trimmed_mean"

    def __init__(self, *, num_byzantine: int = 0, b: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_byzantine=num_byzantine, rule_options={"b": b}, **kwargs)


class Phocas(RobustFedAvg):
    """Phocas_b (Phocas paper, Def. 8)."""

    rule_name = "phocas"

    def __init__(self, *, num_byzantine: int = 0, b: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_byzantine=num_byzantine, rule_options={"b": b}, **kwargs)


class MeaMed(RobustFedAvg):
    """Mean around the median."""

    rule_name = "meamed"


class Krum(RobustFedAvg):
    """Krum."""

    rule_name = "krum"


class MultiKrum(RobustFedAvg):
    """Multi-Krum (default m = n - f)."""

    rule_name = "multi_krum"

    def __init__(self, *, num_byzantine: int = 0, m: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_byzantine=num_byzantine, rule_options={"m": m}, **kwargs)


class Medoid(RobustFedAvg):
    """Medoid ("GeoMed" of the Bulyan paper)."""

    rule_name = "medoid"


class GeometricMedian(RobustFedAvg):
    """Geometric median (smoothed Weiszfeld)."""

    rule_name = "geometric_median"

    def __init__(
        self,
        *,
        num_byzantine: int = 0,
        eps: float = 1e-8,
        tol: float = 1e-7,
        max_iter: int = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_byzantine=num_byzantine,
            rule_options={"eps": eps, "tol": tol, "max_iter": max_iter},
            **kwargs,
        )


class Brute(RobustFedAvg):
    """Brute (smallest-diameter subset of size n - f)."""

    rule_name = "brute"

    def __init__(
        self, *, num_byzantine: int = 0, max_subsets: int = 100_000, **kwargs: Any
    ) -> None:
        super().__init__(
            num_byzantine=num_byzantine, rule_options={"max_subsets": max_subsets}, **kwargs
        )


class Bulyan(RobustFedAvg):
    """Bulyan(A) (Bulyan paper, section 4)."""

    rule_name = "bulyan"

    def __init__(
        self,
        *,
        num_byzantine: int = 0,
        selector: str = "krum",
        variant: str = "bulyan",
        selector_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_byzantine=num_byzantine,
            rule_options={
                "selector": selector,
                "variant": variant,
                "selector_options": selector_options,
            },
            **kwargs,
        )
