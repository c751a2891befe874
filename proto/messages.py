"""The messages: their types (``Msg``) and the header each one declares.

Declared once here; ``envelope`` turns them into frames and back, the docs and
the wire tests are derived from these declarations. Sans-I/O like all of proto.
"""

from __future__ import annotations

from enum import IntEnum

from .control import FaultSpec, Restore
from .schema import Array, Bool, Int, Map, Nested, Payload, Str

PROTOCOL_VERSION = 1   # REGISTER ``proto``: the envelope's version (MAGIC carries its major)
U32 = dict(min=0, max=2**32 - 1)
REQ_ID = Int(0, 2**53)


class Msg(IntEnum):
    REGISTER = 1
    UNREGISTER = 2
    HEARTBEAT = 3
    REREGISTER = 4
    DRV_REGISTER = 10
    DRV_UNREGISTER = 11
    DEV_INIT = 20
    DEV_ADD = 21
    DEV_DELETE = 22
    DEV_UNINIT = 23
    DEV_GET = 24
    DEV_PUT = 25
    DEV_PM = 26
    DEV_FIND = 29
    LOCK = 27
    UNLOCK = 28
    CALL = 30
    REQUEST = 31
    RESULT = 32
    PROBE = 40
    REMOVE = 41
    SHUTDOWN = 42
    BIND = 43
    UNBIND = 44
    RELEASE = 45
    PM = 46
    CTL = 50
    INJECT = 51
    FAULT = 52
    RESYNC = 53
    LANE_OFFER = 54
    LANE_GRANT = 55
    LANE_REVOKE = 56
    EVENT = 60
    UEVENT = 61


class Header(Payload):
    """Base of message headers; ``TYPE`` is the message type it declares."""

    TYPE: Msg


_HEADERS: dict[int, type[Header]] = {}


def header(msg: Msg):
    def register(cls: type[Header]) -> type[Header]:
        cls.TYPE = msg
        _HEADERS[msg] = cls
        return cls
    return register


# The sender's stamp, declared once and appended to every message a watcher records
# (EVENT, UEVENT): optional, so a sender that does not stamp stays compatible. All
# processes of a bus on one host read one CLOCK_MONOTONIC, so stamps of different
# senders compare; the sequence orders one sender's messages (see docs/protocol.md).
STAMP_TS = Int(0, 2**63 - 1, default=0, doc="the sender's CLOCK_MONOTONIC in ns when it sent this (0: not stamped)")
STAMP_SEQ = Int(0, 2**63 - 1, default=0, doc="the sender's sequence over everything it publishes, from 1 (0: none)")


def strs(**kw):
    return Array(Str(max_len=255), max_len=1024, **kw)


def codes(**kw):
    return Array(Int(0, 2**31 - 1), max_len=4096, **kw)


# ---- peer -> broker ----------------------------------------------------------

@header(Msg.REGISTER)
class Register(Header):
    """First message of a peer; answered by RESULT with {peer, inc, epoch, faults,
    hb_ivl_ms, hb_liveness, schema, index}: index is a parent's among the instances of
    its model (the lowest free, or restore.index)."""
    r = REQ_ID
    role = Str(max_len=16, doc="'parent' or 'child'")
    name = Str(max_len=64, doc="the model (parent) or the process's name (child)")
    pid = Int(0, 2**31 - 1)
    start_time = Int(0, 2**63 - 1, doc="/proc/<pid>/stat starttime, tells pid reuse apart")
    proto = Int(1, 255, default=PROTOCOL_VERSION)
    schema = Array(Int(0, 65535), length=2)
    handles = codes(default=(), doc="event codes this peer handles")
    restore = Nested(Restore, default=Restore(), doc="after a broker restart: what this peer had (a child: bound devices)")
    instance = Str(max_len=64, default="", doc="a parent's identity among instances of its model (a PCI address)")


@header(Msg.UNREGISTER)
class Unregister(Header):
    """Clean exit: the broker answers, then forgets the peer (its drivers were unregistered first)."""
    r = REQ_ID


@header(Msg.HEARTBEAT)
class Heartbeat(Header):
    """From a peer's heartbeat socket (`<id>#hb`) every interval; the broker echoes it with its epoch."""
    epoch = Int(0, 2**63 - 1, default=0)


@header(Msg.REREGISTER)
class Reregister(Header):
    """To a sender the broker does not know (it restarted, or declared the peer dead): register again."""
    reason = Str(default="")


@header(Msg.DRV_REGISTER)
class DrvRegister(Header):
    """auxiliary_driver_register; answered after every matching device was probed
    ({probed: [names], refused: {name: why}})."""
    r = REQ_ID
    name = Str(max_len=128, default="")
    id_table = strs(default=())
    probe = Bool(default=False)
    remove = Bool(default=False)
    shutdown = Bool(default=False)
    handles = codes(default=())
    task = Str(max_len=128, default="", doc="the task (call chain) this runs in; lockdep's unit")


@header(Msg.DRV_UNREGISTER)
class DrvUnregister(Header):
    """auxiliary_driver_unregister; answered after remove() ran for every bound device."""
    r = REQ_ID
    name = Str(max_len=128)
    task = Str(max_len=128, default="", doc="the task (call chain) this runs in; lockdep's unit")


@header(Msg.DEV_INIT)
class DevInit(Header):
    """auxiliary_device_init; answered {dev, name}: the bus-wide device id and the full name."""
    r = REQ_ID
    name = Str(max_len=128, default="")
    id = Int(0, 2**32 - 1, default=0)
    release = Bool(default=False, doc="the parent supplied a release callback")


@header(Msg.DEV_ADD)
class DevAdd(Header):
    """auxiliary_device_add; answered {name, driver} after a matching driver probed (or none did)."""
    r = REQ_ID
    dev = Int(0, 2**53)
    task = Str(max_len=128, default="", doc="the task (call chain) this runs in; lockdep's unit")
    attrs = Map(default={}, doc="the device's attributes (sysfs, udev), set before a driver binds")


@header(Msg.DEV_DELETE)
class DevDelete(Header):
    """auxiliary_device_delete; answered after the driver's remove() completed."""
    r = REQ_ID
    dev = Int(0, 2**53)
    task = Str(max_len=128, default="", doc="the task (call chain) this runs in; lockdep's unit")


@header(Msg.DEV_UNINIT)
class DevUninit(Header):
    """auxiliary_device_uninit: puts the parent's reference; release follows at the last put."""
    r = REQ_ID
    dev = Int(0, 2**53)


@header(Msg.DEV_GET)
class DevGet(Header):
    """get_device from either side; answered {refcount}."""
    r = REQ_ID
    dev = Int(0, 2**53)
    added = Bool(default=False, doc="only a device still on the bus (auxiliary_find_device), else -ENODEV")


@header(Msg.DEV_FIND)
class DevFind(Header):
    """The devices on the bus (added), in the order they were added, that have this full
    name or match name (every one when both are empty): answered {devices: [{dev, name,
    match, parent, driver}]}, no reference taken (auxiliary_find_device takes one with DEV_GET)."""
    r = REQ_ID
    name = Str(max_len=160, default="")
    match = Str(max_len=160, default="")


@header(Msg.DEV_PUT)
class DevPut(Header):
    """put_device from either side; answered {refcount}; RELEASE goes to the parent at zero."""
    r = REQ_ID
    dev = Int(0, 2**53)


@header(Msg.DEV_PM)
class DevPm(Header):
    """The parent suspends or resumes its device's driver (mlx5's detach/attach); answered
    after the driver's suspend()/resume() ran under device_lock."""
    r = REQ_ID
    dev = Int(0, 2**53)
    op = Str(max_len=16, doc="'suspend' or 'resume'")
    task = Str(max_len=128, default="")


@header(Msg.LOCK)
class LockReq(Header):
    """Take a cross-process lock (``rtnl``, ``mutex:<name>``) for a task. Answered when
    granted, -EDEADLK at once if waiting would close a cycle, -ETIMEDOUT at the deadline.
    With ``ensure``, a lock the task already holds is not an error (d.held = true)."""
    r = REQ_ID
    name = Str(max_len=128)
    task = Str(max_len=128)
    timeout_ms = Int(1, 3_600_000, default=5000)
    ensure = Bool(default=False)
    stack = Array(Str(max_len=128), max_len=256, default=(),
                  doc="tasks suspended below this one on the same process's stack (they cannot run until it returns)")


@header(Msg.UNLOCK)
class UnlockReq(Header):
    """Release a lock the task holds (-EINVAL if it does not)."""
    r = REQ_ID
    name = Str(max_len=128)
    task = Str(max_len=128)


@header(Msg.CALL)
class Call(Header):
    """A sync event from parent or child; `p` holds the payload."""
    r = REQ_ID
    dev = Int(0, 2**53)
    ev = Int(0, 2**31 - 1)
    timeout_ms = Int(1, 3_600_000)
    task = Str(max_len=128, default="", doc="the task (call chain) this runs in; lockdep's unit")


@header(Msg.CTL)
class Ctl(Header):
    """A control query (CLI). Allowed without registering."""
    r = REQ_ID
    op = Str(max_len=32)
    args = Map(default={})


# ---- broker -> peer ------------------------------------------------------------

@header(Msg.REQUEST)
class Request(Header):
    """A sync event delivered to its handler side; `p` holds the payload."""
    r = REQ_ID
    dev = Int(0, 2**53)
    ev = Int(0, 2**31 - 1)
    timeout_ms = Int(0, 3_600_000)
    inc = Int(0, 2**53, default=0, doc="caller's incarnation")
    task = Str(max_len=128, default="", doc="the task (call chain) this runs in; lockdep's unit")
    rtnl = Bool(default=False, doc="the broker holds rtnl for the task while the handler runs (an rtnl event)")


@header(Msg.RESULT)
class Result(Header):
    """The answer to any request, both ways. ``e`` is 0 or a negative errno;
    a sync event's reply payload, if any, is in `p`."""
    r = REQ_ID
    e = Int(-4095, 0, default=0)
    m = Str(max_len=4096, default="")
    d = Map(default={})


@header(Msg.PROBE)
class Probe(Header):
    """To the child: probe this device with this driver (under device_lock). Answer 0 or an errno."""
    r = REQ_ID
    dev = Int(0, 2**53)
    name = Str(max_len=160)
    driver = Str(max_len=128)
    parent_handles = codes(default=())
    parent_schema = Array(Int(0, 65535), length=2, default=(1, 0))
    adopt = Bool(default=False, doc="the child had this device bound before a broker restart: "
                                    "take it back without calling probe() again")
    task = Str(max_len=128, default="", doc="the task (call chain) this runs in; lockdep's unit")
    attrs = Map(default={}, doc="the device's attributes, as its parent set them before add")


@header(Msg.REMOVE)
class Remove(Header):
    """To the child: remove() (under device_lock). Always treated as done once answered."""
    r = REQ_ID
    dev = Int(0, 2**53)
    reason = Str(default="")
    task = Str(max_len=128, default="", doc="the task (call chain) this runs in; lockdep's unit")


@header(Msg.SHUTDOWN)
class Shutdown(Header):
    """To the child: shutdown() at bus shutdown."""
    r = REQ_ID
    dev = Int(0, 2**53)


@header(Msg.PM)
class Pm(Header):
    """To the child: suspend() or resume() (under device_lock)."""
    r = REQ_ID
    dev = Int(0, 2**53)
    op = Str(max_len=16)
    task = Str(max_len=128, default="")


@header(Msg.BIND)
class Bind(Header):
    """To the parent: its device is bound; what the child handles."""
    dev = Int(0, 2**53)
    driver = Str(max_len=128)
    inc = Int(0, 2**53)
    handles = codes(default=())
    schema = Array(Int(0, 65535), length=2, default=(1, 0))


@header(Msg.UNBIND)
class Unbind(Header):
    """To the parent: its device lost its driver. To a child: matching refused a bind
    across schema majors."""
    dev = Int(0, 2**53)
    reason = Str(default="")


@header(Msg.RELEASE)
class Release(Header):
    """To the parent: the last reference was put; run the release callback."""
    dev = Int(0, 2**53)
    name = Str(max_len=160, default="")


@header(Msg.INJECT)
class Inject(Header):
    """Ask a peer to send an event through its own runtime (``auxipc send``)."""
    r = REQ_ID
    dev = Int(0, 2**53)
    ev = Int(0, 2**31 - 1)
    timeout_ms = Int(1, 3_600_000)


@header(Msg.FAULT)
class Fault(Header):
    """To a peer: the fault rules in force for it (replacing earlier ones); see auxipc/faults.py."""
    r = REQ_ID
    rules = Array(Nested(FaultSpec), max_len=256, default=())


@header(Msg.RESYNC)
class Resync(Header):
    """A receiver saw a gap in a device's async events: the broker passes it to the other
    side of the device, whose runtime publishes its state-like events for it again."""
    dev = Int(0, 2**53)


# ---- pub/sub -------------------------------------------------------------------

@header(Msg.EVENT)
class AsyncEvent(Header):
    """Async events for one device, in order: ``p`` packs an array that alternates
    event code and payload map (``[ev, {..}, ev, {..}, ...]``); the first has sequence
    ``seq``, the next ``seq + 1`` and so on. Topic ``C:<device>`` (to the child) or
    ``P:<device>`` (to the parent)."""
    dev = Int(0, 2**53)
    seq = Int(1, 2**63 - 1, doc="of the first event; per (device, direction, sender incarnation), from 1")
    inc = Int(0, 2**53, doc="sender's incarnation")
    epoch = Int(0, 2**63 - 1, default=0, doc="the broker epoch the sender registered in")
    ts_ns = STAMP_TS
    src_seq = STAMP_SEQ


@header(Msg.UEVENT)
class Uevent(Header):
    """A bus notification (topic ``bus``), like a udev uevent."""
    seq = Int(0, 2**63 - 1)
    action = Str(max_len=32)
    dev = Str(max_len=160, default="")
    driver = Str(max_len=128, default="")
    detail = Map(default={})
    ts_ns = STAMP_TS
    src_seq = STAMP_SEQ


# ---- the direct lane (docs/protocol.md, section 8) ------------------------------

@header(Msg.LANE_OFFER)
class LaneOffer(Header):
    """From a peer once registered: it calls on lanes, and serves one at ``endpoint``
    ('' if it serves none). No answer."""
    endpoint = Str(max_len=160, default="", doc="ipc://<runtime dir>/lane-<pid>-<hex>, or ''")


@header(Msg.LANE_GRANT)
class LaneGrant(Header):
    """To both ends of a bound device: calls of ``events`` may go straight to the callee."""
    dev = Int(0, 2**53)
    grant = Int(1, 2**53)
    token = Str(max_len=32, doc="128 random bits in hex: a lane request carries them")
    endpoint = Str(max_len=160, default="", doc="the callee's lane endpoint ('' in the callee's copy)")
    events = codes(default=())
    name = Str(max_len=160, default="", doc="the device's name")
    peer = Str(max_len=255, default="", doc="the other end's label")
    trace = Bool(default=False, doc="the callee publishes a record of each call (someone reads the trace); "
                                    "sent again with the same grant when that changes")


@header(Msg.LANE_REVOKE)
class LaneRevoke(Header):
    """To both ends: the grant (0: every grant towards ``endpoint``) is gone. In-flight
    calls drain (``e`` 0) or fail with ``e`` and ``m``."""
    grant = Int(0, 2**53)
    endpoint = Str(max_len=160, default="")
    e = Int(-4095, 0, default=0)
    m = Str(max_len=4096, default="")
