"""Robust strategies for Flower's Message API (``flwr.serverapp.strategy``).

``RobustStrategy`` subclasses Flower's ``FedAvg`` (sampling, message construction, evaluation) and
replaces its weighted average by a Byzantine-resilient rule of ``flwr_byz.gars``, run by the
Flower-free :class:`~flwr_byz.strategy.core.RobustAggregator`. Replies are never weighted by
``num-examples``; bad replies are excluded and reported, never fatal.

Replies are matched to the messages sent, not to sender ids: the grid sets each sent message's
``metadata.message_id`` when it pushes it (in place, on the very objects ``configure_train``
returned), and a reply names it in ``reply_to_message_id``. So the SuperLink's
``NODE_UNAVAILABLE`` error for a dead node (sender: the SuperLink, node id 1) counts for the node it
was sent to, and a second reply to one message, or a reply to no message of the round, is dropped
and reported. A message that was never pushed as such (a wrapper grid sent a copy, so its id
stayed empty) is matched by node id instead, one reply at most.

Metrics (docs/strategies.md, "Metrics"): ``aggregate_train`` returns the round's diagnostics under
the prefix ``byz.`` (``byz.replies``, ``byz.excluded``, ``byz.kept-model``, ...) beside the
clients' own metrics under their own names: their unweighted per-key median, or what the user's
``train_metrics_aggr_fn`` makes of the accepted replies. The replies a round leaves out are
logged in one line, grouped by reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from flwr_byz.codec import array_to_numpy, decode_arrayrecord, numpy_to_array, records_of
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
    "RobustStrategy",
    "TrimmedMean",
    "array_to_numpy",
    "decode_arrayrecord",
    "numpy_to_array",
]


#: ErrorCode value -> name (``5 -> "NODE_UNAVAILABLE"``)
_ERROR_NAMES = {
    value: name
    for name, value in vars(ErrorCode).items()
    if name.isupper() and isinstance(value, int)
}
#: Flower's text of a ClientApp exception: ``"<class 'ValueError'>:<'boom'>"``
_FLOWER_EXCEPTION = re.compile(r"^<class '(?:[\w.]+\.)?(\w+)'>:<'(.*)'>$", re.DOTALL)


def describe_error(code: int, reason: str | None) -> str:
    """One line for an error reply: ``error reply (code 2, CLIENT_APP_RAISED_EXCEPTION):
    ValueError('boom')`` (Flower's ``"<class 'ValueError'>:<'boom'>"`` shortened)."""
    name = _ERROR_NAMES.get(code)
    reason = (reason or "").strip()
    match = _FLOWER_EXCEPTION.match(reason)
    text = f"{match.group(1)}({match.group(2)!r})" if match else reason
    return f"error reply (code {code}{', ' + name if name else ''}): {text}"


def _reply_metrics(message: Message) -> dict[str, Any]:
    """The reply's scalar metrics (all its MetricRecords merged)."""
    merged: dict[str, Any] = {}
    for record in records_of(message.content, MetricRecord).values():
        merged.update(record)
    return merged


class RobustStrategy(RobustBase, FedAvg):
    """FedAvg's plumbing (Message API) with a robust rule in place of the weighted average.

    Keywords: those of :class:`flwr_byz.strategy.rules.RobustBase` (``num_byzantine``, the rule's
    options, ``device``, ``update_mode``, the server step, ``on_too_few``, ``honest_node_ids``),
    then FedAvg's ``fraction_train``, ``min_train_nodes``, ``fraction_evaluate``,
    ``min_evaluate_nodes``, ``min_available_nodes``, ``arrayrecord_key``, ...
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._global_record: ArrayRecord | None = None
        self._sent: list[Message] = []
        self._sent_evaluate: list[Message] = []
        self.aggregator.client_metrics_exclude = frozenset({self.weighted_by_key, PARTITION_ID_KEY})

    def _user_fn(self, fn: Callable[..., Any]) -> Callable[..., Any] | None:
        """The user's metrics aggregation, or None for FedAvg's default (replaced by medians)."""
        return None if fn is aggregate_metricrecords else fn

    def summary(self) -> None:
        """Log the configuration: FedAvg's sampling, then the rule, f, the pre-aggregation
        chain, the rule's real minimum number of nodes, and that nothing is weighted.

        FedAvg's own summary is not inherited: its "Weighted by" and its ``min_train_nodes``
        (a sampling floor, 2 by default) would misstate what a robust rule needs."""
        log(INFO, "\t├──> Sampling:")
        log(
            INFO,
            "\t│\t├──Fraction: train (%.2f) | evaluate (%.2f)",
            self.fraction_train,
            self.fraction_evaluate,
        )
        log(
            INFO,
            "\t│\t├──Nodes sampled at least: train (%d) | evaluate (%d)",
            self.min_train_nodes,
            self.min_evaluate_nodes,
        )
        log(INFO, "\t│\t└──Minimum available nodes: %d", self.min_available_nodes)
        lines = self.robust_summary(
            sampled=self.min_train_nodes if self.fraction_train > 0 else None,
            train_metrics_fn=self._user_fn(self.train_metrics_aggr_fn),
            evaluate_metrics_fn=self._user_fn(self.evaluate_metrics_aggr_fn),
        )
        log(INFO, "\t├──> %s:", lines[0])
        for index, line in enumerate(lines[1:], start=2):
            level = WARNING if line.startswith("WARNING: ") else INFO
            log(level, "\t│\t%s──%s", "└" if index == len(lines) else "├", line)
        log(INFO, "\t└──> Keys in records:")
        log(INFO, "\t\t├── ArrayRecord key: '%s'", self.arrayrecord_key)
        log(INFO, "\t\t└── ConfigRecord key: '%s'", self.configrecord_key)

    # -------------------------------------------------------------- training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays of the round, then sample and send like FedAvg."""
        decoded, problem = decode_arrayrecord(arrays)
        if decoded is None:
            raise ValueError(f"the global model cannot be decoded: {problem}")
        self.aggregator.set_global(decoded)
        self._global_record = arrays
        if self.update_mode == "gradient":
            config["learning-rate"] = self.aggregator.learning_rate_at(server_round)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        # the grid sets each message's id in place when it pushes it; replies are matched to them
        self._sent = messages
        return messages

    @staticmethod
    def _match_replies(
        sent_messages: list[Message], replies: Iterable[Message]
    ) -> tuple[list[tuple[int, Message]], list[int], list[tuple[int, str]]]:
        """Pair each reply with the message of ``sent_messages`` it answers.

        Returns ``(node id asked, reply)`` pairs (one per message at most), the node ids of the
        messages left unanswered, and ``(sender id, reason)`` of the replies dropped.
        """
        by_id = {m.metadata.message_id: m for m in sent_messages if m.metadata.message_id}
        unpushed: dict[int, Message] = {}  # a wrapper grid sent a copy: match by node id
        for m in sent_messages:
            if not m.metadata.message_id:
                unpushed.setdefault(int(m.metadata.dst_node_id), m)
        answered: set[int] = set()  # id() of the sent messages answered
        matched: list[tuple[int, Message]] = []
        dropped: list[tuple[int, str]] = []
        for reply in replies:
            sender = int(reply.metadata.src_node_id)
            reply_to = reply.metadata.reply_to_message_id
            sent = by_id.get(reply_to) if reply_to else None
            if sent is None:
                sent = unpushed.get(sender)
            if sent is None:
                dropped.append((sender, f"reply to no message sent this round ({reply_to!r})"))
            elif id(sent) in answered:
                node = int(sent.metadata.dst_node_id)
                dropped.append((sender, f"second reply to the message sent to node {node}"))
            else:
                answered.add(id(sent))
                matched.append((int(sent.metadata.dst_node_id), reply))
        missing = [int(m.metadata.dst_node_id) for m in sent_messages if id(m) not in answered]
        return matched, missing, dropped

    def _submission(self, node_id: int, message: Message) -> Submission:
        """What the engine needs of the reply to the message sent to ``node_id``."""
        if message.has_error():
            error = message.error
            return Submission(node_id, None, describe_error(error.code, error.reason), crashed=True)
        if not message.has_content():
            return Submission(node_id, None, "reply has no content")
        content = message.content
        metrics = _reply_metrics(message)
        record = records_of(content, ArrayRecord).get(self.arrayrecord_key)
        if record is None:
            return Submission(
                node_id, None, f"no ArrayRecord under key {self.arrayrecord_key!r}", metrics
            )
        arrays, problem = decode_arrayrecord(record)
        return Submission(node_id, arrays, problem, metrics)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check the replies, aggregate robustly, step the model; never weighted by examples.

        Replies are matched to this round's messages (module docstring). The metrics: the
        round's diagnostics under ``byz.``, and the clients' own metrics under their names: the
        unweighted per-key median of the accepted replies (the honest ones when
        ``honest_node_ids`` is set), or a user's ``train_metrics_aggr_fn`` applied to the
        accepted replies' contents (a ``byz.*`` key it returns never replaces ours).
        """
        replies = list(replies)
        matched, missing, dropped = self._match_replies(self._sent, replies)
        submissions = [self._submission(node, message) for node, message in matched]
        new_arrays, report = self.aggregator.aggregate(server_round, submissions, missing, dropped)
        if report.kept_model and self._global_record is not None:
            record = self._global_record
        else:
            record = ArrayRecord()
            for key, value in new_arrays.items():
                record[key] = numpy_to_array(value)
        user_fn = self._user_fn(self.train_metrics_aggr_fn)
        if user_fn is not None:
            accepted = set(report.accepted_node_ids)
            contents = [message.content for node, message in matched if node in accepted]
            call = (lambda: user_fn(contents, self.weighted_by_key)) if contents else None
            self.apply_user_metrics(server_round, report, "train_metrics_aggr_fn", call)
        return record, MetricRecord(report.metrics)

    # -------------------------------------------------------------- evaluation
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample and send like FedAvg; remember the messages to match the replies to."""
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self._sent_evaluate = messages
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Per key, the unweighted median of the usable replies' metrics; never raises on one.

        The clients report their own metrics and example counts, so no weighting by
        ``weighted_by_key`` (one client claiming 1e12 examples would set the result) and no
        mean; non-finite and non-numeric values are dropped. A user's
        ``evaluate_metrics_aggr_fn`` is honoured, on the usable replies. The unusable and
        dropped replies are logged in one line, grouped by reason.
        """
        if self._sent_evaluate:
            matched, _, dropped = self._match_replies(self._sent_evaluate, replies)
        else:  # configure_evaluate did not run here: at most one reply per sender
            matched, dropped, seen = [], [], set()
            for reply in replies:
                sender = int(reply.metadata.src_node_id)
                if sender in seen:
                    dropped.append((sender, "second reply of this node"))
                else:
                    seen.add(sender)
                    matched.append((sender, reply))
        usable: list[Message] = []
        unusable: list[tuple[int, str]] = []
        for node, message in matched:
            if message.has_error():
                unusable.append((node, describe_error(message.error.code, message.error.reason)))
            elif not message.has_content():
                unusable.append((node, "reply has no content"))
            else:
                usable.append(message)
        parts = []
        if unusable:
            parts.append(f"{len(unusable)} unusable: {group_by_reason(unusable)}")
        if dropped:
            parts.append(f"{len(dropped)} dropped: {group_by_reason(dropped)}")
        if parts:
            log(WARNING, "round %d: evaluation replies %s", server_round, "; ".join(parts))
        if not usable:
            return None
        user_fn = self._user_fn(self.evaluate_metrics_aggr_fn)
        if user_fn is not None:
            contents = [message.content for message in usable]
            return user_fn(contents, self.weighted_by_key)  # type: ignore[no-any-return]
        values = median_client_metrics(
            (_reply_metrics(message) for message in usable),
            exclude={self.weighted_by_key, PARTITION_ID_KEY},
        )
        return MetricRecord(values) if values else None


class Average(rules.Average, RobustStrategy):
    __doc__ = rules.Average.__doc__


class Median(rules.Median, RobustStrategy):
    __doc__ = rules.Median.__doc__


class TrimmedMean(rules.TrimmedMean, RobustStrategy):
    __doc__ = rules.TrimmedMean.__doc__


class Phocas(rules.Phocas, RobustStrategy):
    __doc__ = rules.Phocas.__doc__


class MeaMed(rules.MeaMed, RobustStrategy):
    __doc__ = rules.MeaMed.__doc__


class Krum(rules.Krum, RobustStrategy):
    __doc__ = rules.Krum.__doc__


class MultiKrum(rules.MultiKrum, RobustStrategy):
    __doc__ = rules.MultiKrum.__doc__


class Medoid(rules.Medoid, RobustStrategy):
    __doc__ = rules.Medoid.__doc__


class GeometricMedian(rules.GeometricMedian, RobustStrategy):
    __doc__ = rules.GeometricMedian.__doc__


class Brute(rules.Brute, RobustStrategy):
    __doc__ = rules.Brute.__doc__


class Bulyan(rules.Bulyan, RobustStrategy):
    __doc__ = rules.Bulyan.__doc__


class CenteredClipping(rules.CenteredClipping, RobustStrategy):
    __doc__ = rules.CenteredClipping.__doc__


class FLTrust(rules.FLTrust, RobustStrategy):
    __doc__ = rules.FLTrust.__doc__


class DnC(rules.DnC, RobustStrategy):
    __doc__ = rules.DnC.__doc__


#: this API's strategy class of each rule (the per-rule classes above), by rule name; their
#: keyword-only signatures (rule options, num_byzantine, robust options, FedAvg's) are attached
RULE_STRATEGIES: dict[str, type[RobustStrategy]] = rules.rule_strategies(RobustStrategy, FedAvg)
