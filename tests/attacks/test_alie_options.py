"""ALIE's sigma (sample or population std) and whose vectors it uses, by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from flwr_byz import attacks
from flwr_byz.clients.malicious import make_malicious_client
from flwr_byz.schema import ClientConfig

# k = 3 known vectors, one coordinate: mu = 2; sample std sqrt(8 / 2) = 2, population sqrt(8 / 3)
KNOWN = torch.tensor([[0.0], [2.0], [4.0]], dtype=torch.float64)


def test_sample_sigma_is_the_default() -> None:
    assert attacks.alie(KNOWN, 10, 2, z=1.0).item() == pytest.approx(0.0)
    assert attacks.alie(KNOWN, 10, 2, z=1.0, sigma="sample").item() == pytest.approx(0.0)


def test_population_sigma() -> None:
    got = attacks.alie(KNOWN, 10, 2, z=1.5, sigma="population").item()
    assert got == pytest.approx(2.0 - 1.5 * math.sqrt(8 / 3))
    # one known vector: population std 0 as well, the attack is the vector itself
    assert attacks.alie(KNOWN[:1], 10, 2, z=1.0, sigma="population").item() == 0.0


def test_unknown_sigma_is_an_error() -> None:
    with pytest.raises(ValueError, match="sigma must be one of"):
        attacks.alie(KNOWN, 10, 2, z=1.0, sigma="biased")


def _client(options: str):  # the malicious client
    run = {"attack": "alie", "attack-options": options, "num-byzantine": 2}
    return make_malicious_client(
        ClientConfig.from_configs(run, {"partition-id": 0, "num-partitions": 10})
    )


def test_client_options_whose_vectors_and_sigma() -> None:
    assert _client("{}").needs == "omniscient"  # the honest workers' vectors (default)
    assert _client('{"omniscient": false}').needs == "colluders"  # the colluders' own
    client = _client('{"sigma": "population", "z": 1.0, "omniscient": false}')
    assert client.options["sigma"] == "population"
    with pytest.raises(ValueError, match="does not take option"):
        _client('{"sigmas": "population"}')


def test_client_submits_with_its_sigma() -> None:
    inputs = SimpleNamespace(known=KNOWN, n=10, f=2)
    population = _client('{"sigma": "population", "z": 1.0}').submit(inputs)  # type: ignore[arg-type]
    sample = _client('{"z": 1.0}').submit(inputs)  # type: ignore[arg-type]
    assert population.item() == pytest.approx(2.0 - math.sqrt(8 / 3))
    assert sample.item() == pytest.approx(0.0)
