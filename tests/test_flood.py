"""Flooding a real broker: liveness is judged by when a heartbeat arrived, not by
when the broker got round to it; queues are bounded and drops are counted."""

from __future__ import annotations

import os

import msgpack
import pytest
import zmq

from tests.test_robustness import MAGIC, register

FLOOD = 5000


@pytest.mark.timeout(180)
def test_registration_flood_does_not_get_live_peers_declared_dead(bus):
    """5,000 registrations that never heartbeat, queued at once in front of the real
    peers' heartbeats: before, the broker declared the real parent and child dead
    (their heartbeats sat in its queue behind the flood)."""
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, FLOOD + 100)
    socks = []
    try:
        for i in range(FLOOD):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.IDENTITY, b"flood-%d" % i)
            s.connect(f"ipc://{bus.root}/bus.sock")
            socks.append(s)
        # Sent once every socket is connected, so they all queue at once; each
        # declares 4,096 handled events (the most a REGISTER may), to cost the broker.
        for s in socks:
            s.send(MAGIC + msgpack.packb(register("x", role="nobody")))
        for s in socks:
            assert s.poll(60000)
            s.recv()
        # The real peers start once the 5,000 connections are made (a connection storm
        # is another matter: this is about messages queued in front of heartbeats).
        parent = bus.parent("tests.models:Pair")
        child = bus.child("tests.models:Rec", AXT_IDS="tp.eth")
        bus.wait_ls(lambda s: any(d["bind"] == "bound" for d in s["devices"]))
        since = bus.uevents()[-1]["seq"]
        handles = list(range(1, 4097))
        for i, s in enumerate(socks):
            s.send(MAGIC + msgpack.packb(register(f"flood{i}", handles=handles)))
        # Everything sent; the ping below queues behind the flood.
        ping = bus.client.ctl("ping", timeout=60.0)[0]
        assert ping.e == 0
        deaths = [e for e in bus.uevents(since) if e["action"] == "PEER_DEAD"]
        assert not [e for e in deaths if e["detail"]["pid"] in (parent.pid, child.pid)], [(e["seq"], e["detail"]) for e in deaths[:5]]
        snap = bus.ls()
        peers = {p["pid"]: p["alive"] for p in snap["peers"]}
        assert peers.get(parent.pid) and peers.get(child.pid), peers
        # The flood did queue up in front of them: the broker read ahead of it.
        assert snap["stats"]["backlog_peak"] > 1000, snap["stats"]
    finally:
        for s in socks:
            s.close(linger=0)
        ctx.term()
