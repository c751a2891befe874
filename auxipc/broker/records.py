"""The bus's records, and the interface its parts see of it.

``Peer``, ``Driver`` and ``Device`` are what the driver core keeps about each
process, driver and auxiliary device; ``Pending`` is a request sent to a peer
and owed an answer. ``Host`` is the one interface the parts of the bus
(``Binding``, ``Devices``, ``Calls`` and the operations they run) use of the
``Bus`` that holds them: its tables and its plumbing, nothing else.
``STAMPER`` puts the broker's stamp on what it publishes.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol

import msgpack

from auxipc.broker.lifecycle import Machine, PeerState
from auxipc.broker.lockdep import Lock, LockDep
from auxipc.broker.timers import Timer
from proto import envelope as E
from proto.events import Catalog
from proto.names import device_name, match_name  # noqa: F401  (the bus's names: one rule each)

# Enum members looked up as class attributes cost a metaclass call each time; the
# hot path compares with module constants.
ALIVE = PeerState.ALIVE

# The answer to a request: (errno, message, payload frame, data).
OnResult = Callable[[int, str, "bytes | None", dict], None]


class Adopted(NamedTuple):
    """A binding a child held before a broker restart, taken over without a second probe."""
    driver: str | None
    refs: int


@dataclass(eq=False, slots=True)
class Peer:
    ident: bytes
    role: str
    name: str
    pid: int
    start_time: int
    inc: int
    schema: tuple
    handles: frozenset
    last_seen: float
    machine: Machine = None         # type: ignore[assignment]  # set right after construction
    drivers: list = field(default_factory=list)
    devices: list = field(default_factory=list)
    holding: Counter = field(default_factory=Counter)
    slow_calls: int = 0
    adopt: dict[str, Adopted] = field(default_factory=dict)     # device name -> binding before a restart
    instance: str = ""              # a parent's identity among instances of its model (a PCI address)
    index: int | None = None        # a parent's index among the live instances of its model

    @property
    def label(self) -> str:
        return f"{self.role} {self.name}[{self.pid}]#{self.inc}"

    @property
    def alive(self) -> bool:
        return self.machine.state is ALIVE


@dataclass(eq=False, slots=True)
class Driver:
    name: str
    peer: Peer
    id_table: tuple
    handles: frozenset
    has_remove: bool
    has_shutdown: bool


@dataclass(eq=False, slots=True)
class Device:
    """An auxiliary device. ``name`` is set by add, as dev_set_name() in
    __auxiliary_device_add: empty before (``pending`` is what add will name it)."""
    dev_id: int
    parent: Peer
    short: str
    id: int
    pending: str
    has_release: bool
    life: Machine
    bind: Machine
    lock: Lock = None               # type: ignore[assignment]  # set right after construction
    driver: Driver | None = None
    prober: Driver | None = None    # the driver whose probe() runs (dev->driver while really_probe runs)
    refs: Counter = field(default_factory=Counter)
    deferred: bool = False          # on the deferred-probe list (driver_deferred_probe_add)
    defer_delay: float = 0.0        # the backoff of the retry timer (an addition to the kernel's triggers)
    defer_timer: Timer | None = None
    last_error: str = ""
    last_probe: int = 0
    hung: str = ""                  # what a hung-task warning said while the operation still blocks
    deleting: bool = False          # delete() waits for remove(): the bus still holds the device
    name: str = ""                  # <modname>.<name>.<id> once added
    attrs: dict = field(default_factory=dict)   # attributes for drivers and udev, set by add

    @property
    def refcount(self) -> int:
        return sum(self.refs.values())

    @property
    def label(self) -> str:
        """The device in messages: its name, or what add would name it."""
        return self.name or f"{self.pending} (never added)"


@dataclass(eq=False, slots=True)
class Pending:
    """A request the broker sent to a peer and still owes an answer for. ``what``
    describes it in error messages: a string, or an object formatted only when one
    is written (a sync call describes itself, saving a string per call)."""
    rid: int
    callee: Peer
    deadline: float
    on_result: OnResult
    what: object
    sent: float
    timer: Timer | None = None


class Host(Protocol):
    """What the parts of the bus use of the bus: its tables and its plumbing."""

    clock: Callable[[], float]
    catalog: Catalog
    stats: Counter
    lockdep: LockDep
    tracing: bool
    peers: dict[bytes, Peer]
    drivers: dict[str, Driver]            # registered drivers by name
    devices: dict[int, Device]            # every device not yet released, by id
    by_name: dict[str, Device]            # added devices only
    pending: dict[int, Pending]
    published: list[list[bytes]]
    hung_task_secs: float                 # a remove() blocked this long is reported (hung_task_timeout_secs)
    on_output: Callable[[], None]         # send the outbox now (an answer before the bookkeeping after it)

    def next_id(self) -> int: ...
    def send(self, ident: bytes, msg: E.Header, payload=None) -> None: ...
    def reply(self, ident: bytes, r: int, errno: int = 0, message: str = "", data: dict | None = None,
              payload: bytes | None = None) -> None: ...
    def uevent(self, action: str, dev: str = "", driver: str = "", **detail: object) -> None: ...
    def warn(self, kind: str, message: str, dev: str = "", driver: str = "", **detail: object) -> None: ...
    def task_of(self, peer: Peer, msg) -> str: ...
    def later(self, delay: float, fn: Callable[..., object], *args) -> Timer: ...
    def at(self, when: float, fn: Callable[..., object], *args) -> Timer: ...
    def cancel(self, timer: Timer | None) -> None: ...
    def request(self, peer: Peer, msg_for: Callable[[int], E.Header], payload, timeout: float | None,
                what: str, on_result: OnResult, event: str = "") -> Pending: ...
    def expect(self, peer: Peer, rid: int, frames: list[bytes] | None, timeout: float | None, what: object,
               on_result: OnResult, event: str = "") -> Pending: ...
    def settle(self, rid: int) -> Pending | None: ...


class Stamper:
    """The broker's stamp on its notifications and trace records (the header fields
    ``ts_ns`` and ``src_seq``): CLOCK_MONOTONIC in ns and the broker's own sequence
    over everything it publishes. Stamped as they leave (``stamp``, before the
    answers sent with them), so whatever a peer does on an answer is stamped later:
    a watcher merging them with the peers' async events gets cause before effect."""

    def __init__(self, clock_ns: Callable[[], int] = time.monotonic_ns):
        self.clock_ns = clock_ns
        self.started_ns = clock_ns()      # the bus's time zero (the broker process's start): watchers show seconds since it
        self._seq = itertools.count(1)

    def stamp(self, published: list[list[bytes]]) -> None:
        """Stamp, in place, each ``[topic, MAGIC + header]`` message of ``published``
        (a hello echo, ``[topic, MAGIC]``, has no header and goes as it is)."""
        if not published:
            return
        now = self.clock_ns()
        for frames in published:
            frame = frames[-1]
            if len(frame) <= len(E.MAGIC):
                continue
            try:
                head = msgpack.unpackb(frame[len(E.MAGIC):], raw=False, strict_map_key=False)
                head["ts_ns"], head["src_seq"] = now, next(self._seq)
                frames[-1] = E.MAGIC + E.packb(head)
            except Exception:  # noqa: BLE001 - a record goes unstamped rather than not at all
                continue


STAMPER = Stamper()     # the broker process's: one sequence for everything it publishes
