"""The one Flower ClientApp of flwr-byz (``flwr_byz.clients.app:app``), honest or Byzantine by
partition.

Role: ``node_config["partition-id"]`` is Byzantine when it is listed in the run config's
``byzantine-partitions`` (or, when that is empty, is among the first ``num-attackers``) and
``attack`` is not "none". Train messages may carry, besides ``server-round`` and
``learning-rate``, keys set by ``flwr_byz.clients.adversary.AdversaryGrid``: ``byz-phase``
("collect" |
"real"), ``byz-honest-count`` and ``coordinator-address`` (which override the run config's), and
for attacks the grid computes once per round (``MaliciousClient.same_for_all``) the ArrayRecord
``byz-attack`` (the vector an attacker sends as it is, no coordinator fetch) or the config key
``byz-attack-error``, and ``byz-eavesdrop = False`` on honest messages (nothing to publish)
and on collect messages (the colluder replies its own honest vector instead of publishing it).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from logging import ERROR, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from torch import Tensor

from flwr_byz import attacks
from flwr_byz._values import as_float, as_int
from flwr_byz.codec import records_of
from flwr_byz.schema import ClientConfig

from .coordinator import CoordinatorClient, CoordinatorError
from .honest import LocalResult, evaluate_model, honest_update
from .keys import ADDRESS_KEY, HONEST_COUNT_KEY, PHASE_KEY, ROLE_KEY
from .malicious import (
    EAVESDROP_KEY,
    SHARED_ERROR_KEY,
    AttackInputs,
    backdoor_accuracy,
    coordinator_vector,
    make_malicious_client,
    shared_vector,
)
from .records import record_to_state, vector_to_record
from .runtime import client_device, dataset_for, model_with_state, shard_indices

__all__ = ["app", "client_config", "handle_train"]

app = ClientApp()


def _config_key(config: Mapping[str, Any]) -> tuple[tuple[str, type, Any], ...]:
    # the type is part of the key: True == 1 == 1.0 hash alike but may parse differently
    return tuple((key, type(value), value) for key, value in config.items())


@functools.lru_cache(maxsize=1024)
def _cached_config(run_key: tuple, node_key: tuple) -> ClientConfig:
    run_config = {key: value for key, _, value in run_key}
    node_config = {key: value for key, _, value in node_key}
    return ClientConfig.from_configs(run_config, node_config)


def client_config(context: Context) -> ClientConfig:
    """The typed config of this node (run config + node config).

    Memoised by the configs' contents (``ClientConfig`` is frozen; its option dicts are shared
    and must be read only, as they are): a node parses its configs once, not every round."""
    try:
        run_key, node_key = _config_key(context.run_config), _config_key(context.node_config)
        hash((run_key, node_key))
    except TypeError:  # an unhashable value: parse without the cache
        return ClientConfig.from_configs(context.run_config, context.node_config)
    return _cached_config(run_key, node_key)


def _train_config(message: Message) -> ConfigRecord:
    return records_of(message.content, ConfigRecord).get("config", ConfigRecord())


def _arrays_state(message: Message) -> dict[str, Tensor]:
    records = records_of(message.content, ArrayRecord)
    if "arrays" in records:
        return record_to_state(records["arrays"])
    if len(records) == 1:
        return record_to_state(next(iter(records.values())))
    raise ValueError(f"train message must carry the model under 'arrays', got {list(records)}")


def _coordinator(cfg: ClientConfig, train_config: ConfigRecord, attack: str) -> CoordinatorClient:
    address = str(train_config.get(ADDRESS_KEY, "") or cfg.coordinator_address)
    if not address:
        raise ValueError(
            f"attack {attack!r} needs the colluding coordinator, but no coordinator-address is "
            "set (run config key 'coordinator-address', or AdversaryGrid(coordinator_address=...))"
        )
    return CoordinatorClient(address, timeout=cfg.coordinator_timeout)


def _reply(
    message: Message, vector: Tensor, like: dict[str, Tensor], loss: float, num: int
) -> Message:
    metrics = MetricRecord({"train-loss": float(loss), "num-examples": int(num)})
    content = RecordDict({"arrays": vector_to_record(vector, like), "metrics": metrics})
    return Message(content, reply_to=message)


def _num_examples(cfg: ClientConfig) -> int:
    if cfg.update_mode == "weights":
        return int(shard_indices(cfg).numel())
    return min(cfg.batch_size, int(shard_indices(cfg).numel()))


ATTACK_FAILED_PREFIX = "attack did not run"
_EAVESDROP_WARNED: set[str] = set()  # coordinator addresses warned about, once per process
_WARN_LOCK = threading.Lock()


def _eavesdrop(
    cfg: ClientConfig, train_config: ConfigRecord, run_id: int, rnd: int, vector: Tensor
) -> None:
    """Publish an honest vector to the coordinator (the adversary's eavesdropping). A failure
    there stops only the attack: it is logged once per process and training goes on."""
    try:
        coordinator = _coordinator(cfg, train_config, cfg.attack)
        coordinator.publish(run_id, rnd, "honest", cfg.partition_id, vector)
    except (CoordinatorError, ValueError) as error:
        key = str(train_config.get(ADDRESS_KEY, "") or cfg.coordinator_address)
        with _WARN_LOCK:
            first = key not in _EAVESDROP_WARNED
            _EAVESDROP_WARNED.add(key)
        if first:
            log(
                WARNING,
                "partition %d (honest): cannot publish to the colluding coordinator, the "
                "attack cannot use this vector; training goes on (logged once): %s",
                cfg.partition_id,
                error,
            )


def _attack_failed(message: Message, cfg: ClientConfig, rnd: int, error: Exception) -> Message:
    """The error reply of an attacker that could not run its attack (e.g. no coordinator)."""
    reason = (
        f"{ATTACK_FAILED_PREFIX}: attack {cfg.attack!r} of partition {cfg.partition_id} in "
        f"round {rnd} needs the colluding coordinator: {error}"
    )
    log(ERROR, "%s", reason)
    error_record = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
    return Message(error_record, reply_to=message)


def handle_train(message: Message, context: Context) -> Message:
    """One training round for this node, honest or Byzantine (see the module docstring)."""
    cfg = client_config(context)
    train_config = _train_config(message)
    rnd = as_int(train_config.get("server-round", 0), "server-round")
    state = _arrays_state(message)
    if not cfg.is_byzantine:
        result = honest_update(cfg, context, state, rnd)
        # the adversary eavesdrops on what honest nodes send (unless AdversaryGrid reads it)
        omniscient = cfg.attack_knowledge == "omniscient"
        if omniscient and bool(train_config.get(EAVESDROP_KEY, True)):
            _eavesdrop(cfg, train_config, context.run_id, rnd, result.vector)
        return _reply(message, result.vector, state, result.loss, result.num_examples)
    try:
        return _byzantine_train(message, context, cfg, train_config, rnd, state)
    except CoordinatorError as error:
        return _attack_failed(message, cfg, rnd, error)


def _byzantine_train(
    message: Message,
    context: Context,
    cfg: ClientConfig,
    train_config: ConfigRecord,
    rnd: int,
    state: dict[str, Tensor],
) -> Message:
    """The Byzantine node's round (``handle_train``); coordinator failures propagate."""
    client = make_malicious_client(cfg)
    needs = client.needs  # the role's: a channel fault's sender role knows its own vector
    honest_count = as_int(train_config.get(HONEST_COUNT_KEY, cfg.num_honest), HONEST_COUNT_KEY)
    attackers = cfg.attackers
    inputs = AttackInputs(
        cfg=cfg,
        context=context,
        state=state,
        rnd=rnd,
        learning_rate=as_float(train_config.get("learning-rate", cfg.learning_rate), "lr"),
        n=honest_count + attackers,
        f=attackers,
    )
    collecting = str(train_config.get(PHASE_KEY, "real")) == "collect"
    if not collecting:
        if SHARED_ERROR_KEY in train_config:  # the adversary (AdversaryGrid) could not compute it
            raise ValueError(str(train_config[SHARED_ERROR_KEY]))
        vector = shared_vector(message.content)  # computed once per round by AdversaryGrid
        if vector is not None:
            return _reply(message, vector, state, 0.0, _num_examples(cfg))
    own: LocalResult | None = None
    if needs in ("own", "colluders"):
        own = inputs.own = client.honest_result(inputs)
    if own is not None and collecting and not bool(train_config.get(EAVESDROP_KEY, True)):
        # the AdversaryGrid reads the colluders' own vectors from these replies
        return _reply(message, own.vector, state, own.loss, own.num_examples)
    if needs == "colluders":
        assert own is not None
        coordinator = _coordinator(cfg, train_config, cfg.attack)
        coordinator.publish(context.run_id, rnd, "colluder", cfg.partition_id, own.vector)
    if collecting:
        metrics = MetricRecord({"num-examples": 0})
        return Message(RecordDict({"metrics": metrics}), reply_to=message)
    if client.coordinator_kind is not None:  # the coordinator computes it once per round
        coordinator = _coordinator(cfg, train_config, cfg.attack)
        vector = coordinator_vector(client, coordinator, context.run_id, inputs)
    else:
        if needs == "colluders":
            _, inputs.known = coordinator.fetch(context.run_id, rnd, "colluder", attackers)
        elif needs == "omniscient":
            coordinator = _coordinator(cfg, train_config, cfg.attack)
            _, inputs.known = coordinator.fetch(context.run_id, rnd, "honest", honest_count)
        vector = client.submit(inputs)
    loss = own.loss if own is not None else 0.0
    return _reply(message, vector, state, loss, _num_examples(cfg))


@app.train()
def train(message: Message, context: Context) -> Message:
    """Flower train handler: see ``handle_train``."""
    return handle_train(message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Loss and accuracy of the received model on the test split; under ``alie_backdoor`` also
    ``backdoor-accuracy`` (every node reports it, so the metric keys agree across replies)."""
    cfg = client_config(context)
    split = dataset_for(cfg)
    model = model_with_state(cfg, _arrays_state(message), client_device(cfg.client_device))
    loss, accuracy = evaluate_model(model, split.test_x, split.test_y)
    values: dict[str, int | float | list[int] | list[float]] = {
        "eval-loss": loss,
        "eval-accuracy": accuracy,
        "num-examples": int(split.test_y.numel()),
    }
    if cfg.attack == "alie_backdoor":
        from flwr_byz import data

        values["backdoor-accuracy"] = backdoor_accuracy(
            model,
            split.test_x,
            split.test_y,
            data.max_intensity(cfg.dataset),
            attacks.BACKDOOR_TARGET,
        )
    return Message(RecordDict({"metrics": MetricRecord(values)}), reply_to=message)


@app.query()
def query(message: Message, context: Context) -> Message:
    """Answer ``flwr_byz.clients.adversary.discover_roles``: partition id and whether this node
    attacks."""
    cfg = client_config(context)
    role = ConfigRecord(
        {"partition-id": cfg.partition_id, "is-byzantine": cfg.is_byzantine, "attack": cfg.attack}
    )
    return Message(RecordDict({ROLE_KEY: role}), reply_to=message)
