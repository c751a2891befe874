"""The bus's state machines, each a table: device lifecycle, binding, peer liveness.

``TABLE[state][event] -> next state``. An event a state does not list is illegal:
``Machine.fire`` raises ``IllegalTransition`` naming the machine, the object,
the state and the event, with the errno the driver core would return in that
state (an operation on a deleted device is -ENODEV, not a crash).
"""

from __future__ import annotations

from enum import Enum

from proto.errno import AuxError, Errno
from auxipc.states import DeviceState  # noqa: F401  (re-exported: the broker's tables key on it)


DEVICE_TABLE = {
    DeviceState.INITIALIZED: {"add": DeviceState.ADDED, "release": DeviceState.RELEASED},
    DeviceState.ADDED: {"delete": DeviceState.DELETED},
    DeviceState.DELETED: {"release": DeviceState.RELEASED},
    DeviceState.RELEASED: {},
}
DEVICE_ILLEGAL = {DeviceState.ADDED: Errno.EBUSY, DeviceState.DELETED: Errno.ENODEV,
                  DeviceState.RELEASED: Errno.ENODEV}


class BindState(Enum):
    UNBOUND = "unbound"
    PROBING = "probing"
    BOUND = "bound"
    REMOVING = "removing"
    DEFERRED = "deferred"     # probe returned -EPROBE_DEFER; retried later


BIND_TABLE = {
    BindState.UNBOUND: {"probe": BindState.PROBING},
    BindState.PROBING: {"probe_ok": BindState.BOUND, "probe_reject": BindState.UNBOUND,
                        "probe_fail": BindState.UNBOUND, "probe_defer": BindState.DEFERRED,
                        "driver_gone": BindState.UNBOUND},
    BindState.BOUND: {"remove": BindState.REMOVING, "driver_gone": BindState.UNBOUND},
    BindState.REMOVING: {"removed": BindState.UNBOUND, "driver_gone": BindState.UNBOUND},
    BindState.DEFERRED: {"probe": BindState.PROBING, "driver_gone": BindState.UNBOUND,
                         "give_up": BindState.UNBOUND},
}
BIND_ILLEGAL = {BindState.BOUND: Errno.EBUSY, BindState.PROBING: Errno.EBUSY,
                BindState.REMOVING: Errno.EBUSY, BindState.UNBOUND: Errno.ENODEV,
                BindState.DEFERRED: Errno.EAGAIN}


class PeerState(Enum):
    ALIVE = "alive"
    DEAD = "dead"          # crashed, killed or silent past its heartbeat liveness
    GONE = "gone"          # unregistered cleanly


PEER_TABLE = {
    PeerState.ALIVE: {"heartbeat": PeerState.ALIVE, "expire": PeerState.DEAD,
                      "crash": PeerState.DEAD, "unregister": PeerState.GONE},
    PeerState.DEAD: {},
    PeerState.GONE: {},
}
PEER_ILLEGAL = {PeerState.DEAD: Errno.ESHUTDOWN, PeerState.GONE: Errno.ESHUTDOWN}


class IllegalTransition(AuxError):
    def __init__(self, errno: int, machine: str, who: str, state: Enum, event: str):
        self.state, self.event = state, event
        super().__init__(errno, f"{machine} {who}: '{event}' is illegal in state {state.name}")


class Machine:
    """One object's state in one table."""

    __slots__ = ("kind", "who", "table", "illegal", "state")

    def __init__(self, kind: str, who: str, table: dict, initial: Enum, illegal: dict | None = None):
        self.kind, self.who, self.table, self.state = kind, who, table, initial
        self.illegal = illegal or {}

    def can(self, event: str) -> bool:
        return event in self.table[self.state]

    def fire(self, event: str) -> Enum:
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


class ProcState(Enum):
    """A supervised process (``auxipc up``)."""
    STARTING = "starting"     # launched, waiting for its ready line
    RUNNING = "running"
    BACKOFF = "backoff"       # exited; restart scheduled after the backoff delay
    STOPPED = "stopped"       # stopped by the operator, or exited and not to be restarted
    FAILED = "failed"         # could not start, or the supervisor gave up on it


PROC_TABLE = {
    ProcState.STARTING: {"ready": ProcState.RUNNING, "exit_restart": ProcState.BACKOFF,
                         "exit_final": ProcState.FAILED, "stop": ProcState.STOPPED, "give_up": ProcState.FAILED},
    ProcState.RUNNING: {"exit_restart": ProcState.BACKOFF, "exit_final": ProcState.STOPPED,
                        "stop": ProcState.STOPPED, "give_up": ProcState.FAILED,
                        "restart": ProcState.BACKOFF},
    ProcState.BACKOFF: {"start": ProcState.STARTING, "stop": ProcState.STOPPED, "give_up": ProcState.FAILED},
    ProcState.STOPPED: {"start": ProcState.STARTING, "stop": ProcState.STOPPED},
    ProcState.FAILED: {"start": ProcState.STARTING, "stop": ProcState.STOPPED},
}
PROC_ILLEGAL = {ProcState.STOPPED: Errno.ESHUTDOWN, ProcState.FAILED: Errno.ESHUTDOWN,
                ProcState.STARTING: Errno.EBUSY, ProcState.RUNNING: Errno.EBUSY}


def proc_machine(who: str) -> Machine:
    return Machine("process", who, PROC_TABLE, ProcState.STOPPED, PROC_ILLEGAL)
