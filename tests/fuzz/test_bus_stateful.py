"""A model-based test of the bus: hypothesis drives ``Bus.handle`` with random
register / driver / device / call / lock / answer / crash / delete sequences, and
the driver core's invariants are checked after every step:

- no request is answered twice, and every request of a peer that stayed alive is
  answered once its deadlines have passed;
- reference counts never go negative;
- no handler (a sync event, suspend/resume) reaches a driver after its remove(),
  nor before its probe() succeeded;
- a named lock is never held by a peer that is gone (released with its holder);
- every frame the bus emits decodes again, and every answer's ``d`` is what
  proto/replies.py declares for its request (the spec and the broker agree).
"""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from auxipc.broker.bus import Bus
from proto import envelope as E
from proto.errno import Errno
from proto.events import Event
from proto.replies import reply_type

from .harness import C2, C, Clock, P  # the fuzz harness's peers and fake clock

PEERS = {P: ("parent", "ixd", 4001), C: ("child", "idpf", 4002), C2: ("child", "other", 4003)}
CHILDREN = st.sampled_from([C, C2])
ANYONE = st.sampled_from([P, C, C2])
TASKS = st.sampled_from(["a", "b"])
LOCKS = st.sampled_from(["rtnl", "rtnl", "mutex:x"])     # rtnl, the lock every rtnl event takes, most


class BusMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.clock = Clock()
        self.bus = Bus(self.clock, epoch=1, hb_ivl=1.0, hb_liveness=3)
        self.rids = itertools.count(1)
        self.asked: dict[int, tuple[bytes, int, E.Msg]] = {}    # r -> (sender, its incarnation then, type)
        self.answers: Counter = Counter()
        self.results: dict[int, E.Result] = {}
        self.orphaned: set[int] = set()                  # requests whose sender died before the answer
        self.inbox: dict[bytes, list] = {i: [] for i in PEERS}
        self.bound: set[tuple[bytes, int]] = set()       # (child, dev) whose probe() succeeded
        self.devs: set[int] = set()

    # ---- plumbing -------------------------------------------------------------------

    def alive(self, ident: bytes):
        peer = self.bus.peers.get(ident)
        return peer if peer is not None and peer.alive else None

    def send(self, ident: bytes, msg: E.Header, payload=None) -> int:
        peer = self.alive(ident)
        r = getattr(msg, "r", None)
        if r is not None and peer is not None and not isinstance(msg, E.Result):
            self.asked[r] = (ident, peer.inc, msg.TYPE)
        m, p = E.decode(E.encode(msg, payload))
        self.bus.handle(ident, m, p)
        self.settle()
        return r

    def settle(self) -> None:
        out, self.bus.outbox = self.bus.outbox, []
        for ident, frames in out:
            m, _ = E.decode(frames)
            if isinstance(m, E.Result):
                asked = self.asked.get(m.r)
                if asked is not None and asked[0] == ident:
                    self.answers[m.r] += 1
                    self.results[m.r] = m
                    declared = reply_type(asked[2])
                    if m.e == 0 and declared is not None:
                        declared.from_wire(m.d, f"{asked[2].name} reply: $.d", strict=True)
                    elif m.e == 0:
                        assert m.d == {}, f"{asked[2].name} answered with undeclared data {m.d}"
                continue
            if isinstance(m, (E.Request, E.Pm)) and ident in (C, C2):
                assert (ident, m.dev) in self.bound, f"{type(m).__name__} for device {m.dev} reached " \
                                                     f"{ident!r} outside probe()..remove()"
            if isinstance(m, E.Remove):
                self.bound.discard((ident, m.dev))
            if hasattr(m, "r") and ident in self.inbox:
                self.inbox[ident].append(m)
        for frames in self.bus.published:
            if frames[1:] != [E.MAGIC]:
                E.decode(frames[1:])
        self.bus.published = []
        for r, (ident, inc, _) in self.asked.items():
            peer = self.alive(ident)
            if peer is None or peer.inc != inc:
                self.orphaned.add(r)
        for ident in PEERS:
            if self.alive(ident) is None:
                self.inbox[ident] = []
                self.bound = {(who, dev) for who, dev in self.bound if who != ident}

    def advance(self, seconds: float, heartbeats: bool = True) -> None:
        if heartbeats:
            for ident in PEERS:
                if self.alive(ident):
                    self.bus.handle(ident + b"#hb", E.Heartbeat(epoch=1), None)
        self.clock.t += seconds
        self.bus.tick()
        self.settle()

    # ---- peers --------------------------------------------------------------------

    @rule(ident=ANYONE)
    def register(self, ident):
        role, name, pid = PEERS[ident]
        handles = (int(Event.SET_MAC),) if role == "parent" else (int(Event.RESET_WARN),)
        r = next(self.rids)
        self.asked[r] = (ident, -1, E.Msg.REGISTER)      # answered to a peer not yet registered
        self.send(ident, E.Register(r=r, role=role, name=name, pid=pid, start_time=1, schema=(1, 0),
                                    handles=handles))
        self.orphaned.add(r)

    @rule(ident=ANYONE)
    def unregister(self, ident):
        if self.alive(ident):
            self.send(ident, E.Unregister(r=next(self.rids)))

    @rule(ident=ANYONE)
    def crash(self, ident):
        peer = self.alive(ident)
        if peer is not None:
            self.bus.peer_died(peer, "crashed (test)")
            self.settle()

    @rule(seconds=st.sampled_from([0.01, 0.2, 1.0, 2.5]))
    def time_passes(self, seconds):
        self.advance(seconds)

    @rule()
    def everyone_silent(self):
        self.advance(3.5, heartbeats=False)

    # ---- drivers and devices --------------------------------------------------------

    @rule(child=CHILDREN, name=st.sampled_from(["drv_eth", "drv_rdma"]), table=st.sampled_from(["eth", "rdma"]))
    def driver_register(self, child, name, table):
        self.send(child, E.DrvRegister(r=next(self.rids), name=name, id_table=(f"ixd.{table}",), probe=True,
                                       remove=True, handles=(int(Event.RESET_WARN),)))

    @rule(child=CHILDREN, name=st.sampled_from(["drv_eth", "drv_rdma"]))
    def driver_unregister(self, child, name):
        self.send(child, E.DrvUnregister(r=next(self.rids), name=name))

    @rule(name=st.sampled_from(["eth", "rdma"]), id=st.integers(0, 1))
    def device_add(self, name, id):
        r = self.send(P, E.DevInit(r=next(self.rids), name=name, id=id, release=True))
        result = self.results.get(r)
        if result is not None and result.e == 0:
            self.devs.add(result.d["dev"])
            self.send(P, E.DevAdd(r=next(self.rids), dev=result.d["dev"], task="add"))

    @precondition(lambda self: self.devs)
    @rule(data=st.data())
    def device_delete(self, data):
        self.send(P, E.DevDelete(r=next(self.rids), dev=data.draw(st.sampled_from(sorted(self.devs)))))

    @precondition(lambda self: self.devs)
    @rule(data=st.data())
    def device_uninit(self, data):
        self.send(P, E.DevUninit(r=next(self.rids), dev=data.draw(st.sampled_from(sorted(self.devs)))))

    @precondition(lambda self: self.devs)
    @rule(ident=ANYONE, get=st.booleans(), data=st.data())
    def get_put(self, ident, get, data):
        dev = data.draw(st.sampled_from(sorted(self.devs)))
        msg = E.DevGet if get else E.DevPut
        self.send(ident, msg(r=next(self.rids), dev=dev))

    @precondition(lambda self: self.devs)
    @rule(suspend=st.booleans(), data=st.data())
    def device_pm(self, suspend, data):
        dev = data.draw(st.sampled_from(sorted(self.devs)))
        self.send(P, E.DevPm(r=next(self.rids), dev=dev, op="suspend" if suspend else "resume"))

    # ---- calls, locks, answers ------------------------------------------------------

    @precondition(lambda self: self.devs)
    @rule(timeout_ms=st.sampled_from([50, 400, 3000]), task=TASKS, data=st.data())
    def parent_calls(self, timeout_ms, task, data):
        dev = data.draw(st.sampled_from(sorted(self.devs)))
        self.send(P, E.Call(r=next(self.rids), dev=dev, ev=Event.RESET_WARN, timeout_ms=timeout_ms, task=task),
                  {"reset_type": 1})

    @precondition(lambda self: self.devs)
    @rule(child=CHILDREN, task=TASKS, data=st.data())
    def child_calls(self, child, task, data):
        dev = data.draw(st.sampled_from(sorted(self.devs)))
        self.send(child, E.Call(r=next(self.rids), dev=dev, ev=Event.SET_MAC, timeout_ms=400, task=task),
                  {"addr": b"\x02" * 6})

    @rule(ident=ANYONE, task=TASKS, name=LOCKS, ensure=st.sampled_from([False, False, True]),
          under=st.lists(TASKS, max_size=1))
    def lock(self, ident, task, name, ensure, under):
        self.send(ident, E.LockReq(r=next(self.rids), name=name, task=task, timeout_ms=300, ensure=ensure,
                                   stack=tuple(under)))

    @rule(ident=ANYONE, task=TASKS, name=LOCKS)
    def unlock(self, ident, task, name):
        self.send(ident, E.UnlockReq(r=next(self.rids), name=name, task=task))

    @rule(ident=ANYONE, ok=st.booleans(), data=st.data())
    def answer(self, ident, ok, data):
        if not self.inbox[ident]:
            return
        m = self.inbox[ident].pop(data.draw(st.integers(0, len(self.inbox[ident]) - 1)))
        payload = None
        if isinstance(m, E.Request):
            payload = {"addr": b"\x02" * 6, "filter_id": 1} if m.ev == Event.SET_MAC else {}
        if isinstance(m, E.Probe) and ok:
            self.bound.add((ident, m.dev))
        self.send(ident, E.Result(r=m.r, e=0 if ok else -Errno.EIO), payload if ok else None)

    # ---- invariants -----------------------------------------------------------------

    @invariant()
    def answered_at_most_once(self):
        twice = {r: n for r, n in self.answers.items() if n > 1}
        assert not twice, f"answered more than once: {twice}"

    @invariant()
    def refcounts_never_negative(self):
        for dev in self.bus.devices.values():
            assert all(n > 0 for n in dev.refs.values()), (dev.name, dict(dev.refs))
        for peer in self.bus.peers.values():
            assert all(n > 0 for n in peer.holding.values()), (peer.label, dict(peer.holding))

    @invariant()
    def locks_released_with_their_holder(self):
        for lock in self.bus.lockdep.named.values():
            owner = lock.owner
            if owner is not None and owner.peer is not None:
                assert owner.peer.alive, f"{lock.name} still held by {owner.peer.label}, which is gone"

    def teardown(self):
        # Let every deadline pass with every live peer heartbeating: each request of a
        # peer still alive must have had its one answer by then. probe() and remove()
        # have no deadline (as in the kernel, they block while the driver lives): the
        # live drivers return from theirs first, as a driver eventually does.
        for _ in range(40):
            for ident in PEERS:
                if self.alive(ident) is None:
                    continue
                for m in [m for m in self.inbox.get(ident, ()) if isinstance(m, (E.Probe, E.Remove))]:
                    self.inbox[ident].remove(m)
                    if isinstance(m, E.Probe):
                        self.bound.add((ident, m.dev))
                    self.send(ident, E.Result(r=m.r))
            self.advance(1.0)
        never = sorted(r for r in self.asked if r not in self.orphaned and self.answers[r] == 0)
        assert not never, f"never answered: {never}"


BusMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
test_bus_model = BusMachine.TestCase


def test_a_refused_relock_keeps_the_holder_entry():
    """The sequence the model found: a task re-taking rtnl is refused -EDEADLK, and
    rtnl must still be released when its holder dies (it stayed held for ever)."""
    m = BusMachine()
    m.register(P)
    m.lock(P, "a", "rtnl", False, [])
    m.lock(P, "a", "rtnl", False, [])
    assert m.results[max(m.results)].e == -Errno.EDEADLK
    m.crash(P)
    m.locks_released_with_their_holder()
    m.teardown()


def test_a_second_wait_for_the_same_lock_is_refused():
    """What the fuzzer found: task a queued twice for rtnl (held by q); the peer died and
    the wait it no longer tracked was granted to the dead peer, holding rtnl for ever."""
    m = BusMachine()
    m.register(P)
    m.lock(P, "q", "rtnl", False, [])
    m.lock(P, "a", "rtnl", False, [])
    m.lock(P, "a", "rtnl", False, [])
    assert m.results[max(m.results)].e == -Errno.EBUSY
    m.everyone_silent()
    m.locks_released_with_their_holder()
    m.teardown()
