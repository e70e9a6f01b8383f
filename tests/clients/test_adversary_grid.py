"""AdversaryGrid's round ordering with few concurrent workers, and its bounded failure modes."""

from __future__ import annotations

import json
import time

import torch
from client_helpers import make_grid, reference_gradient, reply_vector, run_round, train_messages
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from flwr_byz.clients import AdversaryGrid, discover_roles, start_coordinator

N, F = 11, 5  # partitions 0..4 are the colluders (the default: the first num-byzantine)


def _config(options: dict, **extra) -> dict:
    return {"attack": "alie", "attack-options": json.dumps(options), "num-byzantine": F, **extra}


def test_colluders_finish_with_two_workers_and_use_their_own_vectors(arrays0) -> None:
    with start_coordinator() as coordinator:
        grid = make_grid(N, _config({"omniscient": False, "z": 1.0}), threaded=True, workers=2)
        roles = discover_roles(grid)
        byzantine = [node for node, (_, is_byz) in roles.items() if is_byz]
        assert sorted(roles[node][0] for node in byzantine) == list(range(F))
        wrapped = AdversaryGrid(grid, byzantine, "colluders", coordinator.address)
        started = time.monotonic()
        replies = run_round(wrapped, arrays0, rnd=3)
        assert time.monotonic() - started < 60
    assert sorted(replies) == list(range(1, N + 1))  # collect-phase replies are not returned
    own = torch.stack([reference_gradient(arrays0, 3, pid, 3) for pid in range(F)])
    expected = own.mean(dim=0) - 1.0 * own.std(dim=0, correction=1)
    for node in byzantine:
        actual = reply_vector(replies[node])
        assert float((actual - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


def test_omniscient_vector_uses_every_honest_update_of_the_round(arrays0) -> None:
    with start_coordinator() as coordinator:
        grid = make_grid(N, _config({"z": 1.5}), threaded=True, workers=2)
        roles = discover_roles(grid)
        byzantine = [node for node, (_, is_byz) in roles.items() if is_byz]
        wrapped = AdversaryGrid(grid, byzantine, "omniscient", coordinator.address)
        replies = run_round(wrapped, arrays0, rnd=1)
    honest = torch.stack([reply_vector(replies[n]) for n in sorted(replies) if n not in byzantine])
    assert honest.shape[0] == N - F
    expected = honest.mean(dim=0) - 1.5 * honest.std(dim=0, correction=1)
    for node in byzantine:
        actual = reply_vector(replies[node])
        assert float((actual - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


def test_partial_rounds_tell_the_attackers_how_many_honest_replies_came(arrays0) -> None:
    with start_coordinator() as coordinator:
        grid = make_grid(N, _config({"z": 1.0}))
        wrapped = AdversaryGrid(grid, range(1, F + 1), "omniscient", coordinator.address)
        sampled = [1, 2, 7, 9, 11]  # 2 attackers, 3 honest nodes
        replies = {
            r.metadata.src_node_id: r
            for r in wrapped.send_and_receive(train_messages(sampled, arrays0, 4))
        }
    assert not any(r.has_error() for r in replies.values())
    honest = torch.stack([reply_vector(replies[node]) for node in (7, 9, 11)])
    expected = honest.mean(dim=0) - honest.std(dim=0, correction=1)
    assert torch.allclose(reply_vector(replies[1]), expected, rtol=0, atol=1e-6)


def test_without_ordering_the_wait_is_bounded_and_explained(arrays0) -> None:
    """Colluders first and only 2 workers: they cannot all meet; each wait ends with an error
    naming the coordinator, the round and the counts instead of hanging."""
    with start_coordinator() as coordinator:
        config = _config(
            {"omniscient": False},
            **{"coordinator-address": coordinator.address, "coordinator-timeout": 0.5},
        )
        grid = make_grid(N, config, threaded=True, workers=2)
        started = time.monotonic()
        replies = grid.send_and_receive(train_messages(grid.get_node_ids(), arrays0, 1))
        assert time.monotonic() - started < 30
    errors = [r.error.reason for r in replies if r.has_error()]
    assert len(errors) >= 2
    for reason in errors:
        assert "timed out" in reason and "round 1" in reason and "of 5 expected" in reason
        assert coordinator.address in reason


def test_non_train_messages_pass_through_and_shared_content_is_untouched(arrays0) -> None:
    grid = make_grid(4, {"attack": "gaussian", "num-byzantine": 1})
    wrapped = AdversaryGrid(grid, [1], "colluders", "127.0.0.1:1")
    content = RecordDict({"arrays": arrays0, "config": ConfigRecord({"server-round": 1})})
    evaluate = [Message(content, node, MessageType.EVALUATE) for node in (1, 2)]
    replies = wrapped.send_and_receive(evaluate)
    assert all("eval-accuracy" in r.content["metrics"] for r in replies)
    messages = train_messages([1, 2, 3, 4], arrays0, 1)
    replies = run_round_from(wrapped, messages)
    assert set(messages[0].content["config"].keys()) == {"server-round", "learning-rate"}
    assert len(replies) == 4


def run_round_from(grid, messages):
    replies = list(grid.send_and_receive(messages))
    assert not any(r.has_error() for r in replies), [
        r.error.reason for r in replies if r.has_error()
    ]
    return replies


def test_needs_none_is_a_pass_through(arrays0) -> None:
    grid = make_grid(3, {})
    wrapped = AdversaryGrid(grid, [], "none")
    assert sorted(run_round(wrapped, arrays0, 1)) == [1, 2, 3]


def test_needs_for_run_config() -> None:
    from flwr_byz.clients import needs_for_run_config

    def needs(**config) -> str:
        return needs_for_run_config({"num-byzantine": 2, **config}, num_partitions=6)

    assert needs() == "none"
    assert needs(attack="ipm") == "omniscient"
    assert needs(attack="alie") == "omniscient"
    assert needs(attack="alie", **{"attack-options": '{"omniscient": false}'}) == "colluders"
    assert needs(attack="alie_backdoor") == "colluders"
    assert needs(attack="sign_flip") == "own"
    assert needs(attack="gaussian") == "none"
