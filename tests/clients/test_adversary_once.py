"""AdversaryGrid computes same-for-all attack vectors once per round from the honest replies."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from client_helpers import BASE_CONFIG, make_grid, run_round, train_messages
from flwr.app import Message

from flwr_byz import attacks
from flwr_byz.clients import AdversaryGrid, discover_roles, start_coordinator
from flwr_byz.clients.malicious import EAVESDROP_KEY, SHARED_VECTOR_KEY

N, F = 11, 4  # partitions 0..3 attack

CASES: dict[str, tuple[dict[str, Any], Any]] = {
    "alie": ({"z": 1.5}, lambda h, n, f: attacks.alie(h, n, f, z=1.5)),
    "ipm": ({"eps": 0.3}, lambda h, n, f: attacks.ipm(h, n, f, eps=0.3)),
    "omniscient_negative": (
        {"scale": 2.0},
        lambda h, n, f: attacks.omniscient_negative(h, n, f, scale=2.0),
    ),
    "lp_coordinate": (
        {},
        lambda h, n, f: attacks.lp_coordinate(h.double(), n, f, gar="krum").float(),
    ),
}


def _config(attack: str, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "attack": attack,
        "attack-options": json.dumps(options),
        "num-byzantine": F,
        "rule": "krum",
    }


def _vector(reply: Message) -> torch.Tensor:
    arrays = reply.content["arrays"]
    return torch.cat([torch.from_numpy(a.numpy()).reshape(-1) for a in arrays.values()])


class RecordingGrid:
    """Passes messages on, keeping the train messages it sent."""

    def __init__(self, grid: Any) -> None:
        self.grid, self.sent = grid, []

    def get_node_ids(self) -> Any:
        return self.grid.get_node_ids()

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        messages = list(messages)
        self.sent.extend(messages)
        return self.grid.send_and_receive(messages, timeout=timeout)


def _rounds(attack: str, arrays0: Any) -> tuple[dict, dict, list[int], RecordingGrid]:
    """One round the old way (coordinator fetch) and one computed once by the grid."""
    options = _config(attack, CASES[attack][0])
    grid = make_grid(N, options)
    roles = discover_roles(grid)
    byzantine = [node for node, (_, is_byz) in roles.items() if is_byz]
    partition_of = {node: pid for node, (pid, _) in roles.items()}
    with start_coordinator() as coordinator:
        fetching = AdversaryGrid(grid, byzantine, "omniscient", coordinator.address)
        old = run_round(fetching, arrays0, 2)
    recording = RecordingGrid(grid)
    once = AdversaryGrid(
        recording,
        byzantine,
        "omniscient",
        run_config={**BASE_CONFIG, **options},
        partition_of=partition_of,
    )
    assert once.computes_vector
    new = run_round(once, arrays0, 2)  # no coordinator at all: nothing is fetched
    return old, new, byzantine, recording


@pytest.mark.parametrize("attack", sorted(CASES))
def test_vector_computed_once_equals_the_pure_attack_and_the_fetched_one(
    attack: str, arrays0: Any
) -> None:
    old, new, byzantine, recording = _rounds(attack, arrays0)
    honest_nodes = sorted(node for node in new if node not in byzantine)  # partition order
    honest = torch.stack([_vector(new[node]) for node in honest_nodes])
    expected = CASES[attack][1](honest, N, F).to(torch.float32)
    for node in byzantine:
        assert torch.equal(_vector(new[node]), expected)
        assert torch.allclose(_vector(old[node]), expected, rtol=1e-6, atol=1e-7)
    for node in honest_nodes:
        assert torch.equal(_vector(new[node]), _vector(old[node]))
    for message in recording.sent:
        to_attacker = message.metadata.dst_node_id in byzantine
        assert (SHARED_VECTOR_KEY in message.content.array_records) == to_attacker
        if not to_attacker:
            assert message.content["config"][EAVESDROP_KEY] is False


def test_colluding_alie_once_from_the_colluders_own_vectors_equals_the_fetched_one(
    arrays0: Any,
) -> None:
    """Non-omniscient ALIE: the grid reads the collect phase's replies (the colluders' own honest
    vectors, never the honest nodes'), computes the vector once, and it equals what each
    colluder computed from the coordinator before."""
    options = {**_config("alie", {"z": 1.5, "omniscient": False, "sigma": "population"})}
    grid = make_grid(N, options)
    roles = discover_roles(grid)
    byzantine = sorted(node for node, (_, is_byz) in roles.items() if is_byz)
    partition_of = {node: pid for node, (pid, _) in roles.items()}
    with start_coordinator() as coordinator:
        old = run_round(
            AdversaryGrid(grid, byzantine, "colluders", coordinator.address), arrays0, 2
        )
    recording = RecordingGrid(grid)
    once = AdversaryGrid(
        recording,
        byzantine,
        "colluders",
        run_config={**BASE_CONFIG, **options},
        partition_of=partition_of,
    )
    assert once.computes_vector
    new = run_round(once, arrays0, 2)  # no coordinator at all
    collect = [m for m in recording.sent if m.content["config"].get("byz-phase") == "collect"]
    assert sorted(m.metadata.dst_node_id for m in collect) == byzantine
    # the colluders' own honest vectors: what an honest node of that partition would send
    own = torch.stack(
        [_vector(old_honest) for old_honest in _honest_replies(N, arrays0, byzantine)]
    )
    expected = attacks.alie(own, N, F, z=1.5, sigma="population").to(torch.float32)
    for node in byzantine:
        assert torch.equal(_vector(new[node]), expected)
        assert torch.allclose(_vector(old[node]), expected, rtol=1e-6, atol=1e-7)
    for node in set(new) - set(byzantine):
        assert torch.equal(_vector(new[node]), _vector(old[node]))


def _honest_replies(n: int, arrays0: Any, nodes: list[int]) -> list[Message]:
    """The replies the Byzantine partitions would send as honest nodes (no attack)."""
    grid = make_grid(n, {**BASE_CONFIG, "attack": "none", "num-byzantine": F, "rule": "krum"})
    replies = run_round(grid, arrays0, 2)
    return [replies[node] for node in nodes]


def test_attacks_not_same_for_all_are_left_to_the_clients() -> None:
    config = {**BASE_CONFIG, "attack": "sign_flip", "num-byzantine": F}
    partition_of = {node: node - 1 for node in range(1, N + 1)}
    grid = AdversaryGrid(
        make_grid(N, config), [1], "own", run_config=config, partition_of=partition_of
    )
    assert not grid.computes_vector
    backdoor = {**config, "attack": "alie_backdoor", "attack-options": '{"omniscient": false}'}
    grid = AdversaryGrid(
        make_grid(N, backdoor), [1], "colluders", run_config=backdoor, partition_of=partition_of
    )
    assert not grid.computes_vector  # trained on each colluder's own data
    with pytest.raises(ValueError, match="partition_of"):
        AdversaryGrid(make_grid(N, config), [1], "omniscient", run_config=config)


def test_an_attack_that_cannot_be_computed_fails_only_the_attackers(arrays0: Any) -> None:
    config = {**BASE_CONFIG, "attack": "alie", "num-byzantine": 6}  # z_max undefined, n=10, f=6
    grid = make_grid(10, config)
    partition_of = {node: node - 1 for node in range(1, 11)}
    byzantine = list(range(1, 7))
    wrapped = AdversaryGrid(
        grid, byzantine, "omniscient", run_config=config, partition_of=partition_of
    )
    replies = list(wrapped.send_and_receive(train_messages(range(1, 11), arrays0, 1)))
    assert len(replies) == 10
    for reply in replies:
        if reply.metadata.src_node_id in byzantine:
            assert reply.has_error() and "z_max undefined" in reply.error.reason
        else:
            assert not reply.has_error()
