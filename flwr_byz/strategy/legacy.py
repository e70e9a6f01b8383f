"""The same robust strategies for Flower's legacy API (``flwr.server.strategy.FedAvg``).

``configure_fit`` remembers the global parameters of the round (``aggregate_fit`` does not receive
them); ``aggregate_fit`` runs the same Flower-free :class:`~flwr_byz.strategy.core.RobustAggregator`
as the Message-API classes. Parameters have no names: array ``i`` is keyed ``str(i)``. Node ids come
from ``ClientProxy.node_id`` (or ``int(cid)``). ``selected-nodes`` is a list of ints, as in the
Message API, although legacy metrics are nominally scalars.

As in the Message API, only a result whose content breaks the protocol lowers ``f``; a failure or
a non-OK status may be an honest crash (it lowers ``n``). Results are matched to the clients
sampled by ``configure_fit``: a second result of one client, or one of a client not sampled, is
dropped and reported. Client metrics (fit and evaluate, loss included) are unweighted per-key
medians unless ``fit_metrics_aggregation_fn`` / ``evaluate_metrics_aggregation_fn`` is given (it
then replaces the medians, on the accepted results). ``aggregate_fit``'s metrics hold the round's
diagnostics under the prefix ``byz.`` beside the clients' metrics, as in the Message API
(docs/strategies.md, "Metrics"). The results a round leaves out are logged in one line.
"""

from __future__ import annotations

from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.common import (
    Code,
    EvaluateRes,
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

from flwr_byz.metrics import PARTITION_ID_KEY, median_client_metrics
from flwr_byz.strategy import rules
from flwr_byz.strategy.core import Submission, group_by_reason
from flwr_byz.strategy.rules import RobustBase

__all__ = [
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
    except (AttributeError, TypeError, ValueError):
        return -1


def _decode(parameters: Parameters) -> tuple[dict[str, np.ndarray] | None, str | None]:
    try:
        return _keyed(parameters_to_ndarrays(parameters)), None
    except Exception as err:  # any decoding failure excludes the reply
        return None, f"parameters cannot be decoded: {type(err).__name__}: {err}"


class RobustFedAvg(RobustBase, FedAvg):
    """Legacy FedAvg with a robust rule in place of the weighted average.

    Same keywords as :class:`flwr_byz.strategy.RobustStrategy`; the remaining ones are the legacy
    FedAvg's (``fraction_fit``, ``min_fit_clients``, ``initial_parameters``, ...).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._global_parameters: Parameters | None = None
        self._sampled: list[int] = []

    def summary(self) -> None:
        """Log the configuration: the rule, f, the pre-aggregation chain, the rule's real
        minimum number of nodes, and that nothing is weighted (the legacy server prints no
        summary of its own; call it to log these lines)."""
        log(INFO, "%s (legacy API):", type(self).__name__)
        lines = self.robust_summary(
            sampled=self.min_fit_clients if self.fraction_fit > 0 else None,
            train_metrics_fn=self.fit_metrics_aggregation_fn,
            evaluate_metrics_fn=self.evaluate_metrics_aggregation_fn,
        )
        for index, line in enumerate(lines, start=1):
            level = WARNING if line.startswith("WARNING: ") else INFO
            log(level, "\t%s──> %s", "└" if index == len(lines) else "├", line)

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
        self._sampled = [_node_id(proxy) for proxy, _ in instructions]
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
        """Check, aggregate robustly and step; failures are excluded (they never lower ``f``)."""
        sampled = set(self._sampled)
        seen: set[int] = set()
        dropped: list[tuple[int, str]] = []
        submissions: list[Submission] = []
        examples: dict[int, tuple[int, dict[str, Scalar]]] = {}

        def admit(node_id: int) -> bool:
            """Whether this is the first result of a client sampled this round."""
            if sampled and node_id not in sampled:
                dropped.append((node_id, "result of a client not sampled this round"))
                return False
            if node_id in seen:
                dropped.append((node_id, "second result of this client this round"))
                return False
            seen.add(node_id)
            return True

        for proxy, fit_res in results:
            node_id = _node_id(proxy)
            if not admit(node_id):
                continue
            reported = dict(fit_res.metrics or {})
            if fit_res.status.code != Code.OK:
                status = f"status {fit_res.status.code.name}: {fit_res.status.message}"
                submissions.append(Submission(node_id, None, status, reported, crashed=True))
                continue
            arrays, problem = _decode(fit_res.parameters)
            submissions.append(Submission(node_id, arrays, problem, reported))
            examples[node_id] = (fit_res.num_examples, reported)
        exceptions: list[str] = []
        for failure in failures:
            if isinstance(failure, BaseException):
                exceptions.append(f"{type(failure).__name__}: {failure}")
                continue
            proxy, fit_res = failure
            if admit(_node_id(proxy)):
                problem = f"failure: status {fit_res.status.code.name}: {fit_res.status.message}"
                submissions.append(Submission(_node_id(proxy), None, problem, crashed=True))
        # a bare exception names no client: it explains one of the sampled clients without result
        missing = [node for node in self._sampled if node not in seen]
        if exceptions and not missing:
            for text in exceptions:  # configure_fit was not called here: no sampled list
                submissions.append(Submission(-1, None, f"failure: {text}", crashed=True))
        elif exceptions:
            counts: dict[str, int] = {}
            for text in exceptions:
                counts[text] = counts.get(text, 0) + 1
            log(
                WARNING,
                "round %d: %d fit failures naming no client: %s",
                server_round,
                len(exceptions),
                "; ".join(f"{text} (x{k})" if k > 1 else text for text, k in counts.items()),
            )
        new_arrays, report = self.aggregator.aggregate(server_round, submissions, missing, dropped)
        if report.kept_model and self._global_parameters is not None:
            parameters = self._global_parameters
        else:
            parameters = ndarrays_to_parameters(list(new_arrays.values()))
        user_fn = self.fit_metrics_aggregation_fn
        if user_fn:
            accepted = [examples[node] for node in report.accepted_node_ids if node in examples]
            call = (lambda: user_fn(accepted)) if accepted else None
            self.apply_user_metrics(server_round, report, "fit_metrics_aggregation_fn", call)
        metrics: dict[str, Any] = dict(report.metrics)
        log(INFO, "aggregate_fit round %d: %s", server_round, metrics)
        return parameters, metrics

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Unweighted medians of the clients' losses and metrics; never raises on a bad result.

        The legacy FedAvg weights by the clients' own ``num_examples`` (one client claiming 1e12
        sets the loss; counts summing to zero raise ``ZeroDivisionError``). A user's
        ``evaluate_metrics_aggregation_fn`` is honoured for the metrics. The unusable results
        are logged in one line, grouped by reason.
        """
        usable = [(proxy, res) for proxy, res in results if res.status.code == Code.OK]
        unusable = [
            (_node_id(proxy), f"status {res.status.code.name}: {res.status.message}")
            for proxy, res in results
            if res.status.code != Code.OK
        ]
        for failure in failures:
            if isinstance(failure, BaseException):
                unusable.append((-1, f"failure: {type(failure).__name__}: {failure}"))
            else:
                proxy, res = failure
                unusable.append((_node_id(proxy), f"failure: status {res.status.code.name}"))
        if unusable:
            log(
                WARNING,
                "round %d: %d evaluation results unusable: %s",
                server_round,
                len(unusable),
                group_by_reason(unusable),
            )
        if not usable or (failures and not self.accept_failures):  # as the legacy FedAvg
            return None, {}
        losses = median_client_metrics({"loss": res.loss} for _, res in usable)
        loss = losses.get("loss")
        if self.evaluate_metrics_aggregation_fn:
            metrics = self.evaluate_metrics_aggregation_fn(
                [(res.num_examples, res.metrics) for _, res in usable]
            )
        else:
            medians = median_client_metrics(
                (dict(res.metrics or {}) for _, res in usable), exclude={PARTITION_ID_KEY}
            )
            # legacy metrics are scalars: list-valued medians have no place there
            metrics = {k: v for k, v in medians.items() if not isinstance(v, list)}
        return (float(loss) if isinstance(loss, float) else None), metrics


class Average(rules.Average, RobustFedAvg):
    __doc__ = rules.Average.__doc__


class Median(rules.Median, RobustFedAvg):
    __doc__ = rules.Median.__doc__


class TrimmedMean(rules.TrimmedMean, RobustFedAvg):
    __doc__ = rules.TrimmedMean.__doc__


class Phocas(rules.Phocas, RobustFedAvg):
    __doc__ = rules.Phocas.__doc__


class MeaMed(rules.MeaMed, RobustFedAvg):
    __doc__ = rules.MeaMed.__doc__


class Krum(rules.Krum, RobustFedAvg):
    __doc__ = rules.Krum.__doc__


class MultiKrum(rules.MultiKrum, RobustFedAvg):
    __doc__ = rules.MultiKrum.__doc__


class Medoid(rules.Medoid, RobustFedAvg):
    __doc__ = rules.Medoid.__doc__


class GeometricMedian(rules.GeometricMedian, RobustFedAvg):
    __doc__ = rules.GeometricMedian.__doc__


class Brute(rules.Brute, RobustFedAvg):
    __doc__ = rules.Brute.__doc__


class Bulyan(rules.Bulyan, RobustFedAvg):
    __doc__ = rules.Bulyan.__doc__


class CenteredClipping(rules.CenteredClipping, RobustFedAvg):
    __doc__ = rules.CenteredClipping.__doc__


class FLTrust(rules.FLTrust, RobustFedAvg):
    __doc__ = rules.FLTrust.__doc__


class DnC(rules.DnC, RobustFedAvg):
    __doc__ = rules.DnC.__doc__


#: this API's strategy class of each rule (the per-rule classes above), by rule name; their
#: keyword-only signatures (rule options, num_byzantine, robust options, FedAvg's) are attached
RULE_STRATEGIES: dict[str, type[RobustFedAvg]] = rules.rule_strategies(RobustFedAvg, FedAvg)
