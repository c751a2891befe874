"""States shared by the broker's bus model and the peers' runtimes. Neutral ground:
the runtime and the parent side name a device's state without importing the broker."""

from __future__ import annotations

from enum import StrEnum


class DeviceState(StrEnum):
    """auxiliary_device_init -> _add -> _delete -> (last put) release. A ``StrEnum``:
    a member equals its wire and log name (``DeviceState.ADDED == "added"``)."""
    INITIALIZED = "initialized"   # init done, not on the bus; uninit releases at last put
    ADDED = "added"               # on the bus, matchable, named <modname>.<name>.<id>
    DELETED = "deleted"           # off the bus; references may still be held
    RELEASED = "released"         # last reference put; release() ran
