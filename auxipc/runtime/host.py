"""What the runtime's parts (contexts.py, publishing.py, dispatch.py) need from the
runtime that hosts them (peer.py's ``Runtime``): this interface and the parts'
own public methods, never each other's private state."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Protocol

from auxipc.faults import FaultPlan
from auxipc.runtime.seam import Heartbeat, Transport
from proto import envelope as E
from proto.events import Catalog


class Host(Protocol):
    name: str
    role: str
    inc: int            # this incarnation, and the broker's epoch: both change at each registration
    epoch: int
    catalog: Catalog
    stats: Counter
    faults: FaultPlan
    tr: Transport
    hb: Heartbeat | None
    locks_devices: bool   # deliveries to a device run under its device_lock (the child side)
    lane: Any             # the direct lane (lane.py), or None: the broker carries every call

    @property
    def stopping(self) -> bool: ...

    def request(self, make: Callable[[int], E.Header], payload=None, timeout: float | None = 5.0,
                what: str = "request", after_send: Callable[[], None] | None = None,
                ) -> tuple[E.Result, bytes | None]:
        """Send a request to the broker and serve others until its answer comes."""

    def check(self, result: E.Result, what: str) -> E.Result: ...
    def report(self, record: str, /, **detail) -> None: ...
    def bug(self, kind: str, message: str, where: str = "", **detail) -> None: ...
    def got_ref(self, dev: str) -> None: ...
    def put_ref(self, dev: str) -> None: ...
    def call_later(self, delay: float, fn: Callable[[], None]) -> None: ...
    def guard(self, fn: Callable[[], None]) -> None:
        """Run a callback; its error is logged, never raised."""

    # The subclass hooks (parent/runtime.py, child/runtime.py):
    def serve(self, msg: E.Header, payload: bytes | None) -> tuple[int, str, dict | None]: ...
    def on_async(self, topic: bytes, msg: E.AsyncEvent, items: list) -> None: ...
    def on_notice(self, msg: E.Header) -> None: ...
    def topic_for(self, dev_id: int) -> bytes | None: ...
    def handler_site(self, dev_id: int, code: int) -> str: ...
    def what_served(self, msg: E.Header) -> str: ...
    def device_name(self, dev_id: int) -> str: ...
    def receiver_handles(self, dev_id: int) -> frozenset | None:
        """The event codes the other side of a device declared (None: not known)."""
