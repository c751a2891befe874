"""Parent and child runtime logic in one thread, over the in-memory transport
(auxipc/runtime/memory.py): the test plays the broker. Deferral under device_lock,
nested deliveries while a call waits, adopt after a broker restart, early events
before BIND, sequence checks and timers, without a process or a socket. What the
real transport adds (ZeroMQ, heartbeats, processes) is covered by the integration
tests."""

from __future__ import annotations

import pytest

from auxipc.runtime.dispatch import BrokerLost
from auxipc.runtime.handlers import handler
from auxipc.runtime.memory import MemoryTransport, Starved
from auxipc.states import DeviceState
from child.runtime import AuxDriver, ChildRuntime
from parent.runtime import ParentModel, ParentRuntime
from proto import envelope as E
from proto.errno import AuxError, Errno
from proto.events import Event, LinkChange, PostConfig, ResetType, ResetWarn, SetMac, SetMacReply

RESET_WARN, SET_MAC, LINK = int(Event.RESET_WARN), int(Event.SET_MAC), int(Event.LINK_CHANGE)
POST_CONFIG = int(Event.POST_CONFIG)
MAC = b"\x02\x00\x00\x00\x00\x01"


class Broker:
    """Plays the broker for one runtime: each DEALER message is logged and answered at
    once (REGISTER with a welcome, everything else with success) unless a hook for its
    type returns the result itself. A hook may first queue requests or events: they
    reach the runtime while its call waits, as nested deliveries over the wire do."""

    def __init__(self):
        self.got: list = []          # (message, payload) the runtime sent, in order
        self.hooks: dict = {}        # message type -> fn(msg, payload) -> (e, m, d, reply) or None
        self.epoch = 5
        self.inc = 0
        self.tr: MemoryTransport | None = None
        self._r = 1000

    def __call__(self, tr: MemoryTransport, frames: list) -> None:
        self.tr = tr
        msg, payload = E.decode(frames)
        self.got.append((msg, payload))
        if isinstance(msg, (E.Result, E.Resync)) or not hasattr(msg, "r"):
            return
        hook = self.hooks.get(type(msg))
        out = hook(msg, payload) if hook is not None else None
        e, m, d, reply = out if out is not None else (0, "", {}, None)
        if isinstance(msg, E.Register) and out is None:
            self.inc += 1
            d = {"inc": self.inc, "epoch": self.epoch, "peer": f"{msg.role} {msg.name}#{self.inc}",
                 "hb_ivl_ms": 100, "hb_liveness": 3, "faults": []}
        tr.to_peer.append(E.encode(E.Result(r=msg.r, e=e, m=m, d=d), reply))

    def request(self, cls, payload=None, **fields) -> int:
        """Queue a request to the runtime; returns its request id."""
        self._r += 1
        self.tr.to_peer.append(E.encode(cls(r=self._r, **fields), payload))
        return self._r

    def event(self, topic: bytes, dev: int, seq: int, events: list, inc: int = 1) -> None:
        """Queue an EVENT message (``events``: (code, payload object) pairs) on the SUB."""
        packed = [E.packb(code) + E.packb(p.to_wire()) for code, p in events]
        self.tr.events.append([topic, E.event_frame(dev, seq, inc, self.epoch, packed)])

    def sent(self, cls) -> list:
        return [m for m, _ in self.got if isinstance(m, cls)]

    def answer(self, r: int) -> E.Result:
        [res] = [m for m in self.sent(E.Result) if m.r == r]
        return res


class Eth(AuxDriver):
    name = "ut_eth"
    id_table = ["ut.eth"]

    def __init__(self):
        self.log: list = []
        self.during_reset = None      # what the RESET_WARN handler does (after logging)

    def probe(self, adev):
        self.log.append(("probe", adev.name))

    def remove(self, adev):
        self.log.append(("remove", adev.name))

    @handler(Event.RESET_WARN)
    def reset_warn(self, adev, warn):
        self.log.append(("reset_warn", adev.dev_id))
        if self.during_reset is not None:
            self.during_reset(adev)
        self.log.append(("reset_warn done", adev.dev_id))

    @handler(Event.LINK_CHANGE)
    def link_change(self, adev, link):
        self.log.append(("link", adev.dev_id, link.speed_mbps))


@pytest.fixture
def broker():
    return Broker()


@pytest.fixture
def child(broker):
    drv = Eth()
    rt = ChildRuntime([drv], transport=MemoryTransport(broker))
    rt.open()
    yield rt, drv
    rt.close()


def probe(broker: Broker, dev: int, name: str, **kw) -> int:
    return broker.request(E.Probe, dev=dev, name=name, driver="ut_eth", parent_handles=(SET_MAC,), **kw)


def serve_all(rt) -> None:
    while rt.tr.to_peer or rt.tr.events:
        rt.pump(0)


def reset_warn(broker: Broker, dev: int) -> int:
    return broker.request(E.Request, ResetWarn(reset_type=ResetType.FUNC).to_wire(), dev=dev, ev=RESET_WARN,
                          timeout_ms=1000, task="p#1/x1")


def answer_set_mac(broker: Broker, before=lambda: None) -> None:
    def hook(msg, payload):
        before()
        return 0, "", {}, SetMacReply(addr=MAC, filter_id=7).to_wire()
    broker.hooks[E.Call] = hook


def test_registration_subscribes_and_says_hello_through_the_broker(child, broker):
    rt, _ = child
    reg, drv = broker.sent(E.Register)[0], broker.sent(E.DrvRegister)[0]
    assert (reg.role, reg.handles) == ("child", (LINK, RESET_WARN))
    assert (drv.name, drv.id_table, drv.remove) == ("ut_eth", ("ut.eth",), True)
    hello = rt.tr.topics[0]
    assert hello.startswith(b"hello:") and rt.tr.ident not in hello    # a nonce, not the routing id
    assert rt.tr.topics == [hello, b"C:ut.eth."]
    assert rt.tr.published == [[hello, E.MAGIC]]     # looped back: the path is up
    assert (rt.inc, rt.epoch, rt.registered) == (1, 5, ["ut_eth"])


def test_a_device_is_probed_while_the_driver_registers(broker):
    """The broker probes matching devices before DRV_REGISTER returns: the PROBE is
    served nested inside the registration's wait, and answered before it."""
    broker.hooks[E.DrvRegister] = lambda msg, p: probe(broker, 1, "ut.eth.0") and None
    drv = Eth()
    rt = ChildRuntime([drv], transport=MemoryTransport(broker))
    rt.open()
    try:
        assert drv.log == [("probe", "ut.eth.0")]
        assert [type(m).__name__ for m, _ in broker.got] == ["Register", "DrvRegister", "Result"]
        assert broker.sent(E.Result)[0].e == 0 and list(rt.devices) == [1]
    finally:
        rt.close()


def test_device_lock_defers_the_same_device_and_nests_another(child, broker):
    """While a RESET_WARN handler of device 1 waits for its SET_MAC call, a request for
    device 2 is served nested (another device's lock), one for device 1 waits until
    the handler returned (device_lock), and each is answered exactly once."""
    rt, drv = child
    probe(broker, 1, "ut.eth.0")
    probe(broker, 2, "ut.eth.1")
    serve_all(rt)
    drv.log.clear()
    nested = []
    answer_set_mac(broker, lambda: nested.extend([reset_warn(broker, 1), reset_warn(broker, 2)]))
    first_call = [True]

    def during(adev):
        if adev.dev_id == 1 and first_call[0]:
            first_call[0] = False
            assert adev.call(Event.SET_MAC, SetMac(addr=MAC)).filter_id == 7
    drv.during_reset = during
    outer = reset_warn(broker, 1)
    serve_all(rt)
    assert drv.log == [("reset_warn", 1), ("reset_warn", 2), ("reset_warn done", 2),
                       ("reset_warn done", 1), ("reset_warn", 1), ("reset_warn done", 1)]
    answered = [m.r for m in broker.sent(E.Result)][-3:]
    assert answered == [nested[1], outer, nested[0]]
    assert all(broker.answer(r).e == 0 for r in (outer, *nested))
    assert rt.dispatch.depth == 0 and not rt.dispatch.locked and not rt.dispatch.deferred


def test_async_events_for_a_locked_device_wait_for_its_handler(child, broker):
    rt, drv = child
    probe(broker, 1, "ut.eth.0")
    serve_all(rt)
    answer_set_mac(broker, lambda: broker.event(b"C:ut.eth.0", 1, 1, [(LINK, LinkChange(up=True, speed_mbps=10))]))
    drv.during_reset = lambda adev: adev.call(Event.SET_MAC, SetMac(addr=MAC))
    reset_warn(broker, 1)
    serve_all(rt)
    assert drv.log[1:] == [("reset_warn", 1), ("reset_warn done", 1), ("link", 1, 10)]


def test_sequences_drop_duplicates_and_ask_a_resync_for_a_gap(child, broker):
    rt, drv = child
    probe(broker, 1, "ut.eth.0")
    serve_all(rt)
    ev = [(LINK, LinkChange(up=True, speed_mbps=s)) for s in range(4)]
    broker.event(b"C:ut.eth.0", 1, 1, ev[:2])
    broker.event(b"C:ut.eth.0", 1, 2, ev[1:3])     # seq 2 again, then 3
    broker.event(b"C:ut.eth.0", 1, 6, ev[3:])      # 4 and 5 lost
    serve_all(rt)
    assert [x[2] for x in drv.log if x[0] == "link"] == [0, 1, 2, 3]
    assert (rt.stats["async_duplicate"], rt.stats["async_lost"], rt.stats["async_delivered"]) == (1, 2, 4)
    assert [m.dev for m in broker.sent(E.Resync)] == [1]


def test_a_device_bound_before_a_broker_restart_is_adopted_without_a_second_probe(child, broker):
    rt, drv = child
    probe(broker, 1, "ut.eth.0")
    serve_all(rt)
    broker.epoch = 6
    broker.hooks[E.DrvRegister] = lambda msg, p: probe(broker, 9, "ut.eth.0", adopt=True) and None
    rt.reconnect("test: the broker restarted")
    reg = broker.sent(E.Register)[-1]
    assert [(b.name, b.driver, b.refs) for b in reg.restore.bound] == [("ut.eth.0", "ut_eth", 0)]
    assert drv.log == [("probe", "ut.eth.0")]
    assert list(rt.devices) == [9] and rt.devices[9].bound and not rt.orphans
    assert (rt.stats["adopted"], rt.inc, rt.epoch, rt.tr.incarnations) == (1, 2, 6, 2)


def test_a_broker_lost_again_while_the_driver_registers_is_one_more_round(child, broker):
    """The broker restarting twice in a row: the driver's DRIVER_REGISTER after the first
    restart meets a lost broker. The runtime registers again (a new incarnation) instead of
    ending the process with ESHUTDOWN, and the device comes back by adoption."""
    rt, drv = child
    probe(broker, 1, "ut.eth.0")
    serve_all(rt)
    rounds: list = []

    def register_driver(msg, payload):
        rounds.append(msg.name)
        if len(rounds) == 1:
            rt.hb.lose("test: the broker went away mid-restore")
            raise BrokerLost("test: the broker went away mid-restore")
        probe(broker, 9, "ut.eth.0", adopt=True)
        return None
    broker.hooks[E.DrvRegister] = register_driver
    rt.reconnect("test: the broker restarted")
    assert rounds == ["ut_eth", "ut_eth"] and len(broker.sent(E.Register)) == 3
    rt.pump(0)
    assert list(rt.devices) == [9] and rt.devices[9].bound and drv.log == [("probe", "ut.eth.0")]


def test_a_handshake_broken_off_over_ipc_is_a_lost_broker_not_a_key_problem(tmp_path):
    import zmq

    from auxipc.runtime.transport import Heartbeat
    from auxipc.runtime_dir import endpoints
    hb = Heartbeat(None, endpoints(tmp_path), b"c:x:1", 0.1, 3, 1, lambda: None)
    why = hb.why_lost({"event": zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, "value": 104})
    assert why == "the handshake with the broker broke off (errno 104)"
    assert hb.why_lost({"event": zmq.EVENT_DISCONNECTED, "value": 9}) == "the broker's socket disconnected"


def test_a_device_nobody_adds_again_is_removed_after_the_grace(child, broker):
    rt, drv = child
    probe(broker, 1, "ut.eth.0")
    serve_all(rt)
    rt.ORPHAN_GRACE = 0.0
    rt.reconnect("test: the broker restarted")
    rt.pump(0)
    assert drv.log == [("probe", "ut.eth.0"), ("remove", "ut.eth.0")] and not rt.orphans


def test_timers_wait_for_the_stack_to_unwind(child, broker):
    """A timer or thread-submitted callback is a workqueue item: never run nested in a
    delivery (a pump inside a handler's call), always in a task of its own."""
    rt, drv = child
    ran = []
    probe(broker, 1, "ut.eth.0")
    serve_all(rt)
    answer_set_mac(broker, lambda: rt.call_soon_threadsafe(lambda: ran.append(rt.task)))

    def during(adev):
        adev.call(Event.SET_MAC, SetMac(addr=MAC))
        ran.append("call returned")
    drv.during_reset = during
    reset_warn(broker, 1)
    serve_all(rt)
    assert ran[0] == "call returned" and ran[1].startswith("ut_eth#1/w")


def test_a_lost_heartbeat_ends_the_pump(child):
    rt, _ = child
    rt.hb.lose("test: silent broker")
    with pytest.raises(BrokerLost, match="silent broker"):
        rt.pump(0)


def test_a_call_nobody_answers_fails_at_once_on_the_twin(child, broker):
    rt, _ = child
    rt.tr.broker = None          # nobody answers
    with pytest.raises(Starved) as exc:
        rt.request(lambda r: E.DevGet(r=r, dev=1), what="get_device")
    assert exc.value.errno == Errno.ETIMEDOUT and "did not answer" in exc.value.message


class Ut(ParentModel):
    modname = "ut"

    def __init__(self):
        super().__init__()
        self.links: list = []

    def probe(self):
        self.eth = self.device("eth", 0)
        self.eth.init()
        self.eth.add()

    @handler(Event.POST_CONFIG)
    def post_config(self, adev, cfg):
        self.links.append(("post_config", cfg.vport_id))

    @handler(Event.SET_MAC)
    def set_mac(self, adev, req):
        self.links.append(("set_mac", adev.name))
        return SetMacReply(addr=req.addr, filter_id=1)


@pytest.fixture
def parent(broker):
    broker.hooks[E.DevInit] = lambda msg, p: (0, "", {"dev": 1, "name": f"ut.{msg.name}.{msg.id}"}, None)
    model = Ut()
    rt = ParentRuntime(model, transport=MemoryTransport(broker))
    rt.open()
    yield rt, model
    rt.close()


def test_parent_device_states_follow_the_bus(parent, broker):
    rt, model = parent
    adev = model.eth
    assert adev.state is DeviceState.ADDED and adev.state == "added" and rt.devices == {1: adev}
    adev.delete()
    adev.uninit()
    adev.uninit()       # the parent's reference is put once
    assert adev.state is DeviceState.DELETED and not adev.owned
    assert len(broker.sent(E.DevUninit)) == 1
    rt.tr.to_peer.append(E.encode(E.Release(dev=1)))
    serve_all(rt)
    assert adev.state is DeviceState.RELEASED and rt.devices == {}


def test_parent_keeps_early_events_and_link_state_until_bind(parent, broker):
    """Events from the child may beat the BIND notice (another socket): they wait and run
    after it; the link state set while no driver was bound is replayed to the driver."""
    rt, model = parent
    adev = model.eth
    with pytest.raises(AuxError) as exc:
        adev.notify(Event.LINK_CHANGE, LinkChange(up=True, speed_mbps=100))
    assert exc.value.errno == Errno.ENODEV
    broker.event(b"P:ut.eth.0", 1, 1, [(POST_CONFIG, PostConfig(vport_id=4))], inc=3)
    serve_all(rt)
    assert len(adev.early) == 1 and adev.early[0].topic == b"P:ut.eth.0" and model.links == []
    rt.tr.to_peer.append(E.encode(E.Bind(dev=1, driver="ut_eth", inc=3, handles=(LINK,))))
    serve_all(rt)
    rt.flush_events()
    assert adev.early == [] and adev.bound and model.links == [("post_config", 4)]
    [(topic, frame)] = [f for f in rt.tr.published if f[0] == b"C:ut.eth.0"]
    msg, payload = E.decode([frame])
    assert (msg.seq, E.decode_events(payload)[0::2]) == (1, [LINK])
    assert rt.stats["state_replayed"] == 1


def test_parent_serves_a_child_call_with_rtnl_held(parent, broker):
    rt, model = parent
    r = broker.request(E.Request, SetMac(addr=MAC).to_wire(), dev=1, ev=SET_MAC, timeout_ms=1000,
                       task="c#1/x1", rtnl=True)
    serve_all(rt)
    res = broker.answer(r)
    assert res.e == 0 and model.links == [("set_mac", "ut.eth.0")]
    assert rt.contexts.held == {"rtnl": []}


def test_parent_replays_to_a_driver_only_what_it_declared(parent, broker):
    """The NULL check at the sender: the link state is not replayed to a driver that
    declared only RESET_WARN; the event is counted, not sent."""
    rt, model = parent
    adev = model.eth
    with pytest.raises(AuxError):
        adev.notify(Event.LINK_CHANGE, LinkChange(up=True, speed_mbps=100))
    rt.tr.to_peer.append(E.encode(E.Bind(dev=1, driver="ut_eth", inc=3, handles=(int(Event.RESET_WARN),))))
    serve_all(rt)
    rt.flush_events()
    assert [f for f in rt.tr.published if f[0] == b"C:ut.eth.0"] == []
    assert (rt.stats["state_replayed"], rt.stats["async_undeclared"]) == (0, 1)


def test_a_restore_the_broker_cut_short_is_retried_at_the_next_registration(parent, broker, monkeypatch):
    """A broker lost again while the parent restores its devices must not lose them for
    good: the device whose add() was cut short is init'd and added at the next REGISTER."""
    rt, model = parent
    adev, add = model.eth, type(model.eth).add
    attempts: list = []

    def add_lost_once(self):
        attempts.append(self.name)
        if len(attempts) == 1:
            raise BrokerLost("test: the broker went away mid-restore")
        return add(self)

    monkeypatch.setattr(type(adev), "add", add_lost_once)
    rt.on_reregistered()
    assert rt.devices == {} and rt.interrupted == [adev] and adev.restore_added
    rt.on_reregistered()
    assert rt.devices == {1: adev} and rt.interrupted == [] and adev.state is DeviceState.ADDED
    assert attempts == ["ut.eth.0", "ut.eth.0"] and len(broker.sent(E.DevInit)) == 3
