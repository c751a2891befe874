"""The event catalog: the event enum, the payload union and per-event metadata.

Each event is declared exactly once, as an ``EventSpec`` row in ``CATALOG``: its
direction, delivery (sync request/reply or async), the payload type selected by
the event (the union), the reply type of a sync event, the context its handler
runs in, whether the kernel would hold rtnl, and the schema version it appeared
in. Validators, discovery, docs and the C header are derived from these rows.

Event numbers are ABI: never renumber, only append. Parent->child events use
1..63, child->parent 64..127, user-defined events 0x1000 and up.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

from .errno import AuxError, Errno
from .names import version_str
from .payloads import *  # noqa: F403  (the union members, re-exported: proto.events is their home)
from .payloads import (
    Caps,
    CritErr,
    DcbConfig,
    EnableQueues,
    EthtoolOp,
    FwEvent,
    LinkChange,
    MacFilter,
    MtuChangeAfter,
    MtuChangeBefore,
    NetshaperSet,
    PostConfig,
    PrepareDetach,
    Qos,
    QsetParams,
    QsetReply,
    QueueChunks,
    QueueConfig,
    RequestReset,
    ResetComplete,
    ResetWarn,
    SetMac,
    SetMacReply,
    Virtchnl,
    VirtchnlReply,
    VlanFilter,
)
from .payloads import __all__ as _payload_names
from .schema import Array, Empty, Nested, Payload, Str
from .schema import Enum as EnumField

SCHEMA_VERSION = (1, 0)
USER_EVENT_BASE = 0x1000   # user-defined events (auxipc.schemas modules) are numbered from here


class Direction(Enum):
    TO_CHILD = "parent->child"
    TO_PARENT = "child->parent"
    BOTH = "both"

    def allows(self, sender_role: str) -> bool:
        """Whether a peer of ``sender_role`` ('parent' or 'child') may send it."""
        # The module's constants: an enum member looked up on its class costs a metaclass call.
        if self is BOTH:
            return True
        return (self is P2C) == (sender_role == "parent")


class Delivery(Enum):
    SYNC = "sync"
    ASYNC = "async"


class Context(Enum):
    """Where the receiving handler runs, as the kernel would call it."""

    ATOMIC = "atomic"   # must not sleep: no sync calls, no blocking (notifier in IRQ/atomic)
    SLEEP = "may-sleep"  # process context, may block and make sync calls


# ---- the catalog ---------------------------------------------------------------

class Event(IntEnum):
    # parent -> child: 1..63
    LINK_CHANGE = 1
    RESET_WARN = 2
    RESET_COMPLETE = 3
    BEFORE_MTU_CHANGE = 4
    AFTER_MTU_CHANGE = 5
    BEFORE_TC_CHANGE = 6
    AFTER_TC_CHANGE = 7
    CRIT_ERR = 8
    CAPS_CHANGE = 9
    PREPARE_DETACH = 10
    FW_EVENT = 11
    POST_INIT = 12
    # child -> parent: 64..127
    REQUEST_RESET = 64
    QSET_ADD = 65
    QSET_DEL = 66
    MAC_FILTER = 67
    VLAN_FILTER = 68
    QUEUE_CONFIG = 69
    ENABLE_QUEUES = 70
    NETSHAPER_SET = 71
    DCB_CONFIG = 72
    ETHTOOL_OP = 73
    VIRTCHNL_PASSTHROUGH = 74
    REMOVE_NOTIFY = 75
    SET_MAC = 76
    POST_CONFIG = 77


@dataclass(frozen=True)
class EventSpec:
    code: int
    name: str
    direction: Direction
    delivery: Delivery
    payload: type[Payload]
    reply: type[Payload] = Empty
    context: Context = Context.SLEEP
    rtnl: bool = False
    since: tuple[int, int] = (1, 0)
    doc: str = ""
    state: bool = False    # async and state-like: the last value is replayed to a late joiner and after a gap

    @property
    def sync(self) -> bool:
        return self.delivery is SYNC

    def describe(self) -> dict:
        return {
            "code": int(self.code), "name": self.name, "direction": self.direction.value,
            "delivery": self.delivery.value, "context": self.context.value, "rtnl": self.rtnl,
            "since": list(self.since), "payload": self.payload.__name__,
            "reply": self.reply.__name__ if self.sync else None, "doc": self.doc, "state": self.state,
        }


P2C, C2P, BOTH = Direction.TO_CHILD, Direction.TO_PARENT, Direction.BOTH
SYNC, ASYNC = Delivery.SYNC, Delivery.ASYNC
ATOMIC = Context.ATOMIC
E = Event

BUILTIN_EVENTS: tuple[EventSpec, ...] = (
    # ---- parent -> child
    EventSpec(E.LINK_CHANGE, "LINK_CHANGE", P2C, ASYNC, LinkChange, context=ATOMIC, state=True,
              doc="link up/down, speed, duplex, autoneg (mlx5: atomic notifier; the consumer defers)"),
    EventSpec(E.RESET_WARN, "RESET_WARN", P2C, SYNC, ResetWarn,
              doc="reset or FLR pending; the child quiesces before it replies"),
    EventSpec(E.RESET_COMPLETE, "RESET_COMPLETE", P2C, ASYNC, ResetComplete,
              doc="the reset finished (often done as unplug + replug instead)"),
    EventSpec(E.BEFORE_MTU_CHANGE, "BEFORE_MTU_CHANGE", P2C, SYNC, MtuChangeBefore,
              doc="blocking; the sender must not hold rtnl (the ice MTU deadlock)"),
    EventSpec(E.AFTER_MTU_CHANGE, "AFTER_MTU_CHANGE", P2C, ASYNC, MtuChangeAfter, state=True,
              doc="the new MTU is in effect"),
    EventSpec(E.BEFORE_TC_CHANGE, "BEFORE_TC_CHANGE", P2C, SYNC, Empty,
              doc="traffic classes are about to change; under device_lock, before rtnl"),
    EventSpec(E.AFTER_TC_CHANGE, "AFTER_TC_CHANGE", P2C, SYNC, Qos,
              doc="the new QoS layout; under device_lock, before rtnl"),
    EventSpec(E.CRIT_ERR, "CRIT_ERR", P2C, ASYNC, CritErr,
              doc="a critical error: the IRQ sets a flag, task context sends"),
    EventSpec(E.CAPS_CHANGE, "CAPS_CHANGE", P2C, SYNC, Caps,
              doc="capabilities or resources (queues, MSI-X vectors) changed"),
    EventSpec(E.PREPARE_DETACH, "PREPARE_DETACH", P2C, SYNC, PrepareDetach,
              doc="the device will be deleted; stop using it"),
    EventSpec(E.FW_EVENT, "FW_EVENT", P2C, ASYNC, FwEvent, context=ATOMIC,
              doc="firmware state, live patch, power change or health event"),
    EventSpec(E.POST_INIT, "POST_INIT", P2C, SYNC, Empty,
              doc="the parent finished its own initialisation"),
    # ---- child -> parent
    EventSpec(E.REQUEST_RESET, "REQUEST_RESET", C2P, SYNC, RequestReset,
              doc="returns at once: 0, -EBUSY while a reset runs, -EIO after a failed one, -EINVAL"),
    EventSpec(E.QSET_ADD, "QSET_ADD", C2P, SYNC, QsetParams, QsetReply,
              doc="attach an RDMA queue set to the scheduling tree; -ENOSPC when it is full"),
    EventSpec(E.QSET_DEL, "QSET_DEL", C2P, SYNC, QsetParams,
              doc="detach the queue set QSET_ADD attached (its teid)"),
    EventSpec(E.MAC_FILTER, "MAC_FILTER", C2P, ASYNC, MacFilter, context=ATOMIC,
              doc="from ndo_set_rx_mode (atomic): the parent must defer the work"),
    EventSpec(E.VLAN_FILTER, "VLAN_FILTER", C2P, SYNC, VlanFilter, rtnl=True,
              doc="add or kill a VLAN id"),
    EventSpec(E.QUEUE_CONFIG, "QUEUE_CONFIG", C2P, SYNC, QueueConfig, QueueChunks,
              doc="over the FW mailbox (-ETIME on timeout); needs the scheduling tree"),
    EventSpec(E.ENABLE_QUEUES, "ENABLE_QUEUES", C2P, SYNC, EnableQueues,
              doc="start or stop queues; over the FW mailbox (-ETIME on timeout)"),
    EventSpec(E.NETSHAPER_SET, "NETSHAPER_SET", C2P, SYNC, NetshaperSet,
              doc="set a rate shaper; serialised by a per-device lock"),
    EventSpec(E.DCB_CONFIG, "DCB_CONFIG", C2P, SYNC, DcbConfig, rtnl=True,
              doc="ETS and PFC; may trigger BEFORE/AFTER_TC_CHANGE back to the child"),
    EventSpec(E.ETHTOOL_OP, "ETHTOOL_OP", C2P, SYNC, EthtoolOp, rtnl=True,
              doc="ring sizes, channel counts or link settings"),
    EventSpec(E.VIRTCHNL_PASSTHROUGH, "VIRTCHNL_PASSTHROUGH", C2P, SYNC, Virtchnl, VirtchnlReply,
              doc="-EINVAL, -ENXIO (shut down), -ETIME (timeout), -EIO"),
    EventSpec(E.REMOVE_NOTIFY, "REMOVE_NOTIFY", C2P, ASYNC, Empty,
              doc="the child asks to be removed; the parent must defer the delete (deleting "
                  "inside the callback deadlocks)"),
    EventSpec(E.SET_MAC, "SET_MAC", C2P, SYNC, SetMac, SetMacReply, rtnl=True,
              doc="program the primary MAC; the reply names the filter slot"),
    EventSpec(E.POST_CONFIG, "POST_CONFIG", C2P, ASYNC, PostConfig,
              doc="the child finished configuring its vport"),
)
del E


def negotiate(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """The contract two peers share: the older minor of one major. Across majors there
    is none: -EPROTO, worded for ``auxipc ls`` and both peers' logs."""
    if a[0] != b[0]:
        raise AuxError(Errno.EPROTO, f"schema {version_str(a)} and {version_str(b)} differ in major version")
    return (a[0], min(a[1], b[1]))


def _walk(cls: type[Payload]):
    """Every field of a payload type, nested structs and array items included."""
    for f in cls.fields.values():
        yield f
        if isinstance(f, Array):
            yield f.item
        inner = f.item if isinstance(f, Array) else f
        if isinstance(inner, Nested):
            yield from _walk(inner.struct)


class Catalog:
    """Event specs by code and by name. The built-in catalog plus user extensions."""

    def __init__(self, specs=BUILTIN_EVENTS, version: tuple[int, int] = SCHEMA_VERSION):
        self.version = tuple(version)
        self._by_code: dict[int, EventSpec] = {}
        self._by_name: dict[str, EventSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: EventSpec) -> None:
        if spec.code in self._by_code or spec.name in self._by_name:
            raise AuxError(Errno.EEXIST, f"event {spec.name} ({spec.code}) declared twice")
        self._by_code[int(spec.code)] = spec
        self._by_name[spec.name] = spec

    def lookup(self, event: int | str) -> EventSpec:
        """The spec of an event given by code, enum member or name; -EOPNOTSUPP if unknown."""
        if type(event) is int:      # a code off the wire: the common case, one dict lookup
            spec = self._by_code.get(event)
            if spec is not None:
                return spec
        try:
            if isinstance(event, str) and not event.isdigit():
                return self._by_name[event.upper()]
            return self._by_code[int(event)]
        except (KeyError, ValueError):
            raise AuxError(Errno.EOPNOTSUPP, f"event {event!r} is not in schema {self.version_str}") from None

    def get(self, code: int) -> EventSpec | None:
        return self._by_code.get(code)

    def __iter__(self):
        return iter(sorted(self._by_code.values(), key=lambda s: s.code))

    def __len__(self):
        return len(self._by_code)

    @property
    def version_str(self) -> str:
        return version_str(self.version)

    def payloads(self) -> list[type[Payload]]:
        """Every payload and reply type, each once, in catalog order."""
        seen: dict[type[Payload], None] = {}
        for spec in self:
            seen.setdefault(spec.payload)
            if spec.sync:
                seen.setdefault(spec.reply)
        return list(seen)

    def structs(self) -> list[type[Payload]]:
        """Every struct (payloads, replies and the structs nested in them) except Empty,
        each once, nested ones before their users."""
        out: list[type[Payload]] = []
        for cls in self.payloads():
            out += [s for s in cls.structs() if s not in out and s is not Empty]
        return out

    def enums(self) -> list[type[IntEnum]]:
        """Every IntEnum a payload field uses, each once."""
        out: list[type[IntEnum]] = []
        for cls in self.structs():
            out += [f.enum for f in _walk(cls) if isinstance(f, EnumField) and f.enum not in out]
        return out

    def handled_by(self, role: str) -> list[EventSpec]:
        """Events a peer of ``role`` receives (and so may handle)."""
        other = "child" if role == "parent" else "parent"
        return [s for s in self if s.direction.allows(other)]

    def describe(self) -> dict:
        """The machine-readable schema (``auxipc proto dump --json``)."""
        return {
            "schema": self.version_str,
            "events": [spec.describe() for spec in self],
            "structs": {cls.__name__: {"doc": cls.doc, "fields": [f.describe() for f in cls.fields.values()]}
                        for cls in self.structs()},
            "enums": {e.__name__: {m.name: m.value for m in e} for e in self.enums()},
        }


CATALOG = Catalog()


def encode_payload(spec: EventSpec, payload: Payload | dict | None, reply: bool = False) -> dict:
    """Validate a payload (an instance or a dict, strictly) and return its wire map."""
    cls = spec.reply if reply else spec.payload
    path = "$.reply" if reply else "$.payload"
    if isinstance(payload, Payload):
        if type(payload) is not cls:
            raise AuxError(Errno.EINVAL, f"{path}: {spec.name} takes {cls.__name__}, got {type(payload).__name__}")
        return payload.to_wire()
    return cls.from_wire(payload if payload is not None else {}, path, strict=True).to_wire()


def decode_payload(spec: EventSpec, obj, reply: bool = False) -> Payload:
    """Validate a decoded wire map into the event's payload (or reply) type."""
    cls = spec.reply if reply else spec.payload
    return cls.from_wire(obj, "$.reply" if reply else "$.payload")


__all__ = [
    "Catalog", "CATALOG", "Context", "Delivery", "Direction", "Event", "EventSpec", "SCHEMA_VERSION",
    "USER_EVENT_BASE", "negotiate", "Str", "Array", "encode_payload", "decode_payload", *_payload_names,
]
