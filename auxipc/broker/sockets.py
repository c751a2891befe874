"""The broker's sockets, bound in one place with the limits that bound what a peer costs it.

Sockets (only the broker binds; peers connect, so restarts need no reconfiguration):
- ``bus.sock``  ROUTER: every request/reply exchange (``ROUTER_MANDATORY``; sends
  never block). No ``ROUTER_HANDOVER``: a second connection with a routing id in use
  is ignored by libzmq instead of taking the first one's traffic.
- ``pub.sock``  XSUB and ``sub.sock`` XPUB, joined by ``AsyncGate`` in its own
  thread: async events, each checked for its sender (see AsyncGate). The XSUB
  subscribes upstream to everything, so a publisher never waits for a
  subscription to propagate.
- ``admin.sock`` ROUTER: control ops from the CLI (the only place ops that change
  the bus are taken), owned by the side thread.
- ``notify.sock`` XPUB: bus notifications and the call trace, from the broker's own
  thread, so it sees who subscribes (the per-call trace is built only while someone reads it).
Every socket refuses a message larger than ``MAX_MSG`` (libzmq drops the connection
that sends one), and every queue is bounded by a high-water mark.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import zmq

from auxipc.broker.auth import Listeners
from auxipc.runtime_dir import Endpoints
from proto import envelope as E

MAX_MSG = E.MAX_MSG + 4096   # the message frame and room for the routing id
PUB_HWM = 10_000             # messages queued per pub/sub pipe (each at most MAX_MSG)
# Messages the XPUB queues per subscriber (pipe) that does not read: bounds what one
# stalled subscriber costs the broker to this times a message, about 64 MiB at the
# reference runtime's largest batch (64 KiB); past it, that subscriber's events are
# dropped and counted (async_dropped_hwm). The price: a subscriber that pauses longer
# than this many messages (plus its own receive queue) loses events.
PUB_SNDHWM = 1_000

class BrokerSockets(NamedTuple):
    router: zmq.Socket      # bus.sock (and the side thread's inproc endpoint)
    monitor: zmq.Socket     # the ROUTER's disconnect monitor (the side thread owns it)
    admin: zmq.Socket       # admin.sock (the side thread owns it)
    xsub: zmq.Socket        # pub.sock  (the async gate's thread owns it)
    xpub: zmq.Socket        # sub.sock  (the async gate's thread owns it)
    notify: zmq.Socket      # notify.sock


def bind_sockets(ctx: zmq.Context, ep: Endpoints, listen: Listeners, side: str, hb_ivl: float) -> BrokerSockets:
    """Bind every broker socket in ``ep`` (and on ``listen``'s TCP ports); ``side`` is the
    inproc endpoint the side thread reports on. The ROUTER's receive waits at most one
    heartbeat interval (the main loop's wait when no timer is due sooner)."""
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.ROUTER_MANDATORY, 1)
    r.setsockopt(zmq.MAXMSGSIZE, MAX_MSG)
    r.setsockopt(zmq.LINGER, 100)
    r.setsockopt(zmq.SNDHWM, 10000)
    r.setsockopt(zmq.RCVHWM, 10000)
    r.setsockopt(zmq.RCVTIMEO, math.ceil(hb_ivl * 1000))
    monitor = r.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    r.bind(ep.bus)
    r.bind(side)
    listen.bind(r, "bus")
    # The admin socket: control ops that change the bus are taken only from here (the CLI).
    admin = ctx.socket(zmq.ROUTER)
    admin.setsockopt(zmq.ROUTER_MANDATORY, 1)
    admin.setsockopt(zmq.MAXMSGSIZE, MAX_MSG)
    admin.setsockopt(zmq.LINGER, 100)
    admin.bind(ep.admin)
    xsub = ctx.socket(zmq.XSUB)
    xsub.setsockopt(zmq.RCVHWM, PUB_HWM)
    xsub.setsockopt(zmq.MAXMSGSIZE, MAX_MSG)
    xsub.bind(ep.pub)
    listen.bind(xsub, "pub")
    xsub.send(b"\x01")   # subscribe upstream to everything: filtering happens at the XPUB
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.SNDHWM, PUB_SNDHWM)
    xpub.setsockopt(zmq.MAXMSGSIZE, MAX_MSG)
    xpub.bind(ep.sub)
    listen.bind(xpub, "sub")
    notify = ctx.socket(zmq.XPUB)
    notify.setsockopt(zmq.SNDHWM, PUB_HWM)
    notify.setsockopt(zmq.MAXMSGSIZE, MAX_MSG)
    notify.bind(ep.notify)
    listen.bind(notify, "notify")
    return BrokerSockets(r, monitor, admin, xsub, xpub, notify)
