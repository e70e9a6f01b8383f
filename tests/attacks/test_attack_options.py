"""Each attack's options and threat model are declared once, in flwr_byz.attacks; the roles pass
only what the user set, so a default lives in the attack function's signature alone."""

from __future__ import annotations

import pytest
import torch

from flwr_byz import attacks
from flwr_byz.clients.malicious import MALICIOUS_CLIENTS
from flwr_byz.schema import ClientConfig

# the option sets the roles accepted before the registry held them (written out by hand)
OPTIONS = {
    "alie": {"z", "omniscient", "sigma"},
    "ipm": {"eps"},
    "lp_coordinate": {
        "norm",
        "coordinate",
        "initial_gamma",
        "max_doublings",
        "max_bisections",
        "rtol",
    },
    "gaussian": {"std"},
    "omniscient_negative": {"scale"},
    "sign_flip": set(),
    "label_flip": set(),
    "bit_flip": {"coordinates", "bits"},
    "gambler": {"shards", "probability", "scale", "shard"},
    "alie_backdoor": {"z", "alpha", "steps", "lr", "samples", "omniscient"},
    "mimic": {"warmup"},
    "minmax": {"direction", "gamma_init", "rtol"},
    "minsum": {"direction", "gamma_init", "rtol"},
    "fang": {"b"},
    "fang_selection": {"upper", "threshold"},
    "alie_opt": {"low", "high", "grid", "refine"},
    "ipm_opt": {"low", "high", "grid", "refine"},
}
SAME_FOR_ALL = {
    "alie",
    "ipm",
    "lp_coordinate",
    "omniscient_negative",
    "mimic",
    "minmax",
    "minsum",
    "fang_selection",
    "alie_opt",
    "ipm_opt",
}


def test_every_role_has_a_registry_entry() -> None:
    assert set(MALICIOUS_CLIENTS) == set(attacks.NAMES) | set(attacks.BEYOND_NAMES) == set(OPTIONS)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_options_come_from_the_signature_and_the_role(name: str) -> None:
    assert attacks.get(name).options == OPTIONS[name]
    assert MALICIOUS_CLIENTS[name].allowed_options == OPTIONS[name]


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_same_for_all(name: str) -> None:
    assert attacks.same_for_all(name) == (name in SAME_FOR_ALL)
    cfg = ClientConfig(attack=name, num_byzantine=1, partition_id=0, num_partitions=10)
    assert MALICIOUS_CLIENTS[name](cfg).same_for_all == (name in SAME_FOR_ALL)
    assert not attacks.same_for_all("none")


def test_an_unknown_option_is_named_with_those_taken() -> None:
    with pytest.raises(ValueError, match=r"attack 'ipm' does not take option\(s\) \['z'\]; "):
        attacks.get("ipm").check_options({"z": 1.0})
    with pytest.raises(ValueError, match=r"it takes \['eps'\]"):
        ClientConfig(attack="ipm", attack_options={"z": 1}, partition_id=0, num_partitions=5)


def test_a_default_is_read_from_the_signature() -> None:
    assert attacks.get("bit_flip").default("coordinates") == 1000
    assert attacks.get("alie_backdoor").default("lr") == 0.1  # the role's name for learning_rate
    with pytest.raises(KeyError):
        attacks.get("gambler").default("shards")  # the function has none: the role's own


def _role(name: str, **options: object):
    cfg = ClientConfig(
        attack=name, attack_options=dict(options), num_byzantine=2, partition_id=0, num_partitions=7
    )
    return MALICIOUS_CLIENTS[name](cfg)


def test_roles_give_the_definitions_with_and_without_the_default() -> None:
    honest = torch.randn(5, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, total = honest.mean(dim=0), honest.sum(dim=0)
    for options in ({}, {"eps": 0.1}):
        assert torch.allclose(_role("ipm", **options).from_known(honest, 7, 2), -0.1 * mean)
    assert torch.allclose(_role("ipm", eps=3.0).from_known(honest, 7, 2), -3.0 * mean)
    for options in ({}, {"scale": 1e20}):
        vector = _role("omniscient_negative", **options).from_known(honest, 7, 2)
        assert torch.allclose(vector, -1e20 * total)
    # ALIE: mu - z sigma (sample std by default, z_max(n, f) when z is unset)
    z = attacks.z_max(7, 2)
    expected = mean - z * honest.std(dim=0, unbiased=True)
    assert torch.allclose(_role("alie").from_known(honest, 7, 2), expected)
    assert torch.allclose(_role("alie", omniscient=True).from_known(honest, 7, 2), expected)


def test_gaussian_role_draws_std_times_a_standard_normal() -> None:
    from flwr_byz.clients.malicious import AttackInputs

    def vector(**options: object) -> torch.Tensor:
        role = _role("gaussian", **options)
        state = {"w": torch.zeros(3, 4), "b": torch.zeros(5)}
        inputs = AttackInputs(role.cfg, None, state, 3, 0.1, 7, 2)  # type: ignore[arg-type]
        return role.submit(inputs)

    unit = vector(std=1.0)  # the same seeded draw: N(0, std^2) = std * N(0, 1)
    assert unit.shape == (17,)
    for options in ({}, {"std": 200.0}):
        assert torch.allclose(vector(**options), 200.0 * unit)
