"""The attacks beyond the seeds as client roles: each submits what its pure function gives on the
round's honest vectors, computed once per round by the adversary grid."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from client_helpers import BASE_CONFIG, make_grid, run_round

from flwr_byz import attacks
from flwr_byz.clients import AdversaryGrid, discover_roles
from flwr_byz.clients.malicious import MALICIOUS_CLIENTS, make_malicious_client
from flwr_byz.schema import ClientConfig

N, F = 9, 2

CASES: dict[str, tuple[str, dict[str, Any], Any]] = {
    "mimic": ("krum", {}, lambda h, n, f: attacks.mimic(h, n, f)),
    "minmax": ("median", {}, lambda h, n, f: attacks.minmax(h, n, f)),
    "minsum": ("median", {"direction": "sign"}, lambda h, n, f: attacks.minsum(h, n, f, "sign")),
    "fang_selection": ("krum", {}, lambda h, n, f: attacks.fang_selection(h, n, f, gar="krum")),
    "alie_opt": ("median", {"grid": 5, "refine": 3}, None),
    "ipm_opt": ("median", {"grid": 5, "refine": 3}, None),
}


def _vector(reply: Any) -> torch.Tensor:
    arrays = reply.content["arrays"]
    return torch.cat([torch.from_numpy(a.numpy()).reshape(-1) for a in arrays.values()])


@pytest.mark.parametrize("attack", sorted(CASES))
def test_role_sends_its_pure_function_of_the_honest_vectors(attack: str, arrays0: Any) -> None:
    rule, options, reference = CASES[attack]
    config = {
        "attack": attack,
        "attack-options": json.dumps(options),
        "num-byzantine": F,
        "rule": rule,
    }
    grid = make_grid(N, config)
    roles = discover_roles(grid)
    byzantine = sorted(node for node, (_, is_byz) in roles.items() if is_byz)
    partition_of = {node: pid for node, (pid, _) in roles.items()}
    once = AdversaryGrid(
        grid,
        byzantine,
        "omniscient",
        run_config={**BASE_CONFIG, **config},
        partition_of=partition_of,
    )
    assert once.computes_vector
    replies = run_round(once, arrays0, 2)
    honest = torch.stack([_vector(replies[node]) for node in sorted(set(replies) - set(byzantine))])
    if reference is None:  # defence-aware: the search against the deployed median
        search = attacks.alie_opt if attack == "alie_opt" else attacks.ipm_opt
        expected = search(honest, N, F, gar="median", **options)
    else:
        expected = reference(honest, N, F)
    for node in byzantine:
        torch.testing.assert_close(_vector(replies[node]), expected.to(torch.float32))


def test_fang_draws_per_colluder_and_keeps_the_bounds() -> None:
    run = {"attack": "fang", "num-byzantine": F, "rule": "median"}
    cfg = ClientConfig.from_configs(run, {"partition-id": 0, "num-partitions": N})
    client = make_malicious_client(cfg)
    assert not client.same_for_all  # each colluder its own draw
    assert client.needs == "omniscient"


def test_every_registered_attack_has_a_client_role() -> None:
    names = set(attacks.NAMES + attacks.BEYOND_NAMES)
    assert names <= set(MALICIOUS_CLIENTS)
