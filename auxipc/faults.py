"""Fault injection: rules, and the deterministic decision of when one applies.

A rule names where it applies and what it does:

- ``kill``: at a lifecycle point of a process (``probe``, ``remove``,
  ``request`` (a sync call is being served: the caller's call is pending),
  ``send`` (just after a sync call went out), ``reset`` (a RESET_WARN is being
  sent or served)), the process sends itself ``signal``;
- ``handler``: before a handler of ``event`` runs: ``delay`` it, ``hang`` it,
  ``raise`` in it, or return ``errno`` instead;
- ``message``: a message to ``target`` (the broker applies it to sync calls) or
  from ``target`` (its runtime applies it to async events), optionally only of
  ``event``: ``drop``, ``delay``, ``duplicate``, ``reorder`` (held back and sent
  after the next one), ``corrupt`` (payload bytes flipped).

Every rule has ``probability`` and ``count`` (how many times at most) and draws
from its own ``random.Random(seed)``: the same seed and the same traffic give
the same faults. Each application is recorded in the trace (action FAULT).
"""

from __future__ import annotations

import random
import signal as _signal
from dataclasses import asdict, dataclass, field

from proto import envelope as E
from proto.control import fault_spec
from proto.errno import AuxError, Errno

KINDS = {"kill": {"point": ("probe", "remove", "request", "send", "reset")},
         "handler": {"action": ("delay", "hang", "raise", "errno")},
         "message": {"action": ("drop", "delay", "duplicate", "reorder", "corrupt")}}
# The signals a user may send (a fault rule, ``auxipc fault signal``, a scenario's kill step): one table.
SIGNALS = {s.name[3:]: s for s in (_signal.SIGTERM, _signal.SIGKILL, _signal.SIGSTOP, _signal.SIGCONT, _signal.SIGINT,
                                   _signal.SIGHUP, _signal.SIGABRT, _signal.SIGSEGV)}


@dataclass
class FaultRule:
    kind: str                  # kill | handler | message
    target: str                # peer name (model, driver process name) or "*"
    point: str = ""            # kill: where
    action: str = ""           # handler / message: what
    event: str = ""            # only this event ('' = any)
    signal: str = "KILL"
    delay_ms: int = 0
    errno: str = ""
    probability: float = 1.0
    count: int = 0             # 0 = unlimited
    seed: int = 0
    id: int = 0
    applied: int = 0
    _rng: random.Random = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self._rng = random.Random(self.seed)

    def validate(self) -> "FaultRule":
        if self.kind not in KINDS:
            raise AuxError(Errno.EINVAL, f"fault kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not self.target:
            raise AuxError(Errno.EINVAL, "fault target is empty (a peer name, or '*')")
        if self.kind == "kill" and self.point not in KINDS["kill"]["point"]:
            raise AuxError(Errno.EINVAL, f"kill point {self.point!r} is not one of {', '.join(KINDS['kill']['point'])}")
        if self.kind != "kill" and self.action not in KINDS[self.kind]["action"]:
            raise AuxError(Errno.EINVAL, f"{self.kind} action {self.action!r} is not one of "
                           f"{', '.join(KINDS[self.kind]['action'])}")
        if self.signal.upper() not in SIGNALS:
            raise AuxError(Errno.EINVAL, f"signal {self.signal!r} is not one of {', '.join(SIGNALS)}")
        if self.action == "errno":
            try:
                Errno[self.errno.upper()]
            except KeyError:
                raise AuxError(Errno.EINVAL, f"errno {self.errno!r} is not an errno name (ENODEV, EIO, ...)") from None
        if not 0.0 <= self.probability <= 1.0:
            raise AuxError(Errno.EINVAL, f"probability {self.probability} is not within 0..1")
        if self.action == "delay" and self.delay_ms <= 0:
            raise AuxError(Errno.EINVAL, "a delay needs delay_ms > 0")
        return self

    def matches(self, peer: str, event: str = "") -> bool:
        return (self.target in ("*", peer)) and (not self.event or self.event == event)

    def fire(self) -> bool:
        """Decide (deterministically) whether the rule applies this time; counts it."""
        if self.count and self.applied >= self.count:
            return False
        if self.probability < 1.0 and self._rng.random() >= self.probability:
            return False
        self.applied += 1
        return True

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("_rng")
        return d

    @classmethod
    def from_dict(cls, d, path: str = "$.rule") -> "FaultRule":
        """A rule from its wire form (a map or a proto FaultSpec): types and bounds
        checked by the declaration, meanings by ``validate``."""
        return cls(**fault_spec(d, path).to_wire()).validate()


class FaultPlan:
    """The rules in force in one process."""

    def __init__(self):
        self.rules: list[FaultRule] = []

    def set(self, rules: list[FaultRule]) -> None:
        """Replace the rules; a rule already here (same id) keeps its count and draws."""
        mine = {r.id: r for r in self.rules if r.id}
        self.rules = [mine.get(r.id, r) if r.id else r for r in rules]

    def find(self, kind: str, peer: str, event: str = "", point: str = "") -> FaultRule | None:
        for rule in self.rules:
            if rule.kind == kind and rule.matches(peer, event) and (not point or rule.point == point):
                if rule.fire():
                    return rule
        return None

    def __bool__(self):
        return bool(self.rules)


def corrupt(data: bytes, rng: random.Random) -> bytes:
    """Flip a few bytes (never returns the input unchanged). Of a whole message, the
    payload's bytes are flipped when it has one: its header still names the request,
    so the receiver can answer it (-EINVAL naming the payload field)."""
    if data[:4] == E.MAGIC:
        try:
            head = E.unpackb(data[4:], "$.header")
        except AuxError:
            head = None
        if type(head) is dict and type(head.get("p")) is bytes:
            head["p"] = corrupt(head["p"], rng)
            return E.MAGIC + E.packb(head)
    if not data:
        return b"\xc1"
    buf = bytearray(data)
    for _ in range(max(1, len(buf) // 8)):
        i = rng.randrange(len(buf))
        buf[i] ^= 0xFF
    return bytes(buf)
