"""Each malicious client's vector against its attack's definition (ALGORITHMS.md), through the
ClientApp, an in-process grid, AdversaryGrid and a real coordinator."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import pytest
import torch
from client_helpers import (
    make_grid,
    reference_gradient,
    reply_vector,
    run_round,
    train_messages,
)
from flwr.app import ArrayRecord

from flwr_byz import attacks, gars
from flwr_byz.clients import AdversaryGrid, discover_roles, start_coordinator
from flwr_byz.clients.malicious import MALICIOUS_CLIENTS, backdoor_accuracy

N, F = 9, 3
BYZANTINE = (1, 4, 6)  # partition ids


def attack_round(
    arrays: ArrayRecord,
    attack: str,
    options: dict | None = None,
    needs: str = "omniscient",
    rnd: int = 2,
    **config,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """One round with F attackers among N; returns (honest, byzantine) vectors by partition id."""
    run_config = {
        "attack": attack,
        "attack-options": json.dumps(options or {}),
        "num-byzantine": F,
        "byzantine-partitions": ",".join(map(str, BYZANTINE)),
        **config,
    }
    with start_coordinator() as coordinator:
        grid = make_grid(N, run_config)
        roles = discover_roles(grid)
        byzantine_nodes = [node for node, (_, is_byz) in roles.items() if is_byz]
        wrapped = AdversaryGrid(grid, byzantine_nodes, needs, coordinator.address)
        replies = run_round(wrapped, arrays, rnd)
    honest, byzantine = {}, {}
    for node, reply in replies.items():
        partition, is_byz = roles[node]
        (byzantine if is_byz else honest)[partition] = reply_vector(reply)
    assert sorted(byzantine) == list(BYZANTINE) and len(honest) == N - F
    return honest, byzantine


def stacked(vectors: dict[int, torch.Tensor]) -> torch.Tensor:
    return torch.stack([vectors[pid] for pid in sorted(vectors)])


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    assert float((actual - expected).abs().max()) <= rtol * float(expected.abs().max()) + 1e-8


def test_every_attack_has_a_client() -> None:
    assert set(MALICIOUS_CLIENTS) == set(attacks.NAMES + attacks.BEYOND_NAMES)


def test_roles_follow_byzantine_partitions() -> None:
    grid = make_grid(5, {"attack": "gaussian", "num-byzantine": 2})
    assert discover_roles(grid) == {
        1: (0, True),
        2: (1, True),
        3: (2, False),
        4: (3, False),
        5: (4, False),
    }
    assert all(not b for _, b in discover_roles(make_grid(3, {"num-byzantine": 2})).values())


@pytest.mark.parametrize("z", [None, 1.5])
def test_alie_omniscient_uses_all_honest_vectors(arrays0, z) -> None:
    options = {} if z is None else {"z": z}
    honest, byzantine = attack_round(arrays0, "alie", options)
    known = stacked(honest)
    if z is None:  # z_max with s = floor(n/2 + 1) - f (ALIE paper, Alg. 3)
        s = math.floor(N / 2 + 1) - F
        z = NormalDist().inv_cdf((N - F - s) / (N - F))
    expected = known.mean(dim=0) - z * known.std(dim=0, correction=1)
    for vector in byzantine.values():
        close(vector, expected)


def test_alie_non_omniscient_uses_only_colluders_own_vectors(arrays0) -> None:
    honest, byzantine = attack_round(arrays0, "alie", {"omniscient": False, "z": 1.5}, "colluders")
    own = torch.stack([reference_gradient(arrays0, 3, pid, 2) for pid in BYZANTINE])
    expected = own.mean(dim=0) - 1.5 * own.std(dim=0, correction=1)
    for vector in byzantine.values():
        close(vector, expected, rtol=1e-4)
    # it differs from what the omniscient variant would send
    known = stacked(honest)
    assert not torch.allclose(expected, known.mean(dim=0) - 1.5 * known.std(dim=0), atol=1e-6)


def test_ipm_and_omniscient_negative(arrays0) -> None:
    honest, byzantine = attack_round(arrays0, "ipm", {"eps": 0.3})
    for vector in byzantine.values():
        close(vector, -0.3 * stacked(honest).mean(dim=0))
    honest, byzantine = attack_round(arrays0, "omniscient_negative", {"scale": 2.0})
    for vector in byzantine.values():
        close(vector, -2.0 * stacked(honest).sum(dim=0))


def test_lp_coordinate_is_the_largest_gamma_krum_still_selects(arrays0) -> None:
    honest, byzantine = attack_round(arrays0, "lp_coordinate", {}, rule="krum")
    known = stacked(honest)
    mean = known.mean(dim=0)
    vectors = list(byzantine.values())
    assert all(torch.equal(v, vectors[0]) for v in vectors)  # all colluders send the same
    offset = vectors[0] - mean
    gamma = float(offset.mean())
    assert gamma > 0
    close(offset, torch.full_like(offset, gamma), rtol=1e-3)  # g_bar + gamma * ones (l_inf)

    def krum_selects_attacker(scale: float) -> bool:
        attack = (mean + scale * gamma).unsqueeze(0).expand(F, -1)
        chosen = gars.krum(torch.cat([known, attack]), F)
        return bool(torch.allclose(chosen, attack[0]))

    assert krum_selects_attacker(0.999)
    assert not krum_selects_attacker(1.01)


def test_gaussian_is_seeded_noise(arrays0) -> None:
    _, first = attack_round(arrays0, "gaussian", {"std": 50.0}, needs="none")
    _, again = attack_round(arrays0, "gaussian", {"std": 50.0}, needs="none")
    for pid, vector in first.items():
        assert torch.equal(vector, again[pid])  # deterministic per (seed, partition, round)
        assert abs(float(vector.mean())) < 1.0
        assert abs(float(vector.std()) - 50.0) < 1.0
    assert not torch.equal(first[1], first[4])


def test_sign_flip_and_label_flip(arrays0) -> None:
    _, byzantine = attack_round(arrays0, "sign_flip", needs="none")
    for pid, vector in byzantine.items():
        close(vector, -reference_gradient(arrays0, 3, pid, 2), rtol=2e-4)
    _, byzantine = attack_round(arrays0, "label_flip", needs="none")
    for pid, vector in byzantine.items():
        close(vector, reference_gradient(arrays0, 3, pid, 2, flip_labels=True), rtol=2e-4)


def test_bit_flip_sender_corrupts_one_value_per_coordinate(arrays0) -> None:
    _, byzantine = attack_round(arrays0, "bit_flip", {"coordinates": 40}, needs="none")
    mask = (1 << 21) | (1 << 29) | (1 << 30) | (1 << 31)  # bits 22, 30, 31, 32
    hits = torch.zeros(byzantine[1].numel(), dtype=torch.int64)
    for rank, pid in enumerate(BYZANTINE):
        honest = reference_gradient(arrays0, 3, pid, 2).float()
        sent = byzantine[pid].float()
        changed = torch.nonzero(sent.view(torch.int32) != honest.view(torch.int32)).flatten()
        # near-equal honest values may differ in the last bits: look at the flipped pattern
        flipped = (sent.view(torch.int32) ^ honest.view(torch.int32)) & mask
        attacked = torch.nonzero(flipped == torch.tensor(mask, dtype=torch.int64).to(torch.int32))
        attacked = attacked.flatten()
        assert torch.equal(attacked, torch.arange(rank, 40, F))
        assert set(changed.tolist()) >= set(attacked.tolist())
        hits[attacked] += 1
    assert torch.equal(hits[:40], torch.ones(40, dtype=torch.int64))  # one value per coordinate
    assert int(hits[40:].sum()) == 0


def test_gambler_sender_scales_one_shard(arrays0) -> None:
    options = {"shards": 4, "shard": 2, "probability": 1.0, "scale": -3.0}
    _, byzantine = attack_round(arrays0, "gambler", options, needs="none")
    for pid, vector in byzantine.items():
        honest = reference_gradient(arrays0, 3, pid, 2)
        start, stop = attacks.shard_bounds(honest.numel(), 4)[2]
        expected = honest.clone()
        expected[start:stop] *= -3.0
        close(vector, expected, rtol=2e-4)


def test_alie_backdoor_stays_within_the_clip_box(arrays0) -> None:
    options = {"z": 0.5, "alpha": 0.5, "steps": 3, "samples": 200}
    _, byzantine = attack_round(arrays0, "alie_backdoor", options, needs="colluders")
    own = torch.stack([reference_gradient(arrays0, 3, pid, 2) for pid in BYZANTINE])
    mu, sigma = own.mean(dim=0), own.std(dim=0)
    tolerance = 1e-4 * float(sigma.max())
    for vector in byzantine.values():
        assert bool((vector >= mu - 0.5 * sigma - tolerance).all())
        assert bool((vector <= mu + 0.5 * sigma + tolerance).all())
        assert float((vector - mu).abs().max()) > 0.1 * float(sigma.max())  # it moved


def test_backdoor_accuracy_counts_triggered_non_target_images() -> None:
    images = torch.zeros(6, 1, 28, 28)
    labels = torch.tensor([0, 1, 2, 3, 0, 5])

    def trigger_detector(x: torch.Tensor) -> torch.Tensor:  # predicts 0 iff the patch is bright
        patch = x[:, 0, :5, :5].mean(dim=(1, 2))
        scores = torch.zeros(x.shape[0], 10)
        scores[:, 0] = patch
        scores[:, 1] = 0.5
        return scores

    assert backdoor_accuracy(trigger_detector, images, labels, trigger_value=1.0) == 1.0
    assert backdoor_accuracy(trigger_detector, images, labels, trigger_value=0.0) == 0.0
    with pytest.raises(ValueError, match="target"):
        backdoor_accuracy(trigger_detector, images, torch.zeros(6, dtype=torch.int64))


def test_unknown_attack_option_is_refused(arrays0) -> None:
    grid = make_grid(3, {"attack": "ipm", "attack-options": '{"epsilon": 1}', "num-byzantine": 1})
    (reply,) = grid.send_and_receive(train_messages([1], arrays0, 1))
    assert reply.has_error() and "epsilon" in reply.error.reason


def test_omniscient_attack_without_coordinator_is_a_clear_error(arrays0) -> None:
    """The attacker (partition 0) fails naming the missing key; an honest node still trains."""
    grid = make_grid(3, {"attack": "ipm", "num-byzantine": 1})
    attacker, honest = grid.send_and_receive(train_messages([1, 2], arrays0, 1))
    assert attacker.has_error() and "coordinator-address" in attacker.error.reason
    assert not honest.has_error() and "arrays" in honest.content.array_records


def test_alie_backdoor_in_weights_mode_stays_within_the_clip_box(arrays0) -> None:
    config = {"update-mode": "weights", "partitioning": "iid", "local-lr": 0.1}
    options = {"z": 0.5, "alpha": 0.5, "steps": 3, "samples": 200}
    _, byzantine = attack_round(arrays0, "alie_backdoor", options, "colluders", **config)
    honest_run = run_round(make_grid(N, config), arrays0, 2)  # what the colluders would send
    own = torch.stack([reply_vector(honest_run[pid + 1]) for pid in BYZANTINE])
    mu, sigma = own.mean(dim=0), own.std(dim=0)
    tolerance = 1e-4 * float(sigma.max())
    for vector in byzantine.values():
        assert bool((vector >= mu - 0.5 * sigma - tolerance).all())
        assert bool((vector <= mu + 0.5 * sigma + tolerance).all())
        assert float((vector - mu).abs().max()) > 0.1 * float(sigma.max())
