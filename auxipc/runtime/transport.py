"""The ZeroMQ transport of a peer runtime (the seam is in seam.py): one DEALER for
requests/replies, one PUB and one SUB for async events, and a heartbeat thread
with a DEALER of its own.

Socket options here answer measured facts about ZeroMQ:
explicit linger, bounded queues, no fork with live sockets, heartbeats from a
thread that a slow handler cannot starve (so a slow handler is never taken for
a dead process, while a SIGSTOPped process still goes silent).
"""

from __future__ import annotations

import math
import os
import threading
import time

import zmq
from zmq.backend import zmq_poll

from auxipc.keys import handshake_failed_events, monitor_event, refused
from auxipc.runtime.seam import DEALER, LANE, SUB
from auxipc.runtime_dir import Endpoints
from proto import envelope as E

HWM = 100_000
SUB_HWM = 10_000     # async messages a runtime that does not read may queue (the broker keeps PUB_SNDHWM per subscriber)
MAX_IN = E.MAX_MSG + 4096    # MAXMSGSIZE of what a runtime receives: a message frame and its topic
DIRECT_WAIT_MS = 2    # how long a sync call waits on its DEALER alone before polling everything
WAKE = b"\0wake"     # topic of the heartbeat thread's wake-ups, on the runtime's SUB
_SNDMORE, _NOBLOCK, _POLLIN = int(zmq.SNDMORE), int(zmq.NOBLOCK), int(zmq.POLLIN)
# The Cython methods under pyzmq's Python wrappers: the wrappers' argument handling
# costs about as much as the call itself, four times on each hop of a call.
_send, _recv = zmq.backend.Socket.send, zmq.backend.Socket.recv


def recv_frames(sock: zmq.Socket, flags: int = _NOBLOCK) -> list[bytes]:
    """One message, all its frames: queued (raises zmq.Again when there is none), or
    with ``flags`` 0 waiting up to the socket's RCVTIMEO. Frames, not bytes, come out
    of the receive: a frame knows whether more follow, which saves a ZMQ_RCVMORE
    query (pyzmq's getsockopt builds an enum each time)."""
    frame = _recv(sock, flags, False)
    frames = [frame.bytes]
    while frame.more:
        frame = _recv(sock, _NOBLOCK, False)
        frames.append(frame.bytes)
    return frames


def recv_ready(sock: zmq.Socket) -> list[bytes] | None:
    """The next message of a socket a poll found readable, or None if a nested pump
    took it meanwhile. One message a poll: asking ZMQ_EVENTS whether more are queued
    costs as much as the next poll, which returns at once while they are."""
    try:
        return recv_frames(sock)
    except zmq.Again:
        return None


def send_frames(sock: zmq.Socket, frames: list, flags: int = 0) -> None:
    """send_multipart with plain int flags, through the Cython method."""
    last = len(frames) - 1
    for i in range(last):
        _send(sock, frames[i], flags | _SNDMORE)
    _send(sock, frames[last], flags)


def peer_ident(role: str, name: str, host: str | None = None) -> bytes:
    """``r:name:pid:random``, and ``@host`` for a peer on another host than the broker's
    (the broker then takes its pid for a label, never for a liveness check)."""
    ident = f"{role[0]}:{name}:{os.getpid()}:{os.urandom(3).hex()}"
    return (f"{ident}@{host}" if host else ident).encode()


# What a peer's DEALER monitor reports: a disconnect (the heartbeat thread takes the
# broker as lost) and, over TCP, the CURVE handshake's outcome (a refused key fails
# the registration at once instead of letting it time out).
HANDSHAKE_FAILED = handshake_failed_events()
MONITOR_EVENTS = zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILED


class Sockets:
    """The sockets of one peer incarnation. Closed and recreated after broker loss,
    so queued requests are never replayed to a new broker."""

    def __init__(self, ctx: zmq.Context, ep: Endpoints, ident: bytes):
        self.ident = ident
        d = self.dealer = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.IDENTITY, ident)
        d.setsockopt(zmq.LINGER, 200)
        d.setsockopt(zmq.SNDHWM, HWM)
        d.setsockopt(zmq.RCVHWM, HWM)
        d.setsockopt(zmq.MAXMSGSIZE, MAX_IN)
        d.setsockopt(zmq.RECONNECT_IVL, 50)
        d.setsockopt(zmq.RCVTIMEO, DIRECT_WAIT_MS)     # only receives without NOBLOCK wait (await_dealer)
        self.monitor = d.get_monitor_socket(MONITOR_EVENTS)
        ep.secure(d)
        d.connect(ep.bus)
        p = self.pub = ctx.socket(zmq.PUB)
        p.setsockopt(zmq.LINGER, 200)
        p.setsockopt(zmq.SNDHWM, HWM)
        p.setsockopt(zmq.XPUB_NODROP, 1)
        p.setsockopt(zmq.RECONNECT_IVL, 50)
        ep.secure(p)
        p.connect(ep.pub)
        s = self.sub = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, SUB_HWM)
        s.setsockopt(zmq.MAXMSGSIZE, MAX_IN)
        s.setsockopt(zmq.RECONNECT_IVL, 50)
        ep.secure(s)
        s.connect(ep.sub)
        # The heartbeat thread wakes the runtime through its SUB (one poll item less than a
        # pipe of its own): this PUB is bound here and handed over to that thread.
        w = self.wake = ctx.socket(zmq.PUB)
        w.setsockopt(zmq.LINGER, 0)
        w.bind(f"inproc://auxipc-wake-{ident.hex()}")
        s.connect(f"inproc://auxipc-wake-{ident.hex()}")

    def close(self, linger_ms: int = 200) -> None:
        self.dealer.disable_monitor()
        self.monitor.close(linger=0)
        self.dealer.close(linger=linger_ms)
        self.pub.close(linger=linger_ms)
        self.sub.close(linger=0)
        self.wake.close(linger=0)


class Heartbeat(threading.Thread):
    """Beats every ``ivl`` seconds on its own DEALER (``<ident>#hb``) and watches
    the broker's answers. ``lost`` is set (and ``wake`` called) when the broker
    is silent for ``liveness`` intervals, answers from another epoch, or the main
    socket's ``monitor`` reports a disconnect. With ``wake_fd`` and ``wake_pub``
    it relays the runtime's wake-ups: a byte on the pipe becomes a WAKE message on
    the runtime's SUB. ``monitor`` and ``wake_pub`` are handed over to this thread."""

    def __init__(self, ctx: zmq.Context, ep: Endpoints, ident: bytes, ivl: float, liveness: int,
                 epoch: int, wake, monitor: zmq.Socket | None = None, wake_fd: int | None = None,
                 wake_pub: zmq.Socket | None = None):
        super().__init__(name="auxipc-heartbeat", daemon=True)
        self.ctx, self.ep, self.hb_ident = ctx, ep, ident + b"#hb"
        self.ivl, self.liveness, self.epoch, self.wake, self.monitor = ivl, liveness, epoch, wake, monitor
        self.wake_fd, self.wake_pub = wake_fd, wake_pub
        self.lost: str | None = None
        self._halt = threading.Event()
        self._halt_r, self._halt_w = os.pipe()     # stop() wakes the poll at once, not at the next beat
        self.last_answer = time.monotonic()

    def run(self) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.hb_ident)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 10)
        self.ep.secure(sock)
        sock.connect(self.ep.bus)
        beat = E.encode(E.Heartbeat(epoch=self.epoch))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        if self.monitor is not None:
            poller.register(self.monitor, zmq.POLLIN)
        if self.wake_fd is not None:
            poller.register(self.wake_fd, zmq.POLLIN)
        poller.register(self._halt_r, zmq.POLLIN)
        try:
            next_beat = 0.0
            while not self._halt.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    try:
                        sock.send_multipart(beat, zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                    next_beat = now + self.ivl
                ready = dict(poller.poll(math.ceil(max(0.0, next_beat - now) * 1000)))
                if self.wake_fd is not None and self.wake_fd in ready:
                    os.read(self.wake_fd, 4096)
                    self.wake_pub.send(WAKE)
                if self.monitor is not None and self.monitor in ready:
                    while self.monitor.poll(0):
                        self.lose(self.why_lost(monitor_event(self.monitor)))
                if sock in ready:
                    msg, _ = E.decode(sock.recv_multipart())
                    self.last_answer = time.monotonic()
                    if isinstance(msg, E.Heartbeat) and msg.epoch != self.epoch:
                        self.lose(f"broker epoch changed ({self.epoch} -> {msg.epoch})")
                    elif isinstance(msg, E.Reregister):
                        self.lose(f"broker asks to re-register: {msg.reason}")
                elif time.monotonic() - self.last_answer > self.ivl * self.liveness and self.lost is None:
                    self.lose(f"broker silent for {time.monotonic() - self.last_answer:.2f} s")
        except zmq.ContextTerminated:
            pass
        finally:
            sock.close(linger=0)

    def why_lost(self, event: dict) -> str:
        """A disconnect, or a failed handshake. Over ipc there are no keys: a handshake
        that fails there is one a broker dying or starting cut short (the runtime
        reconnects), never the key mismatch a CURVE handshake over TCP can mean."""
        if event["event"] == zmq.EVENT_DISCONNECTED:
            return "the broker's socket disconnected"
        if not self.ep.remote:
            return f"the handshake with the broker broke off (errno {event['value']})"
        return refused(self.ep.where, event).message

    def lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            self.wake()

    def stop(self) -> None:
        if self._halt.is_set():
            return
        self._halt.set()
        os.write(self._halt_w, b"x")
        self.join(2)
        os.close(self._halt_w)
        if not self.is_alive():      # else the thread still polls it: closed with the process
            os.close(self._halt_r)


class ZmqTransport:
    """The seam (seam.py) over ZeroMQ: one context for the runtime's life, ``Sockets``
    per incarnation. Until the heartbeat thread runs, the wake pipe is polled here;
    then that thread relays it (and watches the socket monitor) as a WAKE message on
    the SUB: one poll item less a pump."""

    def __init__(self, ep: Endpoints):
        self.ep, self.where = ep, ep.where
        self.host = _hostname() if ep.remote else None
        self.ctx: zmq.Context | None = None      # made at the first connect
        self.sk: Sockets | None = None
        self.up = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._items: list = []
        self._sub_item: list = []
        self._dealer = self._sub = None
        self._lanes: list = []       # sockets of the direct lane (lane.py), polled with the DEALER and SUB

    def watch(self, sock: zmq.Socket) -> None:
        """Poll a socket of the direct lane too: ``poll`` reports it as LANE."""
        self._lanes.append(sock)
        if self.up:
            self._items.append((sock, _POLLIN))

    def connect(self, ident: bytes) -> None:
        if self.ctx is None:
            self.ctx = zmq.Context()
        sk = self.sk = Sockets(self.ctx, self.ep, ident)
        self._dealer, self._sub = sk.dealer, sk.sub
        self._items = [(sk.dealer, _POLLIN), (sk.sub, _POLLIN), (self._wake_r, _POLLIN)]
        if self.ep.remote:
            # Until the heartbeat thread takes the monitor: a refused handshake ends the wait.
            self._items.append((sk.monitor, _POLLIN))
        self._items += [(sock, _POLLIN) for sock in self._lanes]
        self._sub_item = [(sk.sub, _POLLIN)]
        sk.sub.setsockopt(zmq.SUBSCRIBE, WAKE)
        self.up = True

    def disconnect(self, linger_ms: int = 0) -> None:
        if self.sk is not None:
            self.sk.close(linger_ms)
            self.sk = self._dealer = self._sub = None
        self._items, self._sub_item = [(self._wake_r, _POLLIN)], []
        self.up = False

    def close(self) -> None:
        self.disconnect(200)
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def send(self, frames: list) -> None:
        send_frames(self._dealer, frames)

    def publish(self, frames: list, timeout: float) -> bool:
        pub = self.sk.pub
        try:
            pub.send_multipart(frames, _NOBLOCK)
        except zmq.Again:
            if not pub.poll(timeout * 1000, zmq.POLLOUT):
                return False
            pub.send_multipart(frames, _NOBLOCK)
        return True

    def publish_nowait(self, frames: list) -> bool:
        try:
            self.sk.pub.send_multipart(frames, _NOBLOCK)
        except zmq.Again:
            return False
        return True

    def subscribe(self, topic: bytes) -> None:
        self._sub.setsockopt(zmq.SUBSCRIBE, topic)

    def poll(self, timeout: float) -> int:
        ready = 0
        for sock, _ in zmq_poll(self._items, math.ceil(timeout * 1000)):
            if sock is self._dealer:
                ready |= DEALER
            elif sock is self._sub:
                ready |= SUB
            elif sock is self._wake_r:
                os.read(self._wake_r, 4096)
            elif sock in self._lanes:
                ready |= LANE
            else:
                self._check_handshake(sock)
        return ready

    def _check_handshake(self, monitor: zmq.Socket) -> None:
        while monitor.poll(0):
            event = monitor_event(monitor)
            if event["event"] & HANDSHAKE_FAILED:
                raise refused(self.ep.where, event)

    def recv_dealer(self) -> list | None:
        return recv_ready(self._dealer)

    def recv_sub(self) -> list | None:
        frames = recv_ready(self._sub)
        return None if frames is None or frames[0] == WAKE else frames

    def await_dealer(self) -> list | None:
        try:
            return recv_frames(self._dealer, 0)     # RCVTIMEO is DIRECT_WAIT_MS
        except zmq.Again:
            return None

    def recv_sub_now(self) -> list | None:
        return self.recv_sub() if self._sub is not None and zmq_poll(self._sub_item, 0) else None

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def start_heartbeat(self, ivl: float, liveness: int, epoch: int, on_lost) -> "Heartbeat":
        sk = self.sk
        hb = Heartbeat(self.ctx, self.ep, sk.ident, ivl, liveness, epoch, on_lost, sk.monitor,
                       self._wake_r, sk.wake)
        hb.start()
        self._items = self._items[:2] + [(sock, _POLLIN) for sock in self._lanes]
        return hb


def _hostname() -> str:
    import socket
    return socket.gethostname().replace(":", "-").replace("@", "-")
