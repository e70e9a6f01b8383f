"""Every write to Flower's private fields, in one place, and the Flower versions it was checked on.

The fast paths skip Flower's per-item checks where the values are known to be valid. They build
an ``Array`` from fields the caller computed, fill a record's items, and give an in-process
message its id. So does the relay grid, when a reply must answer another message. Each helper
here does what Flower's public API would do, without its argument dispatch and checks.
``tests/test_flower_internals.py`` compares every helper with that public way on the installed
Flower, so a Flower upgrade that moves one of these fields fails there first.
:func:`check_flower_version` warns once, at import, on a Flower outside the tested range.

``flwr_byz.clients.warm_superexec`` (a long-lived SuperExec) is built from Flower's runtime
modules by nature and stays apart.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import flwr
from flwr.app import Array, ArrayRecord, ConfigRecord, Metadata, MetricRecord
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

#: The Flower versions these helpers were checked against: [low, high), as (major, minor).
TESTED_FLOWER = ((1, 41), (2, 0))


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor, *_ = (version.split("+")[0].split(".") + ["0", "0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def check_flower_version(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed Flower's) is in :data:`TESTED_FLOWER`; warns
    (``RuntimeWarning``) when it is not, naming the range."""
    version = version or flwr.__version__
    low, high = TESTED_FLOWER
    if low <= _version_tuple(version) < high:
        return True
    warnings.warn(
        f"flwr_byz was checked with Flower >= {low[0]}.{low[1]}, < {high[0]}.{high[1]}; "
        f"Flower {version} may have moved the private fields of flwr_byz.flower_internals "
        "(run tests/test_flower_internals.py)",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


def new_array(dtype: str, shape: tuple[int, ...], stype: str, data: bytes) -> Array:
    """``Array(dtype=dtype, shape=shape, stype=stype, data=data)`` without its argument dispatch."""
    array = Array.__new__(Array)
    array.__dict__.update(dtype=dtype, shape=shape, stype=stype, data=data)
    return array


def fill_record(record: ArrayRecord, items: Iterable[tuple[str, Array]]) -> None:
    """``record[key] = array`` for every item, without the per-item type checks (``str`` keys
    and ``Array`` values, known valid)."""
    record.__dict__["_data"].update(items)


def set_record_items(record: ConfigRecord | MetricRecord, items: Mapping[str, Any]) -> None:
    """Replace the items of a record copied from a valid one (same keys and value types)."""
    record.__dict__["_data"] = dict(items)


def set_message_id(metadata: Metadata, message_id: str) -> None:
    """Give a message its id (the SuperLink's job; the in-process grid plays it)."""
    metadata.__dict__["_message_id"] = message_id


def set_reply_to(metadata: Metadata, message_id: str) -> None:
    """Make a reply answer ``message_id`` (the relay grid's copy of a message was sent instead)."""
    metadata.__dict__["_reply_to_message_id"] = message_id


def ensure_task_identity(run_id: int) -> None:
    """Set ``TaskIdentity`` (which ``Message(...)`` needs) where no Flower runtime has set it:
    ``run_id``, the SuperLink's node id, task 1."""
    if TaskIdentity._run_id is None:  # the getters raise when unset
        TaskIdentity.run_id = run_id
    if TaskIdentity._node_id is None:
        TaskIdentity.node_id = SUPERLINK_NODE_ID
    if TaskIdentity._task_id is None:
        TaskIdentity.task_id = 1


check_flower_version()


#: Seconds between two polls for replies of Flower's simulation grid (``InMemoryGrid``, whose
#: default is 0.1 s): a round that waits for its replies twice (the adversary's honest phase,
#: then the attackers) waited ~half a period more each time, 20-50 % of an MNIST round.
REPLY_POLL_SECONDS = 0.005


def poll_replies_often(grid: object) -> None:
    """Make Flower's simulation grid poll for replies every :data:`REPLY_POLL_SECONDS` (its
    public ``pull_interval``); any other grid (deployment, in-process) is left as it is."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid  # the simulation engine's grid

    if isinstance(grid, InMemoryGrid) and grid.pull_interval > REPLY_POLL_SECONDS:
        grid.pull_interval = REPLY_POLL_SECONDS
