"""Each helper of flwr_byz.flower_internals against Flower's public way of doing the same thing,
on the installed Flower: an upgrade that moves a private field fails here first."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from flwr_byz import flower_internals as internals


def test_installed_flower_is_in_the_tested_range() -> None:
    assert internals.check_flower_version()


@pytest.mark.parametrize("version", ["1.40.3", "2.0.0", "2.1.0rc1"])
def test_versions_outside_the_range_warn_naming_it(version: str) -> None:
    with pytest.warns(RuntimeWarning, match=r"Flower >= 1\.41, < 2\.0"):
        assert not internals.check_flower_version(version)


def test_new_array_equals_flowers_array() -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    public = Array(values)
    ours = internals.new_array(public.dtype, tuple(public.shape), public.stype, public.data)
    assert (ours.dtype, tuple(ours.shape), ours.stype, ours.data) == (
        public.dtype,
        tuple(public.shape),
        public.stype,
        public.data,
    )
    np.testing.assert_array_equal(ours.numpy(), values)
    assert ours.object_id == public.object_id  # Flower's content hash of the serialised array


def test_fill_record_equals_item_assignment() -> None:
    items = [(f"w{i}", Array(np.full(3, float(i), np.float32))) for i in range(3)]
    public = ArrayRecord()
    for key, array in items:
        public[key] = array
    ours = ArrayRecord()
    internals.fill_record(ours, iter(items))
    assert list(ours.keys()) == list(public.keys())
    assert ours.object_id == public.object_id
    assert ours.count_bytes() == public.count_bytes()


@pytest.mark.parametrize("kind", [ConfigRecord, MetricRecord])
def test_set_record_items_equals_a_new_record(kind: type) -> None:
    items = {"a": 1, "b": [1.5, 2.5], "c": 3.0}
    copied = kind({"a": 0}).copy()
    internals.set_record_items(copied, items)
    public = kind(items)
    assert dict(copied.items()) == dict(public.items())
    assert copied.object_id == public.object_id


def test_message_ids_set_as_flower_reads_them() -> None:
    internals.ensure_task_identity(run_id=7)
    message = Message(RecordDict(), 3, MessageType.TRAIN)
    internals.set_message_id(message.metadata, "m-1")
    assert message.metadata.message_id == "m-1"
    reply = Message(RecordDict(), reply_to=message)
    assert reply.metadata.reply_to_message_id == "m-1"  # Flower's own reply_to reads the id
    internals.set_reply_to(reply.metadata, "m-2")
    assert reply.metadata.reply_to_message_id == "m-2"


def test_simulation_grid_polls_often_and_other_grids_are_left_alone() -> None:
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    grid = InMemoryGrid(SimpleNamespace(state=lambda: None))  # type: ignore[arg-type]
    assert grid.pull_interval == 0.1  # Flower's default, which the helper lowers
    internals.poll_replies_often(grid)
    assert grid.pull_interval == internals.REPLY_POLL_SECONDS
    other = SimpleNamespace(pull_interval=0.1)
    internals.poll_replies_often(other)
    assert other.pull_interval == 0.1
