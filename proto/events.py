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
from .schema import Array, Bool, Bytes, Empty, Int, Payload, Str
from .schema import Enum as EnumField

SCHEMA_VERSION = (1, 0)


class Direction(Enum):
    TO_CHILD = "parent->child"
    TO_PARENT = "child->parent"
    BOTH = "both"

    def allows(self, sender_role: str) -> bool:
        """Whether a peer of ``sender_role`` ('parent' or 'child') may send it."""
        if self is Direction.BOTH:
            return True
        return (self is Direction.TO_CHILD) == (sender_role == "parent")


class Delivery(Enum):
    SYNC = "sync"
    ASYNC = "async"


class Context(Enum):
    """Where the receiving handler runs, as the kernel would call it."""

    ATOMIC = "atomic"   # must not sleep: no sync calls, no blocking (notifier in IRQ/atomic)
    SLEEP = "may-sleep"  # process context, may block and make sync calls


# ---- enums used in payloads -------------------------------------------------

class Duplex(IntEnum):
    UNKNOWN = 0
    HALF = 1
    FULL = 2


class ResetType(IntEnum):
    FUNC = 1
    DEV = 2
    GLOBAL = 3
    FLR = 4


class DetachReason(IntEnum):
    UNLOAD = 1
    RESET = 2
    RECONFIG = 3


class FwEventKind(IntEnum):
    STATE = 1
    LIVE_PATCH = 2
    POWER_CHANGE = 3
    HEALTH = 4


# ---- payloads (the union members) ---------------------------------------------

U32 = dict(min=0, max=2**32 - 1)


class LinkChange(Payload):
    """Link state as the PHY/FW reports it."""
    up = Bool()
    speed_mbps = Int(-1, 2**31 - 1, default=-1, doc="-1 when unknown")
    duplex = EnumField(Duplex, default=Duplex.UNKNOWN)
    autoneg = Bool(default=False)


class FwEvent(Payload):
    """A firmware event: state change, live patch, power change or health report."""
    kind = EnumField(FwEventKind)
    state = Int(**U32, default=0, doc="FW state or subtype code")
    data = Bytes(max_len=256, default=b"", doc="opaque event data")


class ResetWarn(Payload):
    """A reset (FLR included) is about to happen: quiesce before replying."""
    reset_type = EnumField(ResetType)


class PrepareDetach(Payload):
    """The device is about to be deleted."""
    reason = EnumField(DetachReason)


class RequestReset(Payload):
    """The child asks the parent for a reset (FUNC or DEV; others are -EINVAL)."""
    reset_type = EnumField(ResetType)


class SetMac(Payload):
    """Program the child's primary unicast MAC address."""
    addr = Bytes(size=6, doc="6-byte MAC; JSON: 'aa:bb:cc:dd:ee:ff'")


class SetMacReply(Payload):
    """The address programmed and the filter slot that holds it."""
    addr = Bytes(size=6)
    filter_id = Int(0, 65535)


class PostConfig(Payload):
    """The child finished configuring its vport."""
    vport_id = Int(0, 65535, default=0)
    mtu = Int(68, 9728, default=1500)
    num_txq = Int(0, 4096, default=0)
    num_rxq = Int(0, 4096, default=0)


# ---- the catalog ---------------------------------------------------------------

class Event(IntEnum):
    LINK_CHANGE = 1
    RESET_WARN = 2
    PREPARE_DETACH = 10
    FW_EVENT = 11
    REQUEST_RESET = 64
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

    @property
    def sync(self) -> bool:
        return self.delivery is Delivery.SYNC

    def describe(self) -> dict:
        return {
            "code": self.code, "name": self.name, "direction": self.direction.value,
            "delivery": self.delivery.value, "context": self.context.value, "rtnl": self.rtnl,
            "since": list(self.since), "payload": self.payload.__name__,
            "reply": self.reply.__name__ if self.sync else None, "doc": self.doc,
        }


P2C, C2P = Direction.TO_CHILD, Direction.TO_PARENT
SYNC, ASYNC = Delivery.SYNC, Delivery.ASYNC

BUILTIN_EVENTS: tuple[EventSpec, ...] = (
    EventSpec(Event.LINK_CHANGE, "LINK_CHANGE", P2C, ASYNC, LinkChange, context=Context.ATOMIC,
              doc="link up/down, speed, duplex, autoneg (mlx5: atomic notifier; consumer defers)"),
    EventSpec(Event.RESET_WARN, "RESET_WARN", P2C, SYNC, ResetWarn,
              doc="reset or FLR pending; the child quiesces before it replies"),
    EventSpec(Event.PREPARE_DETACH, "PREPARE_DETACH", P2C, SYNC, PrepareDetach,
              doc="the device will be deleted; stop using it"),
    EventSpec(Event.FW_EVENT, "FW_EVENT", P2C, ASYNC, FwEvent, context=Context.ATOMIC,
              doc="firmware state, live patch, power change or health event"),
    EventSpec(Event.REQUEST_RESET, "REQUEST_RESET", C2P, SYNC, RequestReset,
              doc="returns at once: 0, -EBUSY while a reset runs, -EIO after a failed one, -EINVAL"),
    EventSpec(Event.SET_MAC, "SET_MAC", C2P, SYNC, SetMac, SetMacReply,
              doc="program the primary MAC; the reply names the filter slot"),
    EventSpec(Event.POST_CONFIG, "POST_CONFIG", C2P, ASYNC, PostConfig,
              doc="the child finished configuring its vport"),
)


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
        return f"{self.version[0]}.{self.version[1]}"

    def payloads(self) -> list[type[Payload]]:
        """Every payload and reply type, each once, in catalog order."""
        seen: dict[type[Payload], None] = {}
        for spec in self:
            seen.setdefault(spec.payload)
            if spec.sync:
                seen.setdefault(spec.reply)
        return list(seen)

    def handled_by(self, role: str) -> list[EventSpec]:
        """Events a peer of ``role`` receives (and so may handle)."""
        other = "child" if role == "parent" else "parent"
        return [s for s in self if s.direction.allows(other)]


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
    "Duplex", "ResetType", "DetachReason", "FwEventKind", "LinkChange", "FwEvent", "ResetWarn",
    "PrepareDetach", "RequestReset", "SetMac", "SetMacReply", "PostConfig", "Str", "Array",
    "encode_payload", "decode_payload",
]
