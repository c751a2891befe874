"""The in-memory twin of the ZeroMQ transport (seam.py): a runtime's parent or
child logic (deferral, device lock, adopt, batching, nested deliveries) runs in
one thread against a test that plays the broker, with no process or socket.

The test's ``broker(transport, frames)`` is called with each DEALER message as it
is sent, and answers by queueing frames (``to_peer`` for the DEALER, ``events``
for the SUB): a sync call's answer, or requests nested inside it, arrive on the
next receive exactly as over the wire. Published messages are kept in
``published`` and looped back to this runtime's SUB when it subscribed to their
topic, as the broker's proxy does. A receive that would wait while nothing is
queued and no wake-up is pending raises ``Starved`` at once: in one thread
nothing could ever arrive, and a test fails with that message, not a timeout.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from auxipc.runtime.seam import DEALER, SUB
from proto.errno import AuxError, Errno


class Starved(AuxError):
    def __init__(self):
        super().__init__(Errno.ETIMEDOUT, "in-memory transport: the runtime waits for a message "
                         "and nothing is queued (the test's broker did not answer)")


class MemoryHeartbeat:
    """Never loses the broker by itself: a test calls ``lose(why)``."""

    def __init__(self, on_lost: Callable[[], None]):
        self.lost: str | None = None
        self.on_lost = on_lost

    def lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            self.on_lost()

    def stop(self) -> None:
        pass


class MemoryTransport:
    where = "memory"

    def __init__(self, broker: Callable[["MemoryTransport", list], None] | None = None):
        self.broker = broker
        self.up = False
        self.ident = b""
        self.to_peer: deque[list] = deque()     # the DEALER's receive queue
        self.events: deque[list] = deque()      # the SUB's
        self.sent: list[list] = []              # every DEALER message, in order
        self.published: list[list] = []         # every PUB message, in order
        self.topics: list[bytes] = []
        self.room = True       # False: the PUB's queue is full (publish waits, then drops)
        self.incarnations = 0
        self._woken = False
        self.hb: MemoryHeartbeat | None = None

    def connect(self, ident: bytes) -> None:
        self.ident, self.up = ident, True
        self.incarnations += 1

    def disconnect(self, linger_ms: int = 0) -> None:
        self.up = False
        self.to_peer.clear()
        self.events.clear()
        self.topics = []

    def close(self) -> None:
        self.disconnect()

    def send(self, frames: list) -> None:
        self.sent.append(frames)
        if self.broker is not None:
            self.broker(self, frames)

    def publish(self, frames: list, timeout: float) -> bool:
        return self.publish_nowait(frames)

    def publish_nowait(self, frames: list) -> bool:
        if not self.room:
            return False
        self.published.append(list(frames))
        topic = frames[0]
        if any(topic.startswith(t) for t in self.topics):
            self.events.append(list(frames))
        return True

    def subscribe(self, topic: bytes) -> None:
        self.topics.append(topic)

    def poll(self, timeout: float) -> int:
        ready = (DEALER if self.to_peer else 0) | (SUB if self.events else 0)
        if not ready and timeout > 0 and not self._woken:
            raise Starved()
        self._woken = False
        return ready

    def recv_dealer(self) -> list | None:
        return self.to_peer.popleft() if self.to_peer else None

    def recv_sub(self) -> list | None:
        return self.events.popleft() if self.events else None

    await_dealer = recv_dealer
    recv_sub_now = recv_sub

    def wake(self) -> None:
        self._woken = True

    def start_heartbeat(self, ivl: float, liveness: int, epoch: int, on_lost) -> MemoryHeartbeat:
        self.hb = MemoryHeartbeat(on_lost)
        return self.hb
