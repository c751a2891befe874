"""The async path: pub/sub with a sender the receiver can trust.

``AsyncGate`` joins the broker's XSUB (``pub.sock``) and XPUB (``sub.sock``) in its
own thread, in place of ``zmq_proxy``, and passes an event only from the process
that may send it, for the current epoch and incarnation.
"""

from __future__ import annotations

import threading
from collections import Counter

import zmq

from auxipc.broker.auth import RemotePeers
from auxipc.broker.bus import Bus, Peer
from auxipc.broker.sidewatch import peer_credentials
from proto import envelope as E
from proto.errno import AuxError


class AsyncGate(threading.Thread):
    """The async path, in place of ``zmq_proxy``: every message a peer publishes on
    ``pub.sock`` is checked before the XPUB passes it on. An EVENT on ``C:<device>``
    must come from the process of the device's parent, ``P:<device>`` from the
    process of its bound driver's peer (the pid the kernel gave the connection,
    SO_PEERCRED), and name that device's id, the broker's epoch and that peer's
    current incarnation; anything else is dropped and counted (``async_forged``,
    ``async_stale``). ``hello:`` and ``trace`` topics pass; other topics are dropped.
    Reads the bus's tables without a lock: single lookups, atomic under the GIL,
    and a stale answer only drops an event a moment before or after a bind."""

    PASS = (b"hello:", b"trace")

    def __init__(self, bus: Bus, xsub: zmq.Socket, xpub: zmq.Socket):
        super().__init__(name="auxipc-async-gate", daemon=True)
        self.bus, self.xsub, self.xpub = bus, xsub, xpub
        self.remote = RemotePeers()     # the broker's, set after construction
        self.stats: Counter = Counter()     # written by this thread only; the main loop copies it
        self.dropped_topic = b""            # of the last message dropped at the high-water mark
        xpub.setsockopt(zmq.XPUB_NODROP, 1)     # see send()

    def run(self) -> None:
        xsub, xpub = self.xsub, self.xpub
        poller = zmq.Poller()
        poller.register(xsub, zmq.POLLIN)
        poller.register(xpub, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if xpub in ready:
                    while xpub.poll(0):     # subscriptions: the XSUB already takes everything
                        xpub.recv_multipart()
                if xsub in ready:
                    while xsub.poll(0):
                        frames = xsub.recv_multipart(copy=False)
                        why = self.check(frames)
                        if why is not None:
                            self.stats[why] += 1
                            continue
                        self.stats[self.send(frames)] += 1
        except zmq.ContextTerminated:
            pass
        finally:
            xsub.close(linger=0)
            xpub.close(linger=0)

    def send(self, frames: list) -> str:
        """Pass a message on; the counter it goes to. The XPUB is set NODROP so that a
        subscriber's full pipe shows as EAGAIN (libzmq's lossy XPUB drops per pipe without
        a word); the message then goes out lossy, to every subscriber with room, so one
        that stopped reading never holds back the others. libzmq then takes the full pipe
        out of the send set until its reader catches up, and drops for it silently
        meanwhile: ``async_dropped_hwm`` counts the times a subscriber's queue filled (each
        the start of a run of drops for it), not the messages it lost (its runtime counts
        those from the gap in ``seq``, ``async_lost``). The topic is kept for the warning."""
        xpub = self.xpub
        try:
            xpub.send_multipart(frames, zmq.NOBLOCK)
            return "async_passed"
        except zmq.Again:
            pass
        self.dropped_topic = frames[0].bytes
        xpub.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            xpub.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            pass
        finally:
            xpub.setsockopt(zmq.XPUB_NODROP, 1)
        return "async_dropped_hwm"

    def check(self, frames: list) -> str | None:
        """None if the message may pass, else the counter of why not."""
        topic = frames[0].bytes
        if len(frames) != 2:
            return "async_malformed"
        kind = topic[:2]
        if kind not in (b"C:", b"P:"):
            return None if topic.startswith(self.PASS) else "async_unknown_topic"
        bus = self.bus
        dev = bus.by_name.get(topic[2:].decode(errors="replace"))
        if dev is None:
            return "async_no_device"
        sender: Peer | None = dev.parent if kind == b"C:" else dev.driver.peer if dev.driver is not None else None
        creds = peer_credentials(frames[0])
        if sender is None or not sender.alive or not self.remote.same_sender(sender, creds, frames[0]):
            return "async_forged"
        data = frames[1].bytes
        try:
            head = E.unpackb(data[4:], "$.header") if data[:4] == E.MAGIC else None
        except AuxError:
            head = None
        if type(head) is not dict or head.get("t") != E.Msg.EVENT:
            return "async_malformed"
        if head.get("dev") != dev.dev_id or head.get("epoch") != bus.epoch or head.get("inc") != sender.inc:
            return "async_stale"
        return None
