"""The ServerApp (``flwr_byz.simulations.server_app:app``): one run of one experiment, checkpointed.

Reads the run config (the shared schema, see docs/ARCHITECTURE.md), builds the test split and
the model for centralised evaluation, the robust strategy for the rule, finds which nodes are
honest, wraps the grid with the adversary's channel where the attack needs it, and runs the
rounds. Rounds are driven here, one at a time, with exactly the calls of Flower's
``Strategy.start`` (``configure_train`` -> ``send_and_receive`` -> ``aggregate_train`` ->
centralised evaluation), so that after every round the model, the server momentum, the RNG
states and the metrics are checkpointed; a later call resumes from the checkpoint with the same
round numbers (hence the same learning-rate schedule), and a finished run is never redone.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from flwr_byz import attacks
from flwr_byz.flower_internals import poll_replies_often
from flwr_byz.grid_wrapper import GridWrapper
from flwr_byz.metrics import detection_rates, split_prefixed
from flwr_byz.schema import RunConfig, pre_steps
from flwr_byz.simulations.experiment import build_experiment, load_spec
from flwr_byz.simulations.results import (
    Checkpoint,
    RunLock,
    RunRecord,
    RunStore,
    check_same_run,
    identity_json,
)
from flwr_byz.simulations.run_data import split_and_model

RoundListener = Callable[[RunConfig, int, dict[str, Any]], None]
_LISTENERS: list[RoundListener] = []

app = ServerApp()


@contextlib.contextmanager
def round_listener(listener: RoundListener) -> Iterator[None]:
    """Call ``listener(cfg, round, metrics)`` after each checkpointed round while inside.

    Used for progress bars (the Flower engine runs the ServerApp in a thread of this process)
    and by tests to interrupt a run after a given round.
    """
    _LISTENERS.append(listener)
    try:
        yield
    finally:
        _LISTENERS.remove(listener)


# ---------------------------------------------------------------------------------- config


def config_from_context(run_config: Mapping[str, Any]) -> RunConfig:
    """The typed run config of a Flower run config.

    With ``experiment = NAME`` (and optionally ``run-index = i``), point ``i`` of the sweep in
    ``simulations/configs/NAME.yaml`` is the base; the run-config keys override it.
    """
    base: RunConfig | None = None
    name = str(run_config.get("experiment", "") or "")
    if name:
        try:
            exp_name, spec = load_spec(name)
        except ValueError as err:
            exp_name, spec = "", {}
            if "rule" not in run_config:  # a bare `experiment = NAME` that names nothing
                log(WARNING, "%s; using the run config and the defaults", err)
        if spec:
            runs = build_experiment(spec, name=exp_name).runs
            index = int(run_config.get("run-index", 0))
            if not 0 <= index < len(runs):
                raise ValueError(
                    f"run-index must be in [0, {len(runs)}) for experiment {name!r}, got {index}"
                )
            base = runs[index]
            missing = sorted(
                k
                for k, v in base.to_flower().items()
                if k not in run_config
                and v != RunConfig().to_flower().get(k)
                and k not in ("run-name", "experiment")
            )
            if missing:
                log(
                    WARNING,
                    "experiment %r sets %s, absent from the run config: the "
                    "ClientApps only see the run config",
                    name,
                    ", ".join(missing),
                )
    return RunConfig.from_flower(run_config, base=base)


# ---------------------------------------------------------------------------------- parts


def min_nodes(cfg: RunConfig) -> int:
    """Nodes that must stay connected for a round to go on: ``min-nodes``, or (0) the least n
    the rule accepts for ``num-byzantine`` (at least 1, at most ``num-clients``)."""
    if cfg.min_nodes:
        return cfg.min_nodes
    from flwr_byz import gars

    try:
        need = gars.get(cfg.rule).min_n(cfg.num_byzantine, **dict(cfg.rule_options))
    except (TypeError, ValueError):  # options the bound does not take: the rule will say
        need = 1
    return max(1, min(cfg.num_clients, int(need)))


def build_strategy(cfg: RunConfig) -> Any:
    """The robust strategy of ``cfg.rule`` (flwr_byz.strategy), sampling the connected clients
    (it never waits for more than :func:`min_nodes`; a lost node is a dropout)."""
    from flwr_byz.strategy import RobustStrategy

    server_momentum = cfg.momentum if cfg.momentum_place == "server" else 0.0
    extra: dict[str, Any] = {}
    if cfg.rule == "fltrust":  # the server's update on its root data set
        from flwr_byz.simulations.fltrust_root import make_root_update

        extra["server_update_fn"] = make_root_update(cfg)
    return RobustStrategy(
        cfg.rule,
        num_byzantine=cfg.num_byzantine,
        rule_options=dict(cfg.rule_options),
        pre=pre_steps(cfg.pre),
        **extra,
        device=cfg.device,
        update_mode=cfg.update_mode,
        learning_rate=cfg.learning_rate if cfg.update_mode == "gradient" else None,
        lr_schedule_r=cfg.lr_schedule_r or None,
        server_momentum=server_momentum,
        fraction_train=cfg.fraction_train,
        min_train_nodes=max(1, min(min_nodes(cfg), round(cfg.fraction_train * cfg.num_clients))),
        min_available_nodes=min_nodes(cfg),
        fraction_evaluate=0.0,
        min_evaluate_nodes=0,
    )


@dataclass
class Roles:
    """Who is who: node id -> partition id, and the honest and Byzantine node ids."""

    partition_of: dict[int, int]
    honest: set[int]
    byzantine: set[int]


def wait_for_nodes(grid: Grid, expected: int, timeout: float = 120.0, poll: float = 1.0) -> None:
    """Wait until ``expected`` nodes are connected; refuse a different count with a clear error
    (a run's n is part of what it computes: num-clients must equal the SuperNodes)."""
    deadline = time.monotonic() + timeout
    while True:
        count = len(list(grid.get_node_ids()))
        if count == expected:
            return
        if count > expected or time.monotonic() >= deadline:
            raise ValueError(
                f"num-clients={expected} but {count} nodes are connected: set num-clients to "
                f"the number of SuperNodes (options.num-supernodes in pyproject.toml)"
            )
        time.sleep(poll)


class TooFewNodesError(RuntimeError):
    """Fewer than ``min-nodes`` nodes stayed connected for ``node-wait-timeout`` seconds."""


class NodeWaitGrid(GridWrapper):
    """A grid whose ``get_node_ids`` fails (``TooFewNodesError``) once fewer than
    ``min_nodes`` nodes have been connected for ``timeout`` s, where Flower's node sampling
    would wait forever."""

    def __init__(self, grid: Grid, min_nodes: int, timeout: float) -> None:
        super().__init__(grid)
        self.min_nodes, self.timeout = int(min_nodes), float(timeout)
        self._short_since: float | None = None

    def get_node_ids(self) -> Iterable[int]:
        """The connected node ids; raises when too few have stayed past the timeout."""
        ids = [int(node) for node in self.grid.get_node_ids()]
        if len(ids) >= self.min_nodes:
            self._short_since = None
            return ids
        now = time.monotonic()
        if self._short_since is None:
            self._short_since = now
            log(
                WARNING,
                "only %d nodes connected, min-nodes=%d needed: waiting up to %g s",
                len(ids),
                self.min_nodes,
                self.timeout,
            )
        elif now - self._short_since >= self.timeout:
            raise TooFewNodesError(
                f"only {len(ids)} nodes connected after waiting {self.timeout:g} s, "
                f"min-nodes={self.min_nodes} needed (node-wait-timeout={self.timeout:g})"
            )
        return ids


def discover(grid: Grid, timeout: float = 120.0) -> Roles:
    """Ask every node for its partition id and role (``clients.discover_roles``)."""
    from flwr_byz.clients.adversary import discover_roles

    roles = discover_roles(grid, timeout=timeout)
    return Roles(
        partition_of={int(node): int(pid) for node, (pid, _) in roles.items()},
        honest={int(node) for node, (_, byz) in roles.items() if not byz},
        byzantine={int(node) for node, (_, byz) in roles.items() if byz},
    )


def needs_coordinator(cfg: RunConfig) -> bool:
    """Whether the attack needs the colluding coordinator: omniscient or colluding attacks,
    except those the ``AdversaryGrid`` computes once per round from the replies it reads
    (``same_for_all``), unless the run names its own coordinator."""
    if cfg.attack_knowledge not in ("omniscient", "colluders"):
        return False
    return bool(cfg.coordinator_address) or not attacks.same_for_all(cfg.attack, cfg.attack_options)


def wrap_grid(grid: Grid, cfg: RunConfig, roles: Roles, coordinator_address: str) -> Grid:
    """The network as the threat model has it: ``AdversaryGrid`` orders each round so that
    colluders never wait on nodes that cannot run (and tells them the coordinator's address);
    ``ChannelFaultGrid`` corrupts received values for the Phocas paper's channel faults."""
    needs = cfg.attack_knowledge
    if needs != "none":
        from flwr_byz.clients.adversary import AdversaryGrid

        grid = AdversaryGrid(
            grid,
            roles.byzantine,
            needs=needs if needs in ("omniscient", "colluders") else "none",
            coordinator_address=coordinator_address or None,
            # same-for-all attacks are computed once per round by the grid, unless the run names
            # its own coordinator (the deployment path: the attackers fetch from it)
            run_config=None if cfg.coordinator_address else cfg.to_flower(),
            partition_of=roles.partition_of,
        )
    if cfg.channel_fault != "none":
        from flwr_byz.clients.channel import ChannelFaultGrid

        grid = ChannelFaultGrid(
            grid, cfg.channel_fault, seed=cfg.seed, **dict(cfg.channel_fault_options)
        )
    return grid


@contextlib.contextmanager
def coordinator_for(cfg: RunConfig) -> Iterator[str]:
    """The coordinator's address: the configured one, or one started here for the run
    (stopped on exit) when the attack needs it; "" when none is needed."""
    if cfg.coordinator_address or not needs_coordinator(cfg):
        yield cfg.coordinator_address
        return
    from flwr_byz.clients.coordinator import start_coordinator

    handle = start_coordinator("127.0.0.1:0")
    try:
        yield handle.address
    finally:
        handle.stop()


def make_evaluator(cfg: RunConfig) -> tuple[Callable[[ArrayRecord], dict[str, float]], ArrayRecord]:
    """Centralised test evaluation and the initial model (seeded by ``cfg.seed``).

    Under ``alie_backdoor`` it also records ``backdoor-accuracy`` (ALIE Table 2: the share of
    triggered test images whose true label is not the target that the model classifies as the
    target), so the backdoor's success is measured on the global model every evaluation."""
    from flwr_byz import attacks, data, models
    from flwr_byz.clients.malicious import backdoor_accuracy

    split, model = split_and_model(cfg)
    initial = ArrayRecord(model.state_dict())

    def evaluate(arrays: ArrayRecord) -> dict[str, float]:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = models.evaluate(model, split.test_x, split.test_y)
        values = {"test-loss": loss, "test-accuracy": accuracy}
        if cfg.attack == "alie_backdoor":
            trigger = data.max_intensity(cfg.dataset)
            values["backdoor-accuracy"] = backdoor_accuracy(
                model, split.test_x, split.test_y, trigger, attacks.BACKDOOR_TARGET
            )
        return values

    return evaluate, initial


# ---------------------------------------------------------------------------------- state


def _optimizer(strategy: Any) -> Any:
    return getattr(getattr(strategy, "aggregator", None), "optimizer", None)


def strategy_state(strategy: Any) -> dict[str, Any]:
    """The strategy's state that must survive a resume: the server momentum buffer and
    centered clipping's previous output (``center``), as CPU tensors (or None)."""
    opt = _optimizer(strategy)
    buffer = getattr(opt, "momentum_buffer", None)
    aggregator = getattr(strategy, "aggregator", None)
    center = aggregator.state_dict().get("center") if aggregator is not None else None
    return {
        "momentum_buffer": None if buffer is None else buffer.detach().cpu().clone(),
        "center": None if center is None else torch.from_numpy(center),
    }


def load_strategy_state(strategy: Any, state: Mapping[str, Any]) -> None:
    """Restore :func:`strategy_state` into a fresh strategy."""
    buffer = state.get("momentum_buffer")
    opt = _optimizer(strategy)
    if buffer is not None:
        if opt is None or not hasattr(opt, "momentum_buffer"):
            raise ValueError("checkpoint holds a server momentum buffer but the strategy has none")
        opt.momentum_buffer = buffer.to(strategy.device)
    center = state.get("center")
    if center is not None:
        aggregator = getattr(strategy, "aggregator", None)
        if aggregator is None:
            raise ValueError("checkpoint holds a centered-clipping center but no aggregator")
        current = aggregator.state_dict()
        aggregator.load_state_dict({**current, "center": center.numpy()})


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def _set_rng_state(state: Mapping[str, Any]) -> None:
    if "python" in state:
        random.setstate(state["python"])
    if "torch" in state:
        torch.set_rng_state(state["torch"])


def _metric_values(record: MetricRecord | None) -> dict[str, Any]:
    if record is None:
        return {}
    return {str(k): (list(v) if isinstance(v, list) else v) for k, v in record.items()}


#: diagnostics of the strategy's MetricRecord left out of ``rounds.jsonl`` (its format predates
#: them; ``excluded-nodes`` and the run's partition map already tell the same)
_NOT_IN_ROUNDS = frozenset({"excluded-partitions"})


def _round_values(record: MetricRecord | None) -> dict[str, Any]:
    """A round's train metrics as ``rounds.jsonl`` holds them: the strategy's diagnostics
    without their ``byz.`` prefix (``kept-model``, ``selected-nodes``, ...) and the clients'
    metrics (``train-loss``); a client's key never replaces one of ours."""
    ours, clients = split_prefixed(_metric_values(record))
    values = {k: v for k, v in ours.items() if k not in _NOT_IN_ROUNDS}
    values.update({k: v for k, v in clients.items() if k not in values})
    return values


# ---------------------------------------------------------------------------------- run


def run_server(grid: Grid, cfg: RunConfig, timeout: float = 3600.0) -> RunRecord:
    """Run (or resume, or skip when finished) the rounds of ``cfg`` on ``grid``.

    Returns the run's record (also written to ``<results-dir>/<run-name>/result.json``). The run
    directory is locked meanwhile: a second runner on the same run gets a clear error.
    """
    with RunLock(cfg.run_dir):
        return _run_locked(grid, cfg, timeout)


def _run_locked(grid: Grid, cfg: RunConfig, timeout: float) -> RunRecord:
    store = RunStore(cfg.run_dir)
    record = store.load_record()
    if record is not None:
        check_same_run(identity_json(RunConfig.from_flower(record.config)), cfg, store.result_path)
        if record.status == "finished" and record.completed_rounds >= cfg.num_rounds:
            log(
                INFO,
                "%s: finished already (%d rounds), skipped",
                cfg.run_name,
                record.completed_rounds,
            )
            return record

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    evaluate, arrays = make_evaluator(cfg)
    strategy = build_strategy(cfg)
    rounds: list[dict[str, Any]] = []
    start_round = 0
    wall = 0.0 if record is None else record.wall_seconds

    checkpoint = store.load_checkpoint()
    if checkpoint is not None:
        check_same_run(checkpoint.identity, cfg, store.checkpoint_path)
        arrays = ArrayRecord(checkpoint.arrays)
        load_strategy_state(strategy, checkpoint.optimizer_state)
        _set_rng_state(checkpoint.rng)
        start_round = checkpoint.round
        rounds = store.read_rounds(upto=start_round)
        if [r.get("round") for r in rounds] != list(range(start_round + 1)):
            raise ValueError(
                f"{store.rounds_path} does not hold rounds 0..{start_round} of "
                f"the checkpoint; delete {store.run_dir} to start over"
            )
        log(INFO, "%s: resuming after round %d", cfg.run_name, start_round)
    else:
        rounds.append({"round": 0, **evaluate(arrays)})
    store.reset_rounds(rounds)

    wait_for_nodes(grid, cfg.num_clients, timeout=cfg.node_wait_timeout)
    roles = discover(grid)
    strategy.honest_node_ids = roles.honest
    strategy.partition_of = roles.partition_of  # byz.selected-partitions
    grid = NodeWaitGrid(grid, min_nodes(cfg), cfg.node_wait_timeout)  # a lost node never hangs
    with coordinator_for(cfg) as address:
        grid = wrap_grid(grid, cfg, roles, address)
        return _rounds(
            grid, cfg, strategy, evaluate, arrays, rounds, start_round, wall, store, roles, timeout
        )


def _rounds(
    grid: Grid,
    cfg: RunConfig,
    strategy: Any,
    evaluate: Callable[[ArrayRecord], dict[str, float]],
    arrays: ArrayRecord,
    rounds: list[dict[str, Any]],
    start_round: int,
    wall: float,
    store: RunStore,
    roles: Roles,
    timeout: float,
) -> RunRecord:
    """Rounds ``start_round + 1 .. num_rounds``, each checkpointed; returns the final record."""
    identity = identity_json(cfg)
    config = cfg.to_flower()
    done = min(start_round, cfg.num_rounds)
    record = ServerRunRecord(
        config=config, status="running", completed_rounds=done, rounds=rounds, wall_seconds=wall
    )
    guard = _node_guard(grid)
    lost: set[int] = set()
    for t in range(start_round + 1, cfg.num_rounds + 1):
        started = time.perf_counter()
        try:
            messages = list(strategy.configure_train(t, arrays, ConfigRecord(), grid))
        except TooFewNodesError as error:
            record.status = "failed"
            record.summary = {**run_summary(cfg, rounds), "error": f"round {t}: {error}"}
            store.write_record(record, include_rounds=True)
            log(ERROR, "%s: round %d: %s; the run failed", cfg.run_name, t, error)
            raise
        replies = list(grid.send_and_receive(messages=messages, timeout=timeout))
        new_arrays, train_metrics = strategy.aggregate_train(t, replies)
        if new_arrays is not None:
            arrays = new_arrays
        metrics: dict[str, Any] = {"round": t}
        if t % cfg.eval_every == 0 or t == cfg.num_rounds:  # eval-every: the whole test set
            metrics.update(evaluate(arrays))
        metrics.update(_round_values(train_metrics))
        metrics["learning-rate"] = strategy.aggregator.learning_rate_at(t)
        report = strategy.last_round_report
        if report is not None and report.server_round == t:
            metrics.update(report.details())  # who was excluded or dropped this round, and why
        if "selected-nodes" in metrics:  # the strategy knows roles.partition_of
            metrics.setdefault(
                "selected-partitions",
                [roles.partition_of.get(int(i), -1) for i in metrics["selected-nodes"]],
            )
            if report is not None and roles.byzantine:  # who the rule left out, and who attacks
                kept = [int(i) for i in metrics["selected-nodes"]]
                considered = [int(i) for i in report.accepted_node_ids]
                metrics.update(detection_rates(considered, kept, roles.byzantine))
        metrics.update(_node_metrics(guard, roles, lost, t))
        metrics.update(_attack_metrics(cfg, roles, messages, replies))
        metrics["round-seconds"] = time.perf_counter() - started
        log(
            INFO,
            "round %d/%d: test accuracy %.4f, loss %.4f, byzantine influence %s",
            t,
            cfg.num_rounds,
            metrics.get("test-accuracy", float("nan")),
            metrics.get("test-loss", float("nan")),
            metrics.get("byzantine-influence", "n/a"),
        )
        wall += metrics["round-seconds"]
        rounds.append(metrics)
        store.append_round(metrics)
        store.save_checkpoint(
            Checkpoint(
                round=t,
                arrays=arrays.to_torch_state_dict(),
                optimizer_state=strategy_state(strategy),
                identity=identity,
                rng=_rng_state(),
            )
        )
        status = "finished" if t == cfg.num_rounds else "running"
        record = ServerRunRecord(
            config=config,
            status=status,
            completed_rounds=t,
            rounds=rounds,
            wall_seconds=wall,
            summary=run_summary(cfg, rounds),
        )
        store.write_record(record)
        for listener in list(_LISTENERS):
            listener(cfg, t, metrics)
    if record.status != "finished":  # the checkpoint already covered the rounds asked for
        record.status = "finished"
        record.completed_rounds = start_round
        record.summary = run_summary(cfg, rounds)
        store.write_record(record)
    log_summary(cfg, record.summary)
    problem = idle_run_problem(cfg, rounds, record.summary)
    if problem is not None:
        if cfg.idle_run == "warn":
            log(WARNING, "%s: %s (idle-run = warn: finished anyway)", cfg.run_name, problem)
        else:
            record.status = "failed"
            record.summary = {**record.summary, "error": problem}
            store.write_record(record, include_rounds=True)
            log(
                ERROR,
                "%s: %s; the run failed (set idle-run = warn to accept)",
                cfg.run_name,
                problem,
            )
            raise IdleRunError(f"{cfg.run_name}: {problem}")
    return record


class IdleRunError(RuntimeError):
    """The run went through its rounds, but the rule never aggregated or the attack never ran."""


def idle_run_problem(
    cfg: RunConfig, rounds: list[dict[str, Any]], summary: Mapping[str, Any]
) -> str | None:
    """Why the run measured nothing it was asked to: every round kept the model (the rule never
    aggregated), or the configured attack never replied a usable vector; None when it did."""
    train = [r for r in rounds if int(r.get("round", 0)) >= 1]
    if train and all(float(r.get("kept-model", 0.0)) > 0 for r in train):
        reasons = sorted({str(r.get("kept-reason", "")) for r in train} - {""})
        why = f" ({'; '.join(reasons)})" if reasons else ""
        return f"the rule never aggregated: all {len(train)} rounds kept the model{why}"
    if summary.get("attack-ran") is False:
        return (
            f"the configured attack {cfg.attack!r} never ran: no attacker replied a usable "
            f"vector in {len(train)} rounds"
        )
    return None


@dataclass
class ServerRunRecord(RunRecord):
    """``result.json`` with the ServerApp's run summary (:func:`run_summary`) at its top."""

    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self, include_rounds: bool = True) -> dict[str, Any]:
        """The record's JSON plus the summary keys."""
        return {**super().to_json(include_rounds=include_rounds), **self.summary}


def run_summary(cfg: RunConfig, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """What happened besides the numbers: ``lost-partitions`` (nodes lost during the run) and,
    under an attack, ``attack-rounds`` (rounds in which an attacker replied a usable vector)
    and ``attack-ran`` (whether there was any); ``max-test-accuracy`` and
    ``final-test-accuracy`` over the evaluated rounds (``eval-every``), and the same two of
    ``backdoor-accuracy`` where it was measured."""
    train = [r for r in rounds if int(r.get("round", 0)) >= 1]
    out: dict[str, Any] = {
        "lost-partitions": sorted({int(p) for r in train for p in r.get("lost-partitions", [])})
    }
    accuracies = [float(r["test-accuracy"]) for r in train if "test-accuracy" in r]
    if accuracies:  # over the evaluated rounds (eval-every), the initial model excluded
        out.update({"max-test-accuracy": max(accuracies), "final-test-accuracy": accuracies[-1]})
    backdoor = [float(r["backdoor-accuracy"]) for r in train if "backdoor-accuracy" in r]
    if backdoor:
        out.update(
            {"max-backdoor-accuracy": max(backdoor), "final-backdoor-accuracy": backdoor[-1]}
        )
    if cfg.attack != "none":
        ran = sum(1 for r in train if int(r.get("attack-replies", 0)) > 0)
        out.update({"attack-rounds": ran, "attack-ran": ran > 0})
    return out


def log_summary(cfg: RunConfig, summary: Mapping[str, Any]) -> None:
    """The ServerApp's final summary line(s): lost nodes, and whether the attack ran."""
    if summary.get("lost-partitions"):
        log(
            WARNING,
            "%s: partitions %s were lost during the run (counted as dropouts)",
            cfg.run_name,
            summary["lost-partitions"],
        )
    if "attack-ran" not in summary:
        return
    level = INFO if summary["attack-ran"] else WARNING
    verdict = "ran" if summary["attack-ran"] else "did NOT run: no attacker replied a usable vector"
    log(
        level,
        "%s: attack %r %s (attackers' vectors used in %d of %d rounds)",
        cfg.run_name,
        cfg.attack,
        verdict,
        summary["attack-rounds"],
        cfg.num_rounds,
    )


def _node_guard(grid: Grid) -> NodeWaitGrid | None:
    """The ``NodeWaitGrid`` inside ``grid``'s wrappers, if any."""
    current: Any = grid
    while current is not None and not isinstance(current, NodeWaitGrid):
        current = getattr(current, "grid", None)
    return current


def _node_metrics(
    guard: NodeWaitGrid | None, roles: Roles, lost: set[int], rnd: int
) -> dict[str, Any]:
    """``connected-nodes`` and ``lost-partitions`` (known nodes no longer connected) at the end
    of a round; logs each node once when it is first missed."""
    if guard is None:
        return {}
    connected = {int(node) for node in guard.grid.get_node_ids()}  # raw: never raises
    missing = sorted(node for node in roles.partition_of if node not in connected)
    for node in missing:
        if node not in lost:
            lost.add(node)
            log(
                WARNING,
                "round %d: node %d (partition %d) is gone, counted as a dropout; %d nodes "
                "connected, min-nodes=%d",
                rnd,
                node,
                roles.partition_of[node],
                len(connected),
                guard.min_nodes,
            )
    return {
        "connected-nodes": len(connected),
        "lost-partitions": sorted(roles.partition_of[node] for node in missing),
    }


def _attack_metrics(
    cfg: RunConfig, roles: Roles, messages: list[Message], replies: list[Message]
) -> dict[str, Any]:
    """Under an attack: ``attackers-sampled`` and ``attack-replies`` (attackers' replies that
    carry a vector, i.e. the attack ran) of a round; attackers' error replies are logged."""
    if cfg.attack == "none":
        return {}
    sampled = {int(m.metadata.dst_node_id) for m in messages} & roles.byzantine
    usable = 0
    for reply in replies:
        if int(reply.metadata.src_node_id) not in sampled:
            continue
        if reply.has_error():
            log(WARNING, "attacker node %d: %s", reply.metadata.src_node_id, reply.error.reason)
        elif reply.has_content() and reply.content.array_records:
            usable += 1
    return {"attackers-sampled": len(sampled), "attack-replies": usable}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: the run config of ``context`` -> :func:`run_server`."""
    cfg = config_from_context(context.run_config)
    log(INFO, "%s: results go to %s", cfg.run_name, cfg.run_dir.resolve())
    poll_replies_often(grid)
    record = run_server(grid, cfg)
    log(INFO, "%s: %s; results in %s", cfg.run_name, record.status, cfg.run_dir.resolve())


class _DropKnownNoise(logging.Filter):
    """Drops FedAvg's warning that federated evaluation is off (we evaluate centrally)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "fraction_evaluate is set to 0.0" not in record.getMessage()


def quiet_flower(level: int = logging.WARNING) -> None:
    """Lower Flower's log verbosity (the runner prints its own progress)."""
    logger = logging.getLogger("flwr")
    logger.setLevel(level)
    if not any(isinstance(f, _DropKnownNoise) for f in logger.filters):
        logger.addFilter(_DropKnownNoise())
