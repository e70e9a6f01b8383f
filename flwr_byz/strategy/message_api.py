"""Robust strategies for Flower's Message API (``flwr.serverapp.strategy``).

``RobustStrategy`` subclasses Flower's ``FedAvg`` (sampling, message construction, evaluation) and
replaces its weighted average by a Byzantine-resilient rule of ``flwr_byz.gars``, run by the
Flower-free :class:`~flwr_byz.strategy.core.RobustAggregator`. Replies are never weighted by
``num-examples``; bad replies are excluded and reported, never fatal.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import SType
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from numpy.lib import format as npy_format

from flwr_byz.strategy import rules
from flwr_byz.strategy.core import Submission
from flwr_byz.strategy.rules import RobustBase

__all__ = [
    "Average",
    "Brute",
    "Bulyan",
    "GeometricMedian",
    "Krum",
    "MeaMed",
    "Median",
    "Medoid",
    "MultiKrum",
    "Phocas",
    "RobustStrategy",
    "TrimmedMean",
    "array_to_numpy",
    "decode_arrayrecord",
    "numpy_to_array",
]


_NPY_MAGIC = b"\x93NUMPY"
_CACHED_HEADER_BYTES = 4096


@functools.lru_cache(maxsize=256)
def _parse_npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of one ``.npy`` header (magic included), memoised.

    Every round sends the same shapes, so numpy's header parse (an ``ast.literal_eval``) runs
    once per distinct header. Raises like numpy on a malformed header (exceptions aren't cached).
    """
    stream = io.BytesIO(header)
    version = npy_format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = npy_format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran_order, dtype = npy_format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    if stream.tell() != len(header):
        raise ValueError("malformed .npy header")
    if dtype.hasobject:
        raise ValueError("object arrays are refused (they would need unpickling)")
    return tuple(int(n) for n in shape), bool(fortran_order), dtype


def _npy_header_length(data: bytes) -> int:
    """Length of the ``.npy`` header (magic, version, length field and header text)."""
    if len(data) < 10 or data[:6] != _NPY_MAGIC:
        raise ValueError("the data is not in .npy format (bad magic string)")
    major = data[6]
    if major == 1:
        return 10 + int.from_bytes(data[8:10], "little")
    if major in (2, 3):
        if len(data) < 12:
            raise ValueError("truncated .npy header")
        return 12 + int.from_bytes(data[8:12], "little")
    raise ValueError(f"unsupported .npy format version ({major}, {data[7]})")


def array_to_numpy(array: Array) -> np.ndarray:
    """A read-only numpy view of an ``Array``'s ``.npy`` bytes (no copy, unlike ``Array.numpy()``).

    Same safety as Flower's (never unpickles: object dtypes are refused); malformed bytes raise.
    The header parse is memoised by the header bytes (see ``_parse_npy_header``).
    """
    if array.stype != SType.NUMPY:
        raise TypeError(f"unsupported serialization type {array.stype!r}")
    data = array.data
    offset = _npy_header_length(data)
    if len(data) < offset:
        raise ValueError("truncated .npy header")
    header = bytes(data[:offset])
    # memoise ordinary headers only: a hostile reply's huge header must not stay cached
    parse = _parse_npy_header if offset <= _CACHED_HEADER_BYTES else _parse_npy_header.__wrapped__
    shape, fortran_order, dtype = parse(header)
    count = math.prod(shape)
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


@functools.lru_cache(maxsize=256)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header ``np.save`` writes for a C-ordered array of ``descr`` and ``shape``."""
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    stream = io.BytesIO()
    try:
        npy_format.write_array_header_1_0(stream, header)
    except ValueError:  # header longer than 65535 bytes: np.save falls back to version 2.0
        stream = io.BytesIO()
        npy_format.write_array_header_2_0(stream, header)
    return stream.getvalue()


def numpy_to_array(ndarray: np.ndarray) -> Array:
    """``Array(ndarray)`` (Flower's ``.npy`` encoding, same bytes as ``np.save``), faster.

    The header is built once per (dtype, shape); the data is one copy of the raw buffer. Arrays
    Flower would write in Fortran order, and structured or object dtypes, take Flower's path.
    """
    if not isinstance(ndarray, np.ndarray):
        raise TypeError(f"expected a numpy ndarray, got {type(ndarray).__name__}")
    dtype = ndarray.dtype
    fortran = ndarray.flags.f_contiguous and not ndarray.flags.c_contiguous
    if fortran or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        return Array.from_numpy_ndarray(ndarray)
    shape = tuple(int(n) for n in ndarray.shape)
    header = _npy_header(npy_format.dtype_to_descr(dtype), shape)
    body = np.ascontiguousarray(ndarray)
    data = b"".join((header, body.reshape(-1).view(np.uint8).data)) if body.size else header
    # the fields Array(dtype=..., shape=..., stype=..., data=...) sets, without its dispatch
    array = Array.__new__(Array)
    array.__dict__.update(dtype=str(dtype), shape=shape, stype=SType.NUMPY, data=data)
    return array


def decode_arrayrecord(record: ArrayRecord) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """Named numpy arrays of an ``ArrayRecord``, or ``(None, why)`` when one cannot be decoded."""
    arrays: dict[str, np.ndarray] = {}
    for key, value in record.items():
        if not isinstance(value, Array):
            return None, f"entry {key!r} is a {type(value).__name__}, not an Array"
        try:
            arrays[key] = array_to_numpy(value)
        except Exception as err:  # noqa: BLE001 - any decoding failure excludes the reply
            return None, f"array {key!r} cannot be decoded: {type(err).__name__}: {err}"
    return arrays, None


def _reply_metrics(message: Message) -> dict[str, Any]:
    """The reply's scalar metrics (all its MetricRecords merged)."""
    merged: dict[str, Any] = {}
    for record in message.content.metric_records.values():
        merged.update(record)
    return merged


class RobustStrategy(RobustBase, FedAvg):
    """FedAvg's plumbing (Message API) with a robust rule in place of the weighted average.

    Keywords: those of :class:`flwr_byz.strategy.rules.RobustBase` (``num_byzantine``, the rule's
    options, ``device``, ``update_mode``, the server step, ``on_too_few``, ``honest_node_ids``),
    then FedAvg's ``fraction_train``, ``min_train_nodes``, ``fraction_evaluate``,
    ``min_evaluate_nodes``, ``min_available_nodes``, ``arrayrecord_key``, ...
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._global_record: ArrayRecord | None = None
        self._expected_nodes: list[int] = []

    def summary(self) -> None:
        """Log the configuration."""
        super().summary()
        cfg = self.aggregator.update
        log(
            INFO,
            "\t└──> Robust rule: %s (f=%d, options=%s) on %s, update_mode=%s, lr=%s, "
            "schedule_r=%s, momentum=%s, weight_decay=%s, clip_norm=%s, on_too_few=%s",
            self.aggregator.rule.name,
            self.num_byzantine,
            self.aggregator.rule_options,
            self.device,
            cfg.update_mode,
            cfg.learning_rate,
            cfg.lr_schedule_r,
            cfg.server_momentum,
            cfg.weight_decay,
            cfg.clip_norm,
            self.aggregator.on_too_few,
        )

    # -------------------------------------------------------------- training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays of the round, then sample and send like FedAvg."""
        decoded, problem = decode_arrayrecord(arrays)
        if decoded is None:
            raise ValueError(f"the global model cannot be decoded: {problem}")
        self.aggregator.set_global(decoded)
        self._global_record = arrays
        if self.update_mode == "gradient":
            config["learning-rate"] = self.aggregator.learning_rate_at(server_round)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._expected_nodes = [message.metadata.dst_node_id for message in messages]
        return messages

    def _submission(self, message: Message) -> Submission:
        node_id = int(message.metadata.src_node_id)
        if message.has_error():
            error = message.error
            return Submission(node_id, None, f"error reply (code {error.code}): {error.reason}")
        if not message.has_content():
            return Submission(node_id, None, "reply has no content")
        content = message.content
        metrics = _reply_metrics(message)
        if self.arrayrecord_key not in content.array_records:
            return Submission(
                node_id, None, f"no ArrayRecord under key {self.arrayrecord_key!r}", metrics
            )
        arrays, problem = decode_arrayrecord(content.array_records[self.arrayrecord_key])
        return Submission(node_id, arrays, problem, metrics)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check the replies, aggregate robustly, step the model; never weighted by examples."""
        submissions = [self._submission(message) for message in replies]
        answered = {sub.node_id for sub in submissions}
        missing = [node for node in self._expected_nodes if node not in answered]
        new_arrays, report = self.aggregator.aggregate(server_round, submissions, missing)
        if report.kept_model and self._global_record is not None:
            record = self._global_record
        else:
            record = ArrayRecord()
            for key, value in new_arrays.items():
                record[key] = numpy_to_array(value)
        return record, MetricRecord(report.metrics)

    # -------------------------------------------------------------- evaluation
    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Average the evaluation metrics of the usable replies; a malformed reply is skipped.

        Weighted by ``weighted_by_key`` when every usable reply has it (it is a reporting
        average, not the model), else unweighted. Never raises on a bad reply.
        """
        rows: list[dict[str, float]] = []
        for message in replies:
            if message.has_error() or not message.has_content():
                node = message.metadata.src_node_id
                log(WARNING, "round %d: evaluation reply of node %s unusable", server_round, node)
                continue
            values = {
                key: float(value)
                for key, value in _reply_metrics(message).items()
                if isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(float(value))
            }
            if values:
                rows.append(values)
        if not rows:
            return None
        weighted = all(row.get(self.weighted_by_key, -1.0) > 0 for row in rows)
        weights = [row[self.weighted_by_key] if weighted else 1.0 for row in rows]
        keys = sorted({key for row in rows for key in row} - {self.weighted_by_key})
        result = MetricRecord()
        for key in keys:
            pairs = [(row[key], w) for row, w in zip(rows, weights, strict=True) if key in row]
            total = sum(w for _, w in pairs)
            result[key] = sum(v * w for v, w in pairs) / total
        return result


class Average(rules.Average, RobustStrategy):
    __doc__ = rules.Average.__doc__


class Median(rules.Median, RobustStrategy):
    __doc__ = rules.Median.__doc__


class TrimmedMean(rules.TrimmedMean, RobustStrategy):
    __doc__ = rules.TrimmedMean.__doc__


class Phocas(rules.Phocas, RobustStrategy):
    __doc__ = rules.Phocas.__doc__


class MeaMed(rules.MeaMed, RobustStrategy):
    __doc__ = rules.MeaMed.__doc__


class Krum(rules.Krum, RobustStrategy):
    __doc__ = rules.Krum.__doc__


class MultiKrum(rules.MultiKrum, RobustStrategy):
    __doc__ = rules.MultiKrum.__doc__


class Medoid(rules.Medoid, RobustStrategy):
    __doc__ = rules.Medoid.__doc__


class GeometricMedian(rules.GeometricMedian, RobustStrategy):
    __doc__ = rules.GeometricMedian.__doc__


class Brute(rules.Brute, RobustStrategy):
    __doc__ = rules.Brute.__doc__


class Bulyan(rules.Bulyan, RobustStrategy):
    __doc__ = rules.Bulyan.__doc__
