"""The bus's state machines, each a table: device lifecycle, binding, peer liveness,
and the supervisor's processes.

``TABLE[state][event] -> next state``, states and events both enums. An event a
state does not list is illegal: ``Machine.fire`` raises ``IllegalTransition``
naming the machine, the object, the state and the event, with the errno the
driver core would return in that state (an operation on a deleted device is
-ENODEV, not a crash). A table lists only transitions some code path fires.
"""

from __future__ import annotations

from enum import Enum

from auxipc.states import DeviceState  # noqa: F401  (re-exported: the broker's tables key on it)
from proto.errno import AuxError, Errno


class DeviceEvent(Enum):
    ADD = "add"                   # auxiliary_device_add
    DELETE = "delete"             # auxiliary_device_delete
    RELEASE = "release"           # the last put_device


DEVICE_TABLE = {
    DeviceState.INITIALIZED: {DeviceEvent.ADD: DeviceState.ADDED, DeviceEvent.RELEASE: DeviceState.RELEASED},
    DeviceState.ADDED: {DeviceEvent.DELETE: DeviceState.DELETED},
    DeviceState.DELETED: {DeviceEvent.RELEASE: DeviceState.RELEASED},
    DeviceState.RELEASED: {},
}
DEVICE_ILLEGAL = {DeviceState.ADDED: Errno.EBUSY, DeviceState.DELETED: Errno.ENODEV,
                  DeviceState.RELEASED: Errno.ENODEV}


class BindState(Enum):
    """dev->driver, as the driver core sets it. Whether the device waits on the
    deferred-probe list is kept apart (``Device.deferred``), as the kernel keeps it."""
    UNBOUND = "unbound"
    PROBING = "probing"
    BOUND = "bound"
    REMOVING = "removing"


class BindEvent(Enum):
    PROBE = "probe"                   # a driver's probe() is called
    PROBE_OK = "probe_ok"             # it returned 0: bound
    PROBE_REJECT = "probe_reject"     # -ENODEV/-ENXIO: the match is rejected silently
    PROBE_FAIL = "probe_fail"         # another error: reported
    PROBE_DEFER = "probe_defer"       # -EPROBE_DEFER: the next driver tries; retried on the next bind
    REMOVE = "remove"                 # remove() is called
    REMOVED = "removed"               # remove() returned (or its process died)
    DRIVER_GONE = "driver_gone"       # the bound driver's process died or unregistered


BIND_TABLE = {
    BindState.UNBOUND: {BindEvent.PROBE: BindState.PROBING},
    BindState.PROBING: {BindEvent.PROBE_OK: BindState.BOUND, BindEvent.PROBE_REJECT: BindState.UNBOUND,
                        BindEvent.PROBE_FAIL: BindState.UNBOUND, BindEvent.PROBE_DEFER: BindState.UNBOUND},
    BindState.BOUND: {BindEvent.REMOVE: BindState.REMOVING, BindEvent.DRIVER_GONE: BindState.UNBOUND},
    BindState.REMOVING: {BindEvent.REMOVED: BindState.UNBOUND, BindEvent.DRIVER_GONE: BindState.UNBOUND},
}
BIND_ILLEGAL = {BindState.BOUND: Errno.EBUSY, BindState.PROBING: Errno.EBUSY,
                BindState.REMOVING: Errno.EBUSY, BindState.UNBOUND: Errno.ENODEV}


class PeerState(Enum):
    ALIVE = "alive"
    DEAD = "dead"          # crashed, killed or silent past its heartbeat liveness
    GONE = "gone"          # unregistered cleanly


class PeerEvent(Enum):
    CRASH = "crash"              # its process died, or went silent past its liveness
    UNREGISTER = "unregister"    # it said goodbye


PEER_TABLE = {
    PeerState.ALIVE: {PeerEvent.CRASH: PeerState.DEAD, PeerEvent.UNREGISTER: PeerState.GONE},
    PeerState.DEAD: {},
    PeerState.GONE: {},
}
PEER_ILLEGAL = {PeerState.DEAD: Errno.ESHUTDOWN, PeerState.GONE: Errno.ESHUTDOWN}


class IllegalTransition(AuxError):
    def __init__(self, errno: int, machine: str, who: str, state: Enum, event):
        self.state, self.event = state, event
        name = event.value if isinstance(event, Enum) else event
        super().__init__(errno, f"{machine} {who}: '{name}' is illegal in state {state.name}")


class Machine:
    """One object's state in one table. Events are the table's keys: enums here,
    plain strings in the emulated hardware's tables."""

    __slots__ = ("kind", "who", "table", "illegal", "state")

    def __init__(self, kind: str, who: str, table: dict, initial: Enum, illegal: dict | None = None):
        self.kind, self.who, self.table, self.state = kind, who, table, initial
        self.illegal = illegal or {}

    def can(self, event) -> bool:
        return event in self.table[self.state]

    def fire(self, event) -> Enum:
        try:
            self.state = self.table[self.state][event]
        except KeyError:
            errno = self.illegal.get(self.state, Errno.EINVAL)
            raise IllegalTransition(errno, self.kind, self.who, self.state, event) from None
        return self.state


def device_machine(who: str) -> Machine:
    return Machine("device", who, DEVICE_TABLE, DeviceState.INITIALIZED, DEVICE_ILLEGAL)


def bind_machine(who: str) -> Machine:
    return Machine("binding of", who, BIND_TABLE, BindState.UNBOUND, BIND_ILLEGAL)


def peer_machine(who: str) -> Machine:
    return Machine("peer", who, PEER_TABLE, PeerState.ALIVE, PEER_ILLEGAL)


class LaneState(Enum):
    """A direct lane's grant (docs/protocol.md, section 8). A revoked grant stays revoked:
    a new grant is a new object with a new id and token."""
    GRANTED = "granted"
    REVOKED = "revoked"


class LaneEvent(Enum):
    REVOKE = "revoke"         # unbind, suspend, shutdown, faults, an end gone: before any of them proceeds


LANE_TABLE = {
    LaneState.GRANTED: {LaneEvent.REVOKE: LaneState.REVOKED},
    LaneState.REVOKED: {},
}
LANE_ILLEGAL = {LaneState.REVOKED: Errno.ENODEV}


def lane_machine(who: str) -> Machine:
    return Machine("lane of", who, LANE_TABLE, LaneState.GRANTED, LANE_ILLEGAL)


class ProcState(Enum):
    """A supervised process (``auxipc up``)."""
    STARTING = "starting"     # launched, waiting for its ready line
    RUNNING = "running"
    BACKOFF = "backoff"       # exited; restart scheduled after the backoff delay
    STOPPED = "stopped"       # stopped by the operator, or exited and not to be restarted
    FAILED = "failed"         # could not start, or the supervisor gave up on it


class ProcEvent(Enum):
    START = "start"
    READY = "ready"                   # its ready line arrived
    EXIT_RESTART = "exit_restart"     # it exited and restarts after the backoff
    EXIT_FINAL = "exit_final"         # it exited and stays down
    STOP = "stop"                     # the operator stops it
    GIVE_UP = "give_up"               # too many restarts
    RESTART = "restart"               # stopped to restart with a sibling (its group)


PROC_TABLE = {
    ProcState.STARTING: {ProcEvent.READY: ProcState.RUNNING, ProcEvent.EXIT_RESTART: ProcState.BACKOFF,
                         ProcEvent.EXIT_FINAL: ProcState.FAILED, ProcEvent.STOP: ProcState.STOPPED,
                         ProcEvent.GIVE_UP: ProcState.FAILED},
    ProcState.RUNNING: {ProcEvent.EXIT_RESTART: ProcState.BACKOFF, ProcEvent.EXIT_FINAL: ProcState.STOPPED,
                        ProcEvent.STOP: ProcState.STOPPED, ProcEvent.GIVE_UP: ProcState.FAILED,
                        ProcEvent.RESTART: ProcState.BACKOFF},
    ProcState.BACKOFF: {ProcEvent.START: ProcState.STARTING, ProcEvent.STOP: ProcState.STOPPED},
    ProcState.STOPPED: {ProcEvent.START: ProcState.STARTING, ProcEvent.STOP: ProcState.STOPPED},
    ProcState.FAILED: {ProcEvent.START: ProcState.STARTING, ProcEvent.STOP: ProcState.STOPPED},
}
PROC_ILLEGAL = {ProcState.STOPPED: Errno.ESHUTDOWN, ProcState.FAILED: Errno.ESHUTDOWN,
                ProcState.STARTING: Errno.EBUSY, ProcState.RUNNING: Errno.EBUSY}


def proc_machine(who: str) -> Machine:
    return Machine("process", who, PROC_TABLE, ProcState.STOPPED, PROC_ILLEGAL)
