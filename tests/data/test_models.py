"""The papers' models: sizes, outputs, seeded initialisation and flat parameter views."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flwr_byz import models
from flwr_byz.layout import flatten_state, unflatten_state


def _reference_count(name: str) -> int:
    if name == "mlp":
        return 784 * 100 + 100 + 100 * 10 + 10
    if name == "mlp128":
        return 784 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10
    conv = [(3, 64), (64, 64), (64, 128), (128, 128)]
    total = sum(cin * cout * 9 + cout + 2 * cout for cin, cout in conv)  # + batch-norm affine
    return total + (128 * 8 * 8) * 128 + 128 + 128 * 10 + 10


@pytest.mark.parametrize("name", models.NAMES)
def test_parameter_counts_and_log_softmax_outputs(name: str) -> None:
    model = models.build(name, seed=0)
    assert models.num_parameters(model) == _reference_count(name)
    shape = models.DEFAULT_IN_SHAPE[name]
    model.eval()
    log_probs = model(torch.randn(3, *shape))
    assert log_probs.shape == (3, 10)
    np.testing.assert_allclose(log_probs.exp().sum(dim=1).detach().numpy(), 1.0, rtol=1e-5)


def test_mlp_is_79510_and_variants() -> None:
    assert models.num_parameters(models.build("mlp")) == 79_510
    relu_out = models.build("mlp", output_relu=True, seed=0)
    assert any(isinstance(m, torch.nn.ReLU) for m in list(relu_out)[-2:])
    assert models.build("mlp", num_classes=3)(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    cnn = models.build("cifar_cnn", in_shape=(1, 28, 28))
    assert cnn(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        models.build("resnet")
    with pytest.raises(ValueError, match="output_relu"):
        models.build("mlp128", output_relu=True)


def test_seeded_build_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = flatten_state(models.build("mlp", seed=4).state_dict())
    assert torch.equal(torch.rand(1), expected_next)
    assert torch.equal(first, flatten_state(models.build("mlp", seed=4).state_dict()))
    assert not torch.equal(first, flatten_state(models.build("mlp", seed=5).state_dict()))


def test_loss_penalty_clip_and_evaluate() -> None:
    log_probs = torch.log_softmax(torch.randn(5, 10), dim=1)
    labels = torch.randint(10, (5,))
    expected = -float(log_probs[torch.arange(5), labels].double().mean())
    assert float(models.loss_fn(log_probs, labels)) == pytest.approx(expected, rel=1e-6)
    model = models.build("mlp", seed=1)
    squares = sum(float((p.detach().double() ** 2).sum()) for p in model.parameters())
    assert float(models.l2_penalty(model, 1e-4).detach()) == pytest.approx(
        0.5e-4 * squares, rel=1e-5
    )
    vector = torch.tensor([3.0, 4.0])
    np.testing.assert_allclose(models.clip_vector(vector, 2.0).numpy(), [1.2, 1.6], rtol=1e-6)
    assert torch.equal(models.clip_vector(vector, 10.0), vector)
    assert torch.equal(models.clip_vector(vector, None), vector)
    assert models.PAPER_SETTINGS["mlp"].weight_decay == 1e-4
    assert models.PAPER_SETTINGS["cifar_cnn"].clip_norm == 5.0
    x, y = torch.randn(30, 1, 28, 28), torch.randint(10, (30,))
    loss, accuracy = models.evaluate(model, x, y, batch_size=7)
    with torch.no_grad():
        out = model(x)
    assert loss == pytest.approx(float(models.loss_fn(out, y)), rel=1e-5)
    assert accuracy == pytest.approx(float((out.argmax(1) == y).double().mean()))
    assert 0.0 <= accuracy <= 1.0 and math.isfinite(loss)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_models_on_cuda() -> None:
    model = models.build("mlp", seed=0).cuda()
    vector = flatten_state(model.state_dict())
    assert vector.device.type == "cuda"
    model.load_state_dict(unflatten_state(vector * 2, model.state_dict()))
    loss, _ = models.evaluate(model, torch.randn(4, 1, 28, 28), torch.randint(10, (4,)))
    assert math.isfinite(loss)
