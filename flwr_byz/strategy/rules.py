"""What the Message-API and legacy strategies share, Flower-free: the robust constructor and
properties (:class:`RobustBase`) and one mixin per rule that fixes its name and options.

Each API module combines them with its own FedAvg, e.g. ``class Krum(rules.Krum, RobustStrategy)``,
so a rule's options and documentation are written once for both APIs. The rule mixins subclass
:class:`RobustBase` (which the API's strategy base also subclasses, so the MRO is unchanged:
``Krum -> rules.Krum -> RobustStrategy -> RobustBase -> FedAvg``) so that their
``super().__init__(num_byzantine=..., rule_options=...)`` is typed against its constructor.

Each rule mixin's keyword-only ``__init__`` names the rule's own options (those of its kernel in
:mod:`flwr_byz.gars`, each None for the kernel's default); :func:`attach_signature` gives every
public class of both APIs the full keyword-only ``inspect.signature`` (the rule's options,
``num_byzantine``, the robust options, FedAvg's), against which an unknown keyword is refused.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import torch

from flwr_byz import gars
from flwr_byz.gars.preaggregation import Step
from flwr_byz.metrics import PARTITION_ID_KEY, PREFIX
from flwr_byz.strategy.core import RobustAggregator, RoundReport, ServerUpdateFn
from flwr_byz.strategy.server_update import ServerUpdateConfig

_LOG = logging.getLogger("flwr.byz")  # the core's logger (a child of Flower's)


def with_options(kwargs: dict[str, Any], **named: Any) -> dict[str, Any]:
    """``kwargs`` with the rule's named options merged into its ``rule_options``: only what the
    caller set (None is the rule's default), and a clear error when one is given both ways."""
    options = dict(kwargs.pop("rule_options", None) or {})
    for key, value in named.items():
        if value is None:
            continue
        if key in options and options[key] != value:
            raise ValueError(
                f"option {key!r} given twice: {key}={value!r} and rule_options[{key!r}]="
                f"{options[key]!r}"
            )
        options[key] = value
    return {**kwargs, "rule_options": options}


#: kernel parameters the engine supplies every round (state, server update, generator): not options
ENGINE_OPTIONS: dict[str, tuple[str, ...]] = {
    "centered_clipping": ("center",),
    "fltrust": ("server_update",),
    "dnc": ("generator",),
}

_KEYWORD = inspect.Parameter.KEYWORD_ONLY
_EMPTY = inspect.Parameter.empty


def rule_option_names(rule: str) -> tuple[str, ...]:
    """The options a user can set for ``rule``, in its kernel's order: ``gars.get(rule).options``
    (its function's keyword parameters) less :data:`ENGINE_OPTIONS`."""
    skip = ENGINE_OPTIONS.get(rule, ())
    return tuple(name for name in gars.get(rule).options if name not in skip)


def _parameters(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    """``fn``'s named parameters without ``self`` (annotations evaluated where they can be)."""
    try:
        signature = inspect.signature(fn, eval_str=True)
    except Exception:  # an annotation that does not evaluate here: keep its text
        signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    return [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def strategy_signature(cls: type[RobustBase], fedavg: type) -> inspect.Signature:
    """The signature of strategy class ``cls`` combining :class:`RobustBase` with ``fedavg``.

    A per-rule class (one of :data:`RULE_CLASSES` in its bases): everything keyword-only, in this
    order: the rule's own options (:func:`rule_option_names`), ``num_byzantine``, the rule class's
    other keywords (Flower's aliases, FLTrust's ``server_update_fn``), the robust options of
    :class:`RobustBase` (not ``rule``, which the class fixes, nor ``server_update_fn``, which is
    FLTrust's), then ``fedavg.__init__``'s parameters. A generic class (``RobustStrategy``):
    ``rule`` (positional or keyword), then the same robust and FedAvg keywords. Each name once.
    """
    mixins = [k for k in RULE_CLASSES.values() if k in cls.__mro__]
    mixin = min(mixins, key=cls.__mro__.index) if mixins else None
    params: dict[str, inspect.Parameter] = {}

    def add(param: inspect.Parameter, kind: Any = _KEYWORD) -> None:
        if param.name not in params:
            params[param.name] = param.replace(kind=kind)

    if mixin is None:
        rule, *robust = _parameters(RobustBase.__init__)
        rule = rule.replace(default=_EMPTY, annotation=str)  # the generic class needs one
        add(rule, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    else:
        own = {p.name: p for p in _parameters(vars(mixin)["__init__"])}
        names = rule_option_names(mixin.rule_name)
        missing = sorted(set(names) - set(own))
        if missing:
            raise TypeError(f"{mixin.__name__}.__init__ lacks the rule's options {missing}")
        for name in (*names, "num_byzantine", *own):
            add(own[name])
        robust = [p for p in _parameters(RobustBase.__init__) if p.name != "server_update_fn"]
        robust = [p for p in robust if p.name != "rule"]
    for param in robust:
        add(param)
    for param in _parameters(fedavg):  # its __init__'s, without self
        add(param)
    return inspect.Signature(list(params.values()))


def attach_signature(cls: type[RobustBase], fedavg: type) -> None:
    """Give ``cls`` its computed :func:`strategy_signature` (``inspect.signature(cls)``,
    ``help(cls)``, IDEs); an unknown keyword then fails naming it (:class:`RobustBase`)."""
    cls._signature = strategy_signature(cls, fedavg)


class _ClassSignature:
    """``cls.__signature__`` of the strategy classes: the signature :func:`attach_signature` gave
    ``cls`` or the nearest base it inherits its ``__init__`` from; None (the usual, computed from
    ``__init__``) for a class that defines its own ``__init__`` after it (a user's subclass)."""

    def __get__(self, instance: object, owner: type) -> inspect.Signature | None:
        if instance is not None:
            return None
        for klass in owner.__mro__:
            if "_signature" in vars(klass):
                signature: inspect.Signature = vars(klass)["_signature"]
                return signature
            if "__init__" in vars(klass):
                return None
        return None


def _class_hint(rule: str) -> str:
    """The per-rule class name of ``rule`` (e.g. "Krum"), for error messages."""
    names = {"multi_krum": "MultiKrum", "meamed": "MeaMed", "dnc": "DnC", "fltrust": "FLTrust"}
    return names.get(rule, "".join(part.capitalize() for part in str(rule).split("_")))


class RobustBase:
    """The robust part of a strategy: builds its :class:`RobustAggregator`, passes the remaining
    keywords to the FedAvg it is combined with.

    Args:
        rule: a name in ``flwr_byz.gars.NAMES`` (the rule classes fix it).
        num_byzantine: declared number ``f`` of Byzantine nodes per round.
        rule_options: the rule's keyword options (``b``, ``m``, ``selector``, ...).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:0"``, ...
        update_mode: ``"weights"`` (replies are trained weights; deltas are aggregated) or
            ``"gradient"`` (replies are gradients or worker momenta; the server takes an SGD step).
        learning_rate, lr_schedule_r, server_momentum, weight_decay, clip_norm: the server step,
            see :mod:`flwr_byz.strategy.server_update`.
        on_too_few: ``"keep"`` the model unchanged or ``"raise"`` when too few usable replies.
        honest_node_ids: node ids known honest (settable later) for the honest-only metrics.
        track_participation: compute each reply's share of the aggregate every round
            (``last_round_report.participation``); on anyway when ``honest_node_ids`` is set.
        pre: pre-aggregation chain before the rule, e.g. ``["arc", ("nnm", {})]`` or
            ``[{"name": "clip", "c": 1.0}]`` (steps of ``flwr_byz.gars.PRE_NAMES``, checked here:
            an unknown step or a bad option raises ``ValueError``); same ``f'`` as the rule.
        server_update_fn: FLTrust's server update (the :class:`FLTrust` class passes it).
        partition_of: node id -> partition id where known (settable later), for the round
            metrics ``byz.selected-partitions`` and ``byz.excluded-partitions``; a node not in
            it is named by its replies' ``partition-id`` metric when a client sends one.
        **fedavg_kwargs: the FedAvg's own keywords (sampling, keys, ...).
    """

    rule_name: str = ""
    __signature__ = _ClassSignature()
    _signature: inspect.Signature

    def __init__(
        self,
        rule: str | None = None,
        *,
        num_byzantine: int = 0,
        num_malicious_nodes: int | None = None,
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
        track_participation: bool = False,
        pre: Sequence[Step] | None = None,
        server_update_fn: ServerUpdateFn | None = None,
        partition_of: Mapping[int, int] | None = None,
        **fedavg_kwargs: Any,
    ) -> None:
        if num_malicious_nodes is not None:  # Flower's name for the same f
            if num_byzantine not in (0, num_malicious_nodes):
                raise ValueError(
                    f"num_byzantine={num_byzantine} and num_malicious_nodes={num_malicious_nodes}"
                    " name the same f: give one"
                )
            num_byzantine = num_malicious_nodes
        signature = type(self).__signature__
        if signature is not None:  # a strategy class of ours: a clear error for a misspelling
            for key in fedavg_kwargs:
                if key not in signature.parameters:
                    close = difflib.get_close_matches(key, list(signature.parameters), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise TypeError(
                        f"{type(self).__name__}() got an unexpected keyword argument {key!r}"
                        f"{hint} (inspect.signature({type(self).__name__}) lists them)"
                    )
        super().__init__(**fedavg_kwargs)
        if self.rule_name and rule not in (None, self.rule_name):
            raise TypeError(
                f"{type(self).__name__} runs {self.rule_name!r}; for {rule!r} use "
                f"{_class_hint(rule)} or RobustStrategy({rule!r}, ...)"
            )
        rule = rule or self.rule_name
        if not rule:
            raise ValueError(
                f"{type(self).__name__} needs a rule name (one of flwr_byz.gars.NAMES)"
            )
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
            track_participation=track_participation,
            pre=pre,
            server_update_fn=server_update_fn,
            partition_of=partition_of,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rule={self.aggregator.rule.name}, f={self.num_byzantine})"

    @property
    def num_byzantine(self) -> int:
        """Declared ``f``."""
        return self.aggregator.num_byzantine

    @property
    def update_mode(self) -> str:
        """``"weights"`` or ``"gradient"``."""
        return self.aggregator.update.update_mode

    @property
    def device(self) -> torch.device:
        """Where aggregation runs."""
        return self.aggregator.device

    @property
    def honest_node_ids(self) -> frozenset[int] | None:
        """Node ids known to be honest (None: honest-only metrics off)."""
        return self.aggregator.honest_node_ids

    @honest_node_ids.setter
    def honest_node_ids(self, node_ids: Collection[int] | None) -> None:
        self.aggregator.honest_node_ids = node_ids

    @property
    def partition_of(self) -> dict[int, int] | None:
        """Node id -> partition id as given (None: only what replies report is known)."""
        return self.aggregator.partition_of

    @partition_of.setter
    def partition_of(self, mapping: Mapping[int, int] | None) -> None:
        self.aggregator.partition_of = mapping

    @property
    def min_nodes(self) -> int:
        """The least number of accepted replies a round needs for the declared ``f`` (the rule's
        requirement on n, after the pre-aggregation chain): fewer, and the model is kept."""
        return self.aggregator.min_replies

    def robust_summary(
        self,
        sampled: int | None = None,
        train_metrics_fn: Callable[..., Any] | None = None,
        evaluate_metrics_fn: Callable[..., Any] | None = None,
    ) -> list[str]:
        """The robust part of the strategy's summary, one line each (``summary()`` logs them;
        a line starting with ``"WARNING: "`` at level WARNING).

        ``sampled``: the least number of nodes the strategy samples per round, compared with
        :attr:`min_nodes`; ``*_metrics_fn``: the user's aggregation of the clients' metrics
        (None: the unweighted per-key median).
        """
        aggregator = self.aggregator
        rule, f = aggregator.rule.name, self.num_byzantine
        chain = " -> ".join(
            name + (f"({options})" if options else "") for name, options in aggregator.pre
        )
        need = self.min_nodes
        rule_need = aggregator.rule.min_n(f, **aggregator.rule_options)
        need_text = f"{rule} needs n >= {rule_need} for f = {f}"
        if need != rule_need:
            need_text += f"; the pre-aggregation chain needs {need} replies to give as many"
        too_few = "the model is kept" if aggregator.on_too_few == "keep" else "the round raises"
        cfg = aggregator.update
        lines = [
            f"Robust aggregation (flwr-byz): {aggregator.label}",
            f"Rule: {rule}, f = {f} Byzantine nodes declared per round, "
            f"options {aggregator.rule_options or '{}'}",
            f"Pre-aggregation: {chain or 'none'}",
            f"Minimum nodes: {need} accepted replies per round ({need_text}); with fewer, "
            f"{too_few}",
            "Aggregation is not weighted: every accepted reply counts once (the clients' "
            "self-reported example counts are ignored)",
            f"Server step: update_mode={cfg.update_mode}, lr={cfg.learning_rate}, "
            f"schedule_r={cfg.lr_schedule_r}, momentum={cfg.server_momentum}, "
            f"weight_decay={cfg.weight_decay}, clip_norm={cfg.clip_norm}; device {self.device}",
        ]
        if sampled is not None and sampled < need:
            lines.append(
                f"WARNING: at least {sampled} nodes sampled per round, fewer than the {need} "
                f"{aggregator.label} needs: a round with fewer accepted replies "
                + ("keeps the model" if aggregator.on_too_few == "keep" else "raises")
            )

        def described(fn: Callable[..., Any] | None) -> str:
            if fn is None:
                return "unweighted per-key median"
            return f"{getattr(fn, '__qualname__', None) or repr(fn)} (user's, on accepted replies)"

        lines.append(
            f"Clients' metrics: train {described(train_metrics_fn)}; evaluate "
            f"{described(evaluate_metrics_fn)}; own diagnostics under '{PREFIX}*'; "
            f"'{PARTITION_ID_KEY}' names a node's partition"
        )
        return lines

    def apply_user_metrics(
        self,
        server_round: int,
        report: RoundReport,
        name: str,
        aggregate: Callable[[], Mapping[str, Any] | None] | None,
    ) -> None:
        """Put a user's aggregation of the clients' metrics (``aggregate()``, the call of their
        ``name`` function on the accepted replies; None when none was accepted) in place of the
        medians in ``report.metrics``. A function that raises must not end the run on a bad
        reply: the medians stay, with a warning."""
        client: Mapping[str, Any] = {}
        if aggregate is not None:
            try:
                client = dict(aggregate() or {})
            except Exception as err:
                _LOG.warning(
                    "round %d: %s raised %r; the clients' metrics are their medians this round",
                    server_round,
                    name,
                    err,
                )
                client = report.client_metrics
        report.metrics = RobustAggregator.record_metrics(report.diagnostics, client)

    @property
    def last_round_report(self) -> RoundReport | None:
        """The last round's report: accepted, excluded (node id, reason), selected, ..."""
        return self.aggregator.last_round_report

    @property
    def pre(self) -> list[tuple[str, dict[str, Any]]]:
        """The pre-aggregation chain, as ``[(name, options), ...]``."""
        return self.aggregator.pre

    def state_dict(self) -> dict[str, Any]:
        """The aggregator's state across rounds (checkpoint it with the model)."""
        return self.aggregator.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.aggregator.load_state_dict(state)


class Average(RobustBase):
    """Average: the unweighted mean (not robust; the reference). Requires n >= 1."""

    rule_name = "average"

    def __init__(self, *, num_byzantine: int = 0, **kwargs: Any) -> None:
        super().__init__(num_byzantine=num_byzantine, **with_options(kwargs))


class Median(RobustBase):
    """Median: the coordinate-wise median. Requires n >= 2f + 1."""

    rule_name = "median"

    def __init__(self, *, num_byzantine: int = 0, **kwargs: Any) -> None:
        super().__init__(num_byzantine=num_byzantine, **with_options(kwargs))


class TrimmedMean(RobustBase):
    """TrimmedMean: the coordinate-wise trimmed mean Trmean_b (Phocas paper, Def. 7): per
    coordinate, the mean after dropping the ``b`` largest and ``b`` smallest values. Requires
    n >= 2b + 1 (``b`` defaults to f, so n >= 2f + 1)."""

    rule_name = "trimmed_mean"

    def __init__(self, *, b: int | None = None, num_byzantine: int = 0, **kwargs: Any) -> None:
        super().__init__(num_byzantine=num_byzantine, **with_options(kwargs, b=b))


class Phocas(RobustBase):
    """Phocas: Phocas_b (Phocas paper, Def. 8), per coordinate the mean of the n - b values
    nearest to Trmean_b. Requires n >= 2b + 1 (``b`` defaults to f, so n >= 2f + 1)."""

    rule_name = "phocas"

    def __init__(self, *, b: int | None = None, num_byzantine: int = 0, **kwargs: Any) -> None:
        super().__init__(num_byzantine=num_byzantine, **with_options(kwargs, b=b))


class MeaMed(RobustBase):
    """MeaMed: the mean around the median, per coordinate the mean of the n - f values nearest
    the median. Requires n >= 2f + 1."""

    rule_name = "meamed"

    def __init__(self, *, num_byzantine: int = 0, **kwargs: Any) -> None:
        super().__init__(num_byzantine=num_byzantine, **with_options(kwargs))


class Krum(RobustBase):
    """Krum (Bulyan paper): the reply with the lowest Krum score, the sum of its distances to
    its ``neighbours`` nearest others (default n - f - 2). Requires n >= 2f + 3.

    ``distance``: ``"squared"`` (the paper's, default) or ``"plain"`` Euclidean distances.
    """

    rule_name = "krum"

    def __init__(
        self,
        *,
        distance: str | None = None,
        neighbours: int | None = None,
        num_byzantine: int = 0,
        **kwargs: Any,
    ) -> None:
        options = {"distance": distance, "neighbours": neighbours}
        super().__init__(num_byzantine=num_byzantine, **with_options(kwargs, **options))


class MultiKrum(RobustBase):
    """MultiKrum (Multi-Krum): the unweighted mean of the ``m`` replies of lowest Krum score
    (default m = n - f; ``num_nodes_to_select`` is Flower's name for it). Requires n >= 2f + 3.

    ``distance`` and ``neighbours`` as for :class:`Krum`.
    """

    rule_name = "multi_krum"

    def __init__(
        self,
        *,
        m: int | None = None,
        distance: str | None = None,
        neighbours: int | None = None,
        num_byzantine: int = 0,
        num_nodes_to_select: int | None = None,  # Flower's MultiKrum name for m
        **kwargs: Any,
    ) -> None:
        if num_nodes_to_select is not None:
            if m not in (None, num_nodes_to_select):
                raise ValueError(f"m={m} and num_nodes_to_select={num_nodes_to_select}: give one")
            m = num_nodes_to_select
        options = {"m": m, "distance": distance, "neighbours": neighbours}
        super().__init__(num_byzantine=num_byzantine, **with_options(kwargs, **options))


class Medoid(RobustBase):
    """Medoid ("GeoMed" of the Bulyan paper): the reply minimising the sum of distances to the
    others. Requires n >= 2f + 1."""

    rule_name = "medoid"

    def __init__(self, *, num_byzantine: int = 0, **kwargs: Any) -> None:
        super().__init__(num_byzantine=num_byzantine, **with_options(kwargs))


class GeometricMedian(RobustBase):
    """GeometricMedian: the geometric median by smoothed Weiszfeld iterations (smoothing ``eps``,
    tolerance ``tol``, at most ``max_iter`` iterations). Requires n >= 2f + 1."""

    rule_name = "geometric_median"

    def __init__(
        self,
        *,
        eps: float | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
        num_byzantine: int = 0,
        **kwargs: Any,
    ) -> None:
        options = {"eps": eps, "tol": tol, "max_iter": max_iter}
        super().__init__(num_byzantine=num_byzantine, **with_options(kwargs, **options))


class Brute(RobustBase):
    """Brute (Bulyan paper): the mean of the subset of n - f replies of smallest diameter; refuses
    more than ``max_subsets`` subsets. Requires n >= 2f + 1."""

    rule_name = "brute"

    def __init__(
        self, *, max_subsets: int | None = None, num_byzantine: int = 0, **kwargs: Any
    ) -> None:
        options = {"max_subsets": max_subsets}
        super().__init__(num_byzantine=num_byzantine, **with_options(kwargs, **options))


class Bulyan(RobustBase):
    """Bulyan(A) (Bulyan paper, section 4): ``selector`` A (default ``"krum"``, with
    ``selector_options``) picks n - 2f replies, then a coordinate-wise trimmed mean around the
    median; ``variant`` ``"bulyan"`` or ``"momentum"`` (the Distributed Momentum paper's variant).
    Requires n >= 4f + 3."""

    rule_name = "bulyan"

    def __init__(
        self,
        *,
        selector: str | None = None,
        variant: str | None = None,
        selector_options: dict[str, Any] | None = None,
        num_byzantine: int = 0,
        **kwargs: Any,
    ) -> None:
        options = {"selector": selector, "variant": variant, "selector_options": selector_options}
        super().__init__(num_byzantine=num_byzantine, **with_options(kwargs, **options))


# ---------------------------------------------------------------- beyond the seeds
class CenteredClipping(RobustBase):
    """CenteredClipping (Karimireddy, He, Jaggi, 2021): from the previous round's aggregate ``v``
    (0 at first), ``L`` times ``v <- v + mean_i (V_i - v) min(1, tau / ||V_i - v||)``. Requires
    n >= 2f + 1.

    The center lives in the aggregator across rounds: ``state_dict()["center"]`` /
    ``load_state_dict`` checkpoint it; it restarts at 0 when the model layout changes.
    """

    rule_name = "centered_clipping"

    def __init__(
        self,
        *,
        tau: float | None = None,
        L: int | None = None,  # the paper's name
        num_byzantine: int = 0,
        **kwargs: Any,
    ) -> None:
        if tau is not None and not (
            isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0
        ):
            raise ValueError(f"centered_clipping: tau must be positive and finite, got {tau!r}")
        if L is not None and (isinstance(L, bool) or not isinstance(L, int) or L < 1):
            raise ValueError(f"centered_clipping: L must be an int >= 1, got {L!r}")
        options = {"tau": None if tau is None else float(tau), "L": L}
        super().__init__(num_byzantine=num_byzantine, **with_options(kwargs, **options))


class FLTrust(RobustBase):
    """FLTrust (Cao et al., 2021; needs a server root data set): trust ``max(0, cos(V_i, g_0))``,
    output the trust-weighted mean of the replies rescaled to ``||g_0||``. Requires n >= 1 (the
    server's own update is the reference, whatever f).

    ``server_update_fn(global_arrays, server_round) -> dict[str, np.ndarray]`` computes ``g_0``,
    the server's own update on its root data at the current model (a delta in weights mode, a
    gradient in gradient mode; the model's float keys and shapes). When every trust score is 0
    the round keeps the model and says why (``last_round_report.reason_kept``).
    """

    rule_name = "fltrust"

    def __init__(
        self, *, num_byzantine: int = 0, server_update_fn: ServerUpdateFn, **kwargs: Any
    ) -> None:
        super().__init__(
            num_byzantine=num_byzantine,
            server_update_fn=server_update_fn,
            **with_options(kwargs),
        )


class DnC(RobustBase):
    """DnC, divide and conquer (Shejwalkar, Houmansadr, 2021): ``niters`` times, on ``b`` random
    coordinates, drop the ``c f`` replies with the largest projection on the top principal
    direction; average the replies kept every time. Requires n >= 2f + 1. Seeded: round t draws
    with ``round_seed(seed, t)`` (``seed`` 0 when not given), so a run is reproducible.
    """

    rule_name = "dnc"

    def __init__(
        self,
        *,
        niters: int | None = None,
        b: int | None = None,
        c: float | None = None,
        seed: int | None = None,
        num_byzantine: int = 0,
        **kwargs: Any,
    ) -> None:
        for key, value in (("niters", niters), ("b", b)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"dnc: {key} must be an int >= 1, got {value!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"dnc: seed must be an int, got {seed!r}")
        options = {"niters": niters, "b": b, "c": None if c is None else float(c), "seed": seed}
        super().__init__(num_byzantine=num_byzantine, **with_options(kwargs, **options))


#: the per-rule mixins (the subclasses of RobustBase above), by rule name
RULE_CLASSES: dict[str, type[RobustBase]] = {
    cls.rule_name: cls for cls in RobustBase.__subclasses__() if cls.rule_name
}


_API = TypeVar("_API", bound=RobustBase)


def rule_strategies(base: type[_API], fedavg: type) -> dict[str, type[_API]]:
    """One API's per-rule classes (the subclasses of ``base`` that run a rule of
    ``RULE_CLASSES``) by rule name, with the keyword-only signatures attached to them and to
    ``base`` (``attach_signature``); called once at the end of each API module."""
    classes = {cls.rule_name: cls for cls in base.__subclasses__() if cls.rule_name in RULE_CLASSES}
    for cls in (base, *classes.values()):
        attach_signature(cls, fedavg)
    return classes
