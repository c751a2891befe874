"""Peers speak only for themselves: identity from the socket, one live peer per name,
no pinning another parent's device, no taking over a routing id, no signal to a
process the broker did not see connect.

The in-memory tests drive ``Bus`` directly; the others attack a real broker with a
raw pyzmq + msgpack client (tests/test_robustness.py's ``Raw``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import msgpack
import pytest
import zmq

from proto import envelope as E
from proto.errno import Errno
from tests.test_bus import C2, C, Harness, P, bound
from tests.test_robustness import MAGIC, Raw, RawPeer, register

P2 = b"p:other"


# ---- in memory -------------------------------------------------------------------------------

def test_second_live_peer_with_the_same_role_and_name_is_eexist():
    h = Harness()
    h.register(C, "child", "idpf", pid=100)
    h.send(C2, E.Register(r=5, role="child", name="idpf", pid=200, start_time=1, schema=(1, 0)))
    m, _ = h.result(C2, 5)
    assert m.e == -Errno.EEXIST and "child idpf[100]" in m.m
    assert [p.pid for p in h.bus.peers.values()] == [100]
    # The same name in the other role, or another name in the same process, is fine.
    h.register(P, "parent", "idpf", pid=100)
    h.register(C2, "child", "other", pid=100)
    assert len(h.bus.peers) == 3


def test_same_process_registering_again_replaces_its_old_socket():
    h = Harness()
    h.register(C, "child", "idpf", pid=100)
    h.register(C2, "child", "idpf", pid=100)
    assert [(p.ident, p.alive) for p in h.bus.peers.values()] == [(C2, True)]


def test_a_dead_process_does_not_block_its_name():
    h = Harness()
    h.register(C, "child", "idpf", pid=100)
    h.bus.process_alive = lambda pid, start: False
    h.register(C2, "child", "idpf", pid=200)
    assert [p.pid for p in h.bus.peers.values()] == [200]


def test_dev_get_on_another_parents_device_is_eperm():
    h = Harness()
    dev = bound(h)
    h.register(P2, "parent", "other")
    h.register(C2, "child", "other2")
    for ident in (P2, C2):
        h.send(ident, E.DevGet(r=7, dev=dev))
        m, _ = h.result(ident, 7)
        assert m.e == -Errno.EPERM and "ixd.eth.0 belongs to parent ixd" in m.m
    assert h.bus.devices[dev].refcount == 1
    # Its parent and the child bound to it may.
    for ident in (P, C):
        h.send(ident, E.DevGet(r=8, dev=dev))
        assert h.result(ident, 8)[0].e == 0
    assert h.bus.devices[dev].refcount == 3


# ---- against a real broker ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def mbus(make_module_bus):
    return make_module_bus()


def peer_of(mbus, name):
    return next((p for p in mbus.ls()["peers"] if p["name"] == name and p["alive"]), None)


def test_claimed_pid_is_replaced_by_the_socket_pid(mbus):
    """Claiming pid 0 (the broker's process group), pid 1 or the broker's own pid
    changes nothing: the broker records the pid the connection carries."""
    for i, claim in enumerate((0, 1, mbus.broker.pid)):
        raw = Raw(mbus.root, b"claim-%d" % i)
        try:
            answer = raw.ask(register(f"claim{i}", pid=claim, start_time=12345))
            assert answer["e"] == 0, answer
            assert peer_of(mbus, f"claim{i}")["pid"] == os.getpid()
            raw.ask({"t": 2, "r": 2})
        finally:
            raw.close()
    assert mbus.ls()["stats"]["identity_corrected"] >= 3


def test_claiming_a_live_parents_pid_leaves_it_alone(mbus):
    parent = mbus.parent("tests.models:Pair", AXT_MOD="idp")
    mbus.wait_ls(lambda s: any(d["name"].startswith("idp.") for d in s["devices"]))
    inc = peer_of(mbus, "idp")["inc"]
    raw = Raw(mbus.root, b"thief")
    try:
        # Its pid and start time, a name of our own: before, the real parent was
        # declared re-registered (and its devices deleted).
        with open(f"/proc/{parent.pid}/stat", "rb") as f:
            start = int(f.read().rsplit(b")", 1)[1].split()[19])
        assert raw.ask(register("thief", role="parent", pid=parent.pid, start_time=start))["e"] == 0
        # Its name: refused while it lives.
        other = Raw(mbus.root, b"thief2")
        try:
            answer = other.ask(register("idp", role="parent", pid=parent.pid, start_time=start))
            assert answer["e"] == -Errno.EEXIST and f"parent idp[{parent.pid}]" in answer["m"], answer
        finally:
            other.close()
        p = peer_of(mbus, "idp")
        assert p["pid"] == parent.pid and p["inc"] == inc
        assert any(d["name"].startswith("idp.") for d in mbus.ls()["devices"])
        raw.ask({"t": 2, "r": 3})
    finally:
        raw.close()
        mbus.stop(parent)


def test_a_second_connection_with_a_routing_id_in_use_is_ignored(mbus):
    """No ROUTER_HANDOVER: a socket reusing a live peer's routing id gets none of its
    traffic and cannot act for it (here: UNREGISTER it)."""
    owner = RawPeer(mbus.root, "rid-owner")
    thief = Raw(mbus.root, owner.sock.getsockopt(zmq.IDENTITY))
    try:
        thief.sock.send(MAGIC + msgpack.packb({"t": 2, "r": 9}))
        assert owner.req({"t": 50, "op": "ping", "args": {}})["e"] == 0
        assert peer_of(mbus, "rid-owner") is not None
        assert not thief.sock.poll(0)
        assert owner.req({"t": 2})["e"] == 0
    finally:
        thief.close()
        owner.close()


VICTIM = "import sys, time; sys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(60)"
REGISTRANT = """
import os, sys, time, msgpack, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.DEALER); s.setsockopt(zmq.LINGER, 0); s.setsockopt(zmq.IDENTITY, b"liar")
s.connect(f"ipc://{sys.argv[1]}/bus.sock")
hb = ctx.socket(zmq.DEALER); hb.setsockopt(zmq.LINGER, 0); hb.setsockopt(zmq.IDENTITY, b"liar#hb")
hb.connect(f"ipc://{sys.argv[1]}/bus.sock")
s.send(b"AUX1" + msgpack.packb({"t": 1, "r": 1, "role": "child", "name": "liar", "pid": int(sys.argv[2]),
                                "start_time": 1, "schema": [1, 0]}))
assert s.poll(5000)
sys.stdout.write(repr(msgpack.unpackb(s.recv()[4:])["e"]) + "\\n"); sys.stdout.flush()
for _ in range(1200):
    hb.send(b"AUX1" + msgpack.packb({"t": 3}))
    time.sleep(0.05)
"""


def test_signal_goes_to_the_process_that_connected_not_the_one_claimed(mbus):
    """A peer claiming another process's pid: a signal (or a kill fault) aimed at it
    reaches the claimant, never the victim."""
    victim = subprocess.Popen([sys.executable, "-c", VICTIM], stdout=subprocess.PIPE, text=True)
    liar = None
    try:
        assert victim.stdout.readline() == "up\n"
        liar = subprocess.Popen([sys.executable, "-c", REGISTRANT, str(mbus.root), str(victim.pid)],
                                stdout=subprocess.PIPE, text=True)
        assert liar.stdout.readline() == "0\n"
        me = peer_of(mbus, "liar")
        assert me["pid"] == liar.pid
        assert mbus.client.signal("liar", "TERM") == [f"child liar[{liar.pid}]#{me['inc']}"]
        assert liar.wait(10) == -15
        assert victim.poll() is None
    finally:
        for p in (victim, liar):
            if p is not None:
                p.kill()
                p.wait(10)
                p.stdout.close()


def test_routing_ids_are_not_published(mbus):
    """A peer's hello topic is a nonce: before, ``hello:<routing id>`` on sub.sock told
    any subscriber the id to reuse (with ROUTER_HANDOVER, to take the peer's traffic)."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"hello:")
    sub.connect(f"ipc://{mbus.root}/sub.sock")
    sub.connect(f"ipc://{mbus.root}/notify.sock")
    try:
        # An echoed hello proves the subscription is in place before the parent starts.
        probe = Raw(mbus.root)
        try:
            for _ in range(100):
                assert probe.ask({"t": 50, "r": 1, "op": "echo", "args": {"topic": "hello:probe"}})["e"] == 0
                if sub.poll(50):
                    break
        finally:
            probe.close()
        while sub.poll(100):
            sub.recv_multipart()
        parent = mbus.parent("tests.models:Pair", AXT_MOD="hid")
        topics = []
        while sub.poll(500):
            topics.append(sub.recv_multipart()[0])
        assert topics, "no hello seen"
        assert not [t for t in topics if b"hid" in t or str(parent.pid).encode() in t], topics
        mbus.stop(parent)
    finally:
        sub.close(linger=0)
        ctx.term()
