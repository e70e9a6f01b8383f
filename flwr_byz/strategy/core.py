"""The Flower-free engine under both strategy APIs: check replies, aggregate robustly, step, report.

One round: submissions (node id + named numpy arrays, or the reason they are unusable) are checked
against the global model's layout (keys, shapes, dtypes, finite values); bad ones are excluded and
reported; the accepted ones become one ``(n', d)`` tensor on the device (gradients, or deltas
``reply - global`` in weights mode); the GAR (``flwr_byz.gars``) runs with ``f' = max(0, f - k)``
where ``k`` counts only the replies whose *content* broke the protocol (wrong keys, shapes or
dtypes, undecodable or non-finite values: proof that the sender is faulty). A missing node or an
error reply may be an honest crash: it lowers ``n``, never ``f``. When fewer usable replies remain
than the rule needs for ``f'``, the model is kept (or :class:`TooFewRepliesError`). The server
step (:mod:`.server_update`) gives the next model. Round metrics follow docs/ARCHITECTURE.md
section 4 and ALGORITHMS.md ("Momentum and metrics"): the engine's diagnostics carry the prefix
``byz.`` (:data:`flwr_byz.metrics.PREFIX`), the clients' own metrics keep their names and are
their unweighted per-key median. The replies a round leaves out are logged in one line, grouped
by reason (:func:`group_by_reason`).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.common.logger import log

from flwr_byz import gars
from flwr_byz import metrics as round_metrics
from flwr_byz.gars import preaggregation
from flwr_byz.strategy.layout import ModelLayout
from flwr_byz.strategy.server_update import ServerOptimizer, ServerUpdateConfig

__all__ = [
    "ON_TOO_FEW",
    "group_by_reason",
    "RobustAggregator",
    "RoundReport",
    "Submission",
    "TooFewRepliesError",
    "normalize_pre",
    "resolve_device",
    "round_seed",
]

#: ``server_update_fn(global_arrays, server_round) -> update arrays`` (FLTrust's ``g_0``)
ServerUpdateFn = Callable[[dict[str, np.ndarray], int], Mapping[str, Any]]

#: rules whose per-round options the engine supplies (state, server update, seed)
_STATEFUL_RULES = ("centered_clipping", "fltrust", "dnc")

ON_TOO_FEW = ("keep", "raise")


def group_by_reason(entries: Sequence[tuple[int, str]]) -> str:
    """``"reason from nodes 12, 40; other reason from node 7"``: the node ids of ``(node id,
    reason)`` pairs grouped by reason (ids sorted), reasons in the order they first appear."""
    by_reason: dict[str, list[int]] = {}
    for node, reason in entries:
        by_reason.setdefault(reason, []).append(node)
    parts = []
    for reason, nodes in by_reason.items():
        ids = ", ".join(str(node) for node in sorted(nodes))
        parts.append(f"{reason} from node{'s' if len(nodes) > 1 else ''} {ids}")
    return "; ".join(parts)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _reported_partition(metrics: Mapping[str, Any]) -> int | None:
    """The partition id a reply's metrics name (an int >= 0 under ``partition-id``), or None."""
    value = metrics.get(round_metrics.PARTITION_ID_KEY)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not (value.is_integer() and value >= 0):
        return None
    return int(value) if value >= 0 else None


def _all_finite(vector: torch.Tensor) -> bool:
    """Whether all values are finite: one sum (NaN and inf propagate), the exact check only when
    the sum is not finite (a non-finite value, or finite values whose sum overflows)."""
    return bool(torch.isfinite(vector.sum())) or bool(torch.isfinite(vector).all())


def round_seed(seed: int, server_round: int) -> int:
    """The seed a seeded step (bucketing, DnC) uses in ``server_round``: a fresh, deterministic
    draw per round from ``(seed, server_round)`` (numpy's ``SeedSequence``)."""
    state = np.random.SeedSequence([int(seed), int(server_round)]).generate_state(1, np.uint32)
    return int(state[0])


def normalize_pre(
    pre: Sequence[preaggregation.Step] | None,
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
            name, options = preaggregation._parse_step(step)
        except TypeError as err:
            raise ValueError(f"pre step {index}: {err}") from None
        impl = preaggregation.PRE_REGISTRY[name]
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


def _chain_min_n(steps: Sequence[tuple[str, Mapping[str, Any]]], rows: int, f: int) -> int:
    """Smallest n for which the chain gives at least ``rows`` rows (and arc/nnm get n > f)."""
    n = max(rows, 1)
    for name, options in reversed(steps):
        if name == "bucketing":
            s = int(options.get("s", 2))
            n = (n - 1) * s + 1
        elif name in ("arc", "nnm"):
            n = max(n, f + 1)
    return n


class TooFewRepliesError(RuntimeError):
    """Too few usable replies for the rule, with ``on_too_few="raise"``."""


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given (checked)."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


@dataclass
class Submission:
    """One node's reply, reduced to what the engine needs.

    ``arrays`` is None when the reply carried no usable arrays; ``problem`` then (or whenever set)
    says why, and the submission is excluded. ``crashed``: the reply is an error reply (or a
    failure) rather than content: its sender may be an honest node that crashed, so excluding it
    lowers ``n`` but never the declared ``f``; any other problem proves the sender faulty.
    """

    node_id: int
    arrays: Mapping[str, Any] | None
    problem: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    crashed: bool = False


@dataclass
class RoundReport:
    """What happened in one round, for programmatic use (``strategy.last_round_report``).

    ``participation`` (accepted node id -> share of the aggregate) is filled only when the
    aggregator tracks it (``honest_node_ids`` set, or ``track_participation=True``); else empty.
    ``diagnostics``: the engine's round metrics, unprefixed (``{"replies": 7, ...}``);
    ``client_metrics``: the per-key unweighted median of the clients' own metrics; ``metrics``:
    both as the strategy's ``MetricRecord`` holds them (diagnostics under ``byz.``, the clients'
    metrics, or a user's aggregation of them, under their own names). ``partition_of``: the
    partition ids known for this round's nodes (node id -> partition id).
    """

    server_round: int
    replies: int
    accepted_node_ids: list[int]
    excluded: list[tuple[int, str]]
    num_byzantine: int
    selected_node_ids: list[int] | None = None
    participation: dict[int, float] = field(default_factory=dict)
    dropouts: int = 0
    faulty_node_ids: list[int] = field(default_factory=list)
    dropped: list[tuple[int, str]] = field(default_factory=list)
    kept_model: bool = False
    reason_kept: str | None = None
    learning_rate: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    client_metrics: dict[str, Any] = field(default_factory=dict)
    partition_of: dict[int, int] = field(default_factory=dict)

    @property
    def excluded_node_ids(self) -> list[int]:
        """Ids of the excluded nodes (missing, error replies, faulty content), in report order."""
        return [node for node, _ in self.excluded]

    @property
    def selected_partitions(self) -> list[int] | None:
        """Partition ids of the selected nodes (-1 where unknown), or None when the rule did
        not select or no partition id is known."""
        if self.selected_node_ids is None or not self.partition_of:
            return None
        return [self.partition_of.get(node, -1) for node in self.selected_node_ids]

    @property
    def excluded_partitions(self) -> list[int] | None:
        """Partition ids of the excluded nodes (-1 where unknown), or None when none is known."""
        if not self.partition_of:
            return None
        return [self.partition_of.get(node, -1) for node, _ in self.excluded]

    @property
    def excluded_reasons(self) -> dict[int, str]:
        """Excluded node id -> reason (the API layers pass at most one reply per node)."""
        return dict(self.excluded)

    def details(self) -> dict[str, Any]:
        """Who was excluded or dropped and why, JSON-ready (e.g. for ``rounds.jsonl``).

        A ``MetricRecord`` holds numbers only, so the reasons travel here, not in the metrics.
        """
        out: dict[str, Any] = {
            "excluded-nodes": [node for node, _ in self.excluded],
            "excluded-reasons": [reason for _, reason in self.excluded],
            "faulty-nodes": list(self.faulty_node_ids),
            "effective-f": self.num_byzantine,
        }
        if self.dropped:
            out["dropped-from"] = [node for node, _ in self.dropped]
            out["dropped-reasons"] = [reason for _, reason in self.dropped]
        if self.reason_kept is not None:
            out["kept-reason"] = self.reason_kept
        return out


class RobustAggregator:
    """Checks, robust aggregation and server step of one federation; knows nothing of Flower.

    Args:
        rule: a name in ``flwr_byz.gars.NAMES``.
        num_byzantine: declared ``f``.
        rule_options: the rule's keyword options (``b``, ``m``, ``selector``, ...).
        device: where the ``(n, d)`` tensor and the rule run (``"auto"``: CUDA when available).
        update: the server step (:class:`ServerUpdateConfig`).
        on_too_few: ``"keep"`` the model or ``"raise"`` :class:`TooFewRepliesError` when the usable
            replies are fewer than the rule needs (also when the rule itself refuses them).
        honest_node_ids: node ids known to be honest (a simulation sets it) for the honest-only
            metrics; every other accepted node counts as Byzantine.
        track_participation: compute each accepted reply's share of the aggregate
            (``RoundReport.participation``) even without ``honest_node_ids``. Participation costs
            more than some rules themselves (index sorts), so it is computed only when used: with
            ``honest_node_ids`` set (``byzantine-influence``) or this option on.
        pre: pre-aggregation chain run on the accepted vectors before the rule, with the rule's
            ``f'`` (see :func:`normalize_pre`; e.g. ``["arc", ("nnm", {})]``). Participation is
            mapped back to the nodes; ``selected-nodes`` only when every step is one to one.
            A ``bucketing`` step draws a fresh permutation per round (``round_seed``).
        server_update_fn: FLTrust's ``g_0``: ``fn(global_arrays, server_round)`` returns the
            server's update on its root data (same keys and shapes as the model's float arrays,
            in the form of the replies' vectors: a delta in weights mode, a gradient in gradient
            mode). Required by ``fltrust``, refused by the other rules.
        partition_of: node id -> partition id, where the caller knows it (a simulation does),
            for ``byz.selected-partitions`` / ``byz.excluded-partitions``. A node missing there
            is looked up in what its replies said (a ``partition-id`` metric), else -1.

    Rule state: ``centered_clipping`` starts each round from the previous round's output (0 at
    first, and after a layout change); :meth:`state_dict` / :meth:`load_state_dict` checkpoint it
    with the server momentum. ``dnc`` draws its coordinates with ``round_seed(seed, round)``.
    """

    def __init__(
        self,
        rule: str,
        num_byzantine: int,
        rule_options: Mapping[str, Any] | None = None,
        device: str | torch.device = "auto",
        update: ServerUpdateConfig | None = None,
        on_too_few: str = "keep",
        honest_node_ids: Collection[int] | None = None,
        track_participation: bool = False,
        pre: Sequence[preaggregation.Step] | None = None,
        server_update_fn: ServerUpdateFn | None = None,
        partition_of: Mapping[int, int] | None = None,
    ) -> None:
        if isinstance(num_byzantine, bool) or not isinstance(num_byzantine, int):
            raise TypeError(f"num_byzantine must be an int, got {type(num_byzantine).__name__}")
        if num_byzantine < 0:
            raise ValueError(f"num_byzantine must be >= 0, got {num_byzantine}")
        if on_too_few not in ON_TOO_FEW:
            raise ValueError(f"on_too_few must be one of {ON_TOO_FEW}, got {on_too_few!r}")
        self.rule = gars.get(rule)
        self.num_byzantine = num_byzantine
        self.rule_options: dict[str, Any] = dict(rule_options or {})
        #: the pre-aggregation chain, checked: ``[(name, options), ...]``
        self.pre: list[tuple[str, dict[str, Any]]] = normalize_pre(pre)
        if self.rule.name == "fltrust" and not callable(server_update_fn):
            raise ValueError("fltrust needs server_update_fn(global_arrays, server_round)")
        if self.rule.name != "fltrust" and server_update_fn is not None:
            raise ValueError(f"server_update_fn is for fltrust only, not {self.rule.name}")
        self.server_update_fn = server_update_fn
        self.min_replies = self._min_n(num_byzantine)  # checks options
        self._center: torch.Tensor | None = None  # centered_clipping's previous output
        self.device = resolve_device(device)
        self.update = update or ServerUpdateConfig()
        self.optimizer = ServerOptimizer(self.update)
        self.on_too_few = on_too_few
        self.honest_node_ids = honest_node_ids
        #: compute participation even without ``honest_node_ids`` (see the class docstring)
        self.track_participation = bool(track_participation)
        # the rule's kernel, if it can skip the participation (``track=False``): the result is the
        # plain ``gars`` function's (same code path), plus the selection of the selecting rules
        impl = getattr(self.rule, "_impl", None)
        self._untracked_impl = (
            impl
            if impl is not None and not self.pre and "track" in inspect.signature(impl).parameters
            else None
        )
        #: client metric keys left out of the clients' medians (the self-reported example count
        #: and partition id)
        self.client_metrics_exclude: frozenset[str] = frozenset(
            {"num-examples", round_metrics.PARTITION_ID_KEY}
        )
        self.partition_of = partition_of
        #: partition ids the nodes' replies named (``partition-id`` metric), latest first
        self._reported_partitions: dict[int, int] = {}
        self.last_round_report: RoundReport | None = None
        self._global: dict[str, np.ndarray] | None = None
        self._layout: ModelLayout | None = None
        self._buffer: np.ndarray | None = None
        self._theta: torch.Tensor | None = None  # flat global model, kept for the round

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The state carried across rounds, for checkpointing: ``center`` (centered_clipping's
        previous output) and ``momentum`` (the server momentum buffer), numpy arrays or None."""

        def host(tensor: torch.Tensor | None) -> np.ndarray | None:
            return None if tensor is None else tensor.detach().cpu().numpy().copy()

        return {"center": host(self._center), "momentum": host(self.optimizer.momentum_buffer)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (missing keys: that state is cleared)."""

        def device(value: Any) -> torch.Tensor | None:
            if value is None:
                return None
            return torch.as_tensor(np.asarray(value)).reshape(-1).to(self.device)

        unknown = set(state) - {"center", "momentum"}
        if unknown:
            raise ValueError(f"unknown state keys {sorted(unknown)}")
        self._center = device(state.get("center"))
        self.optimizer.momentum_buffer = device(state.get("momentum"))

    @property
    def center(self) -> torch.Tensor | None:
        """centered_clipping's center for the next round (the last output), or None (= 0)."""
        return self._center

    @property
    def label(self) -> str:
        """The rule's name, after the chain's steps when there are some (``"arc+nnm+krum"``)."""
        return "+".join([name for name, _ in self.pre] + [self.rule.name])

    def _min_n(self, f: int) -> int:
        """Smallest number of accepted replies the chain and the rule accept for ``f``."""
        needed = self.rule.min_n(f, **self.rule_options)
        return _chain_min_n(self.pre, needed, f) if self.pre else needed

    def _round_options(self, server_round: int, layout: ModelLayout) -> dict[str, Any]:
        """The rule's options of this round: state, server update and seeds the engine adds."""
        options = dict(self.rule_options)
        name = self.rule.name
        if name == "centered_clipping":
            center = self._center
            if center is not None and center.numel() != layout.dim:
                center = self._center = None  # the layout changed: start from 0
            options["center"] = center
        elif name == "dnc":
            options["seed"] = round_seed(options.get("seed") or 0, server_round)
        elif name == "fltrust":
            options["server_update"] = self._server_update(server_round, layout)
        return options

    def _server_update(self, server_round: int, layout: ModelLayout) -> torch.Tensor:
        """FLTrust's ``g_0``, flattened with the model's layout (float64, on the device)."""
        assert self.server_update_fn is not None and self._global is not None
        update = self.server_update_fn(dict(self._global), server_round)
        parts: list[np.ndarray] = []
        for spec in layout.specs:
            if not spec.aggregated:
                continue
            if spec.key not in update:
                raise ValueError(f"server_update_fn returned no array {spec.key!r}")
            value = np.asarray(update[spec.key], dtype=np.float64)
            if tuple(value.shape) != spec.shape:
                raise ValueError(
                    f"server_update_fn: {spec.key!r} has shape {tuple(value.shape)}, "
                    f"expected {spec.shape}"
                )
            parts.append(value.reshape(-1))
        flat = np.concatenate(parts) if parts else np.zeros(0)
        return torch.from_numpy(flat).to(self.device)

    def _round_pre(self, server_round: int) -> list[tuple[str, dict[str, Any]]]:
        """The chain of this round: bucketing's permutation seeded per round."""
        steps = []
        for name, options in self.pre:
            if name == "bucketing" and options.get("generator") is None:
                options = {**options, "seed": round_seed(options.get("seed") or 0, server_round)}
            steps.append((name, options))
        return steps

    @property
    def honest_node_ids(self) -> frozenset[int] | None:
        """Node ids known to be honest, or None (honest-only metrics off)."""
        return self._honest

    @honest_node_ids.setter
    def honest_node_ids(self, node_ids: Collection[int] | None) -> None:
        self._honest = None if node_ids is None else frozenset(int(i) for i in node_ids)

    @property
    def partition_of(self) -> dict[int, int] | None:
        """Node id -> partition id as given (None: only what the replies report is known)."""
        return self._partition_of

    @partition_of.setter
    def partition_of(self, mapping: Mapping[int, int] | None) -> None:
        self._partition_of = (
            None if mapping is None else {int(k): int(v) for k, v in dict(mapping).items()}
        )

    def _round_partitions(
        self, submissions: Sequence[Submission], node_ids: Collection[int]
    ) -> dict[int, int]:
        """The partition ids known for ``node_ids``: the given mapping first, then what the
        replies (this round's or earlier ones) reported."""
        for sub in submissions:
            reported = _reported_partition(sub.metrics)
            if reported is not None:
                self._reported_partitions[sub.node_id] = reported
        given = self._partition_of or {}
        out: dict[int, int] = {}
        for node in node_ids:
            if node in given:
                out[node] = given[node]
            elif node in self._reported_partitions:
                out[node] = self._reported_partitions[node]
        return out

    @property
    def layout(self) -> ModelLayout | None:
        """Layout of the remembered global model."""
        return self._layout

    @property
    def global_arrays(self) -> dict[str, np.ndarray] | None:
        """The remembered global model of the current round."""
        return self._global

    def set_global(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Remember the global model sent out this round (replies are checked against it)."""
        layout = ModelLayout(arrays)
        if self._layout is not None and [(s.key, s.shape, s.dtype) for s in layout.specs] != [
            (s.key, s.shape, s.dtype) for s in self._layout.specs
        ]:
            self.optimizer.reset()
            self._center = None
        self._global = dict(arrays)
        self._layout = layout
        self._theta = None  # flattened once, on first use

    def _row_buffer(self, layout: ModelLayout, rows: int) -> np.ndarray:
        """A host buffer for the ``(n, d)`` rows, kept across rounds (no fresh pages each round)."""
        buffer = self._buffer
        if (
            buffer is None
            or buffer.shape[0] < rows
            or buffer.shape[1] != layout.dim
            or buffer.dtype != layout.numpy_dtype
        ):
            buffer = np.empty((rows, layout.dim), dtype=layout.numpy_dtype)
            self._buffer = buffer
        return buffer

    @property
    def tracks_participation(self) -> bool:
        """Whether this round computes participation (``honest_node_ids`` set or asked for)."""
        return self.track_participation or self._honest is not None

    def _flat_global(
        self, layout: ModelLayout, global_arrays: Mapping[str, np.ndarray]
    ) -> torch.Tensor:
        """The flat global model as a host ``(d,)`` tensor, flattened once per ``set_global``."""
        if self._theta is None:
            self._theta = layout.flatten(global_arrays)
        return self._theta

    def _run_rule(
        self, vectors: torch.Tensor, f: int, track: bool, server_round: int = 0
    ) -> gars.Aggregation:
        """The chain and the rule; participation only when ``track`` (else it may be None)."""
        layout = self._layout
        options = (
            self._round_options(server_round, layout)
            if layout is not None and self.rule.name in _STATEFUL_RULES
            else self.rule_options
        )
        if self.pre:
            return preaggregation.aggregate_chain(
                vectors, f, self._round_pre(server_round), self.rule, **options
            )
        if track or self._untracked_impl is None:
            return self.rule.aggregate(vectors, f, **options)
        return self._untracked_impl(vectors, f, track=False, **options)

    def learning_rate_at(self, server_round: int) -> float:
        """The server learning rate ``eta_t`` of this round."""
        return self.update.learning_rate_at(server_round)

    # ------------------------------------------------------------------ round
    def aggregate(
        self,
        server_round: int,
        submissions: Sequence[Submission],
        missing_node_ids: Collection[int] = (),
        dropped: Sequence[tuple[int, str]] = (),
    ) -> tuple[dict[str, np.ndarray], RoundReport]:
        """Run one round; return the next global arrays and the round's report.

        ``missing_node_ids``: nodes asked to train that did not reply (dropouts): excluded and
        counted in the ``dropouts`` metric, but ``f`` stays (an honest node may have crashed).
        Only submissions whose content breaks the protocol lower ``f`` (by one each).
        ``dropped``: ``(sender id, reason)`` of replies the API layer refused before they got
        here (duplicates, replies to no message sent): reported, never aggregated.
        The arrays are the unchanged global model when too few replies are usable
        (``on_too_few="keep"``).
        """
        if self._global is None or self._layout is None:
            raise RuntimeError(
                "no global model remembered for this round: call set_global() (configure_train "
                "does it) before aggregating"
            )
        layout, global_arrays = self._layout, self._global
        report = RoundReport(
            server_round=server_round,
            replies=len(submissions),
            accepted_node_ids=[],
            excluded=[],
            num_byzantine=self.num_byzantine,
            dropouts=len(missing_node_ids),
            dropped=list(dropped),
        )
        report.excluded.extend(
            (node, "no reply (dropped out or timed out)") for node in missing_node_ids
        )

        # 1. structural checks
        candidates: list[Submission] = []
        for sub in submissions:
            problem = sub.problem
            if problem is None and sub.arrays is None:
                problem = "no arrays in reply"
            if problem is None:
                problem = layout.check(sub.arrays)  # type: ignore[arg-type]
            if problem is None:
                candidates.append(sub)
            else:
                report.excluded.append((sub.node_id, problem))
                if not sub.crashed:  # the content itself breaks the protocol
                    report.faulty_node_ids.append(sub.node_id)

        # 2. one tensor on the device; vectors = gradients, or deltas in weights mode: one pass
        # over the replies subtracts the flat global model and checks finiteness while stacking
        host_theta = self._flat_global(layout, global_arrays)
        finite = np.ones(len(candidates), dtype=np.bool_)
        vectors = layout.stack(
            [sub.arrays for sub in candidates],  # type: ignore[misc]
            device=self.device,
            buffer=self._row_buffer(layout, len(candidates)),
            minus=None if self.update.update_mode == "gradient" else host_theta.numpy(),
            finite=finite,
        )
        theta = host_theta.to(self.device)
        finite_cpu = torch.from_numpy(finite)
        if not bool(finite_cpu.all()):
            bad_counts = (~torch.isfinite(vectors)).sum(dim=1).cpu()
            kept: list[Submission] = []
            for i, sub in enumerate(candidates):
                if bool(finite_cpu[i]):
                    kept.append(sub)
                else:
                    what = "gradient" if self.update.update_mode == "gradient" else "update"
                    report.excluded.append(
                        (
                            sub.node_id,
                            f"non-finite {what}: {int(bad_counts[i])} of {layout.dim} coordinates",
                        )
                    )
                    report.faulty_node_ids.append(sub.node_id)
            candidates = kept
            vectors = vectors[finite_cpu.to(vectors.device)]
        self._log_left_out(report, len(submissions) + report.dropouts)

        accepted = [sub.node_id for sub in candidates]
        report.accepted_node_ids = accepted
        n = len(accepted)
        # only proven faults lower f: a missing node or an error reply may be an honest crash
        f = max(0, self.num_byzantine - len(report.faulty_node_ids))
        report.num_byzantine = f
        report.learning_rate = self.learning_rate_at(server_round)

        # 3. the rule
        needed = self._min_n(f)
        agg_seconds = 0.0
        aggregation = None
        track = self.tracks_participation
        if n == 0 or n < needed:
            report.reason_kept = (
                f"{self.label} needs n >= {needed} usable replies for f={f}, got n={n} "
                f"({len(report.excluded)} excluded or missing of "
                f"{len(submissions) + report.dropouts}; declared f={self.num_byzantine}, "
                f"{len(report.faulty_node_ids)} proven faulty)"
            )
        else:
            start = time.perf_counter()
            try:
                aggregation = self._run_rule(vectors, f, track, server_round)
                if aggregation.vector.device.type == "cuda":
                    torch.cuda.synchronize(aggregation.vector.device)
            except ValueError as err:
                report.reason_kept = f"{self.label} refused the round: {err}"
            agg_seconds = time.perf_counter() - start
            if aggregation is not None and not _all_finite(aggregation.vector):
                report.reason_kept = f"{self.label} returned a non-finite aggregate"
                aggregation = None

        new_theta = None
        if aggregation is not None:
            saved_buffer = self.optimizer.momentum_buffer
            new_theta = self.optimizer.step(theta, aggregation.vector.to(theta.dtype), server_round)
            if not _all_finite(new_theta):  # e.g. overflow of a huge finite step
                self.optimizer.momentum_buffer = saved_buffer
                report.reason_kept = "the server step overflowed to non-finite values"
                aggregation, new_theta = None, None
            elif self.rule.name == "centered_clipping":
                self._center = aggregation.vector.detach().clone()

        if aggregation is None or new_theta is None:
            report.kept_model = True
            if self.on_too_few == "raise":
                raise TooFewRepliesError(f"round {server_round}: {report.reason_kept}")
            log(WARNING, "round %d: model kept unchanged: %s", server_round, report.reason_kept)
            new_arrays = global_arrays
        else:
            new_arrays = layout.unflatten(new_theta, global_arrays)
            if track and aggregation.participation is not None:
                participation = aggregation.participation.detach().to("cpu", torch.float64)
                report.participation = {
                    node_id: float(share)
                    for node_id, share in zip(accepted, participation.tolist(), strict=True)
                }
            if self.rule.selects and aggregation.selected is not None:
                report.selected_node_ids = [accepted[int(i)] for i in aggregation.selected.tolist()]
            log(
                INFO,
                "round %d: %s aggregated %d replies (f=%d, %d excluded) in %.4fs",
                server_round,
                self.label,
                n,
                f,
                len(report.excluded),
                agg_seconds,
            )

        report.partition_of = self._round_partitions(
            submissions,
            [sub.node_id for sub in submissions] + [int(node) for node in missing_node_ids],
        )
        report.diagnostics, report.client_metrics = self._round_metrics(
            report, candidates, vectors, aggregation, agg_seconds
        )
        report.metrics = self.record_metrics(report.diagnostics, report.client_metrics)
        self.last_round_report = report
        return new_arrays, report

    @staticmethod
    def _log_left_out(report: RoundReport, asked: int) -> None:
        """One warning line for the round's excluded and dropped replies, grouped by reason."""
        parts = []
        if report.excluded:
            parts.append(
                f"{len(report.excluded)} of {_plural(asked, 'node')} excluded: "
                + group_by_reason(report.excluded)
            )
        if report.dropped:
            parts.append(
                f"{_plural(len(report.dropped), 'reply')} dropped: "
                + group_by_reason(report.dropped)
            )
        if parts:
            log(WARNING, "round %d: %s", report.server_round, "; ".join(parts))

    @staticmethod
    def record_metrics(
        diagnostics: Mapping[str, Any], client_metrics: Mapping[str, Any]
    ) -> dict[str, Any]:
        """What the strategy's ``MetricRecord`` holds: the diagnostics under ``byz.``, then the
        clients' metrics under their own names (a client's ``byz.*`` key never replaces ours)."""
        out = round_metrics.add_prefix(diagnostics)
        out.update({key: value for key, value in client_metrics.items() if key not in out})
        return out

    # ------------------------------------------------------------------ metrics
    def _round_metrics(
        self,
        report: RoundReport,
        accepted: Sequence[Submission],
        vectors: torch.Tensor,
        aggregation: gars.Aggregation | None,
        agg_seconds: float,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(diagnostics, client metrics)`` of the round: the engine's metrics, unprefixed, and
        the clients' own metrics (unweighted per-key median, honest reporters only when the
        honest node ids are known)."""
        out: dict[str, Any] = {
            "replies": report.replies,
            "excluded": len(report.excluded),
            "excluded-nodes": report.excluded_node_ids,
            "dropouts": report.dropouts,
            "faulty": len(report.faulty_node_ids),
            "effective-f": report.num_byzantine,
            "dropped-replies": len(report.dropped),
            "agg-seconds": agg_seconds,
            "kept-model": 1.0 if report.kept_model else 0.0,
        }
        if report.selected_node_ids is not None:
            out["selected-nodes"] = list(report.selected_node_ids)
        selected_partitions = report.selected_partitions
        if selected_partitions is not None:
            out["selected-partitions"] = selected_partitions
        excluded_partitions = report.excluded_partitions
        if excluded_partitions is not None:
            out["excluded-partitions"] = excluded_partitions
        honest = self._honest
        if honest is not None:
            mask = torch.tensor([sub.node_id in honest for sub in accepted], dtype=torch.bool)
            n, f = len(accepted), report.num_byzantine
            if bool(mask.any()):
                honest_vectors = vectors[mask.to(vectors.device)]
                out.update(round_metrics.round_statistics(honest_vectors, n, f))
            if aggregation is not None and aggregation.participation is not None:
                out["byzantine-influence"] = round_metrics.byzantine_influence(
                    aggregation.participation.detach().to("cpu"), ~mask
                )
            reporters = [sub for sub in accepted if sub.node_id in honest]
        else:
            reporters = list(accepted)
        # the clients' own metrics: unweighted median per key (no client controls it)
        client = round_metrics.median_client_metrics(
            (sub.metrics for sub in reporters), exclude=self.client_metrics_exclude
        )
        return out, dict(client)
