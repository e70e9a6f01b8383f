"""The papers' models, their training settings, and flat-vector views of their parameters.

- ``mlp``: 784-100-10 with ReLU (Bulyan paper section 5.1, ALIE paper, Momentum paper
  section 4.1), 79,510 parameters. The Momentum paper writes ``L(100)-R-L(10)-R-S``, a ReLU
  after the output layer too; ``build("mlp", output_relu=True)`` gives that variant.
- ``mlp128``: 784-128-128-10 with ReLU (Phocas paper, appendix Table 2), 118,282 parameters.
- ``cifar_cnn``: the Momentum paper's CIFAR-10 model (taken from Xie et al.):
  ``C(64)-R-B-C(64)-R-B-M-D-C(128)-R-B-C(128)-R-B-M-D-L(128)-R-D-L(10)-S`` with 3x3 convolutions
  (padding 1), batch norm, 2x2 max-pooling, dropout 0.25.

All output log-probabilities (log-softmax); ``loss_fn`` is the negative log likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from torch import Tensor, nn

NAMES = ("mlp", "mlp128", "cifar_cnn")
DEFAULT_IN_SHAPE = {"mlp": (1, 28, 28), "mlp128": (1, 28, 28), "cifar_cnn": (3, 32, 32)}
# Models beyond the seed papers, kept out of NAMES (tests enumerate it); ``build`` accepts them.
# ``cnn_mnist``: ByzFL's MNIST CNN (the classic PyTorch MNIST LeNet shape), conv(1,20,5)-R-M2-
# conv(20,50,5)-R-M2-L(500)-R-L(10)-S, 5x5 convolutions without padding, 2x2 max-pooling;
# 431,080 parameters on 28x28 inputs.
BEYOND_NAMES = ("cnn_mnist",)
DEFAULT_IN_SHAPE["cnn_mnist"] = (1, 28, 28)


@dataclass(frozen=True)
class TrainingSettings:
    """What a paper sets for a model: l2 regularisation and gradient-norm clipping (None: unset)."""

    weight_decay: float | None
    clip_norm: float | None
    source: str


# Momentum paper, section 4.1: "1e-4 and 1e-2 l2-regularization for the MNIST and CIFAR-10
# models ... clip gradients, ensuring their norms remain below 2 and 5". The Bulyan paper also
# uses l2 1e-4 on its MNIST model. The Phocas paper states neither for its MLP.
PAPER_SETTINGS: dict[str, TrainingSettings] = {
    "mlp": TrainingSettings(1e-4, 2.0, "Momentum paper 4.1 (l2 1e-4 also in Bulyan paper 5.1)"),
    "mlp128": TrainingSettings(None, None, "Phocas paper: not stated"),
    "cifar_cnn": TrainingSettings(1e-2, 5.0, "Momentum paper 4.1"),
}


INITS = ("default", "xavier")


def _mlp(in_features: int, hidden: Sequence[int], num_classes: int, output_relu: bool) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, num_classes))
    if output_relu:
        layers.append(nn.ReLU())
    layers.append(nn.LogSoftmax(dim=1))
    return nn.Sequential(*layers)


def _conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    """C(out)-R-B: 3x3 convolution (padding 1), ReLU, batch norm (the paper's order)."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.BatchNorm2d(out_channels),
    ]


def _cifar_cnn(in_shape: Sequence[int], num_classes: int) -> nn.Module:
    channels, height, width = in_shape
    if height % 4 or width % 4:
        raise ValueError(f"cifar_cnn needs height and width divisible by 4, got {tuple(in_shape)}")
    flat = 128 * (height // 4) * (width // 4)
    return nn.Sequential(
        *_conv_block(channels, 64),
        *_conv_block(64, 64),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        *_conv_block(64, 128),
        *_conv_block(128, 128),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(flat, 128),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(128, num_classes),
        nn.LogSoftmax(dim=1),
    )


def _cnn_mnist(in_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Two 5x5 convolutions (20, 50 channels) with 2x2 max-pooling, then 500 hidden units."""
    channels, height, width = in_shape
    h, w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
    if h < 1 or w < 1:
        raise ValueError(f"cnn_mnist needs inputs of at least 16x16, got {tuple(in_shape)}")
    return nn.Sequential(
        nn.Conv2d(channels, 20, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * h * w, 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
        nn.LogSoftmax(dim=1),
    )


def build(
    name: str,
    num_classes: int = 10,
    in_shape: Sequence[int] | None = None,
    seed: int | None = None,
    output_relu: bool = False,
    init: str = "default",
) -> nn.Module:
    """Build a model by name (``NAMES``) for inputs ``(N, *in_shape)``; PyTorch's default init.

    With ``seed`` the initial weights depend only on it (the global RNG is left as it was).
    ``output_relu`` (``mlp`` only) adds the Momentum paper's ReLU before the log-softmax.
    ``init="xavier"`` (``mlp``, ``mlp128``) then redraws the first layer's weight with
    ``xavier_uniform_`` (bias as PyTorch's default), as the ALIE authors' ``MnistNet``.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "xavier" and name not in ("mlp", "mlp128"):
        raise ValueError(f"init='xavier' applies to the MLPs only, got model {name!r}")
    if name not in NAMES + BEYOND_NAMES:
        known = ", ".join(NAMES + BEYOND_NAMES)
        raise ValueError(f"unknown model {name!r}; known models: {known}")
    shape = tuple(DEFAULT_IN_SHAPE[name] if in_shape is None else in_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"in_shape must be (channels, height, width), got {shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if output_relu and name != "mlp":
        raise ValueError("output_relu applies to the 'mlp' model only")

    def make() -> nn.Module:
        model = make_default()
        if init == "xavier":
            first = next(m for m in model.modules() if isinstance(m, nn.Linear))
            nn.init.xavier_uniform_(first.weight)
        return model

    def make_default() -> nn.Module:
        if name == "mlp":
            return _mlp(math.prod(shape), (100,), num_classes, output_relu)
        if name == "mlp128":
            return _mlp(math.prod(shape), (128, 128), num_classes, False)
        if name == "cnn_mnist":
            return _cnn_mnist(shape, num_classes)
        return _cifar_cnn(shape, num_classes)

    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return make()


def loss_fn(log_probs: Tensor, labels: Tensor) -> Tensor:
    """Negative log likelihood of ``labels`` under the model's log-softmax outputs (mean)."""
    return functional.nll_loss(log_probs, labels)


def num_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (the dimension d of the vectors aggregated)."""
    return sum(parameter.numel() for parameter in model.parameters())


def l2_penalty(model: nn.Module, weight_decay: float) -> Tensor:
    """``weight_decay / 2 * ||theta||^2``: its gradient ``weight_decay * theta`` is SGD's weight
    decay, the papers' l2 regularisation."""
    total = torch.zeros(())
    for p in model.parameters():
        total = total + (p * p).sum()
    return 0.5 * weight_decay * total


def clip_vector(vector: Tensor, max_norm: float | None) -> Tensor:
    """Rescale ``vector`` so that its Euclidean norm is at most ``max_norm`` (None: unchanged)."""
    if max_norm is None:
        return vector
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    norm = torch.linalg.vector_norm(vector)
    return vector * torch.clamp(max_norm / (norm + 1e-12), max=1.0)


@torch.no_grad()
def evaluate(
    model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000
) -> tuple[float, float]:
    """Mean NLL loss and top-1 accuracy of ``model`` on a data set, in eval mode, by batches."""
    if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise ValueError(
            f"images and labels must be non-empty and agree in length, got "
            f"{images.shape[0]} and {labels.shape[0]}"
        )
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        log_probs = model(x)
        total_loss += float(functional.nll_loss(log_probs, y, reduction="sum"))
        correct += int((log_probs.argmax(dim=1) == y).sum())
    model.train(was_training)
    return total_loss / images.shape[0], correct / images.shape[0]
