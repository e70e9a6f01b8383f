"""Channel faults of the Phocas paper's dimensional Byzantine model, applied where the server
receives: ``ChannelFaultGrid`` corrupts the train replies' arrays before the strategy sees them.

Which to use when:
- ``ChannelFaultGrid`` (this module): the paper's model proper. Any received value may be hit
  (bit flip: one value per attacked coordinate, from any sender by default; gambler: a faulty
  parameter-server shard). No node is "Byzantine": run with ``attack = "none"`` on the clients.
- ``attack = "bit_flip"`` / ``"gambler"`` on the clients (``flwr_byz.clients.malicious``): the
designated
  Byzantine senders corrupt their own vectors, so the faults come from known nodes and the
  strategy's influence metrics can attribute them; works on real SuperNodes without touching the
  ServerApp.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from flwr_byz import attacks
from flwr_byz.grid_wrapper import GridWrapper

from .malicious import attack_generator
from .records import flatten, record_to_state, vector_to_record

__all__ = ["FAULTS", "ChannelFaultGrid", "corrupt_received"]

FAULTS = ("bit_flip", "gambler")


def corrupt_received(
    received: torch.Tensor, fault: str, generator: torch.Generator, **options: Any
) -> torch.Tensor:
    """Apply ``flwr_byz.attacks.bit_flip`` or ``gambler`` to the ``(n, d)`` received tensor.

    bit_flip options: ``f`` (the attack's f, default 1; 0 disables it), ``coordinates`` (1000),
    ``bits``, ``spread`` (default "random": the hit value's sender drawn among all n, as in the
    paper; "round_robin" hits rows 0..f-1).
    gambler options: ``shards`` (10), ``probability`` (0.0005), ``scale`` (-1e20), ``shard``."""
    if fault == "bit_flip":
        opts = {"f": 1, "spread": "random", **options}
        flipped = attacks.bit_flip(received, generator=generator, **opts)
        assert isinstance(flipped, torch.Tensor)  # no return_mask
        return flipped
    if fault == "gambler":
        opts = {"shards": 10, **options}
        hit = attacks.gambler(received, generator=generator, **opts)
        assert isinstance(hit, torch.Tensor)  # no return_mask
        return hit
    raise ValueError(f"ChannelFaultGrid: fault must be one of {FAULTS}, got {fault!r}")


class ChannelFaultGrid(GridWrapper):
    """Wraps a Flower ``Grid``; corrupts the ``"arrays"`` of successful train replies.

    Replies are stacked in ascending source-node order into one float32 ``(n, d)`` tensor,
    corrupted by ``corrupt_received`` with a generator seeded by (``seed``, call number), and
    written back with each reply's keys, shapes and dtypes. ``options`` go to the fault.
    """

    def __init__(self, grid: Grid, fault: str = "bit_flip", seed: int = 0, **options: Any) -> None:
        if fault not in FAULTS:
            raise ValueError(f"ChannelFaultGrid: fault must be one of {FAULTS}, got {fault!r}")
        self.grid, self.fault, self.seed, self.options = grid, fault, int(seed), options
        self.calls = 0

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send, receive, then corrupt the train replies' arrays as the faulty channel would."""
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        hit = [
            r
            for r in replies
            if r.metadata.message_type.split(".")[0] == MessageType.TRAIN
            and not r.has_error()
            and "arrays" in r.content.array_records
        ]
        if not hit:
            return replies
        self.calls += 1
        hit.sort(key=lambda reply: reply.metadata.src_node_id)
        states = [record_to_state(r.content.array_records["arrays"]) for r in hit]
        received = torch.stack([flatten(state) for state in states])
        generator = attack_generator(self.seed, "channel", self.fault, self.calls)
        corrupted = corrupt_received(received, self.fault, generator, **self.options)
        for reply, state, row in zip(hit, states, corrupted, strict=True):
            reply.content["arrays"] = vector_to_record(row, state)
        return replies
