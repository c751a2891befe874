"""The events the three patterns travel in (a schema module: ``AUXIPC_SCHEMA=auxipc.testing.patterns.abi``).

Models (1) and (2) are emulated faithfully: their events cross the bus as one
generic carrier each, holding the raw event number (or ops slot, or symbol) and
an opaque blob laid out as the C struct would be (``struct.pack``). The bus
routes them like any event but cannot see inside: that is the point measured.
Model (3) needs nothing here: it is the built-in catalog.

- NOTIFIER_CALL: ``blocking_notifier_call_chain(nh, event, data)`` to one
  notifier_block; the reply is the callback's NOTIFY_* value.
- ATOMIC_NOTIFIER_CALL: ``atomic_notifier_call_chain``: async, atomic context
  (mlx5's FW event chain; no return value reaches the caller that matters).
- EXPORTED_CALL: a child calling a function its parent exports
  (``EXPORT_SYMBOL_GPL``), named by symbol, arguments as a blob.
- OPS_CALL: a call through a fixed ops struct of function pointers, either way
  (``iadrv->event_handler``, ``ice_rdma_request_reset``): slot index + blob.
- PATTERN_STEP: the harness's control channel (a user asking the driver to do
  a step of the scenario); not part of any pattern, left out of every figure.

A carrier is recognisable from its declaration alone: its payload holds an
opaque ``Bytes`` field (``opaque_events`` below), which is how the report
tells what the bus could and could not check.
"""

from __future__ import annotations

from proto.events import Context, Delivery, Direction, EventSpec
from proto.schema import Bytes, Int, Payload, Str

SCHEMA_VERSION = (1, 0)

NOTIFIER_CALL = 0x1100
ATOMIC_NOTIFIER_CALL = 0x1101
EXPORTED_CALL = 0x1102
OPS_CALL = 0x1103
PATTERN_STEP = 0x1180

# notifier return values (include/linux/notifier.h)
NOTIFY_DONE, NOTIFY_OK, NOTIFY_STOP_MASK = 0x0000, 0x0001, 0x8000
NOTIFY_BAD = NOTIFY_STOP_MASK | 0x0002


def notifier_from_errno(err: int) -> int:
    return NOTIFY_STOP_MASK | (NOTIFY_OK - err) if err else NOTIFY_OK


def notifier_to_errno(ret: int) -> int:
    ret &= ~NOTIFY_STOP_MASK
    return NOTIFY_OK - ret if ret > NOTIFY_OK else 0


class Notifier(Payload):
    """(unsigned long event, void *data) of a notifier_call."""
    event = Int(0, 2**32 - 1, doc="the raw event number")
    data = Bytes(max_len=1024, default=b"", doc="the struct behind void *data, packed")


class NotifierRet(Payload):
    """The callback's return value: NOTIFY_DONE, NOTIFY_OK, NOTIFY_BAD or notifier_from_errno()."""
    ret = Int(0, 2**32 - 1)


class Exported(Payload):
    """A call to an exported symbol of the parent."""
    symbol = Str(64)
    data = Bytes(max_len=1024, default=b"", doc="the arguments, packed")


class OpsCall(Payload):
    """A call through slot ``slot`` of the other side's ops struct."""
    slot = Int(0, 63)
    data = Bytes(max_len=1024, default=b"", doc="the arguments, packed")


class CallRet(Payload):
    """What the called C function returned (0 or a negative errno; 0 for a void one)."""
    ret = Int(-4095, 0, default=0)
    data = Bytes(max_len=1024, default=b"")


class Step(Payload):
    """Do one step of the scenario (``reset``, ``link``, ``dcb``, ``unknown``, ``bench``, ``crash``)."""
    step = Str(32)
    n = Int(0, 100_000, default=0)


class StepReply(Payload):
    ret = Int(-4095, 0, default=0)


_P2C, _C2P = Direction.TO_CHILD, Direction.TO_PARENT
_SYNC, _ASYNC = Delivery.SYNC, Delivery.ASYNC

EVENTS = (
    EventSpec(NOTIFIER_CALL, "NOTIFIER_CALL", _P2C, _SYNC, Notifier, NotifierRet,
              doc="blocking notifier chain: one notifier_block's callback"),
    EventSpec(ATOMIC_NOTIFIER_CALL, "ATOMIC_NOTIFIER_CALL", _P2C, _ASYNC, Notifier, context=Context.ATOMIC,
              doc="atomic notifier chain (FW events): must not sleep"),
    EventSpec(EXPORTED_CALL, "EXPORTED_CALL", _C2P, _SYNC, Exported, CallRet,
              doc="a child calling an exported function of its parent"),
    EventSpec(OPS_CALL, "OPS_CALL", Direction.BOTH, _SYNC, OpsCall, CallRet,
              doc="a call through the other side's ops struct"),
    EventSpec(PATTERN_STEP, "PATTERN_STEP", _C2P, _SYNC, Step, StepReply,
              doc="the patterns harness's control channel: run a step of the scenario"),
)

CONTROL = frozenset({"PATTERN_STEP"})


def opaque_events(specs=EVENTS) -> frozenset[str]:
    """The carriers: events whose payload holds an opaque blob the bus cannot check."""
    return frozenset(s.name for s in specs
                     if any(isinstance(f, Bytes) for f in s.payload.fields.values()) and s.name not in CONTROL)

