"""What the broker answers: the ``d`` map of the RESULT to each request a peer sends
it, declared like a header. A request not listed here is answered with ``d = {}``.
Errors (``e < 0``) carry no ``d`` beyond what their message says."""

from __future__ import annotations

from .control import FaultSpec
from .envelope import MAX_ITEMS, Msg
from .schema import Array, Bool, Int, Map, Nested, Payload, Str


class Welcome(Payload):
    """REGISTER's answer: who the peer now is on this bus, and the bus's rhythm."""
    peer = Str(max_len=256, doc="the peer's label: '<role> <name>[<pid>]#<inc>'")
    inc = Int(1, 2**53, doc="the peer's incarnation: new at every registration")
    epoch = Int(0, 2**63 - 1, doc="the broker's epoch: new at every broker start")
    faults = Array(Nested(FaultSpec), max_len=256, default=(), doc="fault rules in force for this peer")
    hb_ivl_ms = Int(1, 3_600_000, doc="heartbeat interval")
    hb_liveness = Int(1, 1000, doc="heartbeats missed before the peer is declared dead")
    schema = Array(Int(0, 65535), length=2, doc="the broker's event schema version (major, minor)")
    index = Int(0, 65535, nullable=True, default=None,
                doc="a parent's index among the live instances of its model; nil for a child")


class DrvRegistered(Payload):
    """DRV_REGISTER's answer, once every matching device was probed."""
    probed = Array(Str(max_len=160), max_len=MAX_ITEMS, doc="devices offered to the driver's probe()")
    refused = Map(default={}, doc="device name -> why it was not offered (schema majors differ)")


class DevInitialized(Payload):
    """DEV_INIT's answer."""
    dev = Int(0, 2**53, doc="the bus-wide device id every later message names")
    name = Str(max_len=160, doc="the full name: '<modname>.<name>.<id>'")


class DevAdded(Payload):
    """DEV_ADD's answer, after a matching driver's probe() (or none matched)."""
    name = Str(max_len=160)
    driver = Str(max_len=128, nullable=True, doc="the driver bound, or nil")


class Refcount(Payload):
    """DEV_GET / DEV_PUT / DEV_UNINIT's answer."""
    refcount = Int(0, 2**31 - 1, doc="the device's reference count after the operation")


class LockGranted(Payload):
    """LOCK's answer, when granted."""
    held = Bool(doc="true: the task held it already (``ensure``), nothing was taken")


REPLIES: dict[Msg, type[Payload]] = {
    Msg.REGISTER: Welcome, Msg.DRV_REGISTER: DrvRegistered, Msg.DEV_INIT: DevInitialized,
    Msg.DEV_ADD: DevAdded, Msg.DEV_GET: Refcount, Msg.DEV_PUT: Refcount, Msg.DEV_UNINIT: Refcount,
    Msg.LOCK: LockGranted,
}


def reply_type(request: Msg) -> type[Payload] | None:
    """The declared ``d`` of the broker's successful answer to ``request`` (None: ``{}``)."""
    return REPLIES.get(request)
