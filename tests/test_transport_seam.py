"""The transport seam's contract (auxipc/runtime/seam.py), held by both the ZeroMQ
transport and its in-memory twin: the same steps, the same outcomes. For ZeroMQ
the test binds the broker's three sockets itself (a ROUTER, and an XSUB/XPUB pair
it forwards by hand) on a fresh runtime dir."""

from __future__ import annotations

import pytest
import zmq

from auxipc.runtime.memory import MemoryTransport
from auxipc.runtime.seam import DEALER, SUB
from auxipc.runtime.transport import ZmqTransport
from auxipc.runtime_dir import endpoints

IDENT = b"c:seam:1:abcdef"


class ZmqSide:
    """The broker's end for a ZmqTransport: a ROUTER on ``bus`` and a hand-forwarded
    XSUB (``pub``) -> XPUB (``sub``)."""

    def __init__(self, root):
        self.ep = endpoints(root)
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.xsub = self.ctx.socket(zmq.XSUB)
        self.xpub = self.ctx.socket(zmq.XPUB)
        for sock, where in ((self.router, self.ep.bus), (self.xsub, self.ep.pub), (self.xpub, self.ep.sub)):
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(where)
        self.tr = ZmqTransport(self.ep)

    def reply(self, frames: list) -> list:
        """Receive one DEALER message and answer it with ``frames``; returns what came."""
        ident, *got = self.router.recv_multipart()
        assert ident == IDENT
        self.router.send_multipart([ident, *frames])
        return got

    def forward_until(self, done) -> None:
        """Forward subscriptions and publications until ``done()``: each step waits on
        the sockets (the test's timeout bounds a transport that never delivers)."""
        poller = zmq.Poller()
        poller.register(self.xsub, zmq.POLLIN)
        poller.register(self.xpub, zmq.POLLIN)
        while not done():
            for sock, _ in poller.poll(50):
                frames = sock.recv_multipart()
                (self.xpub if sock is self.xsub else self.xsub).send_multipart(frames)

    def close(self) -> None:
        self.tr.close()
        for sock in (self.router, self.xsub, self.xpub):
            sock.close(0)
        self.ctx.term()


class MemorySide:
    def __init__(self, root):
        self.tr = MemoryTransport()

    def reply(self, frames: list) -> list:
        got = self.tr.sent[-1]
        self.tr.to_peer.append(frames)
        return got

    def forward_until(self, done) -> None:
        assert done()

    def close(self) -> None:
        self.tr.close()


@pytest.fixture(params=["zmq", "memory"])
def side(request, tmp_path):
    s = (ZmqSide if request.param == "zmq" else MemorySide)(tmp_path)
    yield s
    s.close()


def test_a_request_and_its_answer_cross_the_dealer(side):
    tr = side.tr
    assert not tr.up
    tr.connect(IDENT)
    assert tr.up and tr.recv_dealer() is None and tr.recv_sub_now() is None
    tr.send([b"hello", b"broker"])
    assert side.reply([b"answer"]) == [b"hello", b"broker"]
    ready = 0
    while not ready & DEALER:
        ready = tr.poll(5.0)
    assert tr.recv_dealer() == [b"answer"] and tr.recv_dealer() is None


def test_publications_come_back_on_a_subscribed_topic_only(side):
    tr = side.tr
    tr.connect(IDENT)
    tr.subscribe(b"hello:")
    got: list = []

    def hello_back() -> bool:
        # Published until one comes back (a subscription takes a moment to reach the
        # publisher over ZeroMQ): what arrives is only ever the subscribed topic.
        if not got:
            assert tr.publish([b"other", b"x"], 1.0) and tr.publish([b"hello:me", b"x"], 1.0)
        frames = tr.recv_sub_now()
        if frames is not None:
            got.append(frames)
        return bool(got)
    side.forward_until(hello_back)
    while tr.poll(0) & SUB:
        frames = tr.recv_sub()
        if frames is not None:
            got.append(frames)
    assert got and all(frames == [b"hello:me", b"x"] for frames in got)


def test_a_wake_ends_a_poll_and_a_disconnect_drops_what_was_queued(side):
    tr = side.tr
    tr.connect(IDENT)
    tr.wake()
    assert tr.poll(30.0) == 0          # returns on the wake (the test's timeout would fail a hang)
    tr.send([b"ping"])
    side.reply([b"stale"])
    tr.disconnect(0)
    assert not tr.up
    tr.connect(IDENT + b"2")           # a new incarnation has a new identity (peer_ident)
    assert tr.recv_dealer() is None    # the answer to the old incarnation never arrives
