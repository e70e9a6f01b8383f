"""A crude attack destroys FedAvg's accuracy but not Krum's or Median's (short MNIST-5k run,
n = 11, f = 3, MLP, gradient mode, through InProcessGrid + flwr_byz.clients.app)."""

from __future__ import annotations

import pytest
from client_helpers import initial_arrays, make_grid

from flwr_byz import data, models
from flwr_byz.strategy import Average, Krum, Median

N, F, ROUNDS = 11, 3, 30


def _final_accuracy(strategy_cls, attack: str) -> tuple[float, float]:
    grid = make_grid(N, {"attack": attack, "num-byzantine": F, "attack-options": '{"std": 200}'})
    strategy = strategy_cls(
        num_byzantine=F,
        update_mode="gradient",
        learning_rate=0.5,
        fraction_evaluate=0.0,
        device="cpu",
    )
    result = strategy.start(grid, initial_arrays(0), num_rounds=ROUNDS)
    model = models.build("mlp")
    model.load_state_dict(result.arrays.to_torch_state_dict())
    split = data.load_dataset("mnist5k", seed=3)
    loss, accuracy = models.evaluate(model, split.test_x, split.test_y)
    return loss, accuracy


@pytest.fixture(scope="module")
def outcomes() -> dict[str, tuple[float, float]]:
    return {cls.__name__: _final_accuracy(cls, "gaussian") for cls in (Average, Krum, Median)}


def test_gaussian_attack_breaks_average(outcomes) -> None:
    average_loss, average_accuracy = outcomes["Average"]
    for robust in ("Krum", "Median"):
        loss, accuracy = outcomes[robust]
        assert accuracy > 0.75, (robust, accuracy)
        assert average_accuracy < accuracy - 0.1
        assert average_loss > 100 * loss
