"""The transport seam: what a peer runtime needs from the wire, and nothing more.

A runtime talks to the broker through four roles: the DEALER (requests, replies,
notices), the PUB (its async events and trace records), the SUB (the async events
it subscribed to, and wake-ups) and the heartbeat (liveness, on a thread of its
own). ``ZmqTransport`` (transport.py) is the real one; ``MemoryTransport``
(memory.py) is its in-memory twin, where a test plays the broker in the same
thread. Both keep these contracts:

- A transport lives as long as its runtime; ``connect``/``disconnect`` make and drop
  the sockets of one incarnation (``up`` tells which). Nothing queued before a
  ``disconnect`` is ever delivered after it.
- Frames are lists of ``bytes``: the envelope (proto/envelope.py) for the DEALER;
  ``[topic, envelope...]`` for the PUB and SUB.
- ``poll`` returns a mask of ``DEALER``/``SUB``; a role in the mask may still have
  nothing to receive (a nested pump took it): its ``recv_*`` then returns None.
- ``wake`` may be called from any thread: a ``poll`` in progress returns.
- ``publish`` never drops silently: it returns False when the queue stayed full
  for ``timeout`` seconds, and the caller counts the drop.

The hot path is one method call a hop: no per-message object beyond the frames.
"""

from __future__ import annotations

from typing import Callable, Protocol

DEALER = 1     # ``poll`` mask bits
SUB = 2
LANE = 4       # a socket of the direct lane (lane.py) is readable


class Heartbeat(Protocol):
    """Liveness of one incarnation. ``lost`` is why the broker is gone, or None."""
    lost: str | None

    def lose(self, why: str) -> None:
        """Declare the broker lost (first reason wins) and wake the runtime."""

    def stop(self) -> None: ...


class Transport(Protocol):
    up: bool        # sockets of an incarnation exist
    where: str      # for error messages: where the broker was looked for

    def connect(self, ident: bytes) -> None: ...
    def disconnect(self, linger_ms: int = 0) -> None: ...
    def close(self) -> None:
        """The runtime's end: what ``connect`` and ``__init__`` made is released."""

    def send(self, frames: list) -> None:
        """DEALER: queue one message to the broker."""

    def publish(self, frames: list, timeout: float) -> bool:
        """PUB: send one message, waiting up to ``timeout`` s for room; False if dropped."""

    def publish_nowait(self, frames: list) -> bool:
        """PUB: send one message if there is room now (trace records)."""

    def subscribe(self, topic: bytes) -> None: ...

    def poll(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for DEALER or SUB input, or a ``wake``."""

    def recv_dealer(self) -> list | None: ...
    def recv_sub(self) -> list | None: ...

    def await_dealer(self) -> list | None:
        """The next DEALER message, waiting a short while (a call's answer usually
        comes within it) on the DEALER alone; None if none came."""

    def recv_sub_now(self) -> list | None:
        """A SUB message if one is queued now, else None; cheap when there is none."""

    def wake(self) -> None: ...

    def start_heartbeat(self, ivl: float, liveness: int, epoch: int,
                        on_lost: Callable[[], None]) -> Heartbeat: ...
