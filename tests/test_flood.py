"""Flooding a real broker: liveness is judged by when a heartbeat arrived, not by
when the broker got round to it; queues are bounded and drops are counted."""

from __future__ import annotations

import json
import subprocess
import sys

import msgpack
import pytest

from tests.test_robustness import MAGIC

FLOOD = 5000


FLOODER = """
import os, sys, msgpack, zmq
root, n = sys.argv[1], int(sys.argv[2])
st = int(open(f"/proc/{os.getpid()}/stat").read().rsplit(")", 1)[1].split()[19])
def reg(name, **kw):
    return b"AUX1" + msgpack.packb({"t": 1, "r": 1, "role": "child", "name": name, "pid": os.getpid(),
                                    "start_time": st, "schema": [1, 0], **kw})
ctx = zmq.Context()
ctx.set(zmq.MAX_SOCKETS, n + 100)
socks = []
for i in range(n):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.IDENTITY, b"flood-%d" % i)
    s.connect(f"ipc://{root}/bus.sock")
    socks.append(s)
for s in socks:          # every connection made and answered (a refused REGISTER)
    s.send(reg("x", role="nobody"))
for s in socks:
    assert s.poll(60000)
    s.recv()
print("connected", flush=True)
sys.stdin.readline()
handles = list(range(1, 4097))     # the most a REGISTER may declare: each costs the broker
for i, s in enumerate(socks):
    s.send(reg(f"flood{i}", handles=handles))
print("sent", flush=True)
sys.stdin.readline()
for s in socks:
    s.close(linger=0)
ctx.term()
"""


@pytest.mark.timeout(180)
def test_registration_flood_does_not_get_live_peers_declared_dead(bus):
    """5,000 registrations that never heartbeat, queued at once in front of the real
    peers' heartbeats: before, the broker declared the real parent and child dead
    (their heartbeats sat in its queue behind the flood). The flood comes from a
    process of its own, its 5,000 connections made before the real peers start (a
    connection storm is another matter: this is about messages queued in a line)."""
    flooder = subprocess.Popen([sys.executable, "-c", FLOODER, str(bus.root), str(FLOOD)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert flooder.stdout.readline() == "connected\n"
        parent = bus.parent("tests.models:Pair")
        child = bus.child("tests.models:Rec", AXT_IDS="tp.eth")
        bus.wait_ls(lambda s: any(d["bind"] == "bound" for d in s["devices"]))
        since = bus.uevents()[-1]["seq"]
        flooder.stdin.write("go\n")
        flooder.stdin.flush()
        assert flooder.stdout.readline() == "sent\n"
        # Everything sent; the ping below queues behind the flood.
        ping = bus.client.ctl("ping", timeout=60.0)[0]
        assert ping.e == 0
        deaths = [e for e in bus.uevents(since) if e["action"] == "PEER_DEAD"]
        real = [e["detail"] for e in deaths if e["detail"]["pid"] in (parent.pid, child.pid)]
        assert not real, real
        snap = bus.ls()
        peers = {p["pid"]: p["alive"] for p in snap["peers"]}
        assert peers.get(parent.pid) and peers.get(child.pid), peers
        # The flood did queue up in front of them: the broker read ahead of it.
        assert snap["stats"]["backlog_peak"] > 1000, snap["stats"]
    finally:
        if flooder.poll() is None:
            flooder.stdin.write("end\n")
            flooder.stdin.close()
            try:
                flooder.wait(30)
            except subprocess.TimeoutExpired:
                flooder.kill()
                flooder.wait(10)
        flooder.stdout.close()


@pytest.mark.timeout(180)
def test_ls_and_wait_with_10000_devices(bus):
    """``ls --json`` and ``wait`` on a bus of 10,000 devices: before, ``ls`` failed with
    EMSGSIZE from about 1,000 devices (the snapshot was one message)."""
    from tests.test_robustness import RawPeer
    n = 10_000
    parent = RawPeer(bus.root, "big", role="parent")
    try:
        for i in range(n):
            parent.sock.send(MAGIC + msgpack.packb({"t": 20, "r": 10 + i, "name": "eth", "id": i}))
        devs = []
        for _ in range(n):
            assert parent.sock.poll(30000)
            answer = msgpack.unpackb(parent.sock.recv()[4:])
            assert answer["e"] == 0, answer
            devs.append(answer["d"]["dev"])
        for i, dev in enumerate(devs):
            parent.sock.send(MAGIC + msgpack.packb({"t": 21, "r": 20_000 + i, "dev": dev}))
        for _ in range(n):
            assert parent.sock.poll(30000)
            assert msgpack.unpackb(parent.sock.recv()[4:])["e"] == 0
        r = bus.cli("wait", "device", f"big.eth.{n - 1}", "--timeout", "60", timeout=120)
        assert r.returncode == 0, r.stderr
        r = bus.cli("ls", "--json", timeout=120)
        assert r.returncode == 0, r.stderr
        # Parsed last: 80 MB of JSON holds the GIL long enough to starve this process's
        # heartbeat thread (the raw parent would be declared dead, rightly).
        parent.close()
        snap = json.loads(r.stdout)
        names = [d["name"] for d in snap["devices"]]
        assert len(names) == n and len(set(names)) == n and names[-1] == f"big.eth.{n - 1}"
    finally:
        parent.close()
