"""Declared shapes of the maps nested in messages: REGISTER's ``restore``, a fault
rule, and the ``args`` of each control op (CTL). Validated like any payload, so a
bad value is refused with EINVAL naming its path (``$.header.args.rule.count:
expected int, got str``) before the broker acts on it.

What the values mean (which kill points exist, which signals a rule may send) is
checked where they are used (auxipc/faults.py); here, that each is the declared
type, within its bounds.
"""

from __future__ import annotations

from typing import Any

from .errno import AuxError, Errno
from .schema import Array, Float, Int, Nested, Payload, Str

NAME = Str(max_len=160)


class BoundDevice(Payload):
    """A device a child had bound before a broker restart."""
    name = Str(max_len=160, doc="the device's full name")
    driver = Str(max_len=128, default="", doc="the driver bound to it")
    refs = Int(0, 2**31 - 1, default=0, doc="references the child held on it")


class Restore(Payload):
    """What a peer had before a broker restart (REGISTER ``restore``); a parent sends its index."""
    bound = Array(Nested(BoundDevice), max_len=4096, default=(), doc="a child's bound devices")
    index = Int(-1, 65535, default=-1, doc="a parent's index among the instances of its model (-1: none)")


class FaultSpec(Payload):
    """A fault rule on the wire (control ``fault add``, FAULT, the registration reply)."""
    kind = Str(max_len=16, choices=("kill", "handler", "message"))
    target = Str(max_len=128, doc="peer name, or '*'")
    point = Str(max_len=16, default="", doc="kill: where")
    action = Str(max_len=16, default="", doc="handler / message: what")
    event = Str(max_len=64, default="", doc="only this event (a name; '' = any)")
    signal = Str(max_len=8, default="KILL", doc="kill: the signal's name without SIG")
    delay_ms = Int(0, 3_600_000, default=0)
    errno = Str(max_len=32, default="", doc="handler errno: an errno name")
    probability = Float(0.0, 1.0, default=1.0)
    count = Int(0, 2**31 - 1, default=0, doc="how many times at most (0 = unlimited)")
    seed = Int(-(2**63), 2**63 - 1, default=0)
    id = Int(0, 2**53, default=0, doc="given by the broker")
    applied = Int(0, 2**53, default=0, doc="how many times it fired (in the broker's copy)")


def _args(type_name: str, doc: str, **fields) -> type[Payload]:
    """A control op's args type (built, not written as a class: ``from`` is a keyword)."""
    return type(type_name, (Payload,), {"__doc__": doc, **fields})


CTL_ARGS: dict[str, type[Payload]] = {
    "ping": _args("PingArgs", "Is the broker there: {epoch, pid, started_ns}."),
    "watchers": _args("WatchersArgs", "The watchers subscribed to the notification socket: {watchers: [{name, pid}]}."),
    "ls": _args("LsArgs", "The bus snapshot."),
    "echo": _args("EchoArgs", "Publish [topic, MAGIC] on the notification socket.",
                  topic=Str(max_len=160, doc="starts with 'hello:'")),
    "uevents": _args("UeventsArgs", "Bus notifications after ``since``.",
                     since=Int(0, 2**63 - 1, default=0)),
    "bind": _args("BindArgs", "sysfs bind.", device=NAME, driver=Str(max_len=128)),
    "unbind": _args("UnbindArgs", "sysfs unbind.", device=NAME),
    "fault": _args("FaultArgs", "Fault rules: add one, clear some, list them.",
                   action=Str(max_len=8, choices=("add", "clear", "ls"), default="ls"),
                   rule=Nested(FaultSpec, default=None, doc="add: the rule"),
                   target=Str(max_len=128, default="", doc="clear: only this target's ('' = all)")),
    "signal": _args("SignalArgs", "Signal every live peer of a name (or pid).",
                    target=Str(max_len=160), signal=Str(max_len=8, default="KILL")),
    "bugs": _args("BugsArgs", "The contract bugs the bus saw, and its warnings."),
    "inspect": _args("InspectArgs", "A peer's journal and its devices' data, asked of the peer.",
                     peer=Str(max_len=160, doc="the peer's name or pid"),
                     last=Int(0, 100_000, default=1000, doc="the journal's last records")),
    "send": _args("SendArgs", "A peer's runtime sends an event as its code would; the payload frame is `p`.",
                  device=NAME, event=Str(max_len=64, doc="the event's name (or its code in decimal)"),
                  timeout_ms=Int(1, 3_600_000, default=5000),
                  **{"from": Str(max_len=8, choices=("parent", "child"))}),
}


def _up_name() -> Str:
    return Str(max_len=128, default="", doc="the process, as `auxipc up` names it")
UP_ARGS: dict[str, type[Payload]] = {     # the control socket of `auxipc up` (up.sock)
    "ps": _args("UpPsArgs", "The supervised processes."),
    "down": _args("UpDownArgs", "Stop everything and exit."),
    "stop": _args("UpStopArgs", "Stop one process (it stays down).", name=_up_name()),
    "start": _args("UpStartArgs", "Start a stopped process.", name=_up_name()),
    "restart": _args("UpRestartArgs", "Stop and start one process.", name=_up_name()),
}


def ctl_args(op: str, args: Any, ops: dict[str, type[Payload]] = CTL_ARGS) -> Payload:
    """The typed ``args`` of control op ``op``: EOPNOTSUPP for an op not in ``ops``,
    EINVAL naming the field for a bad argument."""
    cls = ops.get(op)
    if cls is None:
        raise AuxError(Errno.EOPNOTSUPP, f"$.header.op: unknown control op {op!r} (ops: {', '.join(sorted(ops))})")
    return cls.from_wire(args, "$.header.args")


def fault_spec(rule: Any, path: str = "$.rule") -> FaultSpec:
    """A fault rule checked against its declaration (a FaultSpec passes as it is)."""
    return rule if isinstance(rule, FaultSpec) else FaultSpec.from_wire(rule, path)
