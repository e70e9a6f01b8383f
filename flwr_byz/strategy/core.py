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

:meth:`RobustAggregator.aggregate` is a short driver over five stages, each a small function with
a frozen result, testable alone: :func:`screen` -> :class:`Screened` (accepted submissions and
their host rows, exclusions with reasons, proven-faulty ids, ``f'``), :func:`stack` ->
:class:`Stacked` (the ``(n, d)`` rows and the flat global model on the device), :func:`apply_rule`
-> :class:`RuleResult` (the aggregation or why none, its time), :func:`apply_step` ->
:class:`Stepped` (the next flat model or why none; the momentum buffer restored on refusal), and
the report stage ``RobustAggregator._report`` (the kept-model policy, the next arrays, the
:class:`RoundReport`, its metrics and log line). The input is scanned for finiteness once per
round, in :func:`screen`, fused into the copy into the host rows (:meth:`ModelLayout.stack`);
later checks are on ``(d,)`` vectors (the aggregate, the new model).

Logging uses the standard :mod:`logging` module, no Flower import: the logger ``"flwr.byz"``
(:data:`_LOG`) is a child of Flower's ``"flwr"`` logger, so its records propagate to Flower's
console handler (and whatever handlers a user or a test adds to ``"flwr"``), and follow the
``"flwr"`` logger's level; without Flower they reach the root logger like any other.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from flwr_byz import gars
from flwr_byz import metrics as round_metrics
from flwr_byz._finite import all_finite
from flwr_byz.gars import preaggregation
from flwr_byz.gars.preaggregation import normalize_steps as normalize_pre
from flwr_byz.layout import ModelLayout
from flwr_byz.strategy.server_update import ServerOptimizer, ServerUpdateConfig

__all__ = [
    "ON_TOO_FEW",
    "RuleResult",
    "Screened",
    "Stacked",
    "Stepped",
    "apply_rule",
    "apply_step",
    "screen",
    "stack",
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

#: the engine's logger: a child of Flower's ``flwr`` logger (see the module docstring)
_LOG = logging.getLogger("flwr.byz")


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


def round_seed(seed: int, server_round: int) -> int:
    """The seed a seeded step (bucketing, DnC) uses in ``server_round``: a fresh, deterministic
    draw per round from ``(seed, server_round)`` (numpy's ``SeedSequence``)."""
    state = np.random.SeedSequence([int(seed), int(server_round)]).generate_state(1, np.uint32)
    return int(state[0])


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


# ------------------------------------------------------------------ the round's stages
# screen -> stack -> rule -> step -> report: each a small function with a typed result, called in
# order by ``RobustAggregator.aggregate`` (the report stage is ``RobustAggregator._report``).


@dataclass(frozen=True)
class Screened:
    """The screening of one round's submissions.

    ``accepted``: the usable submissions, in submission order; ``rows``: their values as a host
    ``(len(accepted), d)`` tensor (gradients, or deltas ``reply - global``), row ``i`` from
    ``accepted[i]``. ``excluded``: ``(node id, reason)`` of the missing nodes first, then of the
    refused submissions in submission order (structure before values). ``faulty``: the node ids
    whose *content* broke the protocol (they lower ``f``). ``declared_f``: the declared ``f``;
    ``asked``: the nodes asked this round (submissions + missing).
    """

    accepted: tuple[Submission, ...]
    rows: torch.Tensor
    excluded: tuple[tuple[int, str], ...]
    faulty: tuple[int, ...]
    declared_f: int
    asked: int

    @property
    def node_ids(self) -> list[int]:
        """The accepted node ids, in submission (row) order."""
        return [sub.node_id for sub in self.accepted]

    @property
    def num_byzantine(self) -> int:
        """The effective ``f' = max(0, f - k)``, ``k`` the proven-faulty submissions."""
        return max(0, self.declared_f - len(self.faulty))


@dataclass(frozen=True)
class Stacked:
    """The rule's input: ``vectors`` ``(n, d)`` on the device (row ``i`` = ``node_ids[i]``, in
    submission order) and ``theta``, the flat global model on the device."""

    vectors: torch.Tensor
    theta: torch.Tensor
    node_ids: tuple[int, ...]

    @property
    def n(self) -> int:
        """The number of rows."""
        return len(self.node_ids)


@dataclass(frozen=True)
class RuleResult:
    """The chain and the rule: the ``aggregation`` (None: too few rows, the rule refused, or a
    non-finite aggregate; ``reason`` then says which), its wall time in ``seconds`` (0 when not
    run)."""

    aggregation: gars.Aggregation | None
    reason: str | None
    seconds: float


@dataclass(frozen=True)
class Stepped:
    """The server step: ``new_theta`` (None when there was no aggregate, or the step gave
    non-finite values; ``reason`` then says why) and the ``aggregation`` it applied."""

    new_theta: torch.Tensor | None
    aggregation: gars.Aggregation | None
    reason: str | None


def screen(
    layout: ModelLayout,
    submissions: Sequence[Submission],
    missing_node_ids: Collection[int] = (),
    declared_f: int = 0,
    *,
    minus: np.ndarray | None = None,
    buffer: np.ndarray | None = None,
    what: str = "update",
) -> Screened:
    """Check the submissions: reasons given by the API layer, structure (keys, shapes, dtypes,
    :meth:`ModelLayout.check`), then values. The structurally sound ones are copied into the host
    rows (``buffer``, see :meth:`ModelLayout.stack`; ``minus`` subtracted while copying) and
    checked for finiteness in that same pass, block by block while in cache: the round's one
    finiteness scan of the input. A non-finite row is excluded (``"non-finite {what}: k of d
    coordinates"``, counted on that row only). Every refused submission is faulty except an
    error reply (``crashed``); a missing node is excluded, never faulty."""
    excluded: list[tuple[int, str]] = [
        (node, "no reply (dropped out or timed out)") for node in missing_node_ids
    ]
    faulty: list[int] = []
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
            excluded.append((sub.node_id, problem))
            if not sub.crashed:  # the content itself breaks the protocol
                faulty.append(sub.node_id)
    finite = np.ones(len(candidates), dtype=np.bool_)
    rows = layout.stack(
        [sub.arrays for sub in candidates],  # type: ignore[misc]
        buffer=buffer,
        minus=minus,
        finite=finite,
    )
    if not bool(finite.all()):
        host = rows.numpy()
        for i in np.flatnonzero(~finite).tolist():
            bad = int(np.count_nonzero(~np.isfinite(host[i])))
            excluded.append(
                (candidates[i].node_id, f"non-finite {what}: {bad} of {layout.dim} coordinates")
            )
            faulty.append(candidates[i].node_id)
        candidates = [sub for sub, ok in zip(candidates, finite.tolist(), strict=True) if ok]
        rows = rows[torch.from_numpy(finite)]
    return Screened(
        accepted=tuple(candidates),
        rows=rows,
        excluded=tuple(excluded),
        faulty=tuple(faulty),
        declared_f=declared_f,
        asked=len(submissions) + len(missing_node_ids),
    )


def stack(screened: Screened, theta: torch.Tensor, device: torch.device) -> Stacked:
    """The screened rows and the flat global model ``theta`` on ``device``: no check, no copy on
    the CPU (the rows were screened, finiteness included)."""
    rows = screened.rows
    vectors = rows if rows.device == device else rows.to(device)
    return Stacked(vectors=vectors, theta=theta.to(device), node_ids=tuple(screened.node_ids))


def apply_rule(
    run: Callable[[torch.Tensor, int], gars.Aggregation],
    stacked: Stacked,
    screened: Screened,
    needed: int,
    label: str,
) -> RuleResult:
    """``run(vectors, f')`` (the chain and the rule) when there are ``n >= needed`` rows (and at
    least one), else the "too few" reason. A ``ValueError`` of the rule (its refusal), a
    ``RuntimeError`` or ``ArithmeticError`` (a failure on this round's input: a failed
    decomposition, memory; its traceback logged at DEBUG), or a non-finite aggregate (a ``(d,)``
    check) gives no aggregation and the reason: the round keeps the model, the run goes on. Other
    exceptions (a programming error) propagate."""
    n, f = stacked.n, screened.num_byzantine
    if n == 0 or n < needed:
        too_few = (
            f"{label} needs n >= {needed} usable replies for f={f}, got n={n} "
            f"({len(screened.excluded)} excluded or missing of {screened.asked}; "
            f"declared f={screened.declared_f}, {len(screened.faulty)} proven faulty)"
        )
        return RuleResult(None, too_few, 0.0)
    aggregation: gars.Aggregation | None = None
    reason: str | None = None
    start = time.perf_counter()
    try:
        aggregation = run(stacked.vectors, f)
        if aggregation.vector.device.type == "cuda":
            torch.cuda.synchronize(aggregation.vector.device)
    except ValueError as err:
        reason = f"{label} refused the round: {err}"
    except (RuntimeError, ArithmeticError) as err:
        kind = type(err).__name__.lstrip("_")  # torch's LinAlgError class is _LinAlgError
        reason = f"{label} failed on this round's input ({kind}: {err})"
        _LOG.debug("%s", reason, exc_info=True)
    seconds = time.perf_counter() - start
    if aggregation is not None and not all_finite(aggregation.vector):
        return RuleResult(None, f"{label} returned a non-finite aggregate", seconds)
    return RuleResult(aggregation, reason, seconds)


def apply_step(
    optimizer: ServerOptimizer, theta: torch.Tensor, ruled: RuleResult, server_round: int
) -> Stepped:
    """The server step from ``theta`` with the rule's aggregate. No aggregate: nothing done. A
    non-finite new model (a ``(d,)`` check; e.g. overflow of a huge finite step) is refused and
    the momentum buffer restored as it was before the step."""
    aggregation = ruled.aggregation
    if aggregation is None:
        return Stepped(None, None, ruled.reason)
    saved_buffer = optimizer.momentum_buffer
    new_theta = optimizer.step(theta, aggregation.vector.to(theta.dtype), server_round)
    if not all_finite(new_theta):
        optimizer.momentum_buffer = saved_buffer
        return Stepped(None, None, "the server step overflowed to non-finite values")
    return Stepped(new_theta, aggregation, None)


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
        # the rows were screened finite while stacking: the rule does not scan them again (a
        # chain's output may overflow, so the chain's rule keeps its own check)
        with gars.rows_checked():
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

        The stages, in order: :func:`screen`, :func:`stack`, :func:`apply_rule`,
        :func:`apply_step`, :meth:`_report`.
        """
        layout, global_arrays = self._require_global()
        host_theta = self._flat_global(layout, global_arrays)
        screened = self._screen(server_round, submissions, missing_node_ids, dropped, host_theta)
        stacked = stack(screened, host_theta, self.device)
        track = self.tracks_participation
        ruled = apply_rule(
            lambda vectors, f: self._run_rule(vectors, f, track, server_round),
            stacked,
            screened,
            self._min_n(screened.num_byzantine),
            self.label,
        )
        stepped = apply_step(self.optimizer, stacked.theta, ruled, server_round)
        if stepped.aggregation is not None and self.rule.name == "centered_clipping":
            self._center = stepped.aggregation.vector.detach().clone()
        return self._report(
            server_round, submissions, missing_node_ids, dropped, screened, stacked, ruled, stepped
        )

    def _require_global(self) -> tuple[ModelLayout, dict[str, np.ndarray]]:
        """The remembered layout and global arrays (``set_global`` called), else RuntimeError."""
        if self._global is None or self._layout is None:
            raise RuntimeError(
                "no global model remembered for this round: call set_global() (configure_train "
                "does it) before aggregating"
            )
        return self._layout, self._global

    def _screen(
        self,
        server_round: int,
        submissions: Sequence[Submission],
        missing_node_ids: Collection[int],
        dropped: Sequence[tuple[int, str]],
        host_theta: torch.Tensor,
    ) -> Screened:
        """:func:`screen` with this aggregator's layout, buffer and update mode; logs the one
        line of the replies left out (excluded and dropped)."""
        layout, _ = self._require_global()
        gradient = self.update.update_mode == "gradient"
        # the candidates' count is not known before the structural checks: a buffer for all
        screened = screen(
            layout,
            submissions,
            missing_node_ids,
            self.num_byzantine,
            minus=None if gradient else host_theta.numpy(),
            buffer=self._row_buffer(layout, len(submissions)),
            what="gradient" if gradient else "update",
        )
        self._log_left_out(server_round, screened.excluded, dropped, screened.asked)
        return screened

    def _report(
        self,
        server_round: int,
        submissions: Sequence[Submission],
        missing_node_ids: Collection[int],
        dropped: Sequence[tuple[int, str]],
        screened: Screened,
        stacked: Stacked,
        ruled: RuleResult,
        stepped: Stepped,
    ) -> tuple[dict[str, np.ndarray], RoundReport]:
        """The report stage: the kept-model policy (``on_too_few``: raise
        :class:`TooFewRepliesError`, or log and keep the model), the next arrays, participation,
        selection, the round's log line, partitions and metrics; remembers the report."""
        layout, global_arrays = self._require_global()
        accepted = list(stacked.node_ids)
        report = RoundReport(
            server_round=server_round,
            replies=len(submissions),
            accepted_node_ids=accepted,
            excluded=list(screened.excluded),
            num_byzantine=screened.num_byzantine,
            dropouts=len(missing_node_ids),
            faulty_node_ids=list(screened.faulty),
            dropped=list(dropped),
            reason_kept=stepped.reason,
            learning_rate=self.learning_rate_at(server_round),
        )
        aggregation = stepped.aggregation
        if stepped.new_theta is None or aggregation is None:
            report.kept_model = True
            if self.on_too_few == "raise":
                raise TooFewRepliesError(f"round {server_round}: {report.reason_kept}")
            _LOG.warning("round %d: model kept unchanged: %s", server_round, report.reason_kept)
            new_arrays = global_arrays
        else:
            new_arrays = layout.unflatten(stepped.new_theta, global_arrays)
            if self.tracks_participation and aggregation.participation is not None:
                participation = aggregation.participation.detach().to("cpu", torch.float64)
                report.participation = {
                    node_id: float(share)
                    for node_id, share in zip(accepted, participation.tolist(), strict=True)
                }
            if self.rule.selects and aggregation.selected is not None:
                report.selected_node_ids = [accepted[int(i)] for i in aggregation.selected.tolist()]
            _LOG.info(
                "round %d: %s aggregated %d replies (f=%d, %d excluded) in %.4fs",
                server_round,
                self.label,
                stacked.n,
                screened.num_byzantine,
                len(report.excluded),
                ruled.seconds,
            )
        report.partition_of = self._round_partitions(
            submissions,
            [sub.node_id for sub in submissions] + [int(node) for node in missing_node_ids],
        )
        report.diagnostics, report.client_metrics = self._round_metrics(
            report, screened.accepted, stacked.vectors, aggregation, ruled.seconds
        )
        report.metrics = self.record_metrics(report.diagnostics, report.client_metrics)
        self.last_round_report = report
        return new_arrays, report

    @staticmethod
    def _log_left_out(
        server_round: int,
        excluded: Sequence[tuple[int, str]],
        dropped: Sequence[tuple[int, str]],
        asked: int,
    ) -> None:
        """One warning line for the round's excluded and dropped replies, grouped by reason."""
        parts = []
        if excluded:
            parts.append(
                f"{len(excluded)} of {_plural(asked, 'node')} excluded: "
                + group_by_reason(excluded)
            )
        if dropped:
            parts.append(f"{_plural(len(dropped), 'reply')} dropped: " + group_by_reason(dropped))
        if parts:
            _LOG.warning("round %d: %s", server_round, "; ".join(parts))

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
                # all honest (no attack): the stacked rows themselves, no (k, d) copy
                honest_vectors = vectors if bool(mask.all()) else vectors[mask.to(vectors.device)]
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
