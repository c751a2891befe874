"""The broker's side thread and who is at the other end of a connection.

``SideWatch`` keeps the main loop polling one socket: it watches the ROUTER's
disconnect monitor, the wake pipe and the admin socket, and reports each event on
the ROUTER itself. ``peer_credentials`` reads the pid and uid the kernel gave an
ipc connection (SO_PEERCRED), the identity the broker trusts instead of the one a
peer claims.
"""

from __future__ import annotations

import os
import threading

import zmq
from zmq.utils.monitor import parse_monitor_message


def peer_credentials(frame: zmq.Frame) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of an ipc connection, as the
    kernel gave them to libzmq (SO_PEERCRED): libzmq 4.3 exposes them as the frame's
    ``Peer-Address`` property, ``localhost:<uid>:<gid>:<pid>``. None on transports
    without credentials."""
    try:
        addr = frame.get("Peer-Address")
    except (zmq.ZMQError, UnicodeDecodeError):
        return None
    parts = addr.split(":") if isinstance(addr, str) else ()
    if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
        return None
    return int(parts[3]), int(parts[1]), int(parts[2])


class SideWatch(threading.Thread):
    """Watches the ROUTER's disconnect monitor, the wake pipe and the admin socket for
    the main loop, and reports each event as a message from an inproc DEALER whose
    routing id is a secret of this process: ``disconnect``, ``wake``, or ``admin``
    (+ the sender's ``pid:uid`` + its routing id + the message). Answers to the admin
    socket come back the same way (``reply`` + routing id + frames) and leave here.
    Owns the monitor and admin sockets; ends (closing them) when the context is
    terminated."""

    def __init__(self, ctx: zmq.Context, monitor: zmq.Socket, wake_fd: int, endpoint: str, ident: bytes,
                 admin: zmq.Socket):
        super().__init__(name="auxipc-sidewatch", daemon=True)
        self.ctx, self.monitor, self.wake_fd, self.endpoint, self.routing_id = ctx, monitor, wake_fd, endpoint, ident
        self.admin = admin

    def run(self) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.routing_id)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        poller = zmq.Poller()
        poller.register(self.monitor, zmq.POLLIN)
        poller.register(self.wake_fd, zmq.POLLIN)
        poller.register(self.admin, zmq.POLLIN)
        poller.register(sock, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if self.monitor in ready:
                    while self.monitor.poll(0):
                        parse_monitor_message(self.monitor.recv_multipart())
                    sock.send(b"disconnect")
                if self.wake_fd in ready:
                    os.read(self.wake_fd, 4096)
                    sock.send(b"wake")
                if self.admin in ready:
                    self._from_admin(sock)
                if sock in ready:
                    while sock.poll(0):
                        msg = sock.recv_multipart()
                        if msg[0] == b"reply":
                            try:
                                self.admin.send_multipart(msg[1:], zmq.NOBLOCK)
                            except zmq.ZMQError:
                                pass    # the CLI went away, or stopped reading
        except zmq.ContextTerminated:
            pass
        finally:
            sock.close(linger=0)
            self.monitor.close(linger=0)
            self.admin.close(linger=0)

    def _from_admin(self, sock: zmq.Socket) -> None:
        while self.admin.poll(0):
            frames = self.admin.recv_multipart(copy=False)
            creds = peer_credentials(frames[0])
            who = b"%d:%d" % (creds[0], creds[1]) if creds else b"?"
            sock.send_multipart([b"admin", who, *(f.bytes for f in frames)])
