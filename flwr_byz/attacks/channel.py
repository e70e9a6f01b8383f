"""Channel faults of the Phocas paper's dimensional Byzantine model (Xie, Koyejo, Gupta 2018).

They act on the received ``(n, d)`` tensor, not on one sender's vector: any value can be corrupted,
with at most a few per coordinate. Both return a corrupted copy; the input is never modified.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

SPREADS = ("round_robin", "random")


def _received_matrix(received: Tensor, attack: str) -> Tensor:
    if not isinstance(received, Tensor):
        raise TypeError(f"{attack}: received must be a torch.Tensor, got {type(received).__name__}")
    if received.dim() != 2 or received.shape[0] < 1:
        raise ValueError(
            f"{attack}: received must be an (n, d) tensor with n >= 1, got {tuple(received.shape)}"
        )
    return received


def _bit_mask(bits: Sequence[int]) -> int:
    """int32 XOR mask for float32 bit positions (1 = least significant, 32 = sign)."""
    if len(bits) == 0:
        raise ValueError("bit_flip: bits must name at least one bit position")
    mask = 0
    for bit in bits:
        if int(bit) != bit or not 1 <= bit <= 32:
            raise ValueError(f"bit_flip: bit positions must be integers in 1..32, got {bit!r}")
        mask |= 1 << (int(bit) - 1)
    return mask - (1 << 32) if mask >= 1 << 31 else mask  # as a signed int32


def _coordinate_indices(coordinates: int | Tensor, d: int, device: torch.device) -> Tensor:
    if isinstance(coordinates, Tensor):
        index = coordinates.to(device=device, dtype=torch.int64).reshape(-1)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= d):
            raise ValueError(f"bit_flip: coordinate indices must lie in [0, {d - 1}]")
        if index.unique().numel() != index.numel():
            raise ValueError("bit_flip: coordinate indices must be distinct")
        return index
    if int(coordinates) != coordinates or coordinates < 0:
        raise ValueError(f"bit_flip: coordinates must be a count >= 0, got {coordinates!r}")
    return torch.arange(min(int(coordinates), d), device=device)


def bit_flip(
    received: Tensor,
    f: int,
    coordinates: int | Tensor = 1000,
    bits: Sequence[int] = (22, 30, 31, 32),
    generator: torch.Generator | None = None,
    spread: str = "round_robin",
    return_mask: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Flip the given float32 bits of one received value per attacked coordinate (Phocas, 5.1.3).

    ``coordinates``: a count (the first ``min(count, d)`` coordinates, default 1000) or an index
    tensor. Which sender's value is hit on each attacked coordinate: ``spread="round_robin"``
    (default, deterministic) takes rows ``0, 1, ..., f-1, 0, ...`` along the attacked coordinates,
    so only the first ``f`` rows are ever corrupted; ``spread="random"`` draws the row uniformly
    among all ``n`` with ``generator`` (the paper's "1 of the 20 values"). ``f = 0`` corrupts
    nothing. Bits are numbered 1 (least significant) to 32 (sign); the default flips 22, 30, 31
    and 32 as in the paper. With ``return_mask`` also returns the ``(n, d)`` bool mask of hits.
    """
    received = _received_matrix(received, "bit_flip")
    if received.dtype != torch.float32:
        raise TypeError(
            f"bit_flip: received must be float32 (bits of IEEE singles), got {received.dtype}"
        )
    if spread not in SPREADS:
        raise ValueError(f"bit_flip: spread must be one of {SPREADS}, got {spread!r}")
    n, d = received.shape
    if int(f) != f or not 0 <= f <= n:
        raise ValueError(f"bit_flip: need 0 <= f <= n, got n={n}, f={f}")
    mask_value = _bit_mask(bits)
    corrupted = received.clone()
    hit = torch.zeros((n, d), dtype=torch.bool, device=received.device)
    columns = _coordinate_indices(coordinates, d, received.device)
    if f > 0 and columns.numel() > 0:
        if spread == "round_robin":
            rows = torch.arange(columns.numel(), device=received.device) % int(f)
        else:
            device = generator.device if generator is not None else received.device
            rows = torch.randint(n, (columns.numel(),), generator=generator, device=device)
            rows = rows.to(received.device)
        as_int = corrupted.view(torch.int32)
        as_int[rows, columns] = torch.bitwise_xor(as_int[rows, columns], mask_value)
        hit[rows, columns] = True
    return (corrupted, hit) if return_mask else corrupted


def shard_bounds(d: int, shards: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``shards`` contiguous shards of ``d`` coordinates.

    Sizes differ by at most one (the first ``d % shards`` shards get one more), as with
    ``torch.tensor_split``."""
    if int(shards) != shards or shards < 1:
        raise ValueError(f"gambler: shards must be an integer >= 1, got {shards!r}")
    base, extra = divmod(d, int(shards))
    bounds, start = [], 0
    for index in range(int(shards)):
        stop = start + base + (1 if index < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def gambler(
    received: Tensor,
    shards: int,
    probability: float = 0.0005,
    scale: float = -1e20,
    generator: torch.Generator | None = None,
    shard: int | None = None,
    return_mask: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The Phocas paper's gambler (section 5.1.4): a faulty parameter server.

    The ``d`` coordinates are split into ``shards`` contiguous shards (``shard_bounds``); on one
    shard (``shard``, or drawn uniformly with ``generator``) each received value is multiplied by
    ``scale`` independently with ``probability``. Returns a corrupted copy (and the bool hit mask
    with ``return_mask``).
    """
    received = _received_matrix(received, "gambler")
    if not torch.is_floating_point(received):
        raise TypeError(f"gambler: received must be floating point, got {received.dtype}")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"gambler: probability must lie in [0, 1], got {probability}")
    n, d = received.shape
    bounds = shard_bounds(d, shards)
    device = generator.device if generator is not None else received.device
    if shard is None:
        shard = int(torch.randint(int(shards), (1,), generator=generator, device=device))
    elif int(shard) != shard or not 0 <= shard < shards:
        raise ValueError(f"gambler: shard must be in [0, {int(shards) - 1}], got {shard!r}")
    start, stop = bounds[int(shard)]
    draws = torch.rand((n, stop - start), generator=generator, device=device, dtype=torch.float64)
    hit = torch.zeros((n, d), dtype=torch.bool, device=received.device)
    hit[:, start:stop] = (draws < probability).to(received.device)
    corrupted = torch.where(hit, received * scale, received)
    return (corrupted, hit) if return_mask else corrupted
