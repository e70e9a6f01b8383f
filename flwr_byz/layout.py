"""The one flat-vector layout of a model, for the server, the clients and the mod.

The GAR kernels see one ``(n, d)`` tensor (ALGORITHMS.md: "the dimensions of the model may arrive as
several tensors: aggregation treats them as one flat vector"). The vector is the model's
floating-point arrays in key order (:func:`is_aggregated`); integer and bool buffers (BatchNorm's
``num_batches_tracked``) are not in it and keep the global model's values. :class:`ModelLayout`
packs named numpy arrays (the server's replies); :func:`flatten_state` / :func:`unflatten_state`
pack a torch state dict the same way (the clients), so a client's vector and the server's row of
that client are the same values in the same order. No Flower import.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ArraySpec",
    "ModelLayout",
    "flatten_state",
    "is_aggregated",
    "state_dim",
    "unflatten_state",
]

_BLOCK = 1 << 17  # values per stacking block: it stays in cache for the finiteness sum


@dataclass(frozen=True)
class ArraySpec:
    """One named array of the model and, when aggregated, its slice of the flat vector."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    aggregated: bool
    offset: int
    size: int


def is_aggregated(dtype: np.dtype | torch.dtype) -> bool:
    """Whether arrays of ``dtype`` are part of the flat vector: the floating-point ones."""
    if isinstance(dtype, torch.dtype):
        return dtype.is_floating_point
    return bool(np.issubdtype(dtype, np.floating))


def state_dim(state: Mapping[str, Tensor]) -> int:
    """The flat vector's length d for a torch state dict."""
    return sum(value.numel() for value in state.values() if is_aggregated(value.dtype))


def flatten_state(state: Mapping[str, Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
    """The state's floating tensors in key order as one ``(d,)`` vector of ``dtype``."""
    parts = [v.detach().reshape(-1).to(dtype) for v in state.values() if is_aggregated(v.dtype)]
    if not parts:
        raise ValueError("the model state holds no floating-point tensor to flatten")
    return torch.cat(parts)


def unflatten_state(vector: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``like``'s keys, shapes and dtypes (CPU) with the floating tensors taken from ``vector``
    and the others copied from ``like``."""
    dim = state_dim(like)
    if vector.dim() != 1 or vector.numel() != dim:
        raise ValueError(
            f"vector of shape {tuple(vector.shape)} does not match the model's {dim} values"
        )
    out, start = {}, 0
    for key, value in like.items():
        if not is_aggregated(value.dtype):
            out[key] = value.detach().to("cpu").clone()
            continue
        stop = start + value.numel()
        out[key] = vector[start:stop].detach().to("cpu", value.dtype).reshape(value.shape).clone()
        start = stop
    return out


def _as_ndarray(value: object) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"expected a numpy ndarray, got {type(value).__name__}")
    return value


class ModelLayout:
    """Keys, shapes and dtypes of the global model, and the flat packing of its float arrays."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        specs: list[ArraySpec] = []
        offset = 0
        float64 = False
        for key, value in arrays.items():
            array = _as_ndarray(value)
            aggregated = is_aggregated(array.dtype)
            size = int(array.size) if aggregated else 0
            specs.append(ArraySpec(key, tuple(array.shape), array.dtype, aggregated, offset, size))
            offset += size
            float64 = float64 or (aggregated and array.dtype.itemsize > 4)
        self.specs: tuple[ArraySpec, ...] = tuple(specs)
        self.dim: int = offset
        # float16 models are aggregated in float32; float64 models in float64.
        self.dtype: torch.dtype = torch.float64 if float64 else torch.float32

    @property
    def keys(self) -> list[str]:
        """The model's array names, in order."""
        return [spec.key for spec in self.specs]

    def check(self, arrays: Mapping[str, object]) -> str | None:
        """Why ``arrays`` does not match the model (missing/extra keys, shape, dtype), or None."""
        expected = {spec.key for spec in self.specs}
        got = set(arrays.keys())
        if missing := expected - got:
            return f"missing keys {sorted(missing)}"
        if extra := got - expected:
            return f"unexpected keys {sorted(extra)}"
        for spec in self.specs:
            value = arrays[spec.key]
            if not isinstance(value, np.ndarray):
                return f"array {spec.key!r} is a {type(value).__name__}, not an ndarray"
            if tuple(value.shape) != spec.shape:
                return f"array {spec.key!r} has shape {tuple(value.shape)}, expected {spec.shape}"
            if value.dtype != spec.dtype:
                return f"array {spec.key!r} has dtype {value.dtype}, expected {spec.dtype}"
        return None

    def flatten(
        self, arrays: Mapping[str, np.ndarray], device: torch.device | None = None
    ) -> Tensor:
        """The aggregated arrays of one (checked) model as a ``(d,)`` tensor on ``device``."""
        return self.stack([arrays], device=device)[0]

    @property
    def numpy_dtype(self) -> np.dtype:
        """numpy twin of :attr:`dtype`."""
        return np.dtype(np.float64 if self.dtype == torch.float64 else np.float32)

    def stack(
        self,
        models: Sequence[Mapping[str, np.ndarray]],
        device: torch.device | None = None,
        buffer: np.ndarray | None = None,
        minus: np.ndarray | None = None,
        finite: np.ndarray | None = None,
    ) -> Tensor:
        """The ``(n, d)`` tensor of ``n`` (checked) models, one row each, on ``device``.

        Filled on the CPU by one numpy copy per array (no loop over coordinates), then moved once.
        ``buffer``: a reusable ``(>= n, d)`` array of :attr:`numpy_dtype` to fill (saves the page
        faults of a fresh allocation every round); on the CPU the result shares its memory.
        ``minus``: a flat ``(d,)`` :attr:`numpy_dtype` vector subtracted from every row while
        copying (one pass instead of a copy and a subtraction; the same IEEE values: each array is
        cast to :attr:`numpy_dtype`, then the one rounded subtraction).
        ``finite``: a bool ``(n,)`` array set to whether each row is all finite, checked block by
        block while the block is still in cache (no second pass over the rows): a block's sum is
        finite only if all its values are (NaN and inf propagate); a row with a non-finite block
        sum (a non-finite value, or an overflowing sum) gets the exact element-wise check.
        """
        shape = (len(models), self.dim)
        if buffer is None:
            out = np.empty(shape, dtype=self.numpy_dtype)
        elif buffer.dtype != self.numpy_dtype or buffer.ndim != 2 or buffer.shape[1] != self.dim:
            raise ValueError(
                f"buffer must be (>= {shape[0]}, {self.dim}) {self.numpy_dtype}, got "
                f"{buffer.shape} {buffer.dtype}"
            )
        elif buffer.shape[0] < shape[0]:
            raise ValueError(f"buffer has {buffer.shape[0]} rows, {shape[0]} needed")
        else:
            out = buffer[: shape[0]]
        if minus is not None and (minus.shape != (self.dim,) or minus.dtype != self.numpy_dtype):
            raise ValueError(
                f"minus must be ({self.dim},) {self.numpy_dtype}, got {minus.shape} {minus.dtype}"
            )
        if finite is not None and (finite.shape != (shape[0],) or finite.dtype != np.bool_):
            raise ValueError(
                f"finite must be ({shape[0]},) bool, got {finite.shape} {finite.dtype}"
            )
        rows = torch.from_numpy(out)
        subtrahend = None if minus is None else torch.from_numpy(minus)
        with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
            # replies decoded from bytes are read-only arrays: torch warns, and only reads them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for row, arrays in enumerate(models):
                total = 0.0
                for spec in self.specs:
                    if not spec.aggregated:
                        continue
                    source = arrays[spec.key].reshape(-1)  # a view
                    # torch where it can read the array as is (~15 % faster than numpy here, the
                    # same IEEE values); numpy casts float16 and swaps byte orders while copying
                    same = source.dtype == out.dtype
                    typed = torch.from_numpy(source) if same else None
                    for start in range(0, spec.size, _BLOCK):
                        stop = min(start + _BLOCK, spec.size)
                        lo, hi = spec.offset + start, spec.offset + stop
                        target = rows[row, lo:hi]
                        if typed is not None and subtrahend is not None:
                            torch.sub(typed[start:stop], subtrahend[lo:hi], out=target)
                        elif typed is not None:
                            target.copy_(typed[start:stop])
                        elif minus is None:
                            out[row, lo:hi] = source[start:stop]
                        else:
                            np.subtract(source[start:stop], minus[lo:hi], out=out[row, lo:hi])
                        if finite is not None:
                            total += float(target.sum())
                if finite is not None:
                    finite[row] = math.isfinite(total) or bool(np.isfinite(out[row]).all())
        tensor = rows
        if device is not None and tensor.device != torch.device(device):
            tensor = tensor.to(device)
        return tensor

    def unflatten(self, vector: Tensor, base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named arrays from the flat ``vector``; non-aggregated arrays are copied from ``base``.

        Each array gets back the shape and dtype of the model.
        """
        if vector.shape != (self.dim,):
            raise ValueError(f"flat vector has shape {tuple(vector.shape)}, expected ({self.dim},)")
        flat = vector.detach().to("cpu")
        result: dict[str, np.ndarray] = {}
        for spec in self.specs:
            if spec.aggregated:
                piece = flat[spec.offset : spec.offset + spec.size].numpy()
                result[spec.key] = piece.astype(spec.dtype, copy=True).reshape(spec.shape)
            else:
                result[spec.key] = np.array(base[spec.key], dtype=spec.dtype, copy=True)
        return result
