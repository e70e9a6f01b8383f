"""The honest client's computation: one mini-batch gradient, worker momentum, or local SGD.

Gradient mode follows the papers (one mini-batch gradient per round, batch 83; the Momentum
paper's worker momentum ``G_t = mu G_{t-1} + g_t``, eq. 6, sent instead of ``g_t``). Weights mode
follows FedAvg (local epochs of SGD from the received model, the weights are returned).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from torch import Tensor, nn

from flwr_byz._values import as_float, as_int
from flwr_byz.layout import is_aggregated
from flwr_byz.models import loss_fn
from flwr_byz.schema import ClientConfig

from .records import flatten
from .runtime import client_device, dataset_for, model_with_state, shard_indices, state_slots

LabelMap = Callable[[Tensor], Tensor]
MOMENTUM_KEY = "worker-momentum"
MOMENTUM_META_KEY = "worker-momentum-meta"


@dataclass(frozen=True)
class LocalResult:
    """A client's vector (flat, in the received record's key order), loss and sample count."""

    vector: Tensor
    loss: float
    num_examples: int


def flat_gradient(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    weight_decay: float = 0.0,
    clip_norm: float = 0.0,
) -> tuple[Tensor, float]:
    """Flat gradient of the batch loss in the layout of ``flwr_byz.layout`` (the floating entries
    of the ``state_dict``; float buffers get 0), and the loss.

    ``weight_decay`` adds the l2-regularisation term ``weight_decay * theta`` to each parameter's
    gradient; ``clip_norm > 0`` rescales the whole vector to l2 norm at most ``clip_norm``."""
    if not all(module.training for module in model.modules()):
        model.train()  # a no-op when already training, but ~15 us per call on a small MLP
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model(images), labels)
    loss.backward()
    parts = []
    _, values, params = state_slots(model)  # the state_dict's tensors, cached on the model
    for value, param in zip(values, params, strict=True):
        if not is_aggregated(value.dtype):  # integer buffers are not in the vector
            continue
        if param is None or param.grad is None:
            parts.append(torch.zeros(value.numel(), dtype=torch.float32, device=value.device))
            continue
        grad = param.grad.detach()
        if weight_decay:
            grad = grad + weight_decay * param.detach()
        parts.append(grad.reshape(-1).to(torch.float32))
    vector = torch.cat(parts)
    if clip_norm > 0:
        norm = torch.linalg.vector_norm(vector)
        vector = vector * torch.clamp(clip_norm / (norm + 1e-12), max=1.0)
    return vector, float(loss.detach())


def _batch_seed(*parts: object) -> int:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def minibatch(cfg: ClientConfig, rnd: int) -> tuple[Tensor, Tensor]:
    """This client's deterministic mini-batch for ``rnd`` (``flwr_byz.data.sample_batch``)."""
    from flwr_byz import data

    split, indices = dataset_for(cfg), shard_indices(cfg)
    size = min(cfg.batch_size, indices.numel())
    if cfg.partitioning == "shards":  # each worker cycles through its own disjoint shard
        picks = data.cycle_batch(indices, size, rnd)
    else:
        picks = data.sample_batch(indices, size, cfg.seed, cfg.partition_id, rnd)
    return split.train_x[picks], split.train_y[picks]


def honest_gradient(
    cfg: ClientConfig, state: dict[str, Tensor], rnd: int, label_map: LabelMap | None = None
) -> LocalResult:
    """One mini-batch gradient at the received model (``label_map``: relabelling, label flip)."""
    device = client_device(cfg.client_device)
    model = model_with_state(cfg, state, device)
    images, labels = minibatch(cfg, rnd)
    if label_map is not None:
        labels = label_map(labels)
    vector, loss = flat_gradient(
        model, images.to(device), labels.to(device), cfg.weight_decay, cfg.clip_grad
    )
    return LocalResult(vector, loss, int(labels.numel()))


def local_sgd(
    cfg: ClientConfig, state: dict[str, Tensor], rnd: int, label_map: LabelMap | None = None
) -> LocalResult:
    """``local-epochs`` of SGD (``local-lr``) over the shard from the received model; weights out.

    Batches follow a permutation seeded by (seed, partition, round, epoch)."""
    device = client_device(cfg.client_device)
    model = model_with_state(cfg, state, device)
    split, indices = dataset_for(cfg), shard_indices(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.local_lr, weight_decay=cfg.weight_decay)
    losses = []
    model.train()
    for epoch in range(cfg.local_epochs):
        generator = torch.Generator().manual_seed(
            _batch_seed(cfg.seed, cfg.partition_id, rnd, epoch)
        )
        order = indices[torch.randperm(indices.numel(), generator=generator)]
        for batch in torch.split(order, cfg.batch_size):
            images, labels = split.train_x[batch].to(device), split.train_y[batch]
            if label_map is not None:
                labels = label_map(labels)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(images), labels.to(device))
            loss.backward()
            if cfg.clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            losses.append(float(loss.detach()))
    vector = flatten(model.state_dict())
    return LocalResult(vector, float(np.mean(losses)) if losses else 0.0, int(indices.numel()))


class WorkerMomentum:
    """The Momentum paper's worker momentum kept in ``context.state`` (eq. 6, ``G_{-1} = 0``).

    ``update`` is idempotent within a round (a Byzantine node may compute its honest vector in
    the collect phase and again for its real reply). With ``state_dir`` the momentum is also saved
    per partition id and round (atomically, the last two rounds kept); round ``t`` starts from the
    state saved for ``t - 1`` when ``context.state`` does not hold it, so a run resumed from any
    checkpoint (even one older than the clients' last save) continues with the right ``G_{t-1}``.
    """

    def __init__(self, context: Context, mu: float, partition_id: int, state_dir: str = "") -> None:
        self.context, self.mu, self.partition_id = context, float(mu), int(partition_id)
        self.path = Path(state_dir) / f"momentum-partition-{partition_id}" if state_dir else None

    def _stored(self) -> tuple[int, Tensor, float] | None:
        state = self.context.state
        if MOMENTUM_KEY not in state.array_records:
            return None
        meta = state.config_records[MOMENTUM_META_KEY]
        vector = torch.from_numpy(state.array_records[MOMENTUM_KEY]["G"].numpy().copy())
        return as_int(meta["round"], "round"), vector, as_float(meta["loss"], "loss")

    def _round_file(self, rnd: int) -> Path:
        assert self.path is not None
        return self.path.parent / f"{self.path.name}-round-{rnd}.npz"

    def _restore(self, rnd: int) -> tuple[int, Tensor, float] | None:
        """The saved ``G_{rnd-1}`` (files are tagged by round, so a redone round finds it)."""
        if self.path is None:
            return None
        data_file = self._round_file(rnd - 1)
        if not data_file.exists():
            return None
        try:
            with np.load(data_file, allow_pickle=False) as data:
                vector, loss = torch.from_numpy(data["G"].copy()), float(data["loss"])
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{data_file}: damaged worker-momentum state ({err})") from err
        return rnd - 1, vector, loss

    def _save(self, rnd: int, vector: Tensor, loss: float) -> None:
        state = self.context.state
        state[MOMENTUM_KEY] = ArrayRecord({"G": vector.detach().cpu().clone()})
        state[MOMENTUM_META_KEY] = ConfigRecord({"round": rnd, "loss": loss})
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        target = self._round_file(rnd)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, G=vector.detach().cpu().numpy(), loss=np.float64(loss))
            os.replace(tmp, target)  # complete or absent, never torn
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # keep rounds rnd and rnd - 1: the server may resume from either checkpoint
        prefix = f"{self.path.name}-round-"
        for old in self.path.parent.glob(f"{prefix}*.npz"):
            tag = old.name[len(prefix) : -len(".npz")]
            if tag.isdigit() and int(tag) < rnd - 1:
                old.unlink(missing_ok=True)

    def current(self, rnd: int) -> LocalResult | None:
        """The momentum already computed for ``rnd``, if any."""
        stored = self._stored()
        if stored is not None and stored[0] == rnd:
            return LocalResult(stored[1], stored[2], 0)
        return None

    def update(self, rnd: int, gradient: Tensor, loss: float) -> Tensor:
        """``G_t = mu G_{t-1} + g_t`` (``G_{t-1}`` = 0 when none stored); stores and returns it."""
        stored = self._stored()
        if stored is None or stored[0] not in (rnd, rnd - 1):
            stored = self._restore(rnd)
        if stored is not None and stored[0] == rnd:
            return stored[1].to(gradient.device)
        if stored is not None and stored[0] == rnd - 1:
            momentum = self.mu * stored[1].to(gradient.device) + gradient
        else:
            momentum = gradient.clone()
        self._save(rnd, momentum, loss)
        return momentum


def honest_update(
    cfg: ClientConfig,
    context: Context,
    state: dict[str, Tensor],
    rnd: int,
    label_map: LabelMap | None = None,
) -> LocalResult:
    """What an honest client sends in ``rnd``: gradient, worker momentum, or trained weights."""
    if cfg.update_mode == "weights":
        return local_sgd(cfg, state, rnd, label_map)
    if not cfg.worker_momentum:
        return honest_gradient(cfg, state, rnd, label_map)
    momentum = WorkerMomentum(context, cfg.momentum, cfg.partition_id, cfg.client_state_dir)
    done = momentum.current(rnd)
    if done is not None:
        return LocalResult(done.vector, done.loss, min(cfg.batch_size, shard_indices(cfg).numel()))
    result = honest_gradient(cfg, state, rnd, label_map)
    return LocalResult(
        momentum.update(rnd, result.vector, result.loss), result.loss, result.num_examples
    )


@torch.no_grad()
def evaluate_model(model: nn.Module, images: Tensor, labels: Tensor) -> tuple[float, float]:
    """Mean NLL loss and accuracy of ``model`` on ``(images, labels)``."""
    model.eval()
    device = next(model.parameters()).device
    log_probs = model(images.to(device))
    labels = labels.to(device)
    loss = float(loss_fn(log_probs, labels))
    accuracy = float((log_probs.argmax(dim=1) == labels).to(torch.float64).mean())
    return loss, accuracy
