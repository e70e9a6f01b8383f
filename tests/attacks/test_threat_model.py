"""The threat model is decided in flwr_byz.attacks, once: what each attack knows per round."""

from __future__ import annotations

import json

import pytest

from flwr_byz import attacks
from flwr_byz.clients.malicious import MALICIOUS_CLIENTS, make_malicious_client
from flwr_byz.schema import ClientConfig


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("none", {}, "none"),
        ("alie", {}, "omniscient"),
        ("alie", {"omniscient": False}, "colluders"),
        ("alie_backdoor", {}, "colluders"),
        ("alie_backdoor", {"omniscient": True}, "omniscient"),
        ("ipm", {}, "omniscient"),
        ("sign_flip", {}, "own"),
        ("gaussian", {}, "none"),
        ("bit_flip", {}, "channel"),
    ],
)
def test_knowledge_by_attack_and_options(name: str, options: dict, expected: str) -> None:
    assert attacks.knowledge(name, options) == expected


CLIENT_CASES = [
    (name, options)
    for name, cls in sorted(MALICIOUS_CLIENTS.items())
    for options in (
        [{}, {"omniscient": True}, {"omniscient": False}]
        if "omniscient" in cls.allowed_options
        else [{}]
    )
]


@pytest.mark.parametrize(("name", "options"), CLIENT_CASES)
def test_the_client_roles_agree_with_the_registry(name: str, options: dict) -> None:
    run = {"attack": name, "num-byzantine": 1, "attack-options": json.dumps(options)}
    cfg = ClientConfig.from_configs(run, {"partition-id": 0, "num-partitions": 5})
    expected = attacks.knowledge(name, options)
    # a channel fault runs at the server; as a client role it only needs its own vector
    assert make_malicious_client(cfg).needs == {"channel": "own"}.get(expected, expected)
